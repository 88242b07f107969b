"""The agent's Prometheus metrics (a registry per agent, so one process can run several).

Bytes are the protocol messages' serialized size: what any transport carries, before
its own framing (HTTP/2, MQTT, NATS headers).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fleetsync.agent.typesync import TypeSync
from fleetsync.processmetrics import register_process_metrics
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.web import serve

log = logging.getLogger(__name__)

#: The media type of ``GET /v1/state``: a serialized fleetsync.v1.State protobuf.
STATE_CONTENT_TYPE = "application/x-protobuf; messageType=fleetsync.v1.State"


class AgentMetrics:
    def __init__(self, cluster: str) -> None:
        self.registry = CollectorRegistry()
        register_process_metrics(self.registry)
        self._largest = 0
        labels = {"cluster": cluster}
        self.messages_sent = Counter(
            "fleetsync_agent_messages_sent_total",
            "Messages sent to the hub, by kind (hello, full, delta, repair, resume, resend, digest, error, heartbeat)",
            ["kind"],
            registry=self.registry,
        )
        self.bytes_sent = Counter(
            "fleetsync_agent_bytes_sent_total", "Serialized bytes of the messages sent to the hub, by kind", ["kind"], registry=self.registry
        )
        self.messages_received = Counter("fleetsync_agent_messages_received_total", "Messages from the hub, by kind", ["kind"], registry=self.registry)
        self.bytes_received = Counter("fleetsync_agent_bytes_received_total", "Serialized bytes of the messages from the hub", ["kind"], registry=self.registry)
        self.connections = Counter(
            "fleetsync_agent_connections_total", "Connection attempts by outcome (welcomed, rejected, failed)", ["outcome"], registry=self.registry
        )
        self.connected = Gauge("fleetsync_agent_connected", "1 while a session with a hub is open", registry=self.registry)
        self.objects = Gauge("fleetsync_agent_objects", "Objects cached per type", ["type"], registry=self.registry)
        self.pending = Gauge("fleetsync_agent_pending_changes", "Changes waiting to be sent, per type", ["type"], registry=self.registry)
        self.in_flight = Gauge("fleetsync_agent_unacked_messages", "Messages sent and not yet acknowledged, per type", ["type"], registry=self.registry)
        self.largest_message = Gauge("fleetsync_agent_largest_message_bytes", "The largest message sent to a hub so far", registry=self.registry)
        self.resyncs_outstanding = Gauge(
            "fleetsync_agent_resyncs_outstanding", "Digest resyncs queued or awaiting the hub's diff on this connection", registry=self.registry
        )
        self.state_requests = Counter("fleetsync_agent_state_requests_total", "GET /v1/state answered (pull mode, --serve-state)", registry=self.registry)
        self.state_in_flight = Gauge("fleetsync_agent_state_requests_in_flight", "GET /v1/state requests being answered now", registry=self.registry)
        self.state_in_flight_max = Gauge(
            "fleetsync_agent_state_requests_in_flight_max",
            "The most GET /v1/state requests ever answered at once (a hub refreshing a cluster twice at once would make it 2)",
            registry=self.registry,
        )
        self.work_applies = Counter(
            "fleetsync_agent_work_applies_total",
            "Manifests of works applied to the cluster, by outcome (applied, failed) and cause (work, drift, retry)",
            ["outcome", "cause"],
            registry=self.registry,
        )
        self.work_deletes = Counter(
            "fleetsync_agent_work_deletes_total", "Objects of works deleted from the cluster (work removed, retargeted or shrunk)", registry=self.registry
        )
        self.works = Gauge("fleetsync_agent_works", "Works the hub has this cluster hold", registry=self.registry)
        # seed 004 asks for the gate sync's latency and error rates
        self.gate_sync_seconds = Histogram(
            "fleetsync_agent_gate_sync_seconds",
            "Gate change propagation: direction up, from a local config change to the hub's snapshot confirming it; "
            "down, from the hub taking a gate write to its value written to the local config (hub clock to agent clock)",
            ["direction"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.gate_sync_errors = Counter(
            "fleetsync_agent_gate_sync_errors_total",
            "Gate sync failures by reason: scan (the hook could not read the local config, or store its agreed state), write (the hub's gates "
            "could not be written to the local config), invalid_snapshot (a hub snapshot not in the hub's format), refused (the hub refused this "
            "cluster's gate change)",
            ["reason"],
            registry=self.registry,
        )
        self.info = Gauge("fleetsync_agent_info", "The cluster this agent syncs", ["cluster"], registry=self.registry)
        self.info.labels(**labels).set(1)

    def sent(self, kind: str, size: int) -> None:
        self.messages_sent.labels(kind).inc()
        self.bytes_sent.labels(kind).inc(size)
        if size > self._largest:
            self._largest = size
            self.largest_message.set(size)

    def received(self, kind: str, size: int) -> None:
        self.messages_received.labels(kind).inc()
        self.bytes_received.labels(kind).inc(size)

    def observe(self, syncs: Mapping[str, TypeSync]) -> None:
        for type_, sync in syncs.items():
            self.objects.labels(type_).set(len(sync.cache))
            self.pending.labels(type_).set(len(sync.pending))
            self.in_flight.labels(type_).set(sync.stream.in_flight())

    def total_bytes_sent(self) -> float:
        return sum(float(s.value) for m in self.bytes_sent.collect() for s in m.samples if s.name.endswith("_total"))


class MetricsServer:
    """``GET /metrics``, ``/healthz`` and ``/readyz`` for one agent; with ``state``, also ``GET /v1/state``
    (pull mode): the serialized :class:`~fleetsync.protocol.fleetsync_pb2.State` it returns, to
    requests bearing ``state_token`` when there is one.

    ``/readyz`` answers 200 when every check of ``readiness`` passes, else 503; both with a JSON
    body: ``{"ready": ..., "checks": {NAME: {"ok": ..., "reason": ...}}}``."""

    def __init__(
        self,
        metrics: AgentMetrics,
        syncs: Mapping[str, TypeSync],
        *,
        host: str,
        port: int,
        state: Callable[[], pb.State] | None = None,
        state_token: str = "",
        readiness: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.metrics = metrics
        #: Per check, what keeps the agent from being ready ("": nothing); None: always ready.
        self.readiness = readiness
        self._authorization = f"Bearer {state_token}".encode() if state_token else b""
        self.syncs = syncs
        self.host = host
        self.port = port
        self.state = state
        self._runner: web.AppRunner | None = None
        self._in_flight = 0
        self._in_flight_max = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self.state is not None:
            app.router.add_get("/v1/state", self._state)
        self._runner, self.port = await serve(app, self.host, self.port)

    async def _state(self, request: web.Request) -> web.StreamResponse:
        assert self.state is not None
        if self._authorization and not hmac.compare_digest(request.headers.get("Authorization", "").encode(), self._authorization):
            reason = "a wrong token" if "Authorization" in request.headers else "no token"
            log.warning("GET /v1/state from %s refused: %s", request.remote, reason)
            return web.Response(
                status=401, text=f"{reason}: /v1/state needs the agent's --serve-state-token-file as a bearer token\n", headers={"WWW-Authenticate": "Bearer"}
            )
        self._in_flight += 1
        self._in_flight_max = max(self._in_flight_max, self._in_flight)
        self.metrics.state_in_flight.set(self._in_flight)
        self.metrics.state_in_flight_max.set(self._in_flight_max)
        try:
            body = self.state().SerializeToString()
            # The response goes out while this request still counts as in flight: a second
            # refresh overlapping the first one is what the counter is there to show.
            response = web.StreamResponse(headers={"Content-Type": STATE_CONTENT_TYPE})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            self.metrics.state_requests.inc()
            return response
        finally:
            self._in_flight -= 1
            self.metrics.state_in_flight.set(self._in_flight)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.observe(self.syncs)
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = self.readiness() if self.readiness else {}
        ready = not any(problems.values())
        body = {"ready": ready, "checks": {name: {"ok": not problem, "reason": problem} for name, problem in problems.items()}}
        return web.json_response(body, status=200 if ready else 503)
