"""The simulator's HTTP side: a Kubernetes-compatible API per virtual cluster, plus control endpoints.

Paths (all on one port):

- ``/clusters/NAME/...``: the Kubernetes API of cluster NAME (discovery, list, watch,
  get, create, update, patch, server-side apply, delete, ``status`` subresources); its
  admin token (in NAME.kubeconfig) may do anything, and so may a request without a token; a
  service account's token (``kubectl create token``: :mod:`fleetsync.sim.satokens`) may do
  what the cluster's RBAC objects grant it (:mod:`fleetsync.sim.rbac`), discovery always;
- ``/clusters/NAME/truth``: every current object of NAME (for convergence checks);
- ``/clusters/NAME/metrics``: Istio's standard metrics of NAME's services, for Prometheus
  (:mod:`fleetsync.sim.mesh`); ``/clusters/NAME/mesh-traffic``: the traffic configured for
  them (JSON); ``PUT /clusters/NAME/metrics-outage {"down": true}``: ``/metrics`` answers 503
  until ``{"down": false}``;
- ``/clusters``: the virtual clusters, their labels and sizes;
- ``/churn``: ``GET`` the churn rate and counts, ``PUT {"rate": R}`` to re-rate (0 pauses);
- ``/healthz``, ``/readyz``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
import yaml
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from fleetsync import __version__
from fleetsync.model import discovery
from fleetsync.model import types as t
from fleetsync.model.objects import name_problem, rfc3339
from fleetsync.model.selectors import FieldSelector, LabelSelector, SelectorError, is_label_value, is_qualified_name
from fleetsync.model.status import ApiError
from fleetsync.model.tables import table
from fleetsync.model.types import ResourceType, TypeRegistry
from fleetsync.sim import fieldmanager, k8sproto, patching, rbac, satokens
from fleetsync.sim.fleet import SimCluster, SimFleet
from fleetsync.sim.store import ClusterState, StoredObject, Watcher
from fleetsync.sim.workloads import random_name_suffix
from fleetsync.web import JSON, json_response, serve, status_errors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What a Kubernetes API path names."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _int_param(request: web.Request, name: str, default: int = 0) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError.bad_request(f"invalid {name} {raw!r}: must be an integer") from None
    if value < 0:
        raise ApiError.bad_request(f"invalid {name} {raw!r}: must not be negative")
    return value


def _bool_param(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true")


def _wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "as=Table" in accept and "g=meta.k8s.io" in accept


def _field_manager(request: web.Request) -> str:
    if manager := request.query.get("fieldManager"):
        return manager
    agent = request.headers.get("User-Agent", "unknown")
    return agent.split("/", 1)[0] or "unknown"


async def _read_body(request: web.Request) -> Any:
    if "protobuf" in request.content_type or "cbor" in request.content_type:
        # We speak JSON only; client-go answers a 415 by retrying the request as JSON.
        raise ApiError.unsupported_media_type("application/json, application/yaml")
    raw = await request.read()
    if not raw.strip():
        raise ApiError.bad_request("the request body is empty; expected an object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        if request.content_type != patching.APPLY_PATCH and "yaml" not in request.content_type:
            raise ApiError.bad_request("the request body is not valid JSON") from None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ApiError.bad_request(f"the request body is not valid YAML: {exc}") from None


def _validate(rtype: ResourceType, obj: Any, *, namespace: str | None) -> dict[str, Any]:
    """Check an object sent for ``rtype`` (400 for shape, 422 for invalid values) and default its namespace."""
    if not isinstance(obj, dict):
        raise ApiError.bad_request(f"expected a {rtype.kind} object, got {type(obj).__name__}")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if api_version and api_version != rtype.api_version:
        raise ApiError.bad_request(f"the API version in the data ({api_version}) does not match the expected API version ({rtype.api_version})")
    if kind and kind != rtype.kind:
        raise ApiError.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})")
    meta = obj.get("metadata")
    if meta is None:
        meta = obj["metadata"] = {}
    if not isinstance(meta, dict):
        raise ApiError.bad_request("metadata must be an object")
    name = meta.get("name") or ""
    causes: list[tuple[str, str]] = []
    if not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif not isinstance(name, str) or (problem := name_problem(rtype, name)):
        causes.append(("metadata.name", f"Invalid value: {name!r}: {problem if isinstance(name, str) else 'must be a string'}"))
    if rtype.namespaced:
        body_ns = meta.get("namespace")
        if body_ns and namespace and body_ns != namespace:
            raise ApiError.bad_request("the namespace of the provided object does not match the namespace sent on the request")
        meta["namespace"] = body_ns or namespace or ""
        if not meta["namespace"]:
            causes.append(("metadata.namespace", "Required value"))
    else:
        meta.pop("namespace", None)
    for field in ("labels", "annotations"):
        values = meta.get(field)
        if values is None:
            continue
        if not isinstance(values, dict):
            causes.append((f"metadata.{field}", "Invalid value: must be a map of strings"))
            continue
        for k, v in values.items():
            if not is_qualified_name(k):
                causes.append((f"metadata.{field}", f"Invalid value: {k!r}: name part must consist of alphanumeric characters, '-', '_' or '.'"))
            if not isinstance(v, str):
                causes.append((f"metadata.{field}", f"Invalid value: {k!r}: values must be strings"))
            elif field == "labels" and not is_label_value(v):
                causes.append(
                    (
                        "metadata.labels",
                        f"Invalid value: {v!r}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63)",
                    )
                )
    if causes:
        raise ApiError.invalid(rtype.kind, str(name), causes, rtype.group)
    obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
    return obj


class SimServer:
    """Serves a :class:`SimFleet` over HTTP on one port."""

    def __init__(
        self, fleet: SimFleet, *, host: str = "127.0.0.1", port: int = 0, bookmark_interval: float = 5.0, registry: TypeRegistry | None = None
    ) -> None:
        self.fleet = fleet
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.registry = registry or TypeRegistry()
        self._runner: web.AppRunner | None = None
        self._churn_task: asyncio.Task[None] | None = None

    def cluster_url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/clusters/{name}"

    # ---- lifecycle -----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[status_errors], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/healthz", self._ok)
        app.router.add_get("/readyz", self._ok)
        app.router.add_get("/clusters", self._list_clusters)
        app.router.add_get("/churn", self._get_churn)
        app.router.add_put("/churn", self._put_churn)
        app.router.add_get("/clusters/{cluster}/truth", self._truth)
        app.router.add_get("/clusters/{cluster}/metrics", self._metrics)
        app.router.add_get("/clusters/{cluster}/mesh-traffic", self._mesh_traffic)
        app.router.add_get("/clusters/{cluster}/metrics-outage", self._get_metrics_outage)
        app.router.add_put("/clusters/{cluster}/metrics-outage", self._put_metrics_outage)
        app.router.add_route("*", "/clusters/{cluster}", self._kube)
        app.router.add_route("*", "/clusters/{cluster}/{tail:.*}", self._kube)
        return app

    async def start(self) -> None:
        self._runner, self.port = await serve(self.app(), self.host, self.port, handler_cancellation=True, backlog=1024)
        self._churn_task = asyncio.create_task(self.fleet.churn.run(), name="churn")

    async def stop(self) -> None:
        if self._churn_task:
            self._churn_task.cancel()
            await asyncio.gather(self._churn_task, return_exceptions=True)
        if self._runner:
            await self._runner.cleanup()

    # ---- control endpoints ---------------------------------------------------------

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _list_clusters(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "clusters": [
                    {
                        "name": c.name,
                        "server": self.cluster_url(c.name),
                        "labels": c.labels,
                        "resourceVersion": str(c.state.rv),
                        "objects": {rt.gvk: c.state.count(rt) for rt in c.state.types},
                        "watchers": c.state.watcher_count(),
                    }
                    for c in self.fleet.clusters.values()
                ]
            }
        )

    async def _get_churn(self, request: web.Request) -> web.Response:
        churn = self.fleet.churn
        return json_response({"rate": churn.rate, "operations": dict(churn.counts)})

    async def _put_churn(self, request: web.Request) -> web.Response:
        body = await _read_body(request)
        rate = body.get("rate") if isinstance(body, dict) else None
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
            raise ApiError.bad_request('expected {"rate": R} with R a number >= 0 (operations per second per cluster; 0 pauses)')
        self.fleet.churn.set_rate(float(rate))
        return await self._get_churn(request)

    def _cluster(self, request: web.Request) -> SimCluster:
        name = request.match_info["cluster"]
        cluster = self.fleet.clusters.get(name)
        if cluster is None:
            known = ", ".join(self.fleet.clusters) or "none"
            raise ApiError(404, "NotFound", f'cluster "{name}" is not simulated here (clusters: {known})')
        return cluster

    async def _truth(self, request: web.Request) -> web.Response:
        cluster = self._cluster(request)
        rtypes = None
        if wanted := request.query.getall("type", []):
            try:
                registry = TypeRegistry(dict.fromkeys([*cluster.state.types, *self.registry]))  # the cluster's own (its CRDs') first
                rtypes = [registry.resolve(w) for w in wanted]
            except LookupError as exc:
                raise ApiError.bad_request(str(exc)) from None
        state = cluster.state
        parts = [orjson.dumps(rt.gvk) + b":[" + b",".join(o.raw for o in objs) + b"]" for rt, objs in state.truth(rtypes).items()]
        head = orjson.dumps({"cluster": cluster.name, "resourceVersion": str(state.rv)})
        return web.Response(body=head[:-1] + b',"types":{' + b",".join(parts) + b"}}", content_type=JSON)

    # ---- Istio metrics (fleetsync.sim.mesh) -------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        mesh = self._cluster(request).mesh
        if mesh.down:
            return web.Response(status=503, text='metrics outage (PUT /clusters/NAME/metrics-outage {"down": false} ends it)\n')
        return web.Response(body=mesh.exposition(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _mesh_traffic(self, request: web.Request) -> web.Response:
        return json_response(self._cluster(request).mesh.describe())

    async def _get_metrics_outage(self, request: web.Request) -> web.Response:
        cluster = self._cluster(request)
        return json_response({"cluster": cluster.name, "down": cluster.mesh.down})

    async def _put_metrics_outage(self, request: web.Request) -> web.Response:
        cluster = self._cluster(request)
        body = await _read_body(request)
        down = body.get("down") if isinstance(body, dict) else None
        if not isinstance(down, bool):
            raise ApiError.bad_request('expected {"down": true} (/metrics answers 503) or {"down": false}')
        cluster.mesh.down = down
        log.info("metrics of cluster %s %s", cluster.name, "down" if down else "up again")
        return await self._get_metrics_outage(request)

    # ---- the Kubernetes API ----------------------------------------------------------

    def _authenticate(self, request: web.Request, cluster: SimCluster) -> rbac.User | None:
        """The service account a request's token speaks for; None for the cluster's admin token and
        for no token at all (anonymous access is allowed, as on a development cluster): both may do anything."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token == cluster.token:
            return None
        claims = satokens.TokenSigner.for_cluster(cluster.token).verify(token, now=cluster.state.clock()) if scheme.lower() == "bearer" else None
        account = cluster.state.get(rbac.SERVICE_ACCOUNT, claims.namespace, claims.name) if claims else None
        if claims is None or account is None or account.decode()["metadata"].get("uid") != claims.uid:
            raise ApiError.unauthorized(
                f"invalid bearer token for cluster {cluster.name!r}; use the token in its kubeconfig, or one from `kubectl create token` "
                "for a service account that still exists"
            )
        return rbac.service_account_user(claims.namespace, claims.name)

    @staticmethod
    def _authorize(request: web.Request, user: rbac.User | None, state: ClusterState, target: Target, *, verb: str = "") -> None:
        """403 unless the cluster's RBAC lets ``user`` (a service account) do it; None (an admin): anything."""
        if user is None:
            return
        verb = verb or rbac.verb_of(request.method, named=target.name is not None, watch=_bool_param(request, "watch"))
        name = target.name or ""
        if verb in ("list", "watch") and not name:  # one object's list or watch (kubectl get NAME -w): what resourceNames may allow
            name = rbac.selected_name(request.query.get("fieldSelector", ""))
        attrs = rbac.RequestAttributes(
            verb=verb,
            api_group=target.rtype.group,
            resource=target.rtype.plural,
            subresource=target.subresource or "",
            name=name,
            namespace=target.namespace or "",
        )
        policy = rbac.Policy(
            roles=[o.decode() for o in state.scan(rbac.ROLE, target.namespace)] if target.namespace else [],
            cluster_roles=[o.decode() for o in state.scan(rbac.CLUSTER_ROLE)],
            role_bindings=[o.decode() for o in state.scan(rbac.ROLE_BINDING, target.namespace)] if target.namespace else [],
            cluster_role_bindings=[o.decode() for o in state.scan(rbac.CLUSTER_ROLE_BINDING)],
        )
        if not policy.allows(user, attrs):
            raise rbac.forbidden(user, attrs)

    async def _kube(self, request: web.Request) -> web.StreamResponse:
        cluster = self._cluster(request)
        user = self._authenticate(request, cluster)
        registry = TypeRegistry(cluster.state.types)  # discovery shows what this cluster serves
        parts = [p for p in request.match_info.get("tail", "").split("/") if p]
        if not parts:
            return json_response({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/version", *(f"/apis/{g}" for g in registry.groups())]})
        if parts == ["version"]:
            return json_response(discovery.version_info(f"v1.36.0-fleetsync-sim-{__version__}"))
        if parts[0] in ("healthz", "readyz", "livez"):
            return web.Response(text="ok")
        if parts[:2] == ["openapi", "v3"]:
            return self._openapi_v3(request.path, parts[2:], TypeRegistry(dict.fromkeys([*self.registry, *registry])))
        if parts[0] == "api":
            if len(parts) == 1:
                return json_response(discovery.api_versions(f"{self.host}:{self.port}"))
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis":
            groups = registry.groups()
            if len(parts) == 1:
                return json_response(discovery.api_group_list(groups))
            if parts[1] not in groups:
                raise ApiError.path_not_found(request.path)
            if len(parts) == 2:
                return json_response(discovery.api_group(parts[1], groups[parts[1]]))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError.path_not_found(request.path)
        if not rest:
            types = registry.in_group_version(group, version)
            if not types:
                raise ApiError.path_not_found(request.path)
            return json_response(discovery.api_resource_list(group, version, types))
        target = self._target(request.path, group, version, rest, registry)
        if not cluster.state.serves(target.rtype):
            raise ApiError.path_not_found(request.path)
        self._authorize(request, user, cluster.state, target)
        if target.subresource == "token":
            return await self._token_request(request, cluster, target)
        return await self._resource(request, cluster.state, target, user)

    async def _token_request(self, request: web.Request, cluster: SimCluster, target: Target) -> web.Response:
        """``POST .../serviceaccounts/NAME/token`` (``kubectl create token``): a token for the account, as a TokenRequest."""
        if request.method != "POST":
            raise ApiError.method_not_allowed(request.method, "serviceaccounts/token")
        if "protobuf" in request.content_type:  # kubectl create token sends nothing else
            try:
                body: Any = k8sproto.token_request(await request.read())
            except k8sproto.ProtobufError as exc:
                raise ApiError.bad_request(f"the TokenRequest does not decode: {exc}") from None
        else:
            body = await _read_body(request)
        if not isinstance(body, dict) or body.get("kind", "TokenRequest") != "TokenRequest":
            raise ApiError.bad_request("expected an authentication.k8s.io/v1 TokenRequest")
        spec: dict[str, Any] = body["spec"] if isinstance(body.get("spec"), dict) else {}
        account = cluster.state.read(rbac.SERVICE_ACCOUNT, target.namespace or "", target.name or "")
        try:
            seconds = satokens.lifetime(spec.get("expirationSeconds"))
        except ValueError as exc:
            raise ApiError.invalid("TokenRequest", target.name or "", [("spec.expirationSeconds", str(exc))], "authentication.k8s.io") from None
        expires = int(cluster.state.clock()) + seconds
        claims = satokens.TokenClaims(target.namespace or "", target.name or "", account["metadata"]["uid"], expires)
        token = satokens.TokenSigner.for_cluster(cluster.token).issue(claims)
        answer = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": target.name, "namespace": target.namespace, "creationTimestamp": None},
            "spec": {"audiences": spec.get("audiences") or ["https://kubernetes.default.svc"], "expirationSeconds": seconds, "boundObjectRef": None},
            "status": {"token": token, "expirationTimestamp": rfc3339(expires)},
        }
        return json_response(answer, 201)

    def _openapi_v3(self, path: str, gv: list[str], registry: TypeRegistry) -> web.Response:
        """Every type this simulator knows and the cluster's own (its CRDs')."""
        group_versions = sorted({(rt.group, rt.version) for rt in registry})
        if not gv:
            return json_response(discovery.openapi_v3_root(group_versions))
        group, version = ("", gv[1]) if gv[0] == "api" and len(gv) == 2 else (gv[1], gv[2]) if gv[0] == "apis" and len(gv) == 3 else ("", "")
        if (group, version) not in group_versions:
            raise ApiError.path_not_found(path)
        return json_response(discovery.openapi_v3_group_version(group, version, registry.in_group_version(group, version)))

    def _target(self, path: str, group: str, version: str, rest: list[str], served: TypeRegistry) -> Target:
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError.path_not_found(path)
        rtype = self.registry.by_path(group, version, rest[0]) or served.by_path(group, version, rest[0])  # or a type of the cluster's CRDs
        if rtype is None or (namespace and not rtype.namespaced):
            raise ApiError.path_not_found(path)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if name and rtype.namespaced and not namespace:
            raise ApiError.path_not_found(path)
        if sub and not ((sub == "status" and rtype.has_status) or (sub == "scale" and rtype.scalable) or (sub == "token" and rtype is rbac.SERVICE_ACCOUNT)):
            raise ApiError.path_not_found(path)
        return Target(rtype, namespace, name, sub)

    async def _resource(self, request: web.Request, state: ClusterState, target: Target, user: rbac.User | None = None) -> web.StreamResponse:
        method = request.method
        if request.query.get("dryRun"):
            raise ApiError.bad_request("dryRun is not supported by fleetsync sim")
        if target.name is None:
            if method == "GET":
                if _bool_param(request, "watch"):
                    return await self._watch(request, state, target)
                return self._list(request, state, target)
            if method == "POST":
                return await self._create(request, state, target)
            if method == "DELETE":
                return self._delete_collection(request, state, target)
            raise ApiError.method_not_allowed(method, target.rtype.plural)
        if target.subresource == "scale":
            return await self._scale(request, state, target)
        if method == "GET":
            return self._object_response(request, target.rtype, state.read(target.rtype, target.namespace or "", target.name))
        if method == "PUT":
            return await self._update(request, state, target)
        if method == "PATCH":
            return await self._patch(request, state, target, user)
        if method == "DELETE" and not target.subresource:
            return await self._delete(request, state, target)
        raise ApiError.method_not_allowed(method, f"{target.rtype.plural}/{target.subresource or ''}")

    def _object_response(self, request: web.Request, rtype: ResourceType, obj: dict[str, Any], status: int = 200) -> web.Response:
        if _wants_table(request):
            return json_response(
                table(
                    rtype.kind,
                    [obj],
                    printer_columns=rtype.printer_columns,
                    resource_version=obj["metadata"].get("resourceVersion", ""),
                    include_object=request.query.get("includeObject", "Metadata"),
                ),
                status,
            )
        return json_response(obj, status)

    def _selectors(self, request: web.Request, rtype: ResourceType) -> tuple[LabelSelector, FieldSelector]:
        try:
            return (
                LabelSelector.parse(request.query.get("labelSelector")),
                FieldSelector.parse(request.query.get("fieldSelector"), allowed=rtype.field_selector_keys),
            )
        except SelectorError as exc:
            raise ApiError.bad_request(str(exc)) from None

    def _list(self, request: web.Request, state: ClusterState, target: Target) -> web.Response:
        rtype = target.rtype
        labels, fields = self._selectors(request, rtype)
        rv_text = request.query.get("resourceVersion", "")
        rv = _int_param(request, "resourceVersion") if rv_text else None
        match = request.query.get("resourceVersionMatch", "")
        if match and match not in ("Exact", "NotOlderThan"):
            raise ApiError.bad_request(f"invalid resourceVersionMatch {match!r}: must be Exact or NotOlderThan")
        if match and not rv_text:
            raise ApiError.bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
        if rv is not None and match != "Exact" and rv > state.rv:
            raise ApiError(504, "Timeout", f"Too large resource version: {rv}, current: {state.rv}")
        page = state.list(
            rtype,
            namespace=target.namespace,
            labels=labels,
            fields=fields,
            limit=_int_param(request, "limit"),
            continue_token=request.query.get("continue") or None,
            resource_version=rv,
            exact=match == "Exact",
        )
        if _wants_table(request):
            return json_response(
                table(
                    rtype.kind,
                    [o.decode() for o in page.items],
                    printer_columns=rtype.printer_columns,
                    resource_version=str(page.resource_version),
                    continue_token=page.continue_token,
                    remaining=page.remaining,
                    include_object=request.query.get("includeObject", "Metadata"),
                )
            )
        meta: dict[str, Any] = {"resourceVersion": str(page.resource_version)}
        if page.continue_token:
            meta["continue"] = page.continue_token
            meta["remainingItemCount"] = page.remaining
        head = orjson.dumps({"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta})
        body = head[:-1] + b',"items":[' + b",".join(o.raw for o in page.items) + b"]}"
        return web.Response(body=body, content_type=JSON)

    async def _watch(self, request: web.Request, state: ClusterState, target: Target) -> web.StreamResponse:
        rtype = target.rtype
        labels, fields = self._selectors(request, rtype)
        rv_text = request.query.get("resourceVersion", "")
        rv = _int_param(request, "resourceVersion") if rv_text else None
        send_initial = _bool_param(request, "sendInitialEvents")
        bookmarks = _bool_param(request, "allowWatchBookmarks")
        if send_initial and (not bookmarks or request.query.get("resourceVersionMatch") != "NotOlderThan"):
            raise ApiError.invalid(
                rtype.kind, "", [("sendInitialEvents", "Forbidden: sendInitialEvents requires allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan")]
            )
        timeout = _int_param(request, "timeoutSeconds", 1800) or 1800
        as_table = _wants_table(request)
        include_object = request.query.get("includeObject", "Metadata")
        try:
            watcher: Watcher | None = state.watch(
                rtype,
                namespace=target.namespace,
                labels=labels,
                fields=fields,
                resource_version=None if rv in (None, 0) else rv,
                send_initial_events=send_initial,
            )
            error = None
        except ApiError as exc:
            if exc.code != 410:
                raise
            watcher, error = None, exc
        # Like the apiserver's watch cache: an expired version is a 200 stream carrying one ERROR event.
        response = web.StreamResponse(headers={"Content-Type": JSON, "Cache-Control": "no-cache"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if watcher is None:
            assert error is not None
            await response.write(orjson.dumps({"type": "ERROR", "object": error.to_status()}) + b"\n")
            return response
        initial_end = state.rv if send_initial else None
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.bookmark_interval
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                await watcher.wait(min(deadline, next_bookmark) - now)
                events = watcher.drain()
                if events:
                    await response.write(b"".join(self._event_line(rtype, kind, obj, as_table, include_object) for kind, obj in events))
                if initial_end is not None and not watcher.queue:
                    await response.write(self._bookmark(rtype, initial_end, initial_events_end=True))
                    initial_end = None
                if watcher.closed_reason:
                    log.info("closing watch of %s in %s: %s", rtype.plural, state.name, watcher.closed_reason)
                    break
                if bookmarks and time.monotonic() >= next_bookmark:
                    if not watcher.queue:  # everything up to state.rv has been sent
                        await response.write(self._bookmark(rtype, state.rv))
                    next_bookmark = time.monotonic() + self.bookmark_interval
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            state.stop_watch(watcher)
        return response

    @staticmethod
    def _event_line(rtype: ResourceType, kind: str, obj: StoredObject, as_table: bool, include_object: str) -> bytes:
        if as_table:
            decoded = obj.decode()
            payload = table(
                rtype.kind,
                [decoded],
                resource_version=decoded["metadata"]["resourceVersion"],
                include_object=include_object,
                printer_columns=rtype.printer_columns,
            )
            return orjson.dumps({"type": kind, "object": payload}) + b"\n"
        return b'{"type":"' + kind.encode() + b'","object":' + obj.raw + b"}\n"

    @staticmethod
    def _bookmark(rtype: ResourceType, rv: int, *, initial_events_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return orjson.dumps({"type": "BOOKMARK", "object": {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta}}) + b"\n"

    # ---- writes ----------------------------------------------------------------------

    def _now(self, state: ClusterState) -> str:
        return rfc3339(state.clock())

    async def _create(self, request: web.Request, state: ClusterState, target: Target) -> web.Response:
        rtype = target.rtype
        obj = await _read_body(request)
        if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
            meta = obj["metadata"]
            if not meta.get("name") and isinstance(meta.get("generateName"), str):
                meta["name"] = meta["generateName"] + random_name_suffix(state._rng)
        obj = _validate(rtype, obj, namespace=target.namespace)
        for k in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"):
            obj["metadata"].pop(k, None)
        if rtype is t.POD and not obj.get("status"):
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        fieldmanager.record_update(None, obj, manager=_field_manager(request), now=self._now(state))
        stored = state.create(rtype, obj)
        return self._object_response(request, rtype, stored.decode(), 201)

    async def _update(self, request: web.Request, state: ClusterState, target: Target) -> web.Response:
        rtype = target.rtype
        obj = _validate(rtype, await _read_body(request), namespace=target.namespace)
        if obj["metadata"]["name"] != target.name:
            raise ApiError.bad_request(f"the name of the object ({obj['metadata']['name']}) does not match the name on the URL ({target.name})")
        current = state.read(rtype, target.namespace or "", target.name or "")
        new = self._restrict_to_subresource(rtype, current, obj, target.subresource)
        new["metadata"]["managedFields"] = current["metadata"].get("managedFields", [])
        fieldmanager.record_update(current, new, manager=_field_manager(request), now=self._now(state), subresource=target.subresource or "")
        stored = state.update(rtype, new, expected_rv=obj["metadata"].get("resourceVersion") or None)
        return self._object_response(request, rtype, stored.decode())

    @staticmethod
    def _restrict_to_subresource(rtype: ResourceType, current: dict[str, Any], new: dict[str, Any], subresource: str | None) -> dict[str, Any]:
        """A write to ``/status`` changes only status; a write to the object leaves its status alone."""
        if subresource == "status":
            return {**current, "status": new.get("status", {}), "metadata": {**current["metadata"], "resourceVersion": new["metadata"].get("resourceVersion")}}
        if rtype.has_status:
            new = dict(new)
            if "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        return new

    async def _patch(self, request: web.Request, state: ClusterState, target: Target, user: rbac.User | None = None) -> web.Response:
        rtype = target.rtype
        content_type = request.content_type
        if content_type not in patching.PATCH_TYPES:
            raise ApiError.unsupported_media_type(", ".join(patching.PATCH_TYPES))
        body = await _read_body(request)
        namespace, name = target.namespace or "", target.name or ""
        manager = _field_manager(request)
        now = self._now(state)
        current_stored = state.get(rtype, namespace, name)
        current = current_stored.decode() if current_stored else None
        if content_type == patching.APPLY_PATCH:
            if not request.query.get("fieldManager"):
                raise ApiError.bad_request("PATCH with application/apply-patch+yaml requires the fieldManager parameter")
            config = _validate(rtype, body, namespace=target.namespace)
            if config["metadata"]["name"] != name:
                raise ApiError.bad_request(f"the name of the object ({config['metadata']['name']}) does not match the name on the URL ({name})")
            if target.subresource != "status" and rtype.has_status:
                config.pop("status", None)
            result = fieldmanager.apply(current, config, manager=manager, force=_bool_param(request, "force"), now=now)
            if current is None:
                self._authorize(request, user, state, target, verb="create")  # an apply that creates needs create too, as in Kubernetes
                stored = state.create(rtype, result)
                return self._object_response(request, rtype, stored.decode(), 201)
        else:
            if current is None:
                raise ApiError.not_found(rtype.plural, name, rtype.group)
            result = patching.apply_patch(content_type, current, body, custom_resource=rtype.custom)
            result = _validate(rtype, result, namespace=target.namespace)
            if result["metadata"]["name"] != name:
                raise ApiError.bad_request("a patch cannot change metadata.name")
            result = self._restrict_to_subresource(rtype, current, result, target.subresource)
            fieldmanager.record_update(current, result, manager=manager, now=now, subresource=target.subresource or "")
        requested_rv = result["metadata"].get("resourceVersion")
        expected = requested_rv if requested_rv and current and requested_rv != current["metadata"].get("resourceVersion") else None
        stored = state.update(rtype, result, expected_rv=expected)
        return self._object_response(request, rtype, stored.decode())

    async def _scale(self, request: web.Request, state: ClusterState, target: Target) -> web.Response:
        """The ``scale`` subresource (autoscaling/v1 Scale): reads and writes ``spec.replicas``."""
        rtype, namespace, name = target.rtype, target.namespace or "", target.name or ""
        current = state.read(rtype, namespace, name)
        if request.method in ("PUT", "PATCH"):
            body = await _read_body(request)
            scale = body if request.method == "PUT" else patching.apply_patch(request.content_type, self._scale_of(current), body, custom_resource=False)
            replicas = (scale.get("spec") or {}).get("replicas") if isinstance(scale, dict) else None
            if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
                raise ApiError.invalid("Scale", name, [("spec.replicas", "Invalid value: must be a non-negative integer")], "autoscaling")
            new = {**current, "spec": {**current["spec"], "replicas": replicas}}
            fieldmanager.record_update(current, new, manager=_field_manager(request), now=self._now(state), subresource="scale")
            expected = (scale.get("metadata") or {}).get("resourceVersion") if request.method == "PUT" else None
            current = state.update(rtype, new, expected_rv=expected or None).decode()
        return json_response(self._scale_of(current))

    @staticmethod
    def _scale_of(obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        match = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta},
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0), "selector": ",".join(f"{k}={v}" for k, v in match.items())},
        }

    async def _delete(self, request: web.Request, state: ClusterState, target: Target) -> web.Response:
        preconditions: dict[str, Any] = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    options = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise ApiError.bad_request("the DeleteOptions body is not valid JSON") from None
                preconditions = (options or {}).get("preconditions") or {} if isinstance(options, dict) else {}
        stored = state.delete(
            target.rtype,
            target.namespace or "",
            target.name or "",
            expected_rv=preconditions.get("resourceVersion"),
            expected_uid=preconditions.get("uid"),
        )
        return self._object_response(request, target.rtype, stored.decode())

    def _delete_collection(self, request: web.Request, state: ClusterState, target: Target) -> web.Response:
        rtype = target.rtype
        labels, fields = self._selectors(request, rtype)
        doomed = state.list(rtype, namespace=target.namespace, labels=labels, fields=fields).items
        deleted = [state.delete(rtype, o.namespace, o.name).raw for o in doomed if state.get(rtype, o.namespace, o.name)]
        head = orjson.dumps({"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": {"resourceVersion": str(state.rv)}})
        return web.Response(body=head[:-1] + b',"items":[' + b",".join(deleted) + b"]}", content_type=JSON)
