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
import random
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from fleetsync import __version__, logs, tracing
from fleetsync.agent.apijson import RAW
from fleetsync.agent.batching import ChangeBatcher
from fleetsync.agent.discovery import Discovery
from fleetsync.agent.gatesync import GateSync
from fleetsync.agent.istio import IstioDetector, mesh_clusters
from fleetsync.agent.kube import Pages, TypeWatcher, api_client, cluster_facts
from fleetsync.agent.localconfig import ConfigMapRef, LocalConfigError, open_target
from fleetsync.agent.metrics import AgentMetrics, MetricsServer
from fleetsync.agent.servicegraph import ServiceGraphSource
from fleetsync.agent.typesync import TypeSync
from fleetsync.agent.uplink import HubRejected, Outgoing, Uplink, UplinkSettings
from fleetsync.agent.works import WorkApplier
from fleetsync.aio import cancel_and_wait
from fleetsync.backoff import Backoff
from fleetsync.errors import FleetsyncError
from fleetsync.heap import retain_less
from fleetsync.model.types import ISTIO_MESH, SERVICE_EDGE, ResourceType, UnknownResourceType
from fleetsync.model.typeselect import TypeSelection, is_secret
from fleetsync.model.workpolicy import WorksPolicy
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.typeinfo import to_pb
from fleetsync.protocol.wireobject import RawFields
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
    #: Choose the types from the cluster's discovery at start (``--types all``, or names this agent
    #: was not built with, e.g. a CRD's); None: ``types`` as given.
    discover: TypeSelection | None = None
    #: Seconds between reads of the cluster's discovery (``--types all``): new types start syncing; 0: only at start.
    discovery_interval: float = 0.0
    #: Sync Secrets' ``data`` and ``stringData`` (else a synced Secret's values are left out).
    sync_secret_data: bool = False
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
    #: Start in the join phase: push no local gate change until the hub's gates are applied
    #: (a cluster new to the fleet joins without it: the hub says so).
    join: bool = False
    #: This cluster bootstraps the fleet's gates: it never joins, its local gates go up.
    bootstrap: bool = False
    #: Apply the works the hub targets at this cluster (server-side apply); False: a read-only agent.
    apply_works: bool = True
    #: What works may touch on this cluster (kinds, namespaces): --works-allow-kinds, --works-allow-namespaces, --works-deny-namespaces.
    works_policy: WorksPolicy = field(default_factory=WorksPolicy)
    #: The longest wait (seconds) between retries of the cluster's API: lists and watches, the works
    #: task's discovery, the local config target; and of a failed agent task.
    kube_retry_max: float = 30.0
    #: Objects per page of the cluster's LISTs (a page's bytes are held while its objects are made into their wire form).
    list_page_size: int = 500
    #: The longest wait (seconds) between retries of a work's failed manifests.
    works_retry_max: float = 60.0
    #: Look for Istio (istiod, its mesh config, the Istio CRDs) every this many seconds and sync what
    #: is found as one IstioMesh object; 0: do not look.
    istio_interval: float = 60.0
    #: Seconds between reads of a local config file (the hook's trigger; a ConfigMap is watched).
    local_config_interval: float = 0.2
    #: Seconds to wait for the hub's answer to Hello.
    hello_timeout: float = 30.0
    #: Seconds to wait for a connection to the hub (or broker) to be established.
    connect_timeout: float = 10.0
    #: gRPC: ping a silent hub after this many seconds; drop the connection if the ping is not answered within the timeout.
    keepalive_time: float = 20.0
    keepalive_timeout: float = 10.0
    #: Reconnect backoff (exponential with jitter): the first delay, and the most it grows to.
    #: Capped low so that recovery after a long outage does not wait for a long backoff.
    reconnect_backoff_initial: float = 0.2
    reconnect_backoff_max: float = 10.0
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


class TypesChanged(FleetsyncError):
    """The agent syncs new types: its session ends so that the next Hello reports them."""


class Complaint:
    """The warnings of a retry loop: each logged when it first happens, then at most every
    ``interval`` seconds while the trouble lasts (with how many times it happened meanwhile),
    and the end of the trouble once; a loop retrying fast never floods the log."""

    #: Distinct messages remembered (the oldest is forgotten first): messages that vary never grow it without bound.
    REMEMBERED = 16

    def __init__(self, what: str, *, interval: float = 60.0) -> None:
        self.what = what
        self.interval = interval
        #: message -> (when it was last logged, how many times it happened since)
        self._said: dict[str, tuple[float, int]] = {}

    def failed(self, message: str) -> None:
        now = time.monotonic()
        said_at, unsaid = self._said.pop(message, (None, 0))
        if said_at is None or now - said_at >= self.interval:
            log.warning("%s%s", message, f" ({unsaid} more times since it was last said)" if unsaid else "")
            self._said[message] = (now, 0)
        else:
            self._said[message] = (said_at, unsaid + 1)
        while len(self._said) > self.REMEMBERED:
            del self._said[next(iter(self._said))]

    def over(self) -> None:
        if self._said:
            log.info("%s: working again", self.what)
            self._said.clear()


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        #: What the agent found of its cluster at start (Kubernetes version, node count), sent in every Hello.
        self.cluster_facts: dict[str, str] = {}
        self.agent_id = config.agent_id or f"{socket.gethostname()}/{config.cluster_id}"
        self.incarnation = uuid.uuid4().hex[:16]
        self.syncs = {
            rt.gvk: TypeSync(rt, self.incarnation, max_message_bytes=config.max_message_bytes, namespaces=config.namespaces, exclude=config.exclude_namespaces)
            for rt in config.types
        }
        #: The types this agent watches in the cluster (``config.types``, or what discovery chose).
        self.types: list[ResourceType] = list(config.types)
        #: The set of types changed (a CRD created or deleted): the session ends so that the next Hello reports the new set.
        self._types_changed = False
        #: Each watched type's task (a type the cluster stops serving has its watch ended).
        self._watchers: dict[str, asyncio.Task[None]] = {}
        #: Types the cluster no longer serves whose objects have left the hub: dropped before the next Hello.
        self._retiring: set[str] = set()
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
                self.metrics,
                self.syncs,
                host=config.serve_state[0],
                port=config.serve_state[1],
                state=self.state,
                state_token=config.serve_state_token,
                readiness=self.readiness,
            )
        elif config.metrics_address:
            self.metrics_server = MetricsServer(
                self.metrics, self.syncs, host=config.metrics_address[0], port=config.metrics_address[1], readiness=self.readiness
            )
        self._snapshots = 0
        self.faults = FaultInjector(config.faults) if config.faults else None
        self._changed = asyncio.Event()
        #: Two types LIST at a time: one's page is taken in while the API server makes the other's,
        #: and only two pages are in memory (agent/kube.py).
        self._list_slots = asyncio.Semaphore(2)
        self.connected = asyncio.Event()
        self.gates = (
            GateSync(
                open_target(config.local_config, kubeconfig=config.kubeconfig, interval=config.local_config_interval, retry_max=config.kube_retry_max),
                join=config.join,
                bootstrap=config.bootstrap,
                metrics=self.metrics,
            )
            if config.local_config
            else None
        )
        #: Gate snapshots from the hub not applied yet (the gates task applies them, in order), and its wake-up.
        self._gate_snapshots: list[pb.SpecUpdate] = []
        self._gates_due = asyncio.Event()
        #: Applies the hub's works to the cluster (set once the cluster's API client exists).
        self.works: WorkApplier | None = None
        #: What went wrong the last time the gates task read or wrote the local config ("": nothing).
        self.local_config_problem = "not read or written yet"

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

    def _kept(self, rtype: ResourceType, obj: RawFields) -> RawFields:
        """What is synced of ``obj``: a Secret without its values unless --sync-secret-data."""
        if is_secret(rtype) and not self.config.sync_secret_data:
            return {k: v for k, v in obj.items() if k not in ("data", "stringData")}
        return obj

    async def _on_pages(self, rtype: ResourceType, pages: Pages[RawFields]) -> None:
        sync = self.syncs[rtype.gvk]
        listing = sync.listing()
        async for items in pages:
            listing.add([self._kept(rtype, item) for item in items] if is_secret(rtype) else items)
        sync.finish_list(listing)
        self._changed.set()

    async def _on_event(self, rtype: ResourceType, kind: str, obj: RawFields) -> None:
        self.syncs[rtype.gvk].on_change(kind, self._kept(rtype, obj))
        self._changed.set()

    async def _on_error(self, rtype: ResourceType, error: str) -> None:
        self.syncs[rtype.gvk].list_error = error
        self._changed.set()

    # ---- readiness -----------------------------------------------------------------------------

    def readiness(self) -> dict[str, str]:
        """``GET /readyz``: per check, what keeps the agent from being ready ("": nothing).
        ``connected``: a session with a hub is open (pull mode: not checked); ``synced``: every
        type synced was listed from the cluster and the hub has its stream (its FULL, or the
        digest repair, acknowledged; pull mode: listed); ``local_config`` (with --local-config):
        the last read and write of the local config target succeeded."""
        checks = {"connected": "" if self.config.serve_state or self.connected.is_set() else "no session with a hub is open"}
        behind = []
        for type_, sync in self.syncs.items():
            if sync.refused:
                behind.append(f"{type_} (refused by the hub: {sync.refused})")
            elif not sync.listed:
                behind.append(f"{type_} (not listed: {sync.list_error})" if sync.list_error else f"{type_} (not listed yet)")
            elif not self.config.serve_state and not sync.stream.established:
                behind.append(f"{type_} (the hub has not acknowledged its first sync)")
        shown = ", ".join(behind[:5]) + (f" and {len(behind) - 5} more" if len(behind) > 5 else "")
        checks["synced"] = f"{len(behind)} of {len(self.syncs)} types not synced yet: {shown}" if behind else ""
        if self.gates:
            checks["local_config"] = f"local config {self.gates.config}: {self.local_config_problem}" if self.local_config_problem else ""
        return checks

    # ---- pull mode ---------------------------------------------------------------------------

    def state(self) -> pb.State:
        """Everything this agent holds, as a FULL bundle per listed type (pull mode)."""
        self._snapshots += 1
        hello = self._hello()
        hello.token = ""
        del hello.resumable[:]
        state = pb.State(agent=hello)
        for type_, sync in self.syncs.items():
            if not sync.listed and not sync.list_error:
                continue  # nothing known yet: the hub keeps what it has
            bundle = state.bundles.add(
                type=type_,
                incarnation=self.incarnation,
                seq=self._snapshots,
                kind=pb.FULL,
                last=True,
                compression=pb.COMPRESSION_LZ4,
                error=sync.error,
                collected_at_ms=int(time.time() * 1000),
            )
            if sync.listed:
                sync.add_snapshot(bundle.upserts)  # built in place: no copy per object or per bundle
        return state

    # ---- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        logs.bind(cluster=self.config.cluster_id, session=self.incarnation)  # on every line of this agent and its tasks
        retain_less()  # an agent runs in every cluster: its heap gives back what it no longer uses (heap.py)
        api = await api_client(self.config.kubeconfig)
        self.cluster_facts = await cluster_facts(api)
        if self.metrics_server:
            await self.metrics_server.start()
            log.info("agent metrics on http://%s:%d/metrics", self.metrics_server.host, self.metrics_server.port)
        config = self.config
        discovery = Discovery(api)  # (one for the agent's life: it remembers what it read of the CRDs)
        if config.discover is not None:
            self._add_types(await self._discover(discovery, config.discover))
        watchers = [self._watch(api, rt) for rt in self.types]
        if config.discover is not None and config.discovery_interval > 0:
            selection = config.discover
            watchers.append(self._task("discovery", lambda: self._rediscover(api, discovery, selection, watchers)))
        if self.gates:
            watchers.append(self._task("local-config", self._watch_local_config))
        if config.apply_works and not config.serve_state:
            self.works = WorkApplier(
                api,
                metrics=self.metrics,
                on_report=self._changed.set,
                policy=config.works_policy,
                retry_max=config.works_retry_max,
                kube_retry_max=config.kube_retry_max,
            )
            watchers.append(self._task("works", self.works.run))
        detector: IstioDetector | None = None
        if config.istio_interval:
            detector = IstioDetector(api, on_list=self._on_mesh, on_error=self._on_error, interval=config.istio_interval)
            watchers.append(self._task("istio", detector.run))
        if self.service_graph:  # its own task, which never ends but cancelled: a failing Prometheus leaves the watchers be
            source = self.service_graph
            watchers.append(self._task("servicegraph", lambda: self._run_service_graph(source, detector)))
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

    def _watch(self, api: Any, rtype: ResourceType) -> asyncio.Task[None]:
        config = self.config
        watcher = TypeWatcher(
            api,
            rtype,
            RAW,
            on_list=self._on_pages,
            on_event=self._on_event,
            on_error=self._on_error,
            retry_max=config.kube_retry_max,
            list_slots=self._list_slots,
            page_size=config.list_page_size,
        )

        async def watch() -> None:
            logs.bind(type=rtype.gvk)  # the lines of this type's list and watch say which type
            await watcher.run()

        task = self._watchers[rtype.gvk] = self._task(f"watch-{rtype.gvk}", watch)
        return task

    def _add_types(self, types: list[ResourceType]) -> list[ResourceType]:
        """Start syncing those of ``types`` not synced yet; the ones added."""
        config = self.config
        added = [t for t in types if t.gvk not in self.syncs]
        for rtype in added:
            self.syncs[rtype.gvk] = TypeSync(
                rtype, self.incarnation, max_message_bytes=config.max_message_bytes, namespaces=config.namespaces, exclude=config.exclude_namespaces
            )
            self.types.append(rtype)
        return added

    async def _discover(self, discovery: Discovery, selection: TypeSelection) -> list[ResourceType]:
        """The types ``selection`` chooses among those the cluster serves, retried with backoff until
        the cluster's discovery answers (a name it does not serve is an error said once a minute)."""
        backoff = Backoff(initial=0.5, maximum=self.config.kube_retry_max)
        trouble = Complaint("the cluster's discovery")
        while True:
            try:
                chosen = selection.choose(await discovery.served_types())
                trouble.over()
                return chosen
            except (ApiException, OSError, aiohttp.ClientError, TimeoutError, UnknownResourceType) as exc:
                trouble.failed(f"--types: cannot choose the types to sync: {exc}")
            await asyncio.sleep(backoff.next_delay())

    async def _rediscover(self, api: Any, discovery: Discovery, selection: TypeSelection, tasks: list[asyncio.Task[None]]) -> None:
        """Read the cluster's discovery every ``discovery_interval`` seconds and start syncing new
        types (a CRD created). A type that goes away (a CRD deleted) needs nothing here: its
        watcher finds it absent and lists it empty, so its objects leave the hub."""
        while True:
            await asyncio.sleep(self.config.discovery_interval)
            chosen = await self._discover(discovery, selection)
            added = self._add_types(chosen)
            if added:
                log.info("the cluster serves new types, synced from now: %s", ", ".join(t.gvk for t in added))
                tasks.extend(self._watch(api, rtype) for rtype in added)
                self._types_changed = True
            served = {t.gvk for t in chosen}
            for rtype in self.types:
                sync = self.syncs.get(rtype.gvk)
                if rtype.gvk in served or rtype.gvk in self._retiring or sync is None:
                    continue
                if sync.listed and not sync.cache and not sync.pending and sync.stream.in_flight() == 0:  # its objects' deletes are acknowledged
                    log.info("the cluster no longer serves %s (its CRD was deleted): its objects have left the hub; it is no longer synced", rtype.gvk)
                    self._watchers.pop(rtype.gvk).cancel()
                    self._retiring.add(rtype.gvk)
                    self._types_changed = True
            if self._types_changed:
                self._changed.set()

    def _retire_types(self) -> None:
        """Forget the types the cluster stopped serving (between sessions: a session's uplink holds the syncs)."""
        for gvk in self._retiring:
            self.syncs.pop(gvk, None)
        self.types = [t for t in self.types if t.gvk not in self._retiring]
        self._retiring.clear()

    def _task(self, name: str, start: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """A task of the agent's that must run as long as the agent does (a watch, works, gates, ...),
        started again if it ever ends: a failure no one foresaw (a library's exception, a bug) is
        logged with its traceback and retried with backoff, instead of silencing that part of
        the agent for good while the rest looks healthy."""

        async def keep_running() -> None:
            backoff = Backoff(initial=1.0, maximum=self.config.kube_retry_max)
            while True:
                started = time.monotonic()
                try:
                    await start()
                    failure = "ended"
                except Exception:
                    log.exception("agent task %s failed", name)
                    failure = "failed"
                if time.monotonic() - started > 10 * self.config.kube_retry_max:
                    backoff.reset()  # it ran well for a long while: this is a new failure, not a repeated one
                delay = backoff.next_delay()
                log.error("agent task %s %s; starting it again in %.1fs", name, failure, delay)
                await asyncio.sleep(delay)

        return asyncio.create_task(keep_running(), name=name)

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
        config = self.config
        connection = await open_agent_connection(
            address,
            cluster_id=config.cluster_id,
            agent_id=self.agent_id,
            max_message_bytes=config.max_message_bytes * 2,
            connect_seconds=config.connect_timeout,
            tls=config.tls,
            keepalive_time=config.keepalive_time,
            keepalive_timeout=config.keepalive_timeout,
        )
        return FaultyConnection(connection, self.faults) if self.faults else connection

    async def _connect_forever(self) -> None:
        # Capped (10s by default): after a long outage, recovery should not wait for a long
        # backoff; the jitter spreads a fleet's reconnects when a hub comes back.
        backoff = Backoff(initial=self.config.reconnect_backoff_initial, maximum=self.config.reconnect_backoff_max)
        attempt = 0
        refused = ""  # the reason of the last rejection in a row ("" once welcomed)
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
            except TypesChanged as exc:
                log.info("reconnecting to hub %s: %s", address, exc)
                attempt -= 1  # the same hub again, at once
            except HubRejected as exc:
                if self.connected.is_set():  # welcomed before this: a new state, said again
                    refused = ""
                self.metrics.connections.labels("rejected").inc()
                # no sooner than the hub asks, jittered (agents refused together do not come back together)
                delay = max(exc.reject.retry_after_ms / 1000 * random.uniform(1.0, 1.25), backoff.next_delay())
                # said once per change of state: a second agent with this id, refused every few
                # seconds for hours, must not fill the log with the same line
                level = logging.DEBUG if refused == exc.reason else logging.ERROR
                refused = exc.reason
                log.log(level, "hub %s rejected cluster %s (%s): %s; retrying in %.1fs", address, self.config.cluster_id, exc.reason, exc.reject.message, delay)
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
                if self.connected.is_set():
                    refused = ""
                self.connected.clear()
                self.metrics.connected.set(0)
                await connection.close()

    async def _send(self, connection: AgentConnection, out: Outgoing) -> None:
        if tracing.enabled() and out.message.HasField("bundle"):
            tracing.bundle_sent(self.config.cluster_id, out.kind, out.message.bundle)
        await connection.send(out.message)
        self.metrics.sent(out.kind, out.message.ByteSize())

    def _hello(self) -> pb.Hello:
        return pb.Hello(
            cluster_id=self.config.cluster_id,
            agent_id=self.agent_id,
            incarnation=self.incarnation,
            token=self.config.token,
            metadata={"agent_version": __version__, **self.cluster_facts, **self.config.metadata},
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
            # what the hub needs to serve the types it was not built with (the collected ones are the hub's own)
            types=[to_pb(s.rtype) for s in self.syncs.values() if not s.rtype.collected],
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
        uplink = Uplink(self.syncs, welcome, settings=self.config.uplink, now=time.monotonic(), lossless=connection.lossless)
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
                if self._types_changed:  # the next Hello reports them; every other stream resumes where it was
                    self._types_changed = False
                    self._retire_types()
                    raise TypesChanged("the set of types the cluster serves changed")
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
        A scan or snapshot that fails (a half-edited file, an unreachable cluster, a missing
        directory) is tried again with backoff, and said once (then at most every minute while
        it lasts, and when it is over), however often the target changes meanwhile."""
        assert self.gates is not None
        gates = self.gates
        scan_due = True
        trouble = Complaint("local config")

        def changed() -> None:
            nonlocal scan_due
            scan_due = True
            self._gates_due.set()

        watch = asyncio.create_task(gates.config.watch(changed), name="local-config-watch")
        retry = Backoff(initial=0.5, maximum=self.config.kube_retry_max)
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
                        trouble.failed(str(exc))
                        self.metrics.gate_sync_errors.labels("scan").inc()
                        self.local_config_problem = str(exc)
                        failed = True
                while self._gate_snapshots:
                    try:
                        await gates.apply_snapshot(self._gate_snapshots[0])
                    except (KeyError, TypeError, AttributeError) as exc:  # not the hub's format: whatever sent it, it is not tried again
                        log.warning("gates from the hub: a snapshot that is not valid is dropped: %r", exc)
                        self.metrics.gate_sync_errors.labels("invalid_snapshot").inc()
                        del self._gate_snapshots[0]
                        continue
                    except (LocalConfigError, OSError, ValueError) as exc:
                        trouble.failed(f"gates from the hub not written to the local config: {exc}")
                        self.metrics.gate_sync_errors.labels("write").inc()
                        self.local_config_problem = f"the hub's gates could not be written: {exc}"
                        del self._gate_snapshots[:-1]  # only the latest one is tried again
                        failed = True
                        break
                    del self._gate_snapshots[0]
                if not failed:
                    trouble.over()
                    if gates.started:  # (read and written: before the hub's first snapshot nothing is)
                        self.local_config_problem = ""
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
