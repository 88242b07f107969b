"""The metrics provider: the mesh's service graph from a Prometheus-compatible HTTP API.

Every ``interval`` the agent runs three instant queries (``GET /api/v1/query``) over Istio's
standard metrics, each batched over every source -> destination pair at once and scoped to
this cluster (``destination_cluster="<cluster-id>"`` unless overridden)::

    sum by (PAIR) (increase(istio_requests_total{reporter="destination",SCOPE}[WINDOW]))
    sum by (PAIR) (increase(istio_requests_total{reporter="destination",response_code=~"5..",SCOPE}[WINDOW]))
    sum by (PAIR, le) (increase(istio_request_duration_milliseconds_bucket{reporter="destination",SCOPE}[WINDOW]))

and turns the answers into one ``ServiceEdge`` object per pair (:func:`fleetsync.model.servicegraph.edge_object`):
counts only, never percentiles. The objects reach the agent as a TypeWatcher's would: the
whole set through ``on_list`` after each successful collection (the type's TypeSync diffs it
into deltas and clears the type's error), and a failure, after the retries, through
``on_error`` as ``prometheus URL: reason`` (the hub shows it as the cluster's metrics error
and keeps the last edges). The source never stops: nothing it meets leaves its loop but a
cancellation, so a failing Prometheus never touches the Kubernetes state sync.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from fleetsync.backoff import Backoff
from fleetsync.errors import FleetsyncError
from fleetsync.model.servicegraph import edge_object
from fleetsync.model.types import SERVICE_EDGE, ResourceType

log = logging.getLogger(__name__)

OnList = Callable[[ResourceType, list[dict[str, Any]]], Awaitable[None]]
OnError = Callable[[ResourceType, str], Awaitable[None]]

DEFAULT_WINDOW = 300.0
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF = 0.5

#: The labels of a pair, in Istio's standard metrics.
SOURCE, SOURCE_NAMESPACE = "source_canonical_service", "source_workload_namespace"
DESTINATION, DESTINATION_NAMESPACE = "destination_service_name", "destination_service_namespace"
PAIR_LABELS = (SOURCE, SOURCE_NAMESPACE, DESTINATION, DESTINATION_NAMESPACE)
#: What Istio itself writes for a label it could not tell (also used for a label missing from a series).
UNKNOWN = "unknown"

Pair = tuple[tuple[str, str], tuple[str, str]]


class PrometheusError(FleetsyncError):
    """A query that failed, or an answer that is not what a Prometheus-compatible API answers;
    ``retryable``: worth another attempt (the network, a timeout, a 5xx, a 429)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


# ---- durations and queries -------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds of ``300``, ``300s``, ``2.5s``, ``5m``, ``1h30m``, ``500ms``, ``1d``; a ValueError
    saying what is accepted otherwise (also for zero and negative durations)."""
    cleaned = text.strip().lower()
    try:
        seconds = float(cleaned)
    except ValueError:
        seconds = math.nan
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(cleaned):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if cleaned and pos == len(cleaned):
            seconds = total
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration (e.g. 300, 300s, 5m, 1h30m, 500ms)")
    return seconds


def promql_duration(seconds: float) -> str:
    """A range selector's duration: whole seconds as ``300s``, else milliseconds (``1500ms``)."""
    if seconds <= 0:
        raise ValueError(f"a PromQL range must be positive, not {seconds}")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def default_scope(*cluster_names: str) -> str:
    """This cluster's requests: those Istio reports with its cluster (by any of its names) as the destination's."""
    if len(cluster_names) == 1:
        return f'destination_cluster="{_escape(cluster_names[0])}"'
    return f'destination_cluster=~"{_escape("|".join(re.escape(n) for n in cluster_names))}"'


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*(?:"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|`[^`]*`)\s*'
_MATCHERS = re.compile(rf"(?:{_MATCHER}(?:,{_MATCHER})*,?)?\s*")


def check_scope(scope: str) -> str:
    """``scope`` (PromQL label matchers, ``a="x",b=~"y.*"``; may be empty) stripped, or a ValueError
    saying why it cannot go inside a selector's braces."""
    scope = scope.strip()
    if not _MATCHERS.fullmatch(scope):
        raise ValueError(f'{scope!r} is not a list of PromQL label matchers (e.g. destination_cluster="c1",destination_service_namespace=~"shop|cart")')
    return scope.rstrip(",").strip()


@dataclass(frozen=True)
class Queries:
    """The three queries of one collection (PromQL)."""

    requests: str
    errors: str
    latency: str

    def items(self) -> tuple[tuple[str, str], ...]:
        return (("requests", self.requests), ("errors", self.errors), ("latency", self.latency))


def build_queries(window: float, scope: str) -> Queries:
    """The requests, errors (5xx) and latency-histogram queries over ``window`` seconds, within ``scope``."""
    scope = check_scope(scope)
    extra = f",{scope}" if scope else ""
    span = promql_duration(window)
    pair = ", ".join(PAIR_LABELS)
    return Queries(
        requests=f'sum by ({pair}) (increase(istio_requests_total{{reporter="destination"{extra}}}[{span}]))',
        errors=f'sum by ({pair}) (increase(istio_requests_total{{reporter="destination",response_code=~"5.."{extra}}}[{span}]))',
        latency=f'sum by ({pair}, le) (increase(istio_request_duration_milliseconds_bucket{{reporter="destination"{extra}}}[{span}]))',
    )


# ---- answers ---------------------------------------------------------------------------------


def _number(text: Any, what: str) -> float:
    """A sample value: Prometheus sends numbers as strings ("12.5", "NaN", "+Inf", "-Inf")."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise PrometheusError(f"{what}: a sample value is {text!r}, not a number")
    try:
        return float(text)
    except ValueError:
        raise PrometheusError(f"{what}: a sample value is {text!r}, not a number") from None


def vector(document: Any, what: str = "answer") -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each sample of an instant query's answer (the API's JSON document).

    A PrometheusError for ``status: error`` (with its errorType and error) and for any shape an
    instant vector query does not answer. Samples whose value is not finite (``NaN``, ``±Inf``:
    not a count) are left out."""
    if not isinstance(document, Mapping):
        raise PrometheusError(f"{what}: the answer is not a JSON object")
    status = document.get("status")
    if status == "error":
        kind, error = document.get("errorType") or "error", document.get("error") or "no reason given"
        raise PrometheusError(f"{what}: {kind}: {error}")
    if status != "success":
        raise PrometheusError(f"{what}: the answer's status is {status!r}, not success or error")
    data = document.get("data")
    if not isinstance(data, Mapping):
        raise PrometheusError(f"{what}: the answer has no data")
    if data.get("resultType") != "vector":
        raise PrometheusError(f"{what}: the answer is a {data.get('resultType')!r}, not an instant vector")
    result = data.get("result")
    if not isinstance(result, list):
        raise PrometheusError(f"{what}: the answer's result is not a list")
    samples: list[tuple[dict[str, str], float]] = []
    for sample in result:
        if not isinstance(sample, Mapping) or not isinstance(sample.get("metric", {}), Mapping):
            raise PrometheusError(f"{what}: a sample is not an object with a metric")
        value = sample.get("value")
        if not isinstance(value, list) or len(value) != 2:
            raise PrometheusError(f"{what}: a sample's value is {value!r}, not [timestamp, value]")
        number = _number(value[1], what)
        if not math.isfinite(number):
            continue
        labels = {str(k): str(v) for k, v in (sample.get("metric") or {}).items()}
        samples.append((labels, number))
    return samples


def _pair(labels: Mapping[str, str]) -> Pair:
    def get(name: str) -> str:
        return labels.get(name) or UNKNOWN

    return (get(SOURCE), get(SOURCE_NAMESPACE)), (get(DESTINATION), get(DESTINATION_NAMESPACE))


def _bound(le: str | None, what: str) -> float:
    if le is None:
        raise PrometheusError(f"{what}: a histogram sample has no le label")
    try:
        return float(le)  # "+Inf" included
    except ValueError:
        raise PrometheusError(f"{what}: a histogram sample has le={le!r}, not a number") from None


def rfc3339(timestamp: float) -> str:
    """``2026-11-30T12:00:00.123Z`` of a Unix time (rounded to the millisecond, as the query's ``time``)."""
    seconds, millis = divmod(round(timestamp * 1000), 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def edges_from_answers(requests: Any, errors: Any, latency: Any, *, window: float, collected_at: str) -> list[dict[str, Any]]:
    """ServiceEdge objects of the three queries' answers (the API's JSON documents), one per pair
    with requests in the window, sorted by pair. Buckets are sorted by bound (+Inf last) and made
    monotonic (``increase`` extrapolates each series on its own, so a bucket can come out a little
    below the one before it; Prometheus's ``histogram_quantile`` corrects this the same way)."""
    totals: dict[Pair, float] = {}
    for labels, value in vector(requests, "requests"):
        key = _pair(labels)
        totals[key] = totals.get(key, 0.0) + value
    failed: dict[Pair, float] = {}
    for labels, value in vector(errors, "errors"):
        key = _pair(labels)
        failed[key] = failed.get(key, 0.0) + value
    histograms: dict[Pair, dict[float, float]] = {}
    for labels, value in vector(latency, "latency"):
        buckets = histograms.setdefault(_pair(labels), {})
        bound = _bound(labels.get("le"), "latency")
        buckets[bound] = buckets.get(bound, 0.0) + value
    edges = []
    for key in sorted(totals):
        if totals[key] <= 0:
            continue
        cumulative, highest = [], 0.0
        for bound, count in sorted(histograms.get(key, {}).items()):
            highest = max(highest, count)
            cumulative.append((bound, highest))
        edges.append(
            edge_object(key[0], key[1], window=window, collected_at=collected_at, requests=totals[key], errors=failed.get(key, 0.0), buckets=cumulative)
        )
    return edges


# ---- the source ------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """``url`` without a trailing slash, or a ValueError when it is not an http(s) base URL."""
    try:
        parsed = URL(url.strip())
    except ValueError:
        parsed = URL()
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.query_string or parsed.fragment:
        raise ValueError(f"{url!r} is not the base URL of a Prometheus-compatible API (http[s]://HOST[:PORT][/PATH])")
    return url.strip().rstrip("/")


def _shown(url: str) -> str:
    """The URL as errors and logs show it: without credentials."""
    parsed = URL(url)
    return str(parsed.with_user(None)) if parsed.user or parsed.password else url


class ServiceGraphSource:
    """Collects the service graph from ``url`` every ``interval`` seconds and hands it over as a
    TypeWatcher hands over a type's objects (``on_list`` / ``on_error`` with :data:`SERVICE_EDGE`).

    ``scope``: PromQL label matchers every query is limited to (None: ``destination_cluster="<cluster_id>"``
    until :meth:`follow_mesh` names the cluster as Istio's metrics do; "": none). ``timeout``: seconds per HTTP request. A query is tried ``attempts`` times, with an
    exponential backoff from ``backoff`` seconds (doubling, jittered as :class:`~fleetsync.backoff.Backoff`)
    between attempts; the collection fails when any of its three queries does.
    ``token_file``: a bearer token, read at each collection (so it may be rotated); ``ca_file``:
    the CA bundle an https:// Prometheus is verified against (default: the system's).
    """

    def __init__(
        self,
        url: str,
        *,
        on_list: OnList,
        on_error: OnError,
        cluster_id: str = "",
        scope: str | None = None,
        window: float = DEFAULT_WINDOW,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        token_file: str | Path | None = None,
        ca_file: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        url = check_url(url)
        if token_file and (URL(url).user or URL(url).password):
            raise ValueError("a bearer token file and credentials in the URL exclude each other: choose one")
        if scope is None and not cluster_id:
            raise ValueError("either a scope or the cluster id (for the default scope) is needed")
        for name, value in (("window", window), ("interval", interval), ("timeout", timeout), ("backoff", backoff)):
            if not value > 0:
                raise ValueError(f"the {name} must be positive, not {value}")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self.url = url.rstrip("/")
        self.shown = _shown(self.url)
        self.endpoint = URL(self.url + "/api/v1/query")
        self.scope = check_scope(default_scope(cluster_id) if scope is None else scope)
        #: Whether the scope was given (else it is the default one, which follows the mesh's cluster names).
        self.scope_given = scope is not None
        self.cluster_id = cluster_id
        self.window = window
        self.interval = interval
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.token_file = Path(token_file) if token_file else None
        self.ca_file = Path(ca_file) if ca_file else None
        self.queries = build_queries(window, self.scope)
        self.on_list = on_list
        self.on_error = on_error
        self.clock = clock
        self.rtype = SERVICE_EDGE
        #: Collections that succeeded / failed so far, and the last failure ("" after a success).
        self.collections = 0
        self.failures = 0
        self.last_error = ""
        self._session: aiohttp.ClientSession | None = None
        self._warned_empty = False

    def follow_mesh(self, clusters: list[str]) -> None:
        """Scope the default way to the names Istio's metrics give this cluster (the istiod's
        ``CLUSTER_ID``, found by the Istio detection; none found: the agent's cluster id).
        A scope that was given stays."""
        if self.scope_given:
            return
        scope = default_scope(*(clusters or [self.cluster_id]))
        if scope != self.scope:
            log.info("prometheus %s: scoped to {%s}, this cluster's name in Istio's metrics", self.shown, scope)
            self.scope = scope
            self.queries = build_queries(self.window, scope)
            self._warned_empty = False

    def __repr__(self) -> str:
        return f"ServiceGraphSource({self.shown}, scope={self.scope!r}, window={self.window}s, interval={self.interval}s)"

    # ---- HTTP ----------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        try:
            return ssl.create_default_context(cafile=str(self.ca_file))
        except ssl.SSLError as exc:  # before OSError, which it is a kind of
            raise PrometheusError(f"CA bundle {self.ca_file}: {exc.reason or exc}") from None
        except OSError as exc:
            raise PrometheusError(f"CA bundle {self.ca_file}: {exc.strerror or exc}") from None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            context = self._ssl()
            connector = aiohttp.TCPConnector(ssl=context) if context else aiohttp.TCPConnector()
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                raise PrometheusError(f"token file {self.token_file}: {exc.strerror or exc}") from None
            if not token:
                raise PrometheusError(f"token file {self.token_file} is empty")
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _query_once(self, name: str, query: str, at: float) -> Any:
        """The JSON answer to one instant query, or a PrometheusError (``retryable`` when another try may help)."""
        session = self._session_now()
        params = {"query": query, "time": f"{at:.3f}"}
        try:
            async with session.get(self.endpoint, params=params, headers=self._headers(), timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                body = await response.read()
                status = response.status
        except TimeoutError:
            raise PrometheusError(f"{name} query: no answer within {self.timeout:g}s", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise PrometheusError(f"{name} query: {type(exc).__name__}: {exc}", retryable=True) from None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if status >= 400 or not isinstance(document, dict):
            retryable = status >= 500 or status == 429
            if isinstance(document, dict) and document.get("status") == "error":
                reason = f"{document.get('errorType') or 'error'}: {document.get('error') or 'no reason given'}"
            else:
                reason = body[:200].decode(errors="replace").strip() or "empty body"
            if status < 400:
                raise PrometheusError(f"{name} query: HTTP {status}: the answer is not a JSON object: {reason}", retryable=True)
            raise PrometheusError(f"{name} query: HTTP {status}: {reason}", retryable=retryable)
        return document

    async def _query(self, name: str, query: str, at: float) -> Any:
        """One query, tried up to ``attempts`` times while it fails in a way another try may mend."""
        backoff = Backoff(initial=self.backoff, maximum=self.backoff * 2 ** max(0, self.attempts - 2))
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._query_once(name, query, at)
            except PrometheusError as exc:
                if not exc.retryable or attempt == self.attempts:
                    if attempt > 1:
                        raise PrometheusError(f"{exc} (after {attempt} attempts)") from None
                    raise
                delay = backoff.next_delay()
                log.info("prometheus %s: %s; attempt %d of %d in %.2fs", self.shown, exc, attempt + 1, self.attempts, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # ---- collections ---------------------------------------------------------------------

    async def collect(self) -> list[dict[str, Any]]:
        """One collection: the three queries at the same instant (concurrently, each with its retries),
        made into ServiceEdge objects; a PrometheusError saying what failed."""
        at = self.clock()
        answers = await asyncio.gather(*(self._query(name, query, at) for name, query in self.queries.items()), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        requests, errors, latency = answers
        edges = edges_from_answers(requests, errors, latency, window=self.window, collected_at=rfc3339(at))
        if not edges and not self._warned_empty:
            self._warned_empty = True
            log.warning(
                "prometheus %s: no Istio requests in the last %s within {%s}; is the scope right?", self.shown, promql_duration(self.window), self.scope
            )
        return edges

    async def collect_once(self) -> bool:
        """One collection handed over: ``on_list`` with the edges, or ``on_error`` with why not. Never raises
        (but a cancellation)."""
        try:
            edges = await self.collect()
        except PrometheusError as exc:
            return await self._failed(str(exc))
        except Exception as exc:  # a bug, or a library failing unforeseen: reported like any failure
            log.exception("prometheus %s: collection failed unexpectedly", self.shown)
            return await self._failed(f"{type(exc).__name__}: {exc}")
        try:
            await self.on_list(self.rtype, edges)
        except Exception:
            log.exception("prometheus %s: the agent did not take the service graph", self.shown)
            return False
        if self.last_error:
            log.info("prometheus %s: collecting again (%d edges)", self.shown, len(edges))
        self.collections += 1
        self.last_error = ""
        return True

    async def _failed(self, reason: str) -> bool:
        error = f"prometheus {self.shown}: {reason}"
        self.failures += 1
        if error != self.last_error:
            log.warning("%s; the hub keeps the last service graph collected; trying again in %.0fs", error, self.interval)
        self.last_error = error
        try:
            await self.on_error(self.rtype, error)
        except Exception:
            log.exception("prometheus %s: the agent did not take the error", self.shown)
        return False

    async def run(self) -> None:
        """Collect every ``interval`` seconds (from the start of one collection to the next's) until cancelled."""
        loop = asyncio.get_running_loop()
        log.info("collecting the service graph: %r", self)
        try:
            while True:
                started = loop.time()
                await self.collect_once()
                await asyncio.sleep(max(0.0, started + self.interval - loop.time()))
        finally:
            await self.close()
