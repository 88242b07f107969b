"""Least privilege, proven: the agent runs with exactly the RBAC the project ships (deploy/base/agent,
and the opt-in deploy/components/agent-works), against a simulated cluster that enforces it.

c1's agent has the works component, c2's only the read-only role. Both sync; c1 applies a work of
allowed kinds; c2 reports it forbidden; a kind outside the works role (allowed by the agent's own
--works-allow-kinds) is refused by the cluster. Each refusal names the verb and resource, in the
agent's log and in the work's status on the hub. The agents find their kubeconfig as kubectl does
($KUBECONFIG, ~/.kube/config); with none, the agent exits at once with one line."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetsync.agent.kube import KubeconfigError, api_client, find_kubeconfig
from fleetsync.cli.agent import DEFAULT_TYPES
from fleetsync.model.types import TypeRegistry
from fleetsync.model.workpolicy import DEFAULT_KINDS
from fleetsync.sim.kubeconfig import kubeconfig
from tests.harness import (
    BIN,
    Hub,
    Proc,
    Sim,
    create_token,
    fleetsync,
    http,
    kubectl_binary,
    run_sim,
    spawn,
    start_hub,
    wait_converged,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RBAC_KINDS = {"ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
AGENT = 'User "system:serviceaccount:fleetsync:fleetsync-agent"'
WORKS = "/api/v1/works"


def render(tmp: Path, *, works: bool) -> list[dict[str, Any]]:
    """The shipped agent manifests as ``kubectl kustomize`` renders them: the base, or an overlay
    of it with the works component (written in ``tmp``, referring to the checkout's deploy/)."""
    target = DEPLOY / "base" / "agent"
    if works:
        target = tmp / "agent-with-works"
        target.mkdir(exist_ok=True)
        deploy = os.path.relpath(DEPLOY, target)  # (kustomize takes no absolute paths)
        (target / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [f"{deploy}/base/agent"], "components": [f"{deploy}/components/agent-works"]}))
    result = subprocess.run([kubectl_binary(), "kustomize", str(target)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def agent_identity(sim: Sim, cluster: str, tmp: Path, *, works: bool) -> str:
    """Apply the rendered RBAC objects to ``cluster`` (as its admin) and get a token for the agent's
    ServiceAccount as a user would (``kubectl create token``); the token."""
    documents = render(tmp, works=works)
    rbac = [d for d in documents if d["kind"] in RBAC_KINDS]
    assert {d["kind"] for d in rbac} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "fleetsync-agent"
    path = tmp / f"{cluster}-rbac.yaml"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fleetsync"}}
    path.write_text(yaml.safe_dump_all([namespace, *rbac]))
    sim.kubectl(cluster, "apply", "-f", str(path))
    return sim.kubectl(cluster, "create", "token", "fleetsync-agent", "-n", "fleetsync").stdout.strip()


def start_agent(tmp: Path, cluster: str, hub: Hub, env: dict[str, str], *extra: str) -> Proc:
    """An agent with no --kubeconfig: it finds one in ``env`` (``KUBECONFIG`` or ``HOME``) as kubectl would."""
    token = create_token(tmp, hub.db, cluster)
    inherited = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return spawn(
        tmp, f"agent-{cluster}", "agent", "--cluster-id", cluster, "--hub", hub.agent_url, "--token-file", str(token), *extra, env={**inherited, **env}
    )


def manifests(hub: Hub, work: str, cluster: str) -> dict[str, dict[str, Any]]:
    status, body = http("GET", f"{hub.url}{WORKS}/{work}")
    assert status == 200, body
    found = [c for c in body["status"]["clusters"] if c["cluster"] == cluster]
    return {m["manifest"]: m for m in found[0]["manifests"]} if found else {}


def config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"color": "blue"}}


def work(name: str, *items: dict[str, Any], clusters: tuple[str, ...]) -> dict[str, Any]:
    return {
        "apiVersion": "fleetsync.io/v1",
        "kind": "Work",
        "metadata": {"name": name},
        "spec": {"placement": {"clusters": list(clusters)}, "manifests": list(items)},
    }


@pytest.fixture(scope="module")
def rbac_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with run_sim(tmp_path_factory.mktemp("sim"), "--clusters", "2", "--pods", "20", "--bookmark-interval", "0.5") as s:
        yield s


def test_the_agent_syncs_and_applies_works_with_exactly_the_shipped_roles_and_is_refused_outside_them(rbac_sim: Sim, tmp_path: Path) -> None:
    sim = rbac_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    agents: list[Proc] = []
    try:
        # c1: the base and the works component, its kubeconfig in $KUBECONFIG; its agent lets works
        # apply VirtualServices, which the works role does not grant. c2: the read-only base, its
        # kubeconfig in ~/.kube/config.
        c1 = tmp_path / "c1-agent.kubeconfig"
        c1.write_text(kubeconfig("c1", sim.cluster_url("c1"), agent_identity(sim, "c1", tmp_path, works=True)))
        home = tmp_path / "home"
        (home / ".kube").mkdir(parents=True)
        (home / ".kube" / "config").write_text(kubeconfig("c2", sim.cluster_url("c2"), agent_identity(sim, "c2", tmp_path, works=False)))
        agents.append(start_agent(tmp_path, "c1", hub, {"KUBECONFIG": str(c1)}, "--works-allow-kinds", "default,networking.istio.io/VirtualService"))
        agents.append(start_agent(tmp_path, "c2", hub, {"HOME": str(home)}))

        # both sync everything they sync by default (Services, EndpointSlices, Pods, Istio's types, the IstioMesh)
        wait_converged(sim, hub, "c1", "c2", timeout=60, what="both clusters to converge with the shipped read-only role")

        def synced() -> list[dict[str, Any]]:
            status, body = http("GET", f"{hub.url}/api/v1/clusters")
            assert status == 200, body
            return [c for c in body["items"] if c["objects"].get("v1/Pod", 0) > 0 and c["objects"].get("mesh.fleetsync.io/v1/IstioMesh") == 1]

        clusters = wait_until(lambda: len(synced()) == 2 and synced(), timeout=30, what="both clusters' pods and IstioMesh (Istio detection) on the hub")
        assert all(c["errors"] == {} and "v1/Service" in c["types"] for c in clusters), clusters
        for agent in agents:
            assert "forbidden" not in agent.output(), agent.output()[-3000:]

        # works: allowed kinds apply on c1 and are refused by c2's cluster, naming the verb and resource
        virtual_service = {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]},
        }
        path = tmp_path / "works.yaml"
        path.write_text(yaml.safe_dump_all([work("web", config_map("web"), clusters=("c1", "c2")), work("mesh", virtual_service, clusters=("c1",))]))
        result = fleetsync("works", "apply", "-f", str(path), "--hub", hub.url, "--wait", "applied", "--timeout", "30")
        assert result.returncode == 1, result.stdout + result.stderr  # some failed: c2's web, c1's mesh

        web_c1 = manifests(hub, "web", "c1")["v1/ConfigMap/default/web"]
        assert web_c1["condition"] == "Available", web_c1
        assert sim.truth("c1", "v1/ConfigMap") and any(o["metadata"]["name"] == "web" for o in sim.truth("c1", "v1/ConfigMap"))
        web_c2 = manifests(hub, "web", "c2")["v1/ConfigMap/default/web"]
        assert web_c2["condition"] == "Failed", web_c2
        assert f'403 configmaps is forbidden: {AGENT} cannot list resource "configmaps" in API group "" at the cluster scope' in web_c2["message"], web_c2
        assert not any(o["metadata"]["name"] == "web" for o in sim.truth("c2", "v1/ConfigMap"))
        mesh_c1 = manifests(hub, "mesh", "c1")["networking.istio.io/v1/VirtualService/default/web"]
        assert mesh_c1["condition"] == "Failed", mesh_c1
        expected = 'cannot patch resource "virtualservices" in API group "networking.istio.io" in the namespace "default"'
        assert f'403 virtualservices.networking.istio.io "web" is forbidden: {AGENT} {expected}' in mesh_c1["message"], mesh_c1

        # the same words in the agents' logs, once, and no traceback
        wait_until(lambda: web_c2["message"] in agents[1].output(), timeout=10, what="c2's agent to log the refusal")
        wait_until(lambda: expected in agents[0].output(), timeout=10, what="c1's agent to log the refusal")
        for agent in agents:
            assert "Traceback" not in agent.output(), agent.output()[-3000:]

        # still syncing after all that (read-only c2 included)
        wait_converged(sim, hub, "c1", "c2", timeout=30, what="both clusters to stay converged")
    finally:
        for agent in agents:
            agent.stop()
        hub.proc.stop()


def test_an_agent_with_no_kubeconfig_anywhere_says_what_it_tried_in_one_line(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x" * 32)
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")} | {"HOME": str(tmp_path)}
    argv = [str(BIN / "fleetsync"), "agent", "--cluster-id", "c1", "--hub", "grpc://127.0.0.1:1", "--token-file", str(token)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"fleetsync agent: no Kubernetes API to talk to: no --kubeconfig, $KUBECONFIG not set, no {tmp_path}/.kube/config, and not in a pod "
        "(KUBERNETES_SERVICE_HOST unset or no /var/run/secrets/kubernetes.io/serviceaccount/token); give --kubeconfig FILE"
    ]


def test_the_kubeconfig_is_found_as_kubectl_finds_it(tmp_path: Path) -> None:
    """--kubeconfig, else $KUBECONFIG (a list), else ~/.kube/config, else a pod's service account."""
    home, token = tmp_path / "home", tmp_path / "sa-token"
    (home / ".kube").mkdir(parents=True)
    flag, listed = tmp_path / "flag.kubeconfig", tmp_path / "listed.kubeconfig"
    for path in (flag, listed, home / ".kube" / "config", token):
        path.write_text(kubeconfig("c1", "http://127.0.0.1:1/clusters/c1", "t"))
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    both = f"{tmp_path / 'absent'}:{listed}"
    assert find_kubeconfig(str(flag), environ={"KUBECONFIG": str(listed)}, home=home) == str(flag)
    assert find_kubeconfig(None, environ={"KUBECONFIG": both}, home=home) == both
    assert find_kubeconfig(None, environ=pod, home=home) == str(home / ".kube" / "config")
    assert find_kubeconfig(None, environ=pod, home=tmp_path, in_cluster_token=token) is None
    for flag_given, environ, said in (
        (str(tmp_path / "nope"), {}, "--kubeconfig"),
        (None, {"KUBECONFIG": str(tmp_path / "nope")}, "$KUBECONFIG"),
        (None, pod, "no Kubernetes API to talk to"),  # a pod without its token mounted
    ):
        with pytest.raises(KubeconfigError, match=re.escape(said)):
            find_kubeconfig(flag_given, environ=environ, home=tmp_path, in_cluster_token=tmp_path / "absent")
    (tmp_path / "broken.kubeconfig").write_text("apiVersion: v1\n")
    with pytest.raises(KubeconfigError, match=re.escape("broken.kubeconfig: Invalid kube-config file. Expected key current-context")):
        asyncio.run(api_client(str(tmp_path / "broken.kubeconfig")))


def _granted(role: dict[str, Any], verbs: set[str]) -> set[tuple[str, str]]:
    """(group, resource) of every rule of ``role`` granting all of ``verbs``."""
    return {
        (g, r) for rule in role["rules"] if verbs <= set(rule["verbs"]) and not rule.get("resourceNames") for g in rule["apiGroups"] for r in rule["resources"]
    }


def _plural(kind: str) -> str:
    lowered = kind.lower()
    return lowered + "es" if lowered.endswith("s") else lowered[:-1] + "ies" if lowered.endswith("y") else lowered + "s"


def test_the_shipped_roles_grant_exactly_the_default_types_and_works_kinds(tmp_path: Path) -> None:
    """The roles follow the agent's defaults (--types, --works-allow-kinds default): a default changed
    without its role fails here. The pod runs hardened, probed on the metrics port."""
    documents = render(tmp_path, works=True)
    roles = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ClusterRole"}
    default_types = {(t.group, t.plural) for t in map(TypeRegistry().resolve, DEFAULT_TYPES.split(","))}
    read = roles["fleetsync-agent-read"]
    assert _granted(read, {"get", "list", "watch"}) == default_types
    everything_read = {(g, r) for rule in read["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert everything_read - default_types == {
        ("apps", "deployments"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("", "configmaps"),
        ("", "nodes"),
    }
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in read["rules"]), "read-only"
    works = roles["fleetsync-agent-works"]
    allowed = {("" if group == "core" else group, _plural(kind)) for group, _, kind in (k.partition("/") for k in DEFAULT_KINDS)}
    assert _granted(works, {"get", "list", "watch", "create", "update", "patch", "delete"}) == allowed
    assert {(g, r) for rule in works["rules"] for g in rule["apiGroups"] for r in rule["resources"]} == allowed, "nothing beyond the allow-list"
    bindings = [d for d in documents if d["kind"] == "ClusterRoleBinding"]
    assert {b["roleRef"]["name"] for b in bindings} == set(roles)
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": "fleetsync-agent", "namespace": "fleetsync"}] for b in bindings)

    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True and hardened["capabilities"] == {"drop": ["ALL"]} and hardened["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"name": "FLEETSYNC_METRICS", "value": ":9090"} in container["env"] and container["ports"] == [{"name": "metrics", "containerPort": 9090}]
