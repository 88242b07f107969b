"""The mesh's service graph end to end: the simulator exports Istio metrics for its services, a
real Prometheus scrapes them, each agent queries it for its cluster's edges and syncs them, and
the hub serves them merged (``/api/v1/servicegraph``, ``fleetsync servicegraph``). A Prometheus
that stops answering is reported and changes nothing else."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetsync.testing.proxy import PartitionProxy
from tests.harness import Hub, Proc, Prometheus, Sim, create_token, fleetsync, http, run_sim, start_agent, start_hub, start_prometheus, wait_until

CLUSTERS = ("c1", "c2")


@dataclass
class Mesh:
    sim: Sim
    prometheus: Prometheus
    proxy: PartitionProxy
    hub: Hub
    agents: dict[str, Proc]

    def graph(self, **query: str) -> dict[str, Any]:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        status, body = http("GET", f"{self.hub.url}/api/v1/servicegraph?{params}")
        assert status == 200, body
        return dict(body)

    def traffic(self, cluster: str) -> dict[tuple[str, str], dict[str, Any]]:
        """The edges the simulator configured: (source service, destination service) -> figures."""
        status, body = http("GET", f"{self.sim.url}/clusters/{cluster}/mesh-traffic")
        assert status == 200, body
        return {(e["source"]["service"], e["destination"]["service"]): e for e in body["edges"]}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mesh")
    with run_sim(tmp, "--clusters", "2", "--pods", "40", "--churn", "0") as sim:
        prometheus = start_prometheus(tmp, {c: f"{sim.url}/clusters/{c}/metrics" for c in CLUSTERS})
        proxy = PartitionProxy(("127.0.0.1", prometheus.port)).start()
        db = f"sqlite:///{tmp / 'hub.db'}"
        hub = start_hub(tmp, db)
        provider = ("--prometheus", f"http://127.0.0.1:{proxy.port}", "--prometheus-window", "15s", "--prometheus-interval", "1s", "--prometheus-timeout", "1s")
        agents = {c: start_agent(tmp, sim, c, hub.agent_url, create_token(tmp, db, c), "--types", "v1/Service", *provider) for c in CLUSTERS}
        try:
            yield Mesh(sim, prometheus, proxy, hub, agents)
        finally:
            for agent in agents.values():
                agent.stop()
            hub.proc.stop()
            proxy.stop()
            prometheus.stop()


def test_the_hub_serves_each_clusters_edges_as_prometheus_measured_them(mesh: Mesh) -> None:
    def complete() -> bool:
        graph = mesh.graph()
        edges = {(e["source"]["service"], e["destination"]["service"]) for e in graph["edges"]}
        return all(set(mesh.traffic(c)) <= edges for c in CLUSTERS) and graph["errors"] == {}

    wait_until(complete, timeout=60, interval=0.5, what="every configured edge of both clusters in the hub's service graph")
    # the rates settle once Prometheus holds the whole 30 s window
    configured = mesh.traffic("c1")

    def close_to_configured() -> bool:
        served = {(e["source"]["service"], e["destination"]["service"]): e for e in mesh.graph(cluster="c1")["edges"]}
        return all(abs(served[k]["requestRate"] - v["requestsPerSecond"]) <= 0.1 * v["requestsPerSecond"] for k, v in configured.items())

    wait_until(close_to_configured, timeout=60, interval=1, what="c1's request rates within 10% of the simulator's")
    served = {(e["source"]["service"], e["destination"]["service"]): e for e in mesh.graph(cluster="c1")["edges"]}
    for key, want in configured.items():
        got = served[key]
        assert got["clusters"] == ["c1"]
        assert got["errorRate"] == pytest.approx(want["errorRatio"], abs=0.03), key
        assert got["latencyMs"]["p50"] == pytest.approx(want["histogramQuantileMs"]["p50"], rel=0.1), key
        assert got["latencyMs"]["p99"] == pytest.approx(want["histogramQuantileMs"]["p99"], rel=0.1), key
        assert got["collectedAt"].endswith("Z")
    # filters: one cluster, one namespace
    namespace = next(iter(configured.values()))["destination"]["namespace"]
    only = mesh.graph(cluster="c1", namespace=namespace)
    assert only["edges"] and all(namespace in (e["source"]["namespace"], e["destination"]["namespace"]) for e in only["edges"])
    assert {n["service"] for n in only["nodes"]} >= {e["destination"]["service"] for e in only["edges"]}
    assert http("GET", f"{mesh.hub.url}/api/v1/servicegraph?cluster=nope")[0] == 404
    assert http("GET", f"{mesh.hub.url}/api/v1/servicegraph?cluster=a/b")[0] == 400
    # the CLI prints the same edges
    printed = fleetsync("servicegraph", "--cluster", "c1", "--hub", mesh.hub.url)
    assert printed.returncode == 0 and printed.stdout.splitlines()[0].split() == ["SOURCE", "DESTINATION", "CLUSTERS", "RPS", "ERRORS", "P50", "P90", "P99"]
    assert len(printed.stdout.splitlines()) == len(configured) + 1
    # the edges are objects of the hub like any others, listed per cluster through the Kubernetes API
    status, body = http("GET", f"{mesh.hub.url}/clusters/c1/apis/metrics.fleetsync.io/v1/serviceedges")
    assert status == 200 and len(body["items"]) == len(configured)


def test_an_edge_in_two_clusters_is_one_edge_with_their_traffic_added(mesh: Mesh) -> None:
    shared = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shared", "labels": {"istio-injection": "enabled"}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "checkout", "namespace": "shared"}, "spec": {"ports": [{"port": 80}]}},
        ],
    }
    for cluster in CLUSTERS:  # the same service in both clusters: the gateway of each calls it
        created = subprocess.run(
            [*mesh_kubectl(mesh, cluster), "create", "--validate=false", "-f", "-"],
            input=json.dumps(shared),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert created.returncode == 0, created.stderr
    key = ("istio-ingressgateway", "checkout")
    configured = sum(mesh.traffic(c)[key]["requestsPerSecond"] for c in CLUSTERS)

    def merged() -> dict[str, Any] | None:
        return next((e for e in mesh.graph(namespace="shared")["edges"] if (e["source"]["service"], e["destination"]["service"]) == key), None)

    wait_until(lambda: (e := merged()) is not None and e["clusters"] == list(CLUSTERS), timeout=60, interval=0.5, what="the shared edge from both clusters")
    wait_until(lambda: abs((merged() or {"requestRate": 0})["requestRate"] - configured) <= 0.1 * configured, timeout=60, interval=1, what="the rates added")
    one = next(e for e in mesh.graph(cluster="c1", namespace="shared")["edges"] if (e["source"]["service"], e["destination"]["service"]) == key)
    assert one["clusters"] == ["c1"] and one["requestRate"] < (merged() or {"requestRate": 0})["requestRate"]


def test_a_prometheus_that_stops_answering_is_reported_and_state_sync_goes_on(mesh: Mesh) -> None:
    wait_until(lambda: mesh.graph(cluster="c2")["edges"], timeout=60, interval=0.5, what="c2's edges")
    before = len(mesh.graph(cluster="c2")["edges"])
    mesh.proxy.partition()
    try:
        wait_until(lambda: "c2" in mesh.graph()["errors"], timeout=30, interval=0.5, what="the provider's failure reported")
        graph = mesh.graph()
        assert "prometheus http://127.0.0.1" in graph["errors"]["c2"] and "1s" in graph["errors"]["c2"], graph["errors"]
        assert len(mesh.graph(cluster="c2")["edges"]) == before, "the last collected edges stay"
        (cluster,) = [c for c in http("GET", f"{mesh.hub.url}/api/v1/clusters")[1]["items"] if c["name"] == "c2"]
        assert set(cluster["errors"]) == {"metrics.fleetsync.io/v1/ServiceEdge"} and cluster["status"] == "active"
        assert cluster["serviceGraph"]["healthy"] is False and "prometheus" in cluster["serviceGraph"]["error"]
        assert fleetsync("clusters", "--hub", mesh.hub.url).stdout.splitlines()[2].split()[-1] == "failing"
        assert "metrics provider failing" in fleetsync("servicegraph", "--hub", mesh.hub.url).stderr
        # Kubernetes state still syncs: a new Service reaches the hub while Prometheus is away
        manifest = '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "during-outage", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}'
        created = subprocess.run([*mesh_kubectl(mesh, "c2"), "create", "-f", "-"], input=manifest, capture_output=True, text=True, timeout=30, check=False)
        assert created.returncode == 0, created.stderr

        def synced() -> bool:
            return http("GET", f"{mesh.hub.url}/clusters/c2/api/v1/namespaces/default/services/during-outage")[0] == 200

        wait_until(synced, timeout=20, what="the Service on the hub during the outage")
    finally:
        mesh.proxy.heal()
    wait_until(lambda: "c2" not in mesh.graph()["errors"], timeout=30, interval=0.5, what="the error cleared once Prometheus answers")


def test_the_default_scope_follows_the_clusters_name_in_istios_metrics(mesh: Mesh, tmp_path: Path) -> None:
    """An agent whose cluster id is not the name Istio's metrics give its cluster (istiod's
    CLUSTER_ID; the simulator's mesh uses the simulated cluster's name) still finds its edges."""
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    agent = start_agent(
        tmp_path, mesh.sim, "c2", hub.agent_url, create_token(tmp_path, db, "eu-west"), "--cluster-id", "eu-west", "--types", "v1/Service",
        "--prometheus", mesh.prometheus.url, "--prometheus-window", "15s", "--prometheus-interval", "1s",
    )  # fmt: skip
    try:
        configured = set(mesh.traffic("c2"))

        def edges() -> set[tuple[str, str]]:
            status, body = http("GET", f"{hub.url}/api/v1/servicegraph?cluster=eu-west")
            return {(e["source"]["service"], e["destination"]["service"]) for e in body["edges"]} if status == 200 else set()

        wait_until(lambda: configured <= edges(), timeout=60, interval=0.5, what="c2's edges under the agent's own cluster id")
        status, found = http("GET", f"{hub.url}/clusters/eu-west/apis/mesh.fleetsync.io/v1/istiomeshes/istio")
        assert status == 200 and [c["clusterId"] for c in found["spec"]["controlPlanes"]] == ["c2"]
        assert 'scoped to {destination_cluster="c2"}' in agent.output()
    finally:
        agent.stop()
        hub.proc.stop()


def mesh_kubectl(mesh: Mesh, cluster: str) -> list[str]:
    from tests.harness import kubectl_binary

    return [kubectl_binary(), "--kubeconfig", str(mesh.sim.kubeconfig(cluster))]
