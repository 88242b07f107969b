"""The metrics provider (agent/servicegraph.py): Prometheus answers -> ServiceEdge objects, and the
HTTP side (retries with backoff, timeouts, failure reporting) against a small real HTTP server
serving canned Prometheus API answers."""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fleetsync.agent.runner import Agent
from fleetsync.agent.servicegraph import (
    PrometheusError,
    ServiceGraphSource,
    build_queries,
    check_scope,
    check_url,
    default_scope,
    edges_from_answers,
    parse_duration,
    promql_duration,
    rfc3339,
    vector,
)
from fleetsync.agent.typesync import TypeSync
from fleetsync.cli import agent as agent_cli
from fleetsync.model.servicegraph import merge_edges
from fleetsync.model.types import SERVICE_EDGE, ResourceType
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.web import serve

AT = 1_796_040_000.123  # 2026-11-30T12:00:00.123Z
COLLECTED = "2026-11-30T12:00:00.123Z"


def _sample(src: str, src_ns: str, dst: str, dst_ns: str, value: str, **extra: str) -> dict[str, Any]:
    metric = {
        "source_canonical_service": src,
        "source_workload_namespace": src_ns,
        "destination_service_name": dst,
        "destination_service_namespace": dst_ns,
        **extra,
    }
    return {"metric": metric, "value": [AT, value]}


def _vector(*samples: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": list(samples)}}


# What a Prometheus answers to the three queries over a small mesh: frontend -> cart, frontend -> catalog,
# and an idle pair (cart -> db, no request in the window), buckets in the server's order (by series, not bound).
REQUESTS = _vector(
    _sample("frontend", "shop", "cart", "shop", "1520.0000000002"),
    _sample("frontend", "shop", "catalog", "catalog", "40"),
    _sample("cart", "shop", "db", "data", "0"),
)
ERRORS = _vector(_sample("frontend", "shop", "cart", "shop", "31"))
LATENCY = _vector(
    _sample("frontend", "shop", "cart", "shop", "1520.0000000002", le="+Inf"),
    _sample("frontend", "shop", "cart", "shop", "300", le="5"),
    _sample("frontend", "shop", "cart", "shop", "1500", le="100"),
    _sample("frontend", "shop", "cart", "shop", "890", le="10"),
    _sample("frontend", "shop", "catalog", "catalog", "40", le="+Inf"),
    _sample("frontend", "shop", "catalog", "catalog", "39.5", le="250"),
    _sample("frontend", "shop", "catalog", "catalog", "39.9", le="100"),  # extrapolation: above the next bucket
    _sample("frontend", "shop", "catalog", "catalog", "NaN", le="50"),
    _sample("cart", "shop", "db", "data", "0", le="+Inf"),
)


# ---- answers -> objects ----------------------------------------------------------------------


def test_three_answers_become_one_edge_per_pair_with_requests() -> None:
    edges = edges_from_answers(REQUESTS, ERRORS, LATENCY, window=300, collected_at=COLLECTED)
    assert [e["metadata"]["name"] for e in edges] == ["frontend.shop--cart", "frontend.shop--catalog"]  # the idle pair is dropped
    cart, catalog = edges
    assert cart == {
        "apiVersion": "metrics.fleetsync.io/v1",
        "kind": "ServiceEdge",
        "metadata": {"name": "frontend.shop--cart", "namespace": "shop", "labels": {"source": "frontend", "source-namespace": "shop", "destination": "cart"}},
        "spec": {
            "source": {"service": "frontend", "namespace": "shop"},
            "destination": {"service": "cart", "namespace": "shop"},
            "window": 300,
            "collectedAt": COLLECTED,
            "requests": 1520.0000000002,
            "errors": 31.0,
            "latencyBuckets": [[5.0, 300.0], [10.0, 890.0], [100.0, 1500.0], ["+Inf", 1520.0000000002]],
        },
    }
    # no errors series: 0 errors; the NaN bucket is left out; the bucket below the one before it is raised to it
    assert catalog["metadata"]["namespace"] == "catalog"
    assert catalog["spec"]["errors"] == 0.0
    assert catalog["spec"]["latencyBuckets"] == [[100.0, 39.9], [250.0, 39.9], ["+Inf", 40.0]]


def test_the_objects_merge_and_give_percentiles_on_the_hub() -> None:
    edges = edges_from_answers(REQUESTS, ERRORS, LATENCY, window=300, collected_at=COLLECTED)
    merged = merge_edges([("c1", edges[0]), ("c2", edges[0])])
    summary = merged[0].summary()
    assert summary["requests"] == pytest.approx(3040)
    assert summary["errorRate"] == pytest.approx(31 / 1520)
    assert 5 < summary["latencyMs"]["p50"] < 10


def test_series_without_a_pair_label_are_counted_as_unknown() -> None:
    requests = _vector({"metric": {"destination_service_name": "cart", "destination_service_namespace": "shop"}, "value": [AT, "7"]})
    (edge,) = edges_from_answers(requests, _vector(), _vector(), window=60, collected_at=COLLECTED)
    assert edge["spec"]["source"] == {"service": "unknown", "namespace": "unknown"}
    assert edge["spec"]["latencyBuckets"] == []


def test_an_empty_mesh_is_no_edge() -> None:
    assert edges_from_answers(_vector(), _vector(), _vector(), window=300, collected_at=COLLECTED) == []


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"status": "error", "errorType": "bad_data", "error": 'parse error at char 7: unexpected "}"'},
            'requests: bad_data: parse error at char 7: unexpected "}"',
        ),
        ({"status": "error"}, "requests: error: no reason given"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "requests: the answer is a 'matrix', not an instant vector"),
        ({"status": "success", "data": {"resultType": "scalar", "result": [AT, "1"]}}, "not an instant vector"),
        ({"status": "success"}, "requests: the answer has no data"),
        ({"status": "pending"}, "the answer's status is 'pending'"),
        ([1, 2], "requests: the answer is not a JSON object"),
        (_vector({"metric": {}, "value": [AT, "many"]}), "requests: a sample value is 'many', not a number"),
        (_vector({"metric": {}, "value": [AT, None]}), "a sample value is None, not a number"),
        (_vector({"metric": {}, "value": "12"}), "a sample's value is '12', not [timestamp, value]"),
        (_vector({"metric": {}, "values": [[AT, "12"]]}), "a sample's value is None"),
        ({"status": "success", "data": {"resultType": "vector", "result": ["x"]}}, "a sample is not an object with a metric"),
    ],
)
def test_answers_that_are_not_an_instant_vector_are_clear_errors(document: Any, message: str) -> None:
    with pytest.raises(PrometheusError) as caught:
        vector(document, "requests")
    assert message in str(caught.value)


def test_non_finite_values_are_not_counts() -> None:
    document = _vector(*({"metric": {"n": v}, "value": [AT, v]} for v in ("NaN", "+Inf", "-Inf", "3", "1e3")))
    assert vector(document) == [({"n": "3"}, 3.0), ({"n": "1e3"}, 1000.0)]


def test_a_histogram_sample_needs_a_numeric_le() -> None:
    for labels, message in (({}, "has no le label"), ({"le": "fast"}, "le='fast'")):
        latency = _vector(_sample("a", "x", "b", "y", "1", **labels))
        with pytest.raises(PrometheusError, match=message):
            edges_from_answers(REQUESTS, ERRORS, latency, window=300, collected_at=COLLECTED)


# ---- durations, scope, queries ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("300", 300), ("300s", 300), ("5m", 300), (" 5M ", 300), ("2.5s", 2.5), ("500ms", 0.5), ("1h30m", 5400), ("1d", 86400), ("0.5", 0.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5", "5x", "m", "5m3", "5 m", "nan", "inf", "s5", "1h-5m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a positive duration"):
        parse_duration(text)


def test_promql_durations() -> None:
    assert (promql_duration(300), promql_duration(300.0), promql_duration(1.5), promql_duration(0.0001)) == ("300s", "300s", "1500ms", "1ms")
    with pytest.raises(ValueError):
        promql_duration(0)


def test_queries_are_batched_over_every_pair_and_scoped() -> None:
    pair = "source_canonical_service, source_workload_namespace, destination_service_name, destination_service_namespace"
    queries = build_queries(300, default_scope("c1"))
    assert queries.requests == f'sum by ({pair}) (increase(istio_requests_total{{reporter="destination",destination_cluster="c1"}}[300s]))'
    assert queries.errors == f'sum by ({pair}) (increase(istio_requests_total{{reporter="destination",response_code=~"5..",destination_cluster="c1"}}[300s]))'
    assert (
        queries.latency
        == f'sum by ({pair}, le) (increase(istio_request_duration_milliseconds_bucket{{reporter="destination",destination_cluster="c1"}}[300s]))'
    )
    overridden = build_queries(60, ' destination_cluster="Kubernetes", destination_service_namespace=~"shop|cart", ')
    assert '{reporter="destination",destination_cluster="Kubernetes", destination_service_namespace=~"shop|cart"}[60s]' in overridden.requests
    assert '{reporter="destination"}[300s]' in build_queries(300, "").requests  # no scope at all


def test_the_default_scope_quotes_the_cluster_id() -> None:
    assert default_scope('odd"name') == 'destination_cluster="odd\\"name"'
    assert check_scope(default_scope('odd"name')) == 'destination_cluster="odd\\"name"'


@pytest.mark.parametrize("scope", ["c1", 'cluster="c1"}', 'a="x" or b="y"', "a=x", '9a="x"', 'a=="x"', 'a="x",,b="y"', 'a="x'])
def test_scopes_that_are_not_label_matchers_are_refused(scope: str) -> None:
    with pytest.raises(ValueError, match="is not a list of PromQL label matchers"):
        check_scope(scope)


def test_rfc3339_with_milliseconds() -> None:
    assert rfc3339(AT) == COLLECTED
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1.0009) == "1970-01-01T00:00:01.001Z" and rfc3339(59.9999) == "1970-01-01T00:01:00.000Z"


@pytest.mark.parametrize("url", ["prometheus:9090", "ftp://p:9090", "http://", "http://p:9090/?x=1", ""])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="is not the base URL"):
        check_url(url)
    assert check_url("https://p.example:9090/prom/") == "https://p.example:9090/prom"


# ---- against an HTTP server with canned Prometheus answers ----------------------------------


@dataclass
class FakePrometheus:
    """An HTTP endpoint answering /api/v1/query as Prometheus would, from canned documents: per query,
    ``fail`` times a failure (``status``/``body``) first, then the document, or it hangs (``hang``)."""

    answers: dict[str, Any] = field(default_factory=lambda: {"requests": REQUESTS, "errors": ERRORS, "latency": LATENCY})
    fail: int = 0
    status: int = 503
    body: Any = field(default_factory=lambda: {"status": "error", "errorType": "unavailable", "error": "the query engine is overloaded"})
    hang: bool = False
    seen: list[web.Request] = field(default_factory=list)
    queries: list[tuple[str, str]] = field(default_factory=list)  # (kind, time)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    @staticmethod
    def kind(query: str) -> str:
        return "latency" if "_bucket" in query else "errors" if "response_code" in query else "requests"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = request.query["query"]
        kind = self.kind(query)
        self.seen.append(request)
        self.queries.append((kind, request.query["time"]))
        if self.hang:
            await self.released.wait()
        if sum(1 for k, _ in self.queries if k == kind) <= self.fail:
            if isinstance(self.body, (dict, list)):
                return web.json_response(self.body, status=self.status)
            return web.Response(text=str(self.body), status=self.status)
        return web.json_response(self.answers[kind])

    def attempts(self, kind: str) -> int:
        return sum(1 for k, _ in self.queries if k == kind)


@pytest.fixture
async def prometheus() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.handle)
    app.router.add_get("/prefix/api/v1/query", fake.handle)
    runner, port = await serve(app, "127.0.0.1", 0, shutdown_timeout=1)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        fake.released.set()
        await runner.cleanup()


@dataclass
class Received:
    """What the source hands over (the agent's on_list / on_error callbacks, into a real TypeSync)."""

    sync: TypeSync = field(default_factory=lambda: TypeSync(SERVICE_EDGE, "inc", max_message_bytes=512 * 1024))
    lists: list[list[dict[str, Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_list(self, rtype: ResourceType, items: list[dict[str, Any]]) -> None:
        assert rtype is SERVICE_EDGE
        self.lists.append(items)
        self.sync.on_list(items)
        self.changed.set()

    async def on_error(self, rtype: ResourceType, error: str) -> None:
        assert rtype is SERVICE_EDGE
        self.errors.append(error)
        self.sync.list_error = error
        self.changed.set()

    def source(self, url: str, **kw: Any) -> ServiceGraphSource:
        kw.setdefault("cluster_id", "c1")
        kw.setdefault("backoff", 0.01)
        kw.setdefault("clock", lambda: AT)
        return ServiceGraphSource(url, on_list=self.on_list, on_error=self.on_error, **kw)


async def test_a_collection_queries_once_per_metric_and_hands_over_every_edge(prometheus: FakePrometheus) -> None:
    got = Received()
    source = got.source(prometheus.url)
    try:
        assert await source.collect_once()
    finally:
        await source.close()
    assert got.errors == []
    assert got.lists == [edges_from_answers(REQUESTS, ERRORS, LATENCY, window=300, collected_at=COLLECTED)]
    assert sorted(kind for kind, _ in prometheus.queries) == ["errors", "latency", "requests"]
    assert {t for _, t in prometheus.queries} == {f"{AT:.3f}"}  # the three at the same instant
    assert all('destination_cluster="c1"' in r.query["query"] for r in prometheus.seen)
    assert set(got.sync.cache) == {"shop/frontend.shop--cart", "catalog/frontend.shop--catalog"}


async def test_the_default_scope_follows_the_meshs_names_for_the_cluster(prometheus: FakePrometheus) -> None:
    got = Received()
    source = got.source(prometheus.url, cluster_id="eu-west")
    try:
        source.follow_mesh(["Kubernetes"])  # istiod without CLUSTER_ID: a single-cluster install
        assert await source.collect_once()
        assert all('destination_cluster="Kubernetes"' in r.query["query"] for r in prometheus.seen)
        source.follow_mesh(["c-1", "c.2"])  # two control planes naming the cluster differently
        assert source.scope == 'destination_cluster=~"c\\\\-1|c\\\\.2"' and check_scope(source.scope) == source.scope
        source.follow_mesh([])  # no istiod found (any more): the agent's cluster id
        assert source.scope == 'destination_cluster="eu-west"'
    finally:
        await source.close()
    given = got.source(prometheus.url, scope='destination_service_namespace="shop"')
    given.follow_mesh(["Kubernetes"])
    assert given.scope == 'destination_service_namespace="shop"', "a scope given stays"


async def test_failures_are_retried_then_the_collection_succeeds(prometheus: FakePrometheus) -> None:
    prometheus.fail = 2
    got = Received()
    source = got.source(prometheus.url)
    try:
        assert await source.collect_once()
    finally:
        await source.close()
    assert got.errors == []
    assert len(got.lists) == 1 and [e["metadata"]["name"] for e in got.lists[0]] == ["frontend.shop--cart", "frontend.shop--catalog"]
    assert [prometheus.attempts(k) for k in ("requests", "errors", "latency")] == [3, 3, 3]


async def test_a_persistent_failure_is_reported_with_the_url_and_the_reason(prometheus: FakePrometheus) -> None:
    prometheus.fail = 1000
    got = Received()
    source = got.source(prometheus.url)
    try:
        assert not await source.collect_once()
    finally:
        await source.close()
    assert got.lists == []
    (error,) = got.errors
    assert error.startswith(f"prometheus {prometheus.url}: ")
    assert "HTTP 503: unavailable: the query engine is overloaded (after 3 attempts)" in error
    assert [prometheus.attempts(k) for k in ("requests", "errors", "latency")] == [3, 3, 3]
    assert source.last_error == error and source.failures == 1


async def test_backoff_between_attempts_is_exponential(prometheus: FakePrometheus) -> None:
    prometheus.fail = 1000
    got = Received()
    source = got.source(prometheus.url, backoff=0.2)
    started = time.monotonic()
    try:
        await source.collect_once()
    finally:
        await source.close()
    # jittered as fleetsync.backoff.Backoff: the first wait in [0.1, 0.2], the second in [0.2, 0.4]
    assert 0.3 <= time.monotonic() - started < 2
    times = sorted(r.query["time"] for r in prometheus.seen)
    assert len(times) == 9


async def test_a_query_error_is_not_retried(prometheus: FakePrometheus) -> None:
    prometheus.fail, prometheus.status = 1000, 400
    prometheus.body = {"status": "error", "errorType": "bad_data", "error": "1:1: parse error: unexpected identifier"}
    got = Received()
    source = got.source(prometheus.url)
    try:
        await source.collect_once()
    finally:
        await source.close()
    (error,) = got.errors
    assert "HTTP 400: bad_data: 1:1: parse error: unexpected identifier" in error and "attempts" not in error
    assert len(prometheus.seen) == 3


async def test_an_answer_that_is_not_json_is_a_clear_error(prometheus: FakePrometheus) -> None:
    prometheus.fail, prometheus.status, prometheus.body = 1000, 502, "<html>Bad Gateway</html>"
    got = Received()
    source = got.source(prometheus.url)
    try:
        await source.collect_once()
    finally:
        await source.close()
    assert "HTTP 502: <html>Bad Gateway</html> (after 3 attempts)" in got.errors[0]


async def test_an_answer_of_the_wrong_shape_fails_the_collection(prometheus: FakePrometheus) -> None:
    prometheus.answers["latency"] = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    got = Received()
    source = got.source(prometheus.url)
    try:
        await source.collect_once()
    finally:
        await source.close()
    assert got.lists == [] and got.errors == [f"prometheus {prometheus.url}: latency: the answer is a 'matrix', not an instant vector"]


async def test_the_timeout_is_honoured(prometheus: FakePrometheus) -> None:
    prometheus.hang = True
    got = Received()
    source = got.source(prometheus.url, timeout=0.2, attempts=2)
    started = time.monotonic()
    try:
        await source.collect_once()
    finally:
        await source.close()
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 1.5  # two attempts of 0.2 s (the three queries side by side), a short backoff
    assert got.lists == []
    (error,) = got.errors
    assert error.startswith(f"prometheus {prometheus.url}: ") and "no answer within 0.2s (after 2 attempts)" in error
    assert [prometheus.attempts(k) for k in ("requests", "errors", "latency")] == [2, 2, 2]


async def test_an_unreachable_prometheus_is_reported() -> None:
    got = Received()
    app = web.Application()
    runner, port = await serve(app, "127.0.0.1", 0)
    await runner.cleanup()  # a port nothing listens on any more
    source = got.source(f"http://127.0.0.1:{port}", attempts=2)
    try:
        await source.collect_once()
    finally:
        await source.close()
    (error,) = got.errors
    assert error.startswith(f"prometheus http://127.0.0.1:{port}: ") and "ClientConnectorError" in error and "(after 2 attempts)" in error


async def test_a_path_prefix_and_a_bearer_token(prometheus: FakePrometheus, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    got = Received()
    source = got.source(prometheus.url + "/prefix/", token_file=token, scope="")
    try:
        assert await source.collect_once()
        assert {r.headers.get("Authorization") for r in prometheus.seen} == {"Bearer s3cret"}
        assert all('{reporter="destination"' in r.query["query"] and "destination_cluster" not in r.query["query"] for r in prometheus.seen)
        token.write_text("")
        assert not await source.collect_once()
    finally:
        await source.close()
    assert got.errors == [f"prometheus {prometheus.url}/prefix: token file {token} is empty"]


async def test_credentials_in_the_url_are_sent_and_never_shown(prometheus: FakePrometheus) -> None:
    prometheus.fail = 1000
    got = Received()
    source = got.source(prometheus.url.replace("http://", "http://user:pw@"), attempts=1)
    try:
        assert not await source.collect_once()
    finally:
        await source.close()
    assert {r.headers.get("Authorization") for r in prometheus.seen} == {"Basic dXNlcjpwdw=="}
    assert got.errors[0].startswith(f"prometheus {prometheus.url}: ") and "pw" not in got.errors[0] and "user" not in got.errors[0]
    with pytest.raises(ValueError, match="exclude each other"):
        got.source(prometheus.url.replace("http://", "http://user:pw@"), token_file="/t")


async def test_the_run_loop_reports_errors_keeps_the_last_state_and_clears_the_error(prometheus: FakePrometheus) -> None:
    got = Received()
    source = got.source(prometheus.url, interval=0.05, clock=time.time)
    task = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(5):
            while not got.lists:
                await got.changed.wait()
                got.changed.clear()
            assert got.sync.listed and got.sync.list_error == "" and len(got.sync.cache) == 2
            prometheus.fail, prometheus.queries = 1000, []  # Prometheus goes away: every attempt fails from now on
            while not got.errors:
                await got.changed.wait()
                got.changed.clear()
            assert got.sync.error.startswith(f"prometheus {prometheus.url}: ")
            assert len(got.sync.cache) == 2  # the last good state stays
            prometheus.fail = 0  # and comes back
            lists = len(got.lists)
            while len(got.lists) == lists:
                await got.changed.wait()
                got.changed.clear()
            assert got.sync.error == "" and len(got.sync.cache) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert source._session is None  # closed on the way out
    edge = pb.Object.FromString(got.sync.cache["shop/frontend.shop--cart"].wire)  # the agent keeps each object serialized
    spec = codec.body_json(edge.body, pb.COMPRESSION_LZ4)
    assert b'"collectedAt"' in spec


async def test_a_failing_callback_does_not_end_the_loop(prometheus: FakePrometheus) -> None:
    calls = 0
    called_thrice = asyncio.Event()

    async def on_list(rtype: ResourceType, items: list[dict[str, Any]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            called_thrice.set()
        raise RuntimeError("a bug in the agent")

    async def on_error(rtype: ResourceType, error: str) -> None:
        raise RuntimeError("another one")

    source = ServiceGraphSource(prometheus.url, cluster_id="c1", interval=0.02, on_list=on_list, on_error=on_error)
    task = asyncio.create_task(source.run())
    async with asyncio.timeout(5):
        await called_thrice.wait()
    prometheus.fail = 1000
    await asyncio.sleep(0.1)
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


def test_source_arguments_are_checked() -> None:
    async def nothing(*_: Any) -> None:
        return None

    for kw, message in (
        ({"url": "p:9090"}, "is not the base URL"),
        ({"cluster_id": ""}, "cluster id"),
        ({"window": 0}, "window must be positive"),
        ({"timeout": -1}, "timeout must be positive"),
        ({"attempts": 0}, "attempts must be at least 1"),
        ({"scope": "oops"}, "PromQL label matchers"),
    ):
        args: dict[str, Any] = {"url": "http://p:9090", "cluster_id": "c1", **kw}
        with pytest.raises(ValueError, match=message):
            ServiceGraphSource(args.pop("url"), on_list=nothing, on_error=nothing, **args)


# ---- the agent and its flags -----------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent_cli.register(parser.add_subparsers())
    return parser.parse_args(["agent", "--cluster-id", "c1", "--serve-state", "127.0.0.1:0", *argv])


def test_the_agent_syncs_the_service_graph_when_it_has_a_prometheus() -> None:
    config = agent_cli.config_from(_args("--prometheus", "http://prometheus.istio-system:9090/", "--prometheus-window", "10m", "--prometheus-interval", "15"))
    assert (config.prometheus_url, config.prometheus_window, config.prometheus_interval, config.prometheus_timeout) == (
        "http://prometheus.istio-system:9090",
        600,
        15,
        10,
    )
    assert config.prometheus_selector is None
    assert SERVICE_EDGE not in config.types
    agent = Agent(config)
    assert SERVICE_EDGE.gvk in agent.syncs
    assert "servicegraph" in agent._hello().capabilities
    source = agent.service_graph
    assert source is not None
    assert source.scope == 'destination_cluster="c1"' and source.window == 600 and source.interval == 15

    plain = Agent(agent_cli.config_from(_args()))
    assert SERVICE_EDGE.gvk not in plain.syncs and "servicegraph" not in plain._hello().capabilities and plain.service_graph is None


def test_prometheus_flags() -> None:
    config = agent_cli.config_from(
        _args("--prometheus", "https://p:9090", "--prometheus-selector", 'destination_cluster="Kubernetes"', "--prometheus-timeout", "2.5s")
    )
    assert config.prometheus_selector == 'destination_cluster="Kubernetes"' and config.prometheus_timeout == 2.5
    assert agent_cli.config_from(_args("--prometheus", "http://p:9090", "--prometheus-selector", "")).prometheus_selector == ""
    for argv, message in (
        (["--prometheus", "p:9090"], "--prometheus: 'p:9090' is not the base URL"),
        (["--prometheus", "http://p", "--prometheus-window", "5x"], "--prometheus-window: '5x' is not a positive duration"),
        (["--prometheus", "http://p", "--prometheus-interval", "0"], "--prometheus-interval: '0' is not a positive duration"),
        (["--prometheus", "http://p", "--prometheus-timeout=-1s"], "--prometheus-timeout"),
        (["--prometheus", "http://p", "--prometheus-selector", "c1"], "--prometheus-selector: 'c1' is not a list of PromQL label matchers"),
        (["--prometheus", "http://p", "--prometheus-ca", "/nonexistent/ca.pem"], "--prometheus-ca /nonexistent/ca.pem: no such file"),
        (["--prometheus-selector", 'a="b"'], "--prometheus-selector without --prometheus URL"),
        (["--prometheus", "http://u:p@p", "--prometheus-token-file", __file__], "--prometheus-token-file and credentials in the --prometheus URL exclude"),
    ):
        with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
            agent_cli.config_from(_args(*argv))
    assert math.isclose(parse_duration("1m30s"), 90)
