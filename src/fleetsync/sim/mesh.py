"""Istio's standard metrics for a simulated cluster's services, as its sidecars would report them.

Each simulated cluster serves ``GET /clusters/NAME/metrics`` in the Prometheus text format,
for a real Prometheus to scrape: ``istio_requests_total`` (counter) and
``istio_request_duration_milliseconds`` (histogram, Istio's default buckets), reported by the
destination's sidecar (``reporter="destination"``), for a call graph that follows the cluster's
simulated Services at the time of the scrape:

- the mesh is the namespaces with ``istio-injection=enabled``; in each, the Services sorted by
  name are a chain: ``istio-ingressgateway`` (istio-system) calls the first, each Service calls
  the next one, and about half of them the one after that too;
- every edge has a request rate (1-20 req/s), an error ratio (5xx: mostly 0.5-1.5 %, one edge in
  ten 8-12 %), some a share of 404s, and a log-normal latency distribution (median 2-150 ms,
  p99 1.5-10 times the median), all derived from a hash of the (source, destination) pair;
- the counters are the expected counts since the edge appeared (first seen by a scrape):
  ``rate x share x elapsed seconds``, not rounded, so ``rate()``/``increase()`` over any window
  give the configured figures back; the histogram's buckets are that count times the
  distribution's CDF at each bound (cumulative, +Inf = the count), its sum the count times the
  mean. An edge whose Service is gone is no longer exported (a re-appearing one starts at 0).

``GET /clusters/NAME/mesh-traffic`` shows the configured edges (what a query should give
back), ``PUT /clusters/NAME/metrics-outage {"down": true}`` makes the exporter answer 503.

The format comes from ``prometheus_client``: a :class:`MeshCollector` in a
:class:`~prometheus_client.CollectorRegistry` per cluster, rendered by ``generate_latest``.
Rendering a few thousand samples that way takes ~50 ms, so a scrape reuses each edge's sample
lines as ``generate_latest`` rendered them when the edge appeared and writes only the values
(:meth:`MeshTraffic.exposition`, the same bytes as ``generate_latest(registry)``).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from fleetsync.model import types as t
from fleetsync.model.objects import rfc3339
from fleetsync.sim.store import ClusterState

#: Istio's default buckets of ``istio_request_duration_milliseconds`` (upper bounds, ms).
BUCKETS: tuple[float, ...] = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000)
#: The ``le`` values as Envoy writes them (``1``, ``300000``, ``1.8e+06``).
BUCKET_LABELS: tuple[str, ...] = (*(f"{b:g}" for b in BUCKETS), "+Inf")
QUANTILES = (0.5, 0.9, 0.99)
GATEWAY = ("istio-ingressgateway", "istio-system")
INJECTION_LABEL = "istio-injection"

REQUESTS = "istio_requests"  # CounterMetricFamily adds _total
DURATION = "istio_request_duration_milliseconds"
#: Labels of both metrics (as Istio's standard metrics have them, minus principals, versions and revisions).
EDGE_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_app",
    "source_canonical_service",
    "source_cluster",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_workload",
    "destination_workload_namespace",
    "destination_app",
    "destination_canonical_service",
    "destination_cluster",
    "request_protocol",
    "connection_security_policy",
)
#: The counter has one series per response code; the histogram one per edge (all codes).
REQUEST_LABELS: tuple[str, ...] = (*EDGE_LABELS, "response_code")

_STANDARD_NORMAL = NormalDist()
#: How ``generate_latest`` writes a sample's value (prometheus_client leaves it untyped).
_go_float: Callable[[float], str] = floatToGoString


def _unit_floats(key: str, n: int) -> list[float]:
    """``n`` numbers in [0, 1) derived from ``key``: the same for the same edge, run after run."""
    digest = hashlib.blake2b(key.encode(), digest_size=4 * n).digest()
    return [int.from_bytes(digest[4 * i : 4 * i + 4], "big") / 2**32 for i in range(n)]


@dataclass(frozen=True)
class EdgeTraffic:
    """The traffic configured for one source -> destination service pair of a cluster."""

    source: str
    source_namespace: str
    destination: str
    destination_namespace: str
    rate: float  # requests per second
    error_ratio: float  # 5xx responses / all
    not_found_ratio: float  # 404 responses / all
    median_ms: float  # of the log-normal latency distribution
    sigma: float  # its shape (standard deviation of the log)

    @classmethod
    def for_pair(cls, source: tuple[str, str], destination: tuple[str, str]) -> EdgeTraffic:
        (src, src_ns), (dst, dst_ns) = source, destination
        u = _unit_floats(f"{src_ns}/{src}->{dst_ns}/{dst}", 6)
        faulty = u[1] < 0.1
        return cls(
            src,
            src_ns,
            dst,
            dst_ns,
            rate=round(1 + 19 * u[0], 2),
            error_ratio=round(0.08 + 0.04 * u[2], 4) if faulty else round(0.005 + 0.01 * u[2], 4),
            not_found_ratio=0.02 if source == GATEWAY else (0.01 if u[3] < 0.3 else 0.0),
            median_ms=round(math.exp(math.log(2) + (math.log(150) - math.log(2)) * u[4]), 1),
            # p99 / p50 = exp(2.326 sigma): 1.5 to 10
            sigma=round((math.log(1.5) + (math.log(10) - math.log(1.5)) * u[5]) / _STANDARD_NORMAL.inv_cdf(0.99), 4),
        )

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.source_namespace, self.source, self.destination_namespace, self.destination)

    @property
    def response_codes(self) -> list[tuple[str, float]]:
        """(code, share of the requests): 200, 404 (some edges), 500 (faulty edges) and 503."""
        codes = [("200", round(1 - self.error_ratio - self.not_found_ratio, 6))]
        if self.not_found_ratio:
            codes.append(("404", self.not_found_ratio))
        if self.error_ratio >= 0.05:
            internal = round(self.error_ratio * 0.4, 6)
            codes += [("500", internal), ("503", round(self.error_ratio - internal, 6))]
        else:
            codes.append(("503", self.error_ratio))
        return codes

    def latency_quantile(self, q: float) -> float:
        """The ``q`` quantile of the configured latency distribution (ms)."""
        return self.median_ms * math.exp(self.sigma * _STANDARD_NORMAL.inv_cdf(q))

    @property
    def mean_ms(self) -> float:
        return self.median_ms * math.exp(self.sigma**2 / 2)

    def bucket_fractions(self) -> list[float]:
        """The share of requests at or under each bucket bound (the CDF), +Inf (1.0) last."""
        mu = math.log(self.median_ms)
        return [_STANDARD_NORMAL.cdf((math.log(b) - mu) / self.sigma) for b in BUCKETS] + [1.0]

    def histogram_quantile(self, q: float) -> float:
        """What Prometheus's ``histogram_quantile(q, ...)`` computes from the exported buckets
        (linear interpolation within the bucket holding the quantile)."""
        lower_bound, lower = 0.0, 0.0
        for bound, fraction in zip((*BUCKETS, math.inf), self.bucket_fractions(), strict=True):
            if fraction >= q:
                if math.isinf(bound):
                    return lower_bound
                return lower_bound + (bound - lower_bound) * (q - lower) / (fraction - lower)
            lower_bound, lower = bound, fraction
        return lower_bound  # pragma: no cover

    def source_labels(self) -> tuple[str, str, str, str]:
        """source_workload, its namespace, app and canonical service (the Deployment is named as its Service)."""
        return (self.source, self.source_namespace, self.source, self.source)

    def label_values(self, cluster: str) -> list[str]:
        """The values of :data:`EDGE_LABELS`."""
        dst, ns = self.destination, self.destination_namespace
        return ["destination", *self.source_labels(), cluster, f"{dst}.{ns}.svc.cluster.local", dst, ns, dst, ns, dst, dst, cluster, "http", "mutual_tls"]

    def describe(self) -> dict[str, Any]:
        """The configured figures, for ``GET /clusters/NAME/mesh-traffic``."""
        return {
            "source": {"service": self.source, "namespace": self.source_namespace, "workload": self.source},
            "destination": {"service": self.destination, "namespace": self.destination_namespace, "workload": self.destination},
            "requestsPerSecond": self.rate,
            "errorRatio": self.error_ratio,
            "notFoundRatio": self.not_found_ratio,
            "responseCodes": dict(self.response_codes),
            "latencyMs": {
                "median": self.median_ms,
                "sigma": self.sigma,
                "mean": round(self.mean_ms, 3),
                **{f"p{round(q * 100)}": round(self.latency_quantile(q), 3) for q in QUANTILES},
            },
            # What histogram_quantile() gives from the buckets (the bucket interpolation's error included).
            "histogramQuantileMs": {f"p{round(q * 100)}": round(self.histogram_quantile(q), 3) for q in QUANTILES},
        }


def call_graph(state: ClusterState) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The (source, destination) (service, namespace) pairs of the cluster's current Services."""
    edges: list[tuple[tuple[str, str], tuple[str, str]]] = []
    for ns in state.scan(t.NAMESPACE):
        if ns.labels.get(INJECTION_LABEL) != "enabled":
            continue
        services = sorted(s.name for s in state.scan(t.SERVICE, ns.name))
        if services:
            edges.append((GATEWAY, (services[0], ns.name)))
        for i, name in enumerate(services):
            for step in (1, 2):
                if i + step < len(services) and (step == 1 or _unit_floats(f"{ns.name}/{name}:fanout", 1)[0] < 0.5):
                    edges.append(((name, ns.name), (services[i + step], ns.name)))
    return edges


@dataclass
class _LiveEdge:
    """An edge being exported: since when (monotonic and wall clock), and its sample lines."""

    traffic: EdgeTraffic
    since: float
    since_wall: float
    shares: list[float] = field(default_factory=list)  # per counter line
    fractions: list[float] = field(default_factory=list)  # per bucket line
    counter_prefixes: list[str] = field(default_factory=list)
    histogram_prefixes: list[str] = field(default_factory=list)  # buckets, _count, _sum

    def requests(self, now: float) -> float:
        return self.traffic.rate * max(0.0, now - self.since)


class MeshCollector:
    """A ``prometheus_client`` collector of a cluster's Istio metrics (for a CollectorRegistry)."""

    def __init__(self, mesh: MeshTraffic) -> None:
        self.mesh = mesh

    def collect(self) -> Iterable[Metric]:
        if not self.mesh.istio:
            return []
        now = self.mesh.clock()
        return families(self.mesh.cluster, [(e.traffic, e.requests(now)) for e in self.mesh.live_edges(now)])


def families(cluster: str, edges: Sequence[tuple[EdgeTraffic, float]]) -> list[Metric]:
    """The two metric families for ``edges`` (each with its request count so far)."""
    requests = CounterMetricFamily(REQUESTS, "Total number of requests (Istio standard metric)", labels=REQUEST_LABELS)
    duration = HistogramMetricFamily(DURATION, "Request duration in milliseconds (Istio standard metric)", labels=EDGE_LABELS)
    for edge, total in edges:
        values = edge.label_values(cluster)
        for code, share in edge.response_codes:
            requests.add_metric([*values, code], total * share)
        buckets = [(le, total * f) for le, f in zip(BUCKET_LABELS, edge.bucket_fractions(), strict=True)]
        duration.add_metric(values, buckets, total * edge.mean_ms)
    return [requests, duration]


class _Families:
    """A collector of fixed families (to render an edge's sample lines once)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def _render(metrics: list[Metric]) -> list[str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(metrics))
    return generate_latest(registry).decode().splitlines(keepends=True)


class MeshTraffic:
    """The simulated Istio traffic of one cluster: its call graph, exporter and outage switch."""

    def __init__(self, state: ClusterState, *, istio: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.cluster = state.name
        self.istio = istio
        self.clock = clock
        #: While True, ``/metrics`` answers 503 (a provider outage, for tests).
        self.down = False
        self._edges: dict[tuple[str, str, str, str], _LiveEdge] = {}
        self._graph_rv = -1
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MeshCollector(self))
        headers = [line for line in _render(families(self.cluster, [])) if line.startswith("#")]
        self._counter_header, self._histogram_header = "".join(headers[:2]), "".join(headers[2:])

    def live_edges(self, now: float | None = None) -> list[_LiveEdge]:
        """The edges of the cluster's current Services (sorted); new ones start at ``now``."""
        if not self.istio:
            return []
        if self._graph_rv != self.state.rv:
            now = self.clock() if now is None else now
            current: dict[tuple[str, str, str, str], _LiveEdge] = {}
            new: list[_LiveEdge] = []
            for (src, src_ns), (dst, dst_ns) in call_graph(self.state):
                key = (src_ns, src, dst_ns, dst)
                edge = self._edges.get(key)
                if edge is None:
                    edge = _LiveEdge(EdgeTraffic.for_pair((src, src_ns), (dst, dst_ns)), now, time.time() - (self.clock() - now))
                    new.append(edge)
                current[key] = edge
            self._prepare(new)
            self._edges = dict(sorted(current.items()))
            self._graph_rv = self.state.rv
        return list(self._edges.values())

    def _prepare(self, edges: list[_LiveEdge]) -> None:
        """Render the sample lines of ``edges`` with ``generate_latest`` (in one go) and keep their prefixes."""
        if not edges:
            return
        lines = [line for line in _render(families(self.cluster, [(e.traffic, 0.0) for e in edges])) if not line.startswith("#")]
        counters = sum(len(e.traffic.response_codes) for e in edges)
        counter_lines, histogram_lines = iter(lines[:counters]), iter(lines[counters:])
        per_histogram = len(BUCKET_LABELS) + 2  # buckets, _count, _sum
        assert len(lines) == counters + per_histogram * len(edges), "unexpected generate_latest output"
        for e in edges:
            codes = e.traffic.response_codes
            e.shares = [share for _, share in codes]
            e.fractions = e.traffic.bucket_fractions()
            e.counter_prefixes = [next(counter_lines).rpartition(" ")[0] + " " for _ in codes]
            e.histogram_prefixes = [next(histogram_lines).rpartition(" ")[0] + " " for _ in range(per_histogram)]

    def exposition(self) -> bytes:
        """The text ``generate_latest(self.registry)`` would give, rendered in a few ms."""
        if not self.istio:
            return b""
        now = self.clock()
        edges = self.live_edges(now)
        out = [self._counter_header]
        for e in edges:
            total = e.requests(now)
            out.extend(f"{prefix}{_go_float(total * share)}\n" for prefix, share in zip(e.counter_prefixes, e.shares, strict=True))
        out.append(self._histogram_header)
        for e in edges:
            total = e.requests(now)
            values = [total * f for f in e.fractions] + [total, total * e.traffic.mean_ms]
            out.extend(f"{prefix}{_go_float(v)}\n" for prefix, v in zip(e.histogram_prefixes, values, strict=True))
        return "".join(out).encode()

    def describe(self) -> dict[str, Any]:
        """The configured edges (``GET /clusters/NAME/mesh-traffic``)."""
        now = self.clock()
        return {
            "cluster": self.cluster,
            "istio": self.istio,
            "down": self.down,
            "edges": [{**e.traffic.describe(), "since": rfc3339(e.since_wall), "requests": round(e.requests(now), 3)} for e in self.live_edges(now)],
        }
