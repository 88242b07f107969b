"""The simulator's Istio metrics, scraped by a real Prometheus (Debian's package).

``fleetsync sim`` serves ``/clusters/NAME/metrics`` (istio_requests_total and
istio_request_duration_milliseconds for a call graph of the cluster's Services) and
``/clusters/NAME/mesh-traffic`` (what the edges are set to): what Prometheus's queries give back
must be what the sim configured, the series must follow the Services, and the outage switch
must make the scrape fail.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleetsync.sim.fleet import SimConfig, SimFleet
from fleetsync.sim.mesh import BUCKETS, MeshTraffic
from tests.harness import Prometheus, Sim, http, run_sim, start_prometheus, wait_until

EDGE = ("source_canonical_service", "destination_service_name")
WINDOW = 15  # seconds, of the rate() queries


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sim, Sim]]:
    """Two clusters with Istio (c1 is left alone, c2 is changed by tests), and one without."""
    tmp = tmp_path_factory.mktemp("sim-metrics")
    small = ("--pods", "60", "--namespaces", "2", "--pods-per-service", "5")
    with run_sim(tmp, "--clusters", "2", *small) as mesh, run_sim(tmp, "--clusters", "1", "--no-istio", *small) as plain:
        yield mesh, plain


@pytest.fixture(scope="module")
def sim(sims: tuple[Sim, Sim]) -> Sim:
    return sims[0]


@pytest.fixture(scope="module")
def prometheus(sims: tuple[Sim, Sim], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    mesh, plain = sims
    targets = {"c1": f"{mesh.url}/clusters/c1/metrics", "c2": f"{mesh.url}/clusters/c2/metrics", "plain": f"{plain.url}/clusters/c1/metrics"}
    prom = start_prometheus(tmp_path_factory.mktemp("prometheus"), targets)
    try:
        wait_until(lambda: {t["labels"]["job"]: t["health"] for t in prom.targets()} == dict.fromkeys(targets, "up"), timeout=20, what="every target scraped")
        yield prom
    finally:
        prom.stop()


def mesh_traffic(sim: Sim, cluster: str) -> list[dict[str, Any]]:
    status, body = http("GET", f"{sim.cluster_url(cluster)}/mesh-traffic")
    assert status == 200, body
    return list(body["edges"])


def configured(sim: Sim, cluster: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The sim's edges of ``cluster`` by (source service, destination service)."""
    return {(e["source"]["service"], e["destination"]["service"]): e for e in mesh_traffic(sim, cluster)}


def bucket_of(ms: float) -> tuple[float, float]:
    """The (lower, upper] bounds of the histogram bucket holding ``ms``."""
    lower = 0.0
    for bound in BUCKETS:
        if ms <= bound:
            return lower, bound
        lower = bound
    return lower, math.inf


def off_by(measured: dict[tuple[str, ...], float], expected: dict[tuple[str, str], float], tolerance: float) -> list[str]:
    """What differs by more than ``tolerance`` (relative) between a query's result and the sim's figures."""
    problems = [f"{edge}: missing from the query" for edge in expected if edge not in measured]
    problems += [f"{edge}: not configured in the sim" for edge in measured if edge not in expected]
    for edge, want in expected.items():
        got = measured.get(edge)
        if got is not None and not math.isclose(got, want, rel_tol=tolerance):
            problems.append(f"{edge}: {got:.4f}, configured {want:.4f}")
    return problems


def wait_matching(prometheus: Prometheus, promql: str, expected: dict[tuple[str, str], float], *, tolerance: float, timeout: float) -> None:
    """Wait until ``promql`` (by source and destination service) gives ``expected`` within ``tolerance``."""
    last: list[str] = []

    def matches() -> bool:
        last[:] = off_by(prometheus.values(promql, *EDGE), expected, tolerance)
        return not last

    try:
        wait_until(matches, timeout=timeout, interval=0.5, what=promql)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(last[:20])) from None


# ---- the exporter, in process -----------------------------------------------------------------------


def test_the_exposition_is_the_registrys_and_counts_only_grow() -> None:
    now = [1000.0]
    fleet = SimFleet(SimConfig(clusters=1, pods=500, namespaces=3, pods_per_service=5))  # 100 services
    mesh = MeshTraffic(fleet.clusters["c1"].state, clock=lambda: now[0])
    first = mesh.exposition()
    now[0] += 12.5
    text = mesh.exposition()
    assert text == generate_latest(mesh.registry)  # the fast path writes what prometheus_client would
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    edges = mesh.describe()["edges"]
    assert len(edges) > 100
    requests = families["istio_requests"].samples
    assert {s.labels["response_code"] for s in requests} >= {"200", "404", "503"}
    for edge in edges:
        src, dst = edge["source"]["service"], edge["destination"]["service"]
        series = [s for s in requests if s.labels["source_canonical_service"] == src and s.labels["destination_service_name"] == dst]
        assert math.isclose(sum(s.value for s in series), edge["requestsPerSecond"] * 12.5)
        errors = sum(s.value for s in series if s.labels["response_code"].startswith("5"))
        assert math.isclose(errors / sum(s.value for s in series), edge["errorRatio"])
    buckets: dict[tuple[str, str], list[float]] = {}
    for s in families["istio_request_duration_milliseconds"].samples:
        if s.name.endswith("_bucket"):
            buckets.setdefault((s.labels["source_canonical_service"], s.labels["destination_service_name"]), []).append(s.value)
    for counts in buckets.values():
        assert len(counts) == len(BUCKETS) + 1 and counts == sorted(counts)  # cumulative
    # Monotonic: every sample of the first scrape (at elapsed 0) is <= the later one.
    before = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(first.decode()) for s in f.samples}
    after = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert before.keys() == after.keys() and all(before[k] <= after[k] for k in before)
    # Cheap: a scrape of 100 services takes ~15 ms on an idle core (the best of a few, whatever else
    # runs: the suite's other workers share the machine's two cores).
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        mesh.exposition()
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.05, timings


def test_the_call_graph_follows_the_services(sim: Sim) -> None:
    services = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in sim.truth("c1", "v1/Service")}
    mesh_namespaces = {n["metadata"]["name"] for n in sim.truth("c1", "v1/Namespace") if n["metadata"]["labels"].get("istio-injection") == "enabled"}
    edges = mesh_traffic(sim, "c1")
    destinations = {(e["destination"]["namespace"], e["destination"]["service"]) for e in edges}
    assert destinations == {s for s in services if s[0] in mesh_namespaces}
    for ns in mesh_namespaces:
        first = min(name for namespace, name in services if namespace == ns)
        assert [e["destination"]["service"] for e in edges if e["source"]["service"] == "istio-ingressgateway" and e["destination"]["namespace"] == ns] == [
            first
        ]
    for e in edges:
        assert 1 <= e["requestsPerSecond"] <= 20 and 0 < e["errorRatio"] < 0.15
        assert e["latencyMs"]["p50"] < e["latencyMs"]["p99"]


def test_a_cluster_without_istio_exports_no_istio_metrics(sims: tuple[Sim, Sim], prometheus: Prometheus) -> None:
    plain = sims[1]
    status, text = http("GET", f"{plain.cluster_url('c1')}/metrics")
    assert status == 200 and text == ""
    assert mesh_traffic(plain, "c1") == []
    assert prometheus.values('up{job="plain"}') == {(): 1.0}
    assert prometheus.query('istio_requests_total{job="plain"}') == []


# ---- through Prometheus --------------------------------------------------------------------------------


def test_request_and_error_rates_are_the_configured_ones(sim: Sim, prometheus: Prometheus) -> None:
    edges = configured(sim, "c1")
    rates = {edge: e["requestsPerSecond"] for edge, e in edges.items()}
    # rate() over 30 s gives the configured rate once Prometheus holds 30 s of the series.
    wait_matching(
        prometheus,
        f'sum by ({",".join(EDGE)}) (rate(istio_requests_total{{destination_cluster="c1"}}[{WINDOW}s]))',
        rates,
        tolerance=0.02,
        timeout=WINDOW + 25,
    )
    wait_matching(
        prometheus,
        f'sum by ({",".join(EDGE)}) (rate(istio_requests_total{{destination_cluster="c1",response_code=~"5.."}}[{WINDOW}s]))'
        f' / sum by ({",".join(EDGE)}) (rate(istio_requests_total{{destination_cluster="c1"}}[{WINDOW}s]))',
        {edge: e["errorRatio"] for edge, e in edges.items()},
        tolerance=0.02,
        timeout=10,
    )
    gateway = prometheus.values(f'sum(rate(istio_requests_total{{destination_cluster="c1",source_workload="istio-ingressgateway"}}[{WINDOW}s]))')
    assert math.isclose(gateway[()], sum(rate for (src, _), rate in rates.items() if src == "istio-ingressgateway"), rel_tol=0.02)


@pytest.mark.parametrize("quantile", [0.5, 0.99])
def test_latency_quantiles_are_the_configured_ones(sim: Sim, prometheus: Prometheus, quantile: float) -> None:
    edges = configured(sim, "c1")
    key = f"p{round(quantile * 100)}"
    promql = (
        f"histogram_quantile({quantile}, sum by (le, {','.join(EDGE)}) "
        f'(rate(istio_request_duration_milliseconds_bucket{{destination_cluster="c1"}}[{WINDOW}s])))'
    )
    # What histogram_quantile() interpolates from the buckets ...
    wait_matching(prometheus, promql, {edge: e["histogramQuantileMs"][key] for edge, e in edges.items()}, tolerance=0.02, timeout=WINDOW + 25)
    # ... lies in the bucket of the configured distribution's quantile.
    for edge, got in prometheus.values(promql, *EDGE).items():
        lower, upper = bucket_of(edges[edge]["latencyMs"][key])
        assert lower <= got <= upper, (edge, got, edges[edge]["latencyMs"])


def test_series_follow_the_services(sim: Sim, prometheus: Prometheus, tmp_path: Path) -> None:
    cluster = "c2"
    before = configured(sim, cluster)
    ns = "ns-0"
    chain = sorted(dst for (_, dst), e in before.items() if e["destination"]["namespace"] == ns)
    doomed, successor = chain[1], chain[2]  # not the first (the gateway's), one with a successor
    on_doomed = f'istio_requests_total{{destination_cluster="{cluster}",destination_service_name="{doomed}"}}'
    from_doomed = f'istio_requests_total{{destination_cluster="{cluster}",source_canonical_service="{doomed}"}}'
    wait_until(lambda: prometheus.query(on_doomed) and prometheus.query(from_doomed), timeout=10, what=f"series of {doomed}")

    sim.kubectl(cluster, "delete", "service", doomed, "-n", ns)
    after = configured(sim, cluster)
    assert not [edge for edge in after if doomed in edge]
    assert (chain[0], successor) in after  # its caller now calls the next one
    status, text = http("GET", f"{sim.cluster_url(cluster)}/metrics")
    assert status == 200 and f'"{doomed}"' not in text and f'source_canonical_service="{chain[0]}"' in text
    # Gone from the next scrape: Prometheus marks the series stale.
    wait_until(lambda: not prometheus.query(on_doomed) and not prometheus.query(from_doomed), timeout=10, what=f"the series of {doomed} to go")
    bypass = f'istio_requests_total{{destination_cluster="{cluster}",source_canonical_service="{chain[0]}",destination_service_name="{successor}"}}'
    wait_until(lambda: prometheus.query(bypass), timeout=10, what=f"{chain[0]} -> {successor}")

    # A Service created through the API joins the mesh: the one before it in name order calls it.
    manifest = tmp_path / "service.json"
    manifest.write_text(
        json.dumps(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "zzz-new", "namespace": ns}, "spec": {"ports": [{"port": 80, "targetPort": 8080}]}}
        )
    )
    sim.kubectl(cluster, "create", "-f", str(manifest))
    try:
        wait_until(
            lambda: prometheus.query(f'istio_requests_total{{destination_cluster="{cluster}",destination_service_name="zzz-new",response_code="200"}}'),
            timeout=10,
            what="series of the new Service",
        )
        assert (chain[-1], "zzz-new") in configured(sim, cluster)
    finally:
        sim.kubectl(cluster, "delete", "service", "zzz-new", "-n", ns)


def test_an_exporter_outage_takes_the_target_down_and_back(sim: Sim, prometheus: Prometheus) -> None:
    outage = f"{sim.cluster_url('c1')}/metrics-outage"
    wait_until(lambda: prometheus.values('up{job="c1"}') == {(): 1.0}, timeout=10, what="c1 up")
    status, body = http("PUT", outage, {"down": True})
    assert status == 200 and body == {"cluster": "c1", "down": True}
    try:
        assert http("GET", f"{sim.cluster_url('c1')}/metrics")[0] == 503
        wait_until(lambda: prometheus.values('up{job="c1"}') == {(): 0.0}, timeout=10, what="c1 down")
        # Its series go stale with the failed scrape; c2's do not.
        assert prometheus.query('istio_requests_total{job="c1"}') == []
        assert prometheus.query('istio_requests_total{job="c2"}')
    finally:
        status, body = http("PUT", outage, {"down": False})
        assert status == 200 and body["down"] is False
    wait_until(lambda: prometheus.values('up{job="c1"}') == {(): 1.0}, timeout=10, what="c1 up again")
    assert prometheus.query('istio_requests_total{job="c1"}')
    assert http("PUT", outage, {"down": "yes"})[0] == 400
