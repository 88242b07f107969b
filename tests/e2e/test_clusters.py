"""Clusters as first-class objects on the hub, end to end with real kubectl: ``kubectl get
clusters`` and ``-o yaml``; the clusters' own Kubernetes Events at ``/api/v1/events`` while
fleetsync's events moved to ``/apis/fleetsync.io/v1/fleetsyncevents``; NodeDown / NodeUp for a
push cluster from its synced Nodes; and deleting a cluster (objects gone, a fleet-wide watcher
sees them deleted, its agent's token refused)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    API_TOKEN,
    PKI,
    Hub,
    Sim,
    create_token,
    fleetsync,
    http,
    hub_events,
    hub_kubectl,
    hub_stream,
    label_cluster,
    run_sim,
    start_agent,
    start_hub,
    wait_converged,
    wait_until,
)

TYPES = "v1/Node,v1/Pod,v1/Event"
EVENT = {
    "apiVersion": "v1",
    "kind": "Event",
    "metadata": {"name": "web-1.scaled", "namespace": "default"},
    "involvedObject": {"kind": "Deployment", "name": "web-1", "namespace": "default"},
    "reason": "ScalingReplicaSet",
    "message": "Scaled up replica set web-1-abc to 3",
    "type": "Normal",
    "lastTimestamp": "2026-12-07T00:00:00Z",
    "source": {"component": "deployment-controller"},
}


@pytest.fixture(scope="module")
def small_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with run_sim(tmp_path_factory.mktemp("sim"), "--clusters", "2", "--pods", "10", "--no-istio", "--churn", "0") as sim:
        yield sim


def kubectl(hub: Hub, *args: str) -> str:
    done = subprocess.run([*hub_kubectl(hub.url), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def set_ready(sim: Sim, cluster: str, node: str, ready: bool) -> None:
    status = "True" if ready else "False"
    patch = json.dumps({"status": {"conditions": [{"type": "Ready", "status": status, "reason": "KubeletReady" if ready else "KubeletNotReady"}]}})
    sim.kubectl(cluster, "patch", "node", node, "--subresource=status", "--type=merge", "-p", patch)


def test_clusters_and_events_through_kubectl_and_node_events_for_a_push_cluster(tmp_path: Path, small_sim: Sim) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, tls=True)  # kubectl sends tokens over HTTPS only
    manifest = tmp_path / "event.json"
    manifest.write_text(json.dumps(EVENT))
    small_sim.kubectl("c1", "apply", "-f", str(manifest))
    label_cluster(hub.url, "c1", env="prod")
    agents = [start_agent(tmp_path, small_sim, c, hub.agent_url, create_token(tmp_path, db, c), "--types", TYPES) for c in ("c1", "c2")]
    try:
        wait_converged(small_sim, hub, "c1", "c2", types=TYPES, timeout=90, what="c1 and c2 synced")

        # kubectl get clusters: a Table with status, agent, heartbeat, lag, version, nodes, labels
        table = kubectl(hub, "get", "clusters")
        header, *rows = table.splitlines()
        for column in ("STATUS", "CONNECTED", "AGENT", "LAST HEARTBEAT", "SYNC LAG", "VERSION", "NODES", "LABELS"):
            assert column in header, table
        c1_row = next(r for r in rows if r.startswith("c1 "))
        nodes = len(small_sim.truth("c1", "v1/Node"))
        assert "active" in c1_row and "True" in c1_row and "env=prod" in c1_row and "fleetsync-sim" in c1_row and f" {nodes} " in c1_row, table
        assert any(r.startswith("c2 ") for r in rows), table

        # kubectl get cluster c1 -o yaml (as JSON, to read it here)
        c1 = json.loads(kubectl(hub, "get", "cluster", "c1", "-o", "json"))
        assert c1["apiVersion"] == "fleetsync.io/v1" and c1["kind"] == "Cluster" and c1["metadata"]["labels"] == {"env": "prod"}, c1
        status = c1["status"]
        assert status["kubernetesVersion"].startswith("v1.36.0") and status["nodeCount"] == nodes and status["connected"], status
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Connected"]["status"] == "True" and conditions["Connected"]["reason"] == "AgentConnected", conditions
        assert conditions["Synced"]["status"] == "True" and conditions["Available"]["status"] == "True", conditions
        assert all(c["lastTransitionTime"] for c in status["conditions"]), conditions
        assert "kind: Cluster" in kubectl(hub, "get", "cluster", "c1", "-o", "yaml")

        # the clusters' own Events at /api/v1/events: kubectl get events -A, fleet-wide and per cluster
        events = kubectl(hub, "get", "events", "-A")
        assert "ScalingReplicaSet" in events and "deployment/web-1" in events, events
        per_cluster = subprocess.run([*hub_kubectl(f"{hub.url}/clusters/c1"), "get", "ev", "-n", "default", "-o", "name"], capture_output=True, text=True)
        assert per_cluster.returncode == 0 and "event/web-1.scaled" in per_cluster.stdout, per_cluster.stderr

        # fleetsync's own events on their new path: kubectl, and the CLI
        assert "Connected" in kubectl(hub, "get", "fleetsyncevents")
        listed = fleetsync("events", "--hub", hub.url, "--certificate-authority", str(PKI.ca_file), "--cluster", "c1", "--token", API_TOKEN)
        assert listed.returncode == 0 and "Connected" in listed.stdout, listed.stderr

        # NodeDown / NodeUp for a push cluster, from its synced Nodes
        node = small_sim.truth("c1", "v1/Node")[0]["metadata"]["name"]
        set_ready(small_sim, "c1", node, False)
        down = wait_until(lambda: hub_events(hub, reason="NodeDown", cluster="c1"), timeout=30, what="NodeDown for a push cluster")
        assert node in down[0]["message"] and len(down) == 1, down
        set_ready(small_sim, "c1", node, True)
        up = wait_until(lambda: hub_events(hub, reason="NodeUp", cluster="c1"), timeout=30, what="NodeUp for a push cluster")
        assert node in up[0]["message"] and len(up) == 1, up
        assert not hub_events(hub, reason="NodeUp", cluster="c2"), "a cluster's first sync calls no node up"

        # kubectl delete cluster (an admin's token): kubectl waits until it is gone
        assert 'cluster.fleetsync.io "c2" deleted' in kubectl(hub, "delete", "cluster", "c2"), "kubectl delete"
        assert [c["metadata"]["name"] for c in json.loads(kubectl(hub, "get", "clusters", "-o", "json"))["items"]] == ["c1"]
    finally:
        for agent in agents:
            agent.stop()
        hub.proc.stop()


def test_deleting_a_cluster_removes_its_objects_for_watchers_and_refuses_its_agent(tmp_path: Path, small_sim: Sim) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    agents = {c: start_agent(tmp_path, small_sim, c, hub.agent_url, create_token(tmp_path, db, c), "--types", "v1/Pod") for c in ("c1", "c2")}
    seen: list[dict[str, Any]] = []
    try:
        wait_converged(small_sim, hub, "c1", "c2", types="v1/Pod", timeout=90, what="c1 and c2 synced")
        label_cluster(hub.url, "c1", env="old")
        pods = len(small_sim.truth("c1", "v1/Pod"))
        held = sum(next(c for c in http("GET", f"{hub.url}/api/v1/clusters")[1]["items"] if c["name"] == "c1")["objects"].values())
        rev = http("GET", f"{hub.url}/api/v1/pods?limit=1")[1]["metadata"]["resourceVersion"]

        def watch() -> None:
            with hub_stream(f"{hub.url}/api/v1/pods?watch=1&resourceVersion={rev}&timeoutSeconds=30", timeout=40) as response:
                for line in response:
                    seen.append(json.loads(line))

        clusters_seen: list[dict[str, Any]] = []

        def watch_clusters() -> None:
            with hub_stream(f"{hub.url}/apis/fleetsync.io/v1/clusters?watch=1&timeoutSeconds=30", timeout=40) as response:
                for line in response:
                    clusters_seen.append(json.loads(line))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        threading.Thread(target=watch_clusters, daemon=True).start()
        wait_until(lambda: len(clusters_seen) == 2, timeout=10, what="the clusters watch's ADDED events")
        assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in clusters_seen) == [("ADDED", "c1"), ("ADDED", "c2")], clusters_seen

        deleted = fleetsync("clusters", "delete", "c1", "--hub", hub.url, "--token", API_TOKEN)
        assert deleted.returncode == 0 and f"{held} object(s) removed" in deleted.stdout and "1 agent token(s) revoked" in deleted.stdout, deleted

        def gone_for_watcher() -> bool:
            return len([e for e in seen if e["type"] == "DELETED" and e["object"]["metadata"]["labels"]["fleetsync.io/cluster"] == "c1"]) == pods

        wait_until(gone_for_watcher, timeout=30, what="the fleet-wide watcher saw every pod of c1 deleted")
        listed = http("GET", f"{hub.url}/api/v1/pods")[1]["items"]
        assert listed and {p["metadata"]["labels"]["fleetsync.io/cluster"] for p in listed} == {"c2"}, "c2 keeps its objects"
        assert http("GET", f"{hub.url}/apis/fleetsync.io/v1/clusters/c1")[0] == 404
        assert http("GET", f"{hub.url}/api/v1/clusters/c1/labels")[0] == 404
        wait_until(
            lambda: ("DELETED", "c1") in [(e["type"], e["object"]["metadata"]["name"]) for e in clusters_seen],
            timeout=15,
            what="the clusters watch saw c1 deleted",
        )
        (record,) = hub_events(hub, reason="ClusterDeleted")
        assert record["cluster"] == "c1" and f"{held} object(s)" in record["message"], record

        # its agent was disconnected, and its old token is refused from now on
        wait_until(
            lambda: any("UNAUTHENTICATED" in e["message"] for e in hub_events(hub, reason="Rejected", cluster="c1")),
            timeout=30,
            what="c1's agent refused with its revoked token",
        )
        assert http("GET", f"{hub.url}/apis/fleetsync.io/v1/clusters/c1")[0] == 404, "the refused agent does not bring the cluster back"
        assert not [p for p in http("GET", f"{hub.url}/api/v1/pods")[1]["items"] if p["metadata"]["labels"]["fleetsync.io/cluster"] == "c1"]
        names = [c["metadata"]["name"] for c in http("GET", f"{hub.url}/apis/fleetsync.io/v1/clusters")[1]["items"]]
        assert names == ["c2"], names

        # a read token may not delete; an unknown cluster is a 404
        reader = create_token(tmp_path, db, "viewer", "read").read_text().strip()
        status, body = http("DELETE", f"{hub.url}/apis/fleetsync.io/v1/clusters/c2", headers={"Authorization": f"Bearer {reader}"})
        assert status == 403, body
        status, body = http("DELETE", f"{hub.url}/apis/fleetsync.io/v1/clusters/c1")
        assert status == 404 and body["reason"] == "NotFound", body
    finally:
        for agent in agents.values():
            agent.stop()
        hub.proc.stop()
