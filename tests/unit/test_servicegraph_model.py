"""The service graph's arithmetic: percentiles from cumulative histograms (as Prometheus's
``histogram_quantile``), and edges merged across clusters before anything is computed."""

from __future__ import annotations

import math

import pytest

from fleetsync.model.servicegraph import edge_object, merge_edges, quantile


def test_quantile_interpolates_within_the_bucket_like_histogram_quantile() -> None:
    buckets = [(10.0, 50.0), (100.0, 90.0), (1000.0, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(10.0)
    assert quantile(0.25, buckets) == pytest.approx(5.0), "the first bucket starts at 0"
    assert quantile(0.7, buckets) == pytest.approx(10 + 90 * (70 - 50) / 40)
    assert quantile(0.99, buckets) == pytest.approx(100 + 900 * (99 - 90) / 10)
    assert quantile(0.99, [(10.0, 5.0), (math.inf, 100.0)]) == 10.0, "in the +Inf bucket: the highest finite bound"
    assert quantile(0.5, [(10.0, 0.0), (math.inf, 0.0)]) is None, "no requests, no latency"
    assert quantile(0.5, []) is None


def edge(cluster_requests: float, errors: float, buckets: list[tuple[float, float]], *, cluster: str, window: float = 60.0) -> tuple[str, dict[str, object]]:
    obj = edge_object(
        ("web", "shop"),
        ("cart", "shop"),
        window=window,
        collected_at=f"2026-11-30T12:00:0{cluster[-1]}.000Z",
        requests=cluster_requests,
        errors=errors,
        buckets=buckets,
    )
    return cluster, obj


def test_an_edge_in_several_clusters_is_merged_by_adding_counts_then_computing_rates_and_percentiles() -> None:
    fast = [(10.0, 90.0), (100.0, 100.0), (math.inf, 100.0)]  # 100 requests, p50 in (0, 10]
    slow = [(10.0, 0.0), (100.0, 0.0), (1000.0, 300.0), (math.inf, 300.0)]  # 300 requests, all in (100, 1000]
    (merged,) = merge_edges([edge(100, 1, fast, cluster="c1"), edge(300, 29, slow, cluster="c2")])
    summary = merged.summary()
    assert summary["clusters"] == ["c1", "c2"] and summary["requests"] == 400
    assert summary["requestRate"] == pytest.approx(400 / 60) and summary["errorRate"] == pytest.approx(30 / 400)
    # merged histogram: le=10: 90, le=100: 100, le=1000: 400; the median (rank 200) lies in (100, 1000]
    assert summary["latencyMs"]["p50"] == pytest.approx(100 + 900 * (200 - 100) / 300)
    assert summary["latencyMs"]["p50"] > 100, "averaging the clusters' own medians (5 and 550 ms) would be wrong"
    assert summary["collectedAt"] == "2026-11-30T12:00:01.000Z", "the oldest collection the figures include"
    other = edge_object(("web", "shop"), ("pay", "shop"), window=60, collected_at="", requests=5, errors=0, buckets=[(math.inf, 5.0)])
    assert len(merge_edges([edge(100, 1, fast, cluster="c1"), ("c1", other)])) == 2, "different pairs stay apart"
