"""The mesh's service graph: one ``ServiceEdge`` object per source -> destination service pair.

An agent with a metrics provider (``--prometheus URL``) queries Istio's standard metrics
over a window and syncs one object per pair, as any other type (``metrics.fleetsync.io/v1``,
namespaced by the destination service's namespace)::

    apiVersion: metrics.fleetsync.io/v1
    kind: ServiceEdge
    metadata: {name: frontend.shop--cart, namespace: shop, labels: {source: frontend, ...}}
    spec:
      source: {service: frontend, namespace: shop}
      destination: {service: cart, namespace: shop}
      window: 300                       # seconds the figures cover
      collectedAt: "2026-11-30T12:00:00.123Z"
      requests: 1520.0                  # in the window (increase of istio_requests_total)
      errors: 31.0                      # of them with a 5xx response code
      latencyBuckets: [[5, 300.0], [10, 890.0], ..., ["+Inf", 1520.0]]   # cumulative, milliseconds

Only counts travel (requests, errors, cumulative histogram buckets), never percentiles, so
the hub can merge an edge across clusters by adding them and compute rates and percentiles
from the merged histogram (:func:`merge_edges`, :func:`quantile`), as Prometheus's
``histogram_quantile`` would from the summed series.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetsync.model.types import SERVICE_EDGE

#: Istio's default buckets of ``istio_request_duration_milliseconds`` (upper bounds, ms).
ISTIO_BUCKETS: tuple[float, ...] = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000)
QUANTILES = (0.5, 0.9, 0.99)


def edge_name(source: str, source_namespace: str, destination: str) -> str:
    """The object name of an edge (in the destination's namespace): ``SRC.SRCNS--DST``."""
    return f"{source}.{source_namespace}--{destination}"


def edge_object(
    source: tuple[str, str],
    destination: tuple[str, str],
    *,
    window: float,
    collected_at: str,
    requests: float,
    errors: float,
    buckets: list[tuple[float, float]],
) -> dict[str, Any]:
    """A ServiceEdge object; ``source`` and ``destination`` are (service, namespace), ``buckets``
    cumulative (upper bound in ms, count), +Inf last as ``math.inf``."""
    (src, src_ns), (dst, dst_ns) = source, destination
    return {
        "apiVersion": SERVICE_EDGE.api_version,
        "kind": SERVICE_EDGE.kind,
        "metadata": {
            "name": edge_name(src, src_ns, dst),
            "namespace": dst_ns,
            "labels": {"source": src, "source-namespace": src_ns, "destination": dst},
        },
        "spec": {
            "source": {"service": src, "namespace": src_ns},
            "destination": {"service": dst, "namespace": dst_ns},
            "window": window,
            "collectedAt": collected_at,
            "requests": requests,
            "errors": errors,
            "latencyBuckets": [["+Inf" if math.isinf(le) else le, count] for le, count in buckets],
        },
    }


@dataclass
class Edge:
    """An edge merged over one or more clusters' objects: counts added, clusters listed."""

    source: tuple[str, str]
    destination: tuple[str, str]
    window: float = 0.0
    requests: float = 0.0
    errors: float = 0.0
    histograms: list[list[tuple[float, float]]] = field(default_factory=list)
    clusters: list[str] = field(default_factory=list)
    collected_at: list[str] = field(default_factory=list)

    def add(self, cluster: str, spec: Mapping[str, Any]) -> None:
        self.window = max(self.window, float(spec.get("window") or 0))
        self.requests += float(spec.get("requests") or 0)
        self.errors += float(spec.get("errors") or 0)
        self.histograms.append(sorted((math.inf if le == "+Inf" else float(le), float(count)) for le, count in spec.get("latencyBuckets") or []))
        self.clusters.append(cluster)
        self.collected_at.append(str(spec.get("collectedAt") or ""))

    def summary(self) -> dict[str, Any]:
        """What the API shows of the edge: rates per second over the window, error ratio, percentiles (ms)."""
        buckets = add_histograms(self.histograms)
        return {
            "source": {"service": self.source[0], "namespace": self.source[1]},
            "destination": {"service": self.destination[0], "namespace": self.destination[1]},
            "clusters": sorted(self.clusters),
            "window": self.window,
            "requests": self.requests,
            "requestRate": self.requests / self.window if self.window else 0.0,
            "errorRate": self.errors / self.requests if self.requests else 0.0,
            "latencyMs": {f"p{round(q * 100)}": quantile(q, buckets) for q in QUANTILES},
            "collectedAt": min((c for c in self.collected_at if c), default=""),
        }


def merge_edges(objects: Iterable[tuple[str, Mapping[str, Any]]]) -> list[Edge]:
    """Edges of (cluster, ServiceEdge object) pairs, one per source -> destination across clusters."""
    merged: dict[tuple[tuple[str, str], tuple[str, str]], Edge] = {}
    for cluster, obj in objects:
        spec = obj.get("spec") or {}
        src, dst = spec.get("source") or {}, spec.get("destination") or {}
        key = ((str(src.get("service")), str(src.get("namespace"))), (str(dst.get("service")), str(dst.get("namespace"))))
        merged.setdefault(key, Edge(*key)).add(cluster, spec)
    return [merged[k] for k in sorted(merged)]


def add_histograms(histograms: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The sum of cumulative histograms, over the union of their bounds: where one lacks a bound,
    its count there is that of its nearest bound below (cumulative counts only grow)."""
    bounds = sorted({bound for histogram in histograms for bound, _ in histogram})
    total = dict.fromkeys(bounds, 0.0)
    for histogram in histograms:
        i, count = 0, 0.0
        for bound in bounds:
            while i < len(histogram) and histogram[i][0] <= bound:
                count = histogram[i][1]
                i += 1
            total[bound] += count
    return sorted(total.items())


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated linearly within its bucket (as
    Prometheus's ``histogram_quantile``); None without observations. A quantile in the +Inf bucket
    is the highest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
