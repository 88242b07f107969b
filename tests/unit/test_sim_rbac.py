"""The simulator's RBAC (Kubernetes' rules), its service account tokens, the protobuf TokenRequest kubectl
sends, and the simulator's API authorizing a service account's requests by them."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from fleetsync.sim import k8sproto, rbac, satokens
from fleetsync.sim.fleet import SimConfig, SimFleet
from fleetsync.sim.rbac import Policy, RequestAttributes, service_account_user
from fleetsync.sim.server import SimServer

AGENT = service_account_user("fleetsync", "agent")
OTHER = service_account_user("fleetsync", "other")


def cluster_role(name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "ClusterRole", "metadata": {"name": name}, "rules": list(rules)}


def role(namespace: str, name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Role", "metadata": {"name": name, "namespace": namespace}, "rules": list(rules)}


def binding(kind: str, role_kind: str, role_name: str, namespace: str = "", subjects: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta = {"name": f"{role_name}-binding", **({"namespace": namespace} if namespace else {})}
    subjects = subjects if subjects is not None else [{"kind": "ServiceAccount", "name": "agent", "namespace": "fleetsync"}]
    return {"kind": kind, "metadata": meta, "roleRef": {"apiGroup": rbac.RBAC_GROUP, "kind": role_kind, "name": role_name}, "subjects": subjects}


def rule(verbs: list[str], groups: list[str], resources: list[str], names: list[str] | None = None) -> dict[str, Any]:
    return {"verbs": verbs, "apiGroups": groups, "resources": resources, **({"resourceNames": names} if names else {})}


READER = cluster_role("reader", rule(["get", "list", "watch"], [""], ["pods", "services"]), rule(["list"], ["apps"], ["deployments"]))
CLUSTER_READER = Policy(cluster_roles=[READER], cluster_role_bindings=[binding("ClusterRoleBinding", "ClusterRole", "reader")])


def attrs(verb: str, resource: str, *, group: str = "", namespace: str = "", name: str = "", subresource: str = "") -> RequestAttributes:
    return RequestAttributes(verb=verb, api_group=group, resource=resource, subresource=subresource, name=name, namespace=namespace)


def test_a_cluster_role_binding_grants_its_rules_everywhere_and_nothing_more() -> None:
    assert CLUSTER_READER.allows(AGENT, attrs("list", "pods"))
    assert CLUSTER_READER.allows(AGENT, attrs("watch", "services", namespace="ns-0"))
    assert CLUSTER_READER.allows(AGENT, attrs("list", "deployments", group="apps"))
    assert not CLUSTER_READER.allows(AGENT, attrs("get", "deployments", group="apps", namespace="ns-0", name="web"))  # verb
    assert not CLUSTER_READER.allows(AGENT, attrs("delete", "pods", namespace="ns-0", name="web-1"))
    assert not CLUSTER_READER.allows(AGENT, attrs("list", "pods", group="apps"))  # the group matters
    assert not CLUSTER_READER.allows(AGENT, attrs("list", "configmaps"))
    assert not CLUSTER_READER.allows(OTHER, attrs("list", "pods"))  # not bound


def test_a_role_binding_grants_in_its_namespace_only_even_for_a_cluster_role() -> None:
    policy = Policy(
        roles=[role("apps", "writer", rule(["create", "patch"], [""], ["configmaps"]))],
        cluster_roles=[READER],
        role_bindings=[binding("RoleBinding", "Role", "writer", "apps"), binding("RoleBinding", "ClusterRole", "reader", "apps")],
    )
    assert policy.allows(AGENT, attrs("patch", "configmaps", namespace="apps", name="x"))
    assert policy.allows(AGENT, attrs("list", "pods", namespace="apps"))
    assert not policy.allows(AGENT, attrs("patch", "configmaps", namespace="other", name="x"))
    assert not policy.allows(AGENT, attrs("list", "pods", namespace="other"))
    assert not policy.allows(AGENT, attrs("list", "pods"))  # across namespaces is the cluster scope


def test_a_role_binding_names_a_role_of_its_own_namespace() -> None:
    policy = Policy(roles=[role("elsewhere", "writer", rule(["*"], ["*"], ["*"]))], role_bindings=[binding("RoleBinding", "Role", "writer", "apps")])
    assert not policy.allows(AGENT, attrs("get", "pods", namespace="apps", name="p"))


def test_subresources_wildcards_and_resource_names() -> None:
    policy = Policy(
        cluster_roles=[
            cluster_role(
                "mixed",
                rule(["get"], [""], ["pods/log"]),
                rule(["update"], ["*"], ["*/status"]),
                rule(["get", "update"], [""], ["configmaps"], names=["istio"]),
                rule(["*"], ["batch"], ["*"]),
            )
        ],
        cluster_role_bindings=[binding("ClusterRoleBinding", "ClusterRole", "mixed")],
    )
    assert policy.allows(AGENT, attrs("get", "pods", subresource="log", namespace="a", name="p"))
    assert not policy.allows(AGENT, attrs("get", "pods", namespace="a", name="p"))  # a subresource grant is not the object's
    assert policy.allows(AGENT, attrs("update", "deployments", group="apps", subresource="status", namespace="a", name="d"))
    assert not policy.allows(AGENT, attrs("update", "deployments", group="apps", namespace="a", name="d"))
    assert policy.allows(AGENT, attrs("get", "configmaps", namespace="istio-system", name="istio"))
    assert not policy.allows(AGENT, attrs("get", "configmaps", namespace="istio-system", name="other"))
    assert not policy.allows(AGENT, attrs("list", "configmaps", namespace="istio-system"))  # resourceNames never allow a list
    assert policy.allows(AGENT, attrs("deletecollection", "jobs", group="batch", namespace="a"))


def test_subjects_match_by_user_group_and_service_account() -> None:
    by_group = [{"kind": "Group", "name": "system:serviceaccounts:fleetsync"}]
    by_user = [{"kind": "User", "name": "system:serviceaccount:fleetsync:other"}]
    policy = Policy(
        cluster_roles=[READER],
        cluster_role_bindings=[binding("ClusterRoleBinding", "ClusterRole", "reader", subjects=by_group)],
        role_bindings=[binding("RoleBinding", "ClusterRole", "reader", "apps", subjects=by_user)],
    )
    assert policy.allows(AGENT, attrs("list", "pods"))
    assert not policy.allows(service_account_user("default", "agent"), attrs("list", "pods"))
    assert policy.allows(OTHER, attrs("list", "pods", namespace="apps"))
    wrong_namespace = [{"kind": "ServiceAccount", "name": "agent", "namespace": "default"}]
    assert not Policy(cluster_roles=[READER], cluster_role_bindings=[binding("ClusterRoleBinding", "ClusterRole", "reader", subjects=wrong_namespace)]).allows(
        AGENT, attrs("list", "pods")
    )


def test_malformed_rbac_objects_grant_nothing() -> None:
    broken = [cluster_role("reader", {"verbs": "list", "apiGroups": [""], "resources": ["pods"]}), {"metadata": None, "rules": "x"}]
    policy = Policy(cluster_roles=broken, cluster_role_bindings=[binding("ClusterRoleBinding", "ClusterRole", "reader"), {"subjects": "agent"}])
    assert not policy.allows(AGENT, attrs("list", "pods"))


@pytest.mark.parametrize(
    ("request_attrs", "message"),
    [
        (
            attrs("list", "pods"),
            'pods is forbidden: User "system:serviceaccount:fleetsync:agent" cannot list resource "pods" in API group "" at the cluster scope',
        ),
        (
            attrs("patch", "deployments", group="apps", namespace="ns-0", name="web"),
            'deployments.apps "web" is forbidden: User "system:serviceaccount:fleetsync:agent" cannot patch resource "deployments" '
            'in API group "apps" in the namespace "ns-0"',
        ),
        (
            attrs("create", "serviceaccounts", subresource="token", namespace="fleetsync", name="agent"),
            'serviceaccounts "agent" is forbidden: User "system:serviceaccount:fleetsync:agent" cannot create resource "serviceaccounts/token" '
            'in API group "" in the namespace "fleetsync"',
        ),
    ],
)
def test_a_denial_is_the_api_servers_403(request_attrs: RequestAttributes, message: str) -> None:
    status = rbac.forbidden(AGENT, request_attrs).to_status()
    assert (status["code"], status["reason"], status["message"]) == (403, "Forbidden", message)
    assert status["details"]["kind"] == request_attrs.resource


@pytest.mark.parametrize(
    ("selector", "name"),
    [("metadata.name=istio", "istio"), ("metadata.name==istio", "istio"), ("metadata.name!=istio", ""), ("metadata.name=a,status.phase=x", ""), ("", "")],
)
def test_a_list_of_one_named_object_is_authorized_as_naming_it(selector: str, name: str) -> None:
    assert rbac.selected_name(selector) == name


@pytest.mark.parametrize(
    ("method", "named", "watch", "verb"),
    [
        ("GET", False, False, "list"),
        ("GET", False, True, "watch"),
        ("GET", True, False, "get"),
        ("POST", False, False, "create"),
        ("PUT", True, False, "update"),
        ("PATCH", True, False, "patch"),
        ("DELETE", True, False, "delete"),
        ("DELETE", False, False, "deletecollection"),
    ],
)
def test_http_methods_map_to_rbac_verbs(method: str, named: bool, watch: bool, verb: str) -> None:
    assert rbac.verb_of(method, named=named, watch=watch) == verb


def test_a_token_speaks_for_its_account_until_it_expires_and_only_on_its_cluster() -> None:
    signer = satokens.TokenSigner.for_cluster("admin-token-of-c1")
    token = signer.issue(satokens.TokenClaims("fleetsync", "agent", "uid-1", expires=2_000))
    assert signer.verify(token, now=1_000) == satokens.TokenClaims("fleetsync", "agent", "uid-1", 2_000)
    assert signer.verify(token, now=2_000) is None
    assert satokens.TokenSigner.for_cluster("admin-token-of-c2").verify(token, now=1_000) is None
    payload, _, mac = token.removeprefix(satokens.PREFIX).partition(".")
    forged = satokens.TokenSigner.for_cluster("guess").issue(satokens.TokenClaims("kube-system", "admin", "uid-1", 2_000))
    assert signer.verify(forged, now=1_000) is None
    assert signer.verify(f"{satokens.PREFIX}{payload}x.{mac}", now=1_000) is None
    assert signer.verify("not-a-token", now=1_000) is None


@pytest.mark.parametrize(("requested", "seconds"), [(None, 3600), (600, 600), (10**9, satokens.MAX_SECONDS)])
def test_token_lifetimes_are_bounded(requested: int | None, seconds: int) -> None:
    assert satokens.lifetime(requested) == seconds


@pytest.mark.parametrize("requested", [599, "3600", True])
def test_token_lifetimes_out_of_bounds_are_refused(requested: object) -> None:
    with pytest.raises(ValueError, match="Invalid value"):
        satokens.lifetime(requested)


def _field(number: int, value: bytes | int) -> bytes:
    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def test_the_protobuf_token_request_kubectl_sends_is_read() -> None:
    spec = _field(1, b"https://kubernetes.default.svc") + _field(4, 7200)
    message = _field(1, _field(1, b"agent")) + _field(2, spec)  # metadata.name, spec
    envelope = k8sproto.MAGIC + _field(1, _field(1, b"authentication.k8s.io/v1") + _field(2, b"TokenRequest")) + _field(2, message)
    assert k8sproto.token_request(envelope) == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 7200},
    }


@pytest.mark.parametrize("body", [b"{}", k8sproto.MAGIC + b"\x12\x05ab", k8sproto.MAGIC + b"\x0f", k8sproto.MAGIC + b"\x80" * 11])
def test_a_body_that_is_not_a_protobuf_token_request_is_refused(body: bytes) -> None:
    with pytest.raises(k8sproto.ProtobufError):
        k8sproto.token_request(body)


# ---- the simulator's API with service account tokens (in process) ------------------------------


async def test_the_simulator_authorizes_service_account_tokens_by_rbac() -> None:
    fleet = SimFleet(SimConfig(clusters=1, pods=0, istio=False))
    server = SimServer(fleet)
    await server.start()
    base, admin = server.cluster_url("c1"), {"Authorization": f"Bearer {fleet.clusters['c1'].token}"}
    apply = {"Content-Type": "application/apply-patch+yaml"}
    try:
        async with aiohttp.ClientSession() as http:

            async def call(method: str, path: str, token: str | None, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
                auth = admin if token is None else {"Authorization": f"Bearer {token}"}
                async with http.request(method, base + path, json=body, headers={**auth, **(headers or {})}) as response:
                    return response.status, await response.json(content_type=None)

            account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "agent", "namespace": "default"}}
            patcher = cluster_role("patcher", rule(["patch"], [""], ["configmaps"]), rule(["list"], [""], ["configmaps"], names=["x"]))
            bound = binding("ClusterRoleBinding", "ClusterRole", "patcher", subjects=[{"kind": "ServiceAccount", "name": "agent", "namespace": "default"}])
            assert (await call("POST", "/api/v1/namespaces/default/serviceaccounts", None, account))[0] == 201
            assert (await call("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", None, {"apiVersion": "rbac.authorization.k8s.io/v1", **patcher}))[
                0
            ] == 201
            assert (
                await call("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", None, {"apiVersion": "rbac.authorization.k8s.io/v1", **bound})
            )[0] == 201
            status, issued = await call("POST", "/api/v1/namespaces/default/serviceaccounts/agent/token", None, {"kind": "TokenRequest", "spec": {}})
            assert status == 201 and issued["kind"] == "TokenRequest" and issued["spec"]["expirationSeconds"] == 3600, issued
            token = issued["status"]["token"]

            assert (await call("GET", "/api/v1", token))[0] == 200, "discovery is every authenticated user's"
            status, body = await call("GET", "/api/v1/pods", token)
            assert (status, body["reason"]) == (403, "Forbidden") and body["message"] == (
                'pods is forbidden: User "system:serviceaccount:default:agent" cannot list resource "pods" in API group "" at the cluster scope'
            ), body
            config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}}
            status, body = await call("PATCH", "/api/v1/namespaces/default/configmaps/x?fieldManager=t", token, config, apply)
            assert status == 403 and 'cannot create resource "configmaps"' in body["message"], "an apply that creates needs create as well as patch"
            assert (await call("PATCH", "/api/v1/namespaces/default/configmaps/x?fieldManager=t", None, config, apply))[0] == 201
            assert (await call("PATCH", "/api/v1/namespaces/default/configmaps/x?fieldManager=t", token, {**config, "data": {"a": "1"}}, apply))[0] == 200
            assert (await call("GET", "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dx", token))[0] == 200
            assert (await call("GET", "/api/v1/namespaces/default/configmaps", token))[0] == 403, "resourceNames allow a list of that name only"
            status, body = await call("POST", "/api/v1/namespaces/default/serviceaccounts/agent/token", token, {"kind": "TokenRequest"})
            assert status == 403 and 'cannot create resource "serviceaccounts/token"' in body["message"], body

            assert (await call("GET", "/api/v1", "sim-sa.forged.token"))[0] == 401
            assert (await call("DELETE", "/api/v1/namespaces/default/serviceaccounts/agent", None))[0] == 200
            assert (await call("POST", "/api/v1/namespaces/default/serviceaccounts", None, account))[0] == 201
            assert (await call("GET", "/api/v1", token))[0] == 401, "a token dies with its account (a new one of the same name is another)"
    finally:
        await server.stop()
