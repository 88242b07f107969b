"""The Kustomize manifests under deploy/: every overlay renders with kubectl alone and applies
to a simulated cluster; the hub's pods are locked down and probed on what the hub serves;
every variable a pod is given is a flag of its command; the Grafana dashboard asks only for metrics a
running hub exports.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import BIN, Sim, http, kubectl_binary, start_hub

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
#: Every kustomization a user applies (the bases are reached through them).
APPLIED = [*sorted(str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.glob("overlays/*/kustomization.yaml")), "monitoring"]
HUB_OVERLAYS = ("overlays/hub-sqlite", "overlays/hub-postgres")
#: Where the manifests are applied: a cluster of the module's sim.
CLUSTER = "c3"


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize deploy/OVERLAY``: the objects, as a user's ``kubectl apply -k`` gets them."""
    result = subprocess.run([kubectl_binary(), "kustomize", str(DEPLOY / overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize deploy/{overlay} failed: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def the(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def served(sim: Sim, api_version: str, kind: str) -> bool:
    """Whether the sim cluster serves ``kind`` of ``api_version`` (its discovery says so)."""
    path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    result = sim.kubectl(CLUSTER, "get", "--raw", path, check=False)
    return result.returncode == 0 and any(r.get("kind") == kind for r in json.loads(result.stdout).get("resources", ()))


def stand_in_crd(api_version: str, kind: str, *, namespaced: bool) -> dict[str, Any]:
    """A CustomResourceDefinition serving ``kind`` (as the Prometheus Operator installs
    ServiceMonitor's), for a kind the sim does not serve itself; any object is accepted."""
    group, _, version = api_version.rpartition("/")
    singular = kind.lower()
    plural = singular[:-1] + "ies" if singular.endswith("y") else singular + ("es" if singular.endswith("s") else "s")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced" if namespaced else "Cluster",
            "names": {"kind": kind, "plural": plural, "singular": singular, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


def kubectl_on(sim: Sim, objects: list[dict[str, Any]] | tuple[dict[str, Any], ...], *verb: str) -> subprocess.CompletedProcess[str]:
    """kubectl VERB (default: apply) of ``objects`` in the sim's cluster, given on stdin."""
    document = "\n---\n".join(yaml.safe_dump(o) for o in objects)
    return subprocess.run(
        [kubectl_binary(), "--kubeconfig", str(sim.kubeconfig(CLUSTER)), *(verb or ("apply", "-f", "-"))],
        input=document,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("overlay", APPLIED)
def test_overlay_renders_and_applies_to_a_sim_cluster(overlay: str, sim: Sim) -> None:
    objects = render(overlay)
    assert objects, f"deploy/{overlay} renders nothing"
    # Kinds outside the sim's built-in set come as CRDs, as on a real cluster (ServiceMonitor
    # from the Prometheus Operator); a core kind the sim lacks is a gap of the sim, not faked.
    kinds = {(o["apiVersion"], o["kind"]) for o in objects}
    missing = [(v, k) for v, k in sorted(kinds) if not served(sim, v, k)]
    core = [k for v, k in missing if "/" not in v]
    assert not core, f"the sim does not serve the core kinds {core} (a CRD cannot stand in for them)"
    if missing:
        namespaced = {o["kind"] for o in objects if o["metadata"].get("namespace")}
        created = kubectl_on(sim, [stand_in_crd(v, k, namespaced=k in namespaced) for v, k in missing])
        assert created.returncode == 0, created.stderr

    applied = kubectl_on(sim, objects)
    assert applied.returncode == 0, f"kubectl apply of deploy/{overlay} failed: {applied.stderr}"
    got = kubectl_on(sim, objects, "get", "-f", "-", "-o", "json")
    assert got.returncode == 0, got.stderr
    items = json.loads(got.stdout)
    items = items.get("items", [items])
    assert {(i["kind"], i["metadata"].get("namespace"), i["metadata"]["name"]) for i in items} == {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects
    }
    workload = next((i for i in items if i["kind"] in ("StatefulSet", "Deployment")), None)
    if workload is not None and overlay in HUB_OVERLAYS:
        assert workload["spec"]["template"]["spec"]["containers"][0]["image"] == "localhost/fleetsync:0.1.0", "not the image make image tags"


@pytest.mark.parametrize("overlay", HUB_OVERLAYS)
def test_hub_pods_are_locked_down_sized_and_probed(overlay: str) -> None:
    objects = render(overlay)
    workload = the(objects, "StatefulSet" if overlay.endswith("sqlite") else "Deployment")
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False, "the hub never calls the Kubernetes API"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez" and container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert set(container["resources"]["requests"]) == {"cpu", "memory"} and set(container["resources"]["limits"]) == {"cpu", "memory"}
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    env = {e["name"]: e for e in container["env"]}
    if overlay.endswith("sqlite"):
        assert workload["spec"]["replicas"] == 1, "SQLite is one hub's store"
        assert [t["metadata"]["name"] for t in workload["spec"]["volumeClaimTemplates"]] == ["data"]
        assert writable == {"/tmp", "/var/lib/fleetsync"} and env["FLEETSYNC_DB"]["value"].startswith("sqlite:////var/lib/fleetsync/")
    else:
        assert workload["spec"]["replicas"] >= 2
        assert writable == {"/tmp"}
        assert env["FLEETSYNC_DB"]["valueFrom"]["secretKeyRef"] == {"name": "fleetsync-hub-db", "key": "dsn"}
    policy = the(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    service = the(objects, "Service")
    assert {p["name"] for p in service["spec"]["ports"]} == {p["name"] for p in container["ports"]} == {"grpc", "http"}


@pytest.mark.parametrize(("overlay", "command"), [*((o, "hub") for o in HUB_OVERLAYS), ("overlays/agent", "agent"), ("overlays/agent-works", "agent")])
def test_every_variable_a_pod_is_given_is_a_flag(overlay: str, command: str) -> None:
    objects = render(overlay)
    (workload,) = (o for o in objects if o["kind"] in ("StatefulSet", "Deployment"))
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [command]
    config = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    names = {e["name"] for e in container.get("env", ())}
    for ref in container.get("envFrom", ()):
        names |= set(config[ref["configMapRef"]["name"]]["data"])
    assert names - flag_variables(command) == set(), f"variables that name no flag of fleetsync {command} (a typo is silently ignored)"


@cache
def flag_variables(command: str) -> frozenset[str]:
    """The FLEETSYNC_* variables ``fleetsync COMMAND --help`` names."""
    result = subprocess.run([str(BIN / "fleetsync"), command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return frozenset(re.findall(r"\[env\s+(FLEETSYNC_[A-Z0-9_]+)\]", result.stdout))


@pytest.mark.parametrize("overlay", HUB_OVERLAYS)
def test_the_service_monitor_scrapes_the_hub_service(overlay: str) -> None:
    monitor = the(render("monitoring"), "ServiceMonitor")
    service = the(render(overlay), "Service")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics" and endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"


#: PromQL groupings: the label names in them are not metric names.
PROMQL_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, labels, durations or strings)."""
    stripped = re.sub(r'"[^"]*"', "", expr)
    stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", stripped)
    stripped = PROMQL_GROUPING.sub("", stripped)
    words = {m.group() for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", stripped) if not stripped[m.end() :].lstrip().startswith("(")}
    return words - {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}


def exported_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition offers: its samples, and for each declared
    metric the names its type makes (a labelled metric has no sample before its first use)."""
    names = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and not line.startswith("#")}
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("", "_sum", "_count")}
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        base, kind = match.group(1), match.group(2)
        names |= {base.removesuffix("_total") + s for s in suffixes.get(kind, ("",))} | {base}
    return names


def test_dashboard_asks_only_for_metrics_the_hub_exports(tmp_path: Path) -> None:
    dashboard_map = the(render("monitoring"), "ConfigMap")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (dashboard_json,) = dashboard_map["data"].values()
    dashboard = json.loads(dashboard_json)
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = set().union(*map(metric_names, queries)) | {m for v in variables for m in re.findall(r"label_values\((\w+)", v)}
    assert len(queries) >= 20 and len(used) >= 15, f"the dashboard reads too little to be of use: {sorted(used)}"

    hub = start_hub(tmp_path, f"sqlite:///{tmp_path}/hub.db")
    try:
        assert http("GET", f"{hub.url}/livez")[0] == 200 and http("GET", f"{hub.url}/readyz")[0] == 200, "the probes' paths"
        status, exposition = http("GET", f"{hub.url}/metrics")
        assert status == 200, exposition
    finally:
        hub.proc.stop()
    unknown = used - exported_names(str(exposition))
    assert not unknown, f"the dashboard queries metrics the hub does not export: {sorted(unknown)}"
