"""Unmodified kubectl against ``fleetsync sim``."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

from tests.harness import Sim, http, kubectl_binary, run_sim, wait_until

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  replicas: REPLICAS
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
"""


def test_get_pods_all_namespaces_lists_every_pod(sim: Sim) -> None:
    listed = json.loads(sim.kubectl("c1", "get", "pods", "-A", "-o", "json").stdout)["items"]
    truth = sim.truth("c1", "v1/Pod")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in listed) == sorted(
        (p["metadata"]["namespace"], p["metadata"]["name"]) for p in truth
    )
    table = sim.kubectl("c1", "get", "pods", "-A").stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert len(table) == len(truth) + 1


def test_chunked_list_pages_through_every_pod(sim: Sim) -> None:
    whole = sim.kubectl("c2", "get", "pods", "-A", "-o", "name").stdout.split()
    chunked = sim.kubectl("c2", "get", "pods", "-A", "-o", "name", "--chunk-size=50", "-v=6")
    assert chunked.stdout.split() == whole
    assert len(whole) > 100
    # kubectl really paged: it followed continue tokens
    assert "limit=50" in chunked.stderr and "continue=" in chunked.stderr


def test_get_watch_streams_changes_while_churning(quiet_sim: Sim) -> None:
    sim = quiet_sim
    watch = subprocess.Popen(
        [kubectl_binary(), "--kubeconfig", str(sim.kubeconfig("c3")), "get", "pods", "-A", "-w", "--output-watch-events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("ADDED" in line for line in lines), timeout=20, what="the initial pods")
        sim.set_churn(20)
        wait_until(lambda: any(line.split()[:1] in (["MODIFIED"], ["DELETED"]) for line in lines), timeout=20, what="a watch event from churn")
    finally:
        watch.terminate()
        watch.wait(timeout=10)
    assert lines[0].split()[:3] == ["EVENT", "NAMESPACE", "NAME"]


def test_server_side_apply_creates_updates_and_reports_conflicts(sim: Sim, tmp_path: Path) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(DEPLOYMENT.replace("REPLICAS", "2"))
    assert "serverside-applied" in sim.kubectl("c1", "apply", "--server-side", "-f", str(manifest)).stdout
    first = json.loads(sim.kubectl("c1", "get", "deploy", "web", "-n", "default", "-o", "json", "--show-managed-fields").stdout)
    assert first["spec"]["replicas"] == 2
    assert first["metadata"]["generation"] == 1
    managers = {m["manager"]: m["operation"] for m in first["metadata"]["managedFields"]}
    assert managers == {"kubectl": "Apply"}

    # applying the same config again is a no-op: no new resourceVersion
    sim.kubectl("c1", "apply", "--server-side", "-f", str(manifest))
    again = json.loads(sim.kubectl("c1", "get", "deploy", "web", "-n", "default", "-o", "json").stdout)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]

    manifest.write_text(DEPLOYMENT.replace("REPLICAS", "3"))
    sim.kubectl("c1", "apply", "--server-side", "-f", str(manifest))
    updated = json.loads(sim.kubectl("c1", "get", "deploy", "web", "-n", "default", "-o", "json").stdout)
    assert updated["spec"]["replicas"] == 3 and updated["metadata"]["generation"] == 2

    # another manager takes spec.replicas; applying a different value now conflicts
    sim.kubectl("c1", "scale", "deploy", "web", "-n", "default", "--replicas=5")
    manifest.write_text(DEPLOYMENT.replace("REPLICAS", "4"))
    conflict = sim.kubectl("c1", "apply", "--server-side", "-f", str(manifest), check=False)
    assert conflict.returncode != 0
    assert "conflict" in conflict.stderr.lower() and ".spec.replicas" in conflict.stderr
    sim.kubectl("c1", "apply", "--server-side", "--force-conflicts", "-f", str(manifest))
    forced = json.loads(sim.kubectl("c1", "get", "deploy", "web", "-n", "default", "-o", "json").stdout)
    assert forced["spec"]["replicas"] == 4

    # a field dropped from the applied config is removed
    manifest.write_text(DEPLOYMENT.replace("REPLICAS", "4").replace("  labels: {app: web}\n", "", 1))
    sim.kubectl("c1", "apply", "--server-side", "-f", str(manifest))
    pruned = json.loads(sim.kubectl("c1", "get", "deploy", "web", "-n", "default", "-o", "json").stdout)
    assert "labels" not in pruned["metadata"]

    sim.kubectl("c1", "delete", "-f", str(manifest))
    gone = sim.kubectl("c1", "get", "deploy", "web", "-n", "default", check=False)
    assert gone.returncode == 1 and 'deployments.apps "web" not found' in gone.stderr


def test_create_patch_and_delete_a_config_map(sim: Sim, tmp_path: Path) -> None:
    manifest = tmp_path / "cm.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "default"}, "data": {"a": "1"}}))
    sim.kubectl("c2", "create", "-f", str(manifest))
    sim.kubectl("c2", "patch", "configmap", "settings", "-n", "default", "-p", '{"data":{"b":"2"}}')
    data = json.loads(sim.kubectl("c2", "get", "cm", "settings", "-n", "default", "-o", "json").stdout)["data"]
    assert data == {"a": "1", "b": "2"}
    sim.kubectl("c2", "patch", "configmap", "settings", "-n", "default", "--type=json", "-p", '[{"op":"remove","path":"/data/a"}]')
    data = json.loads(sim.kubectl("c2", "get", "cm", "settings", "-n", "default", "-o", "json").stdout)["data"]
    assert data == {"b": "2"}
    sim.kubectl("c2", "delete", "configmap", "settings", "-n", "default")
    assert sim.kubectl("c2", "get", "cm", "settings", "-n", "default", check=False).returncode == 1


def test_selectors_and_custom_resources(sim: Sim) -> None:
    running = sim.kubectl("c3", "get", "pods", "-A", "--field-selector=status.phase=Running", "-o", "name").stdout.split()
    assert len(running) == len(sim.truth("c3", "v1/Pod"))
    istiod = sim.kubectl("c3", "get", "pods", "-A", "-l", "app=istiod", "-o", "name").stdout.split()
    assert len(istiod) == 1
    bad = sim.kubectl("c3", "get", "pods", "-l", "app in (x", check=False)
    assert bad.returncode == 1 and "unable to parse requirement" in bad.stderr
    unsupported = sim.kubectl("c3", "get", "pods", "--field-selector=spec.bogus=1", check=False)
    assert 'field label not supported: "spec.bogus"' in unsupported.stderr
    virtual_services = sim.kubectl("c3", "get", "virtualservices.networking.istio.io", "-A", "-o", "name").stdout.split()
    assert len(virtual_services) == len(sim.truth("c3", "networking.istio.io/v1/VirtualService")) > 0
    assert "wasmplugins.extensions.istio.io" in sim.kubectl("c3", "get", "crd", "-o", "name").stdout


def test_errors_are_kubernetes_status_objects(sim: Sim) -> None:
    base = sim.cluster_url("c1")
    status, body = http("GET", f"{base}/api/v1/namespaces/default/pods/nope")
    assert (status, body["kind"], body["reason"], body["code"]) == (404, "Status", "NotFound", 404)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dup", "namespace": "default"}}
    assert http("POST", f"{base}/api/v1/namespaces/default/configmaps", cm)[0] == 201
    status, body = http("POST", f"{base}/api/v1/namespaces/default/configmaps", cm)
    assert (status, body["reason"]) == (409, "AlreadyExists")
    status, body = http("PUT", f"{base}/api/v1/namespaces/default/configmaps/dup", {**cm, "metadata": {**cm["metadata"], "resourceVersion": "1"}})
    assert (status, body["reason"]) == (409, "Conflict")
    status, body = http("POST", f"{base}/api/v1/namespaces/default/configmaps", {**cm, "metadata": {"name": "Not_Valid"}})
    assert (status, body["reason"]) == (422, "Invalid") and "metadata.name" in body["message"]
    status, body = http("POST", f"{base}/api/v1/namespaces/default/configmaps", b"{not json")
    assert (status, body["reason"]) == (400, "BadRequest")
    status, body = http("GET", f"{base}/api/v1/pods?limit=x")
    assert status == 400 and "limit" in body["message"]
    status, body = http("GET", f"{base}/api/v1/pods", headers={"Authorization": "Bearer wrong"})
    assert (status, body["reason"]) == (401, "Unauthorized")
    status, body = http("GET", f"{sim.url}/clusters/nowhere/api/v1/pods")
    assert status == 404 and "nowhere" in body["message"]
    status, body = http("PUT", f"{sim.url}/churn", {"rate": -1})
    assert status == 400 and "rate" in body["message"]


def test_watch_from_an_expired_version_gets_410_gone(tmp_path: Path) -> None:
    with run_sim(tmp_path, "--clusters", "1", "--pods", "20", "--watch-history", "30", "--churn", "50") as sim:
        wait_until(lambda: sim.churn_operations() > 40, timeout=20, what="churn to roll the history over")
        status, body = http("GET", f"{sim.cluster_url('c1')}/api/v1/pods?watch=1&resourceVersion=1&timeoutSeconds=1")
        event = json.loads(body) if isinstance(body, str) else body
        assert status == 200 and event["type"] == "ERROR"
        assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
        status, body = http("GET", f"{sim.cluster_url('c1')}/api/v1/pods?limit=5&resourceVersion=1&resourceVersionMatch=Exact")
        assert (status, body["reason"]) == (410, "Expired")


def test_deleting_a_namespace_deletes_its_objects_and_churn_carries_on(tmp_path: Path) -> None:
    with run_sim(tmp_path, "--clusters", "1", "--pods", "40", "--namespaces", "2", "--churn", "20") as sim:
        sim.kubectl("c1", "delete", "namespace", "ns-0")
        assert sim.kubectl("c1", "get", "pods", "-n", "ns-0", "-o", "name").stdout.strip() == ""
        assert all(p["metadata"]["namespace"] != "ns-0" for p in sim.truth("c1", "v1/Pod"))
        before = sim.churn_operations()
        wait_until(lambda: sim.churn_operations() > before + 50, timeout=20, what="churn to continue in the other namespace")
        assert sim.process.poll() is None
