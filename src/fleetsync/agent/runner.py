"""The agent's main loop: watch every type, connect to a hub (forever), and drive the uplink.

(Or, in pull mode, ``serve_state``: no hub connection at all; the agent serves its state at
``GET /v1/state`` and a hub's refresh scheduler fetches it.)

On every connection: Hello -> Welcome (or Reject) -> an :class:`~fleetsync.agent.uplink.Uplink`
decides, per type, what to send; this module only moves its messages over the
connection, wakes it when the cluster changes, when the hub says something, or when
one of its timers is due, and decides when the cluster's changes go: at once when
nothing sent is unacknowledged, batched (for at most ``flush_interval``) while the hub
is busy with what is in flight (:mod:`fleetsync.agent.batching`). A broken connection is
retried with backoff and jitter, across the hub URLs in turn, and never given up; a
rejection is retried no sooner than the hub's ``retry_after``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetsync import __version__
from fleetsync.agent.batching import ChangeBatcher
from fleetsync.agent.gatesync import GateSync
from fleetsync.agent.istio import IstioDetector, mesh_clusters
from fleetsync.agent.kube import Pages, TypeWatcher, api_client
from fleetsync.agent.localconfig import ConfigMapRef, LocalConfigError, open_target
from fleetsync.agent.metrics import AgentMetrics, MetricsServer
from fleetsync.agent.servicegraph import ServiceGraphSource
from fleetsync.agent.typesync import TypeSync
from fleetsync.agent.uplink import HubRejected, Outgoing, Uplink, UplinkSettings
from fleetsync.agent.works import WorkApplier
from fleetsync.aio import cancel_and_wait
from fleetsync.backoff import Backoff
from fleetsync.model.types import ISTIO_MESH, SERVICE_EDGE, ResourceType
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.transport.base import AgentConnection, ClientTls, HubAddress, TransportError
from fleetsync.transport.connect import open_agent_connection
from fleetsync.transport.faults import FaultInjector, FaultSpec, FaultyConnection

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1


@dataclass
class AgentConfig:
    cluster_id: str
    hubs: list[HubAddress]
    token: str
    types: list[ResourceType]
    kubeconfig: str | None = None
    agent_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)
    exclude_namespaces: set[str] = field(default_factory=set)
    #: The longest a change waits to be batched with others (seconds): changes go at once while
    #: nothing sent is unacknowledged, else with the acks of what is in flight or after this long.
    flush_interval: float = 0.05
    #: No message to the hub is larger (the hub's Welcome may lower it).
    max_message_bytes: int = 512 * 1024
    uplink: UplinkSettings = field(default_factory=UplinkSettings)
    #: What to trust and present on grpcs:// and mqtts:// (None: the system's CAs, no client certificate).
    tls: ClientTls | None = None
    #: The local config target of feature gates (a JSON file, or a ConfigMap of this cluster); None: gates are not synced here.
    local_config: Path | ConfigMapRef | None = None
    #: Start in the join phase: push no local gate change until the hub's gates are applied.
    join: bool = False
    #: Apply the works the hub targets at this cluster (server-side apply); False: a read-only agent.
    apply_works: bool = True
    #: Look for Istio (istiod, its mesh config, the Istio CRDs) every this many seconds and sync what
    #: is found as one IstioMesh object; 0: do not look.
    istio_interval: float = 60.0
    #: Seconds between reads of a local config file (the hook's trigger; a ConfigMap is watched).
    local_config_interval: float = 0.2
    #: Seconds to wait for the hub's answer to Hello.
    hello_timeout: float = 30.0
    #: Serve /metrics here (host, port); None: no metrics endpoint.
    metrics_address: tuple[str, int] | None = None
    #: Inject message faults into every connection (a testing aid).
    faults: FaultSpec | None = None
    #: Pull mode: serve GET /v1/state (and /metrics) here and connect to no hub.
    serve_state: tuple[str, int] | None = None
    #: Pull mode: GET /v1/state needs this bearer token ("": anyone who reaches it may read it).
    serve_state_token: str = field(default="", repr=False)
    #: The metrics provider: a Prometheus-compatible API's base URL ("": none); the service graph
    #: (SERVICE_EDGE) is then collected from it and synced as one more type.
    prometheus_url: str = ""
    #: Seconds the figures cover, and seconds between collections.
    prometheus_window: float = 300.0
    prometheus_interval: float = 30.0
    #: PromQL label matchers every query is limited to (None: destination_cluster="<istiod's CLUSTER_ID, else cluster_id>"; "": none).
    prometheus_selector: str | None = None
    #: Seconds per query (each is tried 3 times, with backoff).
    prometheus_timeout: float = 10.0
    #: A bearer token file, and the CA bundle of an https:// Prometheus (default: the system's).
    prometheus_token_file: str | None = None
    prometheus_ca: str | None = None


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.agent_id = config.agent_id or f"{socket.gethostname()}/{config.cluster_id}"
        self.incarnation = uuid.uuid4().hex[:16]
        self.syncs = {
            rt.gvk: TypeSync(rt, self.incarnation, max_message_bytes=config.max_message_bytes, namespaces=config.namespaces, exclude=config.exclude_namespaces)
            for rt in config.types
        }
        if config.prometheus_url and SERVICE_EDGE.gvk not in self.syncs:  # collected by a ServiceGraphSource, not watched
            self.syncs[SERVICE_EDGE.gvk] = TypeSync(
                SERVICE_EDGE, self.incarnation, max_message_bytes=config.max_message_bytes, namespaces=config.namespaces, exclude=config.exclude_namespaces
            )
        if config.istio_interval and ISTIO_MESH.gvk not in self.syncs:  # found by an IstioDetector, not watched
            self.syncs[ISTIO_MESH.gvk] = TypeSync(ISTIO_MESH, self.incarnation, max_message_bytes=config.max_message_bytes)
        #: The metrics provider (--prometheus): collects SERVICE_EDGE in a task of its own.
        self.service_graph = self._service_graph() if config.prometheus_url else None
        self.metrics = AgentMetrics(config.cluster_id)
        self.metrics_server: MetricsServer | None = None
        if config.serve_state:
            self.metrics_server = MetricsServer(
                self.metrics, self.syncs, host=config.serve_state[0], port=config.serve_state[1], state=self.state, state_token=config.serve_state_token
            )
        elif config.metrics_address:
            self.metrics_server = MetricsServer(self.metrics, self.syncs, host=config.metrics_address[0], port=config.metrics_address[1])
        self._snapshots = 0
        self.faults = FaultInjector(config.faults) if config.faults else None
        self._changed = asyncio.Event()
        self.connected = asyncio.Event()
        self.gates = (
            GateSync(open_target(config.local_config, kubeconfig=config.kubeconfig, interval=config.local_config_interval), join=config.join)
            if config.local_config
            else None
        )
        #: Gate snapshots from the hub not applied yet (the gates task applies them, in order), and its wake-up.
        self._gate_snapshots: list[pb.SpecUpdate] = []
        self._gates_due = asyncio.Event()
        #: Applies the hub's works to the cluster (set once the cluster's API client exists).
        self.works: WorkApplier | None = None

    # ---- cluster side ----------------------------------------------------------------------

    async def _on_list(self, rtype: ResourceType, items: list[dict[str, Any]]) -> None:
        self.syncs[rtype.gvk].on_list(items)
        self._changed.set()

    async def _on_mesh(self, rtype: ResourceType, items: list[dict[str, Any]]) -> None:
        await self._on_list(rtype, items)
        if self.service_graph:
            self.service_graph.follow_mesh(mesh_clusters(items[0]))

    @staticmethod
    async def _run_service_graph(source: ServiceGraphSource, detector: IstioDetector | None) -> None:
        if detector:  # its first look tells the default scope (the cluster's name in Istio's metrics)
            await detector.looked.wait()
        await source.run()

    async def _on_pages(self, rtype: ResourceType, pages: Pages) -> None:
        sync = self.syncs[rtype.gvk]
        listing = sync.listing()
        async for items in pages:
            listing.add(items)
        sync.finish_list(listing)
        self._changed.set()

    async def _on_event(self, rtype: ResourceType, kind: str, obj: dict[str, Any]) -> None:
        self.syncs[rtype.gvk].on_event(kind, obj)
        self._changed.set()

    async def _on_error(self, rtype: ResourceType, error: str) -> None:
        self.syncs[rtype.gvk].list_error = error
        self._changed.set()

    # ---- pull mode ---------------------------------------------------------------------------

    def state(self) -> pb.State:
        """Everything this agent holds, as a FULL bundle per listed type (pull mode)."""
        self._snapshots += 1
        hello = self._hello()
        hello.token = ""
        del hello.resumable[:]
        bundles = []
        for type_, sync in self.syncs.items():
            if not sync.listed and not sync.list_error:
                continue  # nothing known yet: the hub keeps what it has
            bundles.append(
                pb.Bundle(
                    type=type_,
                    incarnation=self.incarnation,
                    seq=self._snapshots,
                    kind=pb.FULL,
                    last=True,
                    upserts=list(sync.cache.values()) if sync.listed else [],
                    compression=pb.COMPRESSION_LZ4,
                    error=sync.error,
                    collected_at_ms=int(time.time() * 1000),
                )
            )
        return pb.State(agent=hello, bundles=bundles)

    # ---- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        api = await api_client(self.config.kubeconfig)
        if self.metrics_server:
            await self.metrics_server.start()
            log.info("agent metrics on http://%s:%d/metrics", self.metrics_server.host, self.metrics_server.port)
        watchers = [
            asyncio.create_task(TypeWatcher(api, rt, on_list=self._on_pages, on_event=self._on_event, on_error=self._on_error).run(), name=f"watch-{rt.gvk}")
            for rt in self.config.types
        ]
        if self.gates:
            watchers.append(asyncio.create_task(self._watch_local_config(), name="local-config"))
        if self.config.apply_works and not self.config.serve_state:
            self.works = WorkApplier(api, metrics=self.metrics, on_report=self._changed.set)
            watchers.append(asyncio.create_task(self.works.run(), name="works"))
        detector: IstioDetector | None = None
        if self.config.istio_interval:
            detector = IstioDetector(api, on_list=self._on_mesh, on_error=self._on_error, interval=self.config.istio_interval)
            watchers.append(asyncio.create_task(detector.run(), name="istio"))
        if self.service_graph:  # its own task, which never ends but cancelled: a failing Prometheus leaves the watchers be
            watchers.append(asyncio.create_task(self._run_service_graph(self.service_graph, detector), name="servicegraph"))
        try:
            if self.config.serve_state:
                log.info("pull mode: serving this cluster's state on http://%s:%d/v1/state", self.metrics_server.host, self.metrics_server.port)  # type: ignore[union-attr]
                await asyncio.Event().wait()  # until cancelled
            else:
                await self._connect_forever()
        finally:
            await cancel_and_wait(watchers)
            await api.close()
            if self.metrics_server:
                await self.metrics_server.stop()

    def _service_graph(self) -> ServiceGraphSource:
        config = self.config
        return ServiceGraphSource(
            config.prometheus_url,
            on_list=self._on_list,
            on_error=self._on_error,
            cluster_id=config.cluster_id,
            scope=config.prometheus_selector,
            window=config.prometheus_window,
            interval=config.prometheus_interval,
            timeout=config.prometheus_timeout,
            token_file=config.prometheus_token_file,
            ca_file=config.prometheus_ca,
        )

    async def _open(self, address: HubAddress) -> AgentConnection:
        connection = await open_agent_connection(
            address, cluster_id=self.config.cluster_id, agent_id=self.agent_id, max_message_bytes=self.config.max_message_bytes * 2, tls=self.config.tls
        )
        return FaultyConnection(connection, self.faults) if self.faults else connection

    async def _connect_forever(self) -> None:
        # Capped at 10s: after a long outage, recovery should not wait for a long backoff; the
        # jitter spreads a fleet's reconnects when a hub comes back.
        backoff = Backoff(initial=0.2, maximum=10)
        attempt = 0
        while True:
            address = self.config.hubs[attempt % len(self.config.hubs)]
            attempt += 1
            try:
                connection = await self._open(address)
            except TransportError as exc:
                self.metrics.connections.labels("failed").inc()
                delay = backoff.next_delay()
                log.warning("cannot reach hub %s: %s; retrying in %.1fs", address, exc, delay)
                await asyncio.sleep(delay)
                continue
            try:
                await self._session(connection, address, backoff)
            except HubRejected as exc:
                self.metrics.connections.labels("rejected").inc()
                delay = max(exc.reject.retry_after_ms / 1000, backoff.next_delay())
                log.error("hub %s rejected cluster %s (%s): %s; retrying in %.1fs", address, self.config.cluster_id, exc.reason, exc.reject.message, delay)
                await asyncio.sleep(delay)
            except TransportError as exc:
                delay = backoff.next_delay()
                log.warning("connection to hub %s lost: %s; reconnecting in %.1fs", address, exc, delay)
                await asyncio.sleep(delay)
            except Exception:
                # A bug, or a library failing in a way we did not foresee: this connection is done
                # for, but the agent is not -- its state is intact, and the next connection
                # resumes or repairs by digest.
                delay = backoff.next_delay()
                log.exception("session with hub %s failed unexpectedly; reconnecting in %.1fs", address, delay)
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                self.metrics.connected.set(0)
                await connection.close()

    async def _send(self, connection: AgentConnection, out: Outgoing) -> None:
        await connection.send(out.message)
        self.metrics.sent(out.kind, out.message.ByteSize())

    def _hello(self) -> pb.Hello:
        return pb.Hello(
            cluster_id=self.config.cluster_id,
            agent_id=self.agent_id,
            incarnation=self.incarnation,
            token=self.config.token,
            metadata={"agent_version": __version__, **self.config.metadata},
            capabilities=[
                "digest",
                "lz4",
                "chunk-acks",
                *(["works"] if self.config.apply_works else []),
                *(["servicegraph"] if self.config.prometheus_url else []),
            ],
            resumable=[
                pb.StreamPosition(type=t, incarnation=s.stream.incarnation, seq=min(s.stream.held, default=s.stream.seq)) for t, s in self.syncs.items()
            ],
            protocol_version=PROTOCOL_VERSION,
        )

    async def _welcome(self, connection: AgentConnection) -> pb.Welcome:
        await self._send(connection, Outgoing("hello", pb.AgentMessage(hello=self._hello())))
        try:
            first = await asyncio.wait_for(connection.receive(), self.config.hello_timeout)
        except TimeoutError:
            raise TransportError(f"the hub did not answer Hello within {self.config.hello_timeout:.0f}s") from None
        if first is None:
            raise TransportError("the hub closed the connection before answering Hello")
        kind = first.WhichOneof("message")
        self.metrics.received(kind or "", first.ByteSize())
        if kind == "reject":
            raise HubRejected(first.reject)
        if kind != "welcome":
            raise TransportError(f"expected Welcome, got {kind}")
        return first.welcome

    async def _session(self, connection: AgentConnection, address: HubAddress, backoff: Backoff) -> None:
        welcome = await self._welcome(connection)
        uplink = Uplink(self.syncs, welcome, settings=self.config.uplink, now=time.monotonic())
        log.info("connected to hub %s (%s) as agent %s, incarnation %s", address, welcome.hub_id, self.agent_id, self.incarnation)
        self.metrics.connections.labels("welcomed").inc()
        self.metrics.connected.set(1)
        backoff.reset()
        self.connected.set()
        inbox: asyncio.Queue[pb.HubMessage | Exception] = asyncio.Queue()
        reader = asyncio.create_task(self._read(connection, inbox), name="hub-reader")
        batcher = ChangeBatcher(self.config.flush_interval)
        try:
            while True:
                self._changed.clear()  # what changes from here on wakes the wait below
                now = time.monotonic()
                send_at = batcher.send_at(now, waiting=uplink.changes_waiting(), busy=uplink.in_flight > 0)
                flush = send_at is not None and send_at <= now
                for out in uplink.poll(now, changes=flush):
                    await self._send(connection, out)
                if flush:
                    batcher.sent(now)
                for change in self.gates.outgoing() if self.gates else []:
                    await self._send(connection, Outgoing("local_change", pb.AgentMessage(local_change=change)))
                if self.gates and (revision := self.gates.revision_news()):
                    await self._send(connection, Outgoing("status", pb.AgentMessage(status=pb.Status(gates_revision=revision))))
                for status in self.works.outgoing() if self.works else []:
                    await self._send(connection, Outgoing("status", pb.AgentMessage(status=status)))
                self.metrics.resyncs_outstanding.set(uplink.resyncs_outstanding)
                now = time.monotonic()
                deadline = uplink.next_deadline(now)
                send_at = batcher.send_at(now, waiting=uplink.changes_waiting(), busy=uplink.in_flight > 0)
                if send_at is not None:
                    deadline = min(deadline, send_at)
                # While changes wait for their batch, more changes need not wake the loop: only
                # an ack (the inbox) or the batch's time can send them.
                item = await self._wait(inbox, timeout=deadline - now, changes=send_at is None)
                while item is not None:
                    if isinstance(item, Exception):
                        raise item
                    if item.WhichOneof("message") == "spec_update":
                        self._spec_update(item.spec_update)
                    else:
                        uplink.receive(item, time.monotonic())
                    item = inbox.get_nowait() if not inbox.empty() else None
        finally:
            await cancel_and_wait([reader])
            if self.gates:
                self.gates.disconnected()
            if self.works:
                self.works.disconnected()

    # ---- feature gates -----------------------------------------------------------------------

    async def _watch_local_config(self) -> None:
        """The gates task: the hook (a change of the local config target becomes local changes to
        send) and the watcher (the hub's snapshots written to the target), one at a time, in order.
        A scan or snapshot that fails (a half-edited file, an unreachable cluster) is tried again."""
        assert self.gates is not None
        gates = self.gates
        scan_due = True

        def changed() -> None:
            nonlocal scan_due
            scan_due = True
            self._gates_due.set()

        watch = asyncio.create_task(gates.config.watch(changed), name="local-config-watch")
        retry = Backoff(initial=0.5, maximum=10)
        again: asyncio.TimerHandle | None = None
        try:
            while True:
                await self._gates_due.wait()
                self._gates_due.clear()
                failed = False
                if scan_due:  # first: a local change is recorded before a snapshot could overwrite it
                    scan_due = False
                    try:
                        await gates.scan()
                    except (LocalConfigError, OSError) as exc:  # a half-edited or broken file: say so, keep going
                        log.warning("%s", exc)
                        failed = True
                while self._gate_snapshots:
                    try:
                        await gates.apply_snapshot(self._gate_snapshots[0])
                    except (LocalConfigError, OSError, ValueError) as exc:
                        log.warning("gates from the hub not written to the local config: %s", exc)
                        del self._gate_snapshots[:-1]  # only the latest one is tried again
                        failed = True
                        break
                    del self._gate_snapshots[0]
                if gates.has_outgoing():
                    self._changed.set()
                if again:
                    again.cancel()
                again = asyncio.get_running_loop().call_later(retry.next_delay(), changed) if failed else None
                if not failed:
                    retry.reset()
        finally:
            if again:
                again.cancel()
            await cancel_and_wait([watch])
            await gates.config.close()

    def _spec_update(self, update: pb.SpecUpdate) -> None:
        if update.works_json:
            if self.works is not None:
                self.works.snapshot(update)
            return
        if self.gates is None:
            return
        self._gate_snapshots.append(update)  # applied by the gates task (_watch_local_config)
        self._gates_due.set()

    async def _read(self, connection: AgentConnection, inbox: asyncio.Queue[pb.HubMessage | Exception]) -> None:
        """Hub messages into ``inbox``, in order; the end of the connection as a TransportError."""
        try:
            while (message := await connection.receive()) is not None:
                self.metrics.received(message.WhichOneof("message") or "", message.ByteSize())
                inbox.put_nowait(message)
            inbox.put_nowait(TransportError("the hub closed the connection"))
        except TransportError as exc:
            inbox.put_nowait(exc)

    async def _wait(self, inbox: asyncio.Queue[pb.HubMessage | Exception], *, timeout: float, changes: bool) -> pb.HubMessage | Exception | None:
        """The next hub message; or None after a cluster change (if ``changes``) or the timeout."""
        if not inbox.empty():
            return inbox.get_nowait()
        if changes and self._changed.is_set():
            return None
        get = asyncio.ensure_future(inbox.get())
        waits: set[asyncio.Future[Any]] = {get}
        if changes:
            waits.add(asyncio.ensure_future(self._changed.wait()))
        try:
            await asyncio.wait(waits, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                if not waiting.done():
                    waiting.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        return None
