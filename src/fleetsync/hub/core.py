"""What every session of one hub replica shares: the store, settings, metrics, events, and its timers.

The timers (one loop, :meth:`HubCore.run_timers`):

- **liveness**: a cluster with no message for ``inactivity_timeout`` becomes inactive
  (its state is kept and flagged stale; an ``Inactive`` event). The transition is one
  atomic store update, so with several replicas exactly one reports it. A message
  from an inactive cluster reactivates it and triggers a digest resync (the session
  does that);
- **leases**: the leases of every agent connected to this replica are renewed together,
  every third of ``lease_ttl`` (:meth:`HubCore.renew_leases`);
- **periodic anti-entropy**: every connected cluster is asked for a digest of each
  type every ``digest_interval`` of that type (Global Hub's per-type resync
  intervals), spread with jitter so a fleet does not digest all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from fleetsync.aio import cancel_and_wait
from fleetsync.hub import events
from fleetsync.hub.clusterlabels import ClusterLabels
from fleetsync.hub.events import EventLog
from fleetsync.hub.feed import ChangeFeed
from fleetsync.hub.gates import GATES_CHANNEL
from fleetsync.hub.inbox import InboxBudget
from fleetsync.hub.metrics import HubMetrics
from fleetsync.hub.refresh import RefreshScheduler
from fleetsync.hub.works import WORKS_CHANNEL, SpecCache
from fleetsync.hub.writer import BatchWriter
from fleetsync.model.types import HUB_TYPES, TypeRegistry, UnknownResourceType
from fleetsync.store.contract import Store

if TYPE_CHECKING:
    from fleetsync.hub.session import Session

log = logging.getLogger(__name__)

#: Store notifications asking the replica an agent is connected to for a resync.
RESYNC_CHANNEL = "resync"


@dataclass(frozen=True)
class DigestSchedule:
    """Seconds between periodic digests, per type, with a default (0: never)."""

    default: float = 300.0
    per_type: dict[str, float] = field(default_factory=dict)

    def interval(self, type_: str) -> float:
        return self.per_type.get(type_, self.default)

    @classmethod
    def parse(cls, text: str, *, registry: TypeRegistry | None = None) -> DigestSchedule:
        """``300`` or ``300,v1/Pod=60,networking.istio.io/v1/VirtualService=0`` (types as the agent's --types)."""
        registry = registry or TypeRegistry(HUB_TYPES)
        default, per_type = cls.default, {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, sep, raw = part.rpartition("=")
            try:
                seconds = float(raw)
            except ValueError:
                raise ValueError(f"digest interval {part!r}: {raw!r} is not a number of seconds") from None
            if seconds < 0:
                raise ValueError(f"digest interval {part!r}: must not be negative")
            if not sep:
                default = seconds
                continue
            try:
                per_type[registry.resolve(name).gvk] = seconds
            except UnknownResourceType as exc:
                raise ValueError(f"digest interval {part!r}: {exc}") from None
        return cls(default, per_type)


@dataclass
class HubSettings:
    hub_id: str = "hub-1"
    #: Agents send a heartbeat after this many seconds without any other message.
    heartbeat_interval: float = 10.0
    #: A cluster with no message for this long becomes inactive.
    inactivity_timeout: float = 30.0
    #: A connected agent's lease is renewed every third of this.
    lease_ttl: float = 30.0
    #: After a disconnect, the lease is held this long for the same agent_id only.
    grace_period: float = 15.0
    #: No agent message may be larger (agents are told in Welcome and chunk below it).
    max_message_bytes: int = 512 * 1024
    digest_schedule: DigestSchedule = field(default_factory=DigestSchedule)
    #: Ask each cluster for a digest of every type on its first connection after this hub starts.
    resync_on_startup: bool = True
    #: Seed 004's deployment type, sent to agents with the gates: local (gates sync both ways) or
    #: maas (agents' changes go up, the hub's are not written down); "": unset (agents take local).
    deployment_type: str = ""
    #: Bytes received and not yet applied, per cluster, before the hub stops reading (backpressure).
    inbox_bytes: int = 64 * 1024 * 1024
    #: The same for every cluster together: what the hub holds of received bundles is bounded by
    #: this, not by the fleet's size (the agents wait, through the transports' flow control).
    inbox_budget: int = 64 * 1024 * 1024
    #: gRPC: bytes each agent's stream may have in flight to the hub (its HTTP/2 window).
    stream_window: int = 256 * 1024
    #: Group commit: at most this many bundles, and this many bytes of objects, in one transaction.
    batch_bundles: int = 1000
    batch_bytes: int = 16 * 1024 * 1024
    #: Under load, the writer waits this long for more bundles before it commits (seconds).
    batch_linger: float = 0.002
    #: While the store cannot be written, a cluster's engine retries this long before its
    #: session ends (the agent reconnects and resends what was not acknowledged).
    store_retry: float = 30.0
    #: Push clusters get a scheduled refresh (a digest of every type) this often; 0: never.
    push_refresh_interval: float = 600.0
    #: Refreshes this replica runs at once.
    refresh_workers: int = 4
    #: The bearer token sent to pull clusters' agents (their --serve-state-token-file); "": none.
    pull_token: str = field(default="", repr=False)


class NotConnected(LookupError):
    """The cluster has no agent connected to this hub."""


class HubCore:
    def __init__(
        self,
        store: Store,
        settings: HubSettings | None = None,
        *,
        metrics: HubMetrics | None = None,
        registry: TypeRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or HubSettings()
        self.metrics = metrics or HubMetrics()
        self.registry = registry or TypeRegistry(HUB_TYPES)
        self.clock = clock
        self.events = EventLog(store, self.metrics, hub_id=self.settings.hub_id, clock=clock)
        #: The change log as a live stream (every replica's applies), for watches.
        self.feed = ChangeFeed(store)
        #: Every cluster's labels, for watches with a cluster selector.
        self.cluster_labels = ClusterLabels(store)
        #: Scheduled refreshes of push and pull clusters (seed 003).
        self.refresh = RefreshScheduler(self, workers=self.settings.refresh_workers, token=self.settings.pull_token)
        #: Live sessions on this replica, by cluster.
        self.sessions: dict[str, Session] = {}
        #: Work specs parsed once per generation, for every session's works snapshot.
        self.specs = SpecCache()
        #: Every session's bundles reach the store through this one writer (group commit).
        self.writer = BatchWriter(
            store, metrics=self.metrics, max_bundles=self.settings.batch_bundles, max_bytes=self.settings.batch_bytes, linger=self.settings.batch_linger
        )
        #: What every session's inbox may hold together.
        self.inbox_budget = InboxBudget(self.settings.inbox_budget, reservation=self.settings.max_message_bytes)
        self._connected_since_start: set[str] = set()
        self._timers: asyncio.Task[None] | None = None
        self._leases: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()
        #: The newest event id announced by the store (this or another replica's), for event watches.
        self.newest_event = 0
        self._events_added = asyncio.Condition()
        #: What this replica still waits for before it can serve agents (``/readyz`` is 503
        #: until it is empty), by component: e.g. a broker it has not subscribed to yet.
        self.starting: dict[str, str] = {}

    def keep_until_done(self, task: asyncio.Future[None]) -> None:
        """Hold a reference to ``task`` until it finishes (the loop itself keeps only weak ones)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def first_connection_since_start(self, cluster: str) -> bool:
        first = cluster not in self._connected_since_start
        self._connected_since_start.add(cluster)
        return first

    # ---- on demand ------------------------------------------------------------------------

    async def request_resync(self, cluster: str, type_: str | None, *, reason: str) -> str:
        """Ask ``cluster``'s agent for a digest resync of ``type_`` (None: every type), through
        whichever replica it is connected to; returns that replica's id. Raises NotConnected."""
        session = self.sessions.get(cluster)
        if session is not None and session.engine is not None:
            await session.engine.request_resync([type_] if type_ else [], reason, all_types=type_ is None)
            await self.events.record(cluster, events.RESYNC_REQUESTED, f"{reason}: {type_ or 'every type'}", type=type_ or "")
            return self.settings.hub_id
        now = self.clock()
        lease = next((lease for lease in await self.store.leases() if lease.cluster == cluster), None)
        if lease is None or not lease.connected or lease.expires_at <= now or lease.hub_id == self.settings.hub_id:
            raise NotConnected(cluster)
        # another replica serves the agent: it hears this through the store's notifications
        await self.store.notify(RESYNC_CHANNEL, orjson.dumps({"hub": lease.hub_id, "cluster": cluster, "type": type_ or "", "reason": reason}).decode())
        return lease.hub_id

    async def wait_for_events(self, after: int, timeout: float) -> None:
        """Return once an event newer than id ``after`` may exist (any replica's), or after ``timeout`` seconds."""
        if self.newest_event > after:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._events_added:
                await self._events_added.wait_for(lambda: self.newest_event > after)

    def _events_announced(self, newest: int) -> None:
        self.newest_event = max(self.newest_event, newest)

        async def wake() -> None:
            async with self._events_added:
                self._events_added.notify_all()

        self.keep_until_done(asyncio.ensure_future(wake()))

    def _on_notification(self, channel: str, payload: str) -> None:
        if channel == "events":
            with contextlib.suppress(ValueError):
                self._events_announced(int(payload))
            return
        if channel == GATES_CHANNEL:
            self._push_gates()
            return
        if channel == WORKS_CHANNEL:
            self._push_works()
            return
        if channel != RESYNC_CHANNEL:
            return
        try:
            asked = orjson.loads(payload)
            if asked["hub"] != self.settings.hub_id:
                return
            cluster, type_, reason = str(asked["cluster"]), str(asked["type"]) or None, str(asked["reason"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignored a malformed resync notification: %.200s", payload)
            return

        async def resync() -> None:
            try:
                await self.request_resync(cluster, type_, reason=f"{reason} (through another replica)")
            except NotConnected:
                log.info("cluster %s: a resync was asked through another replica, but its agent has left this one", cluster)

        self.keep_until_done(asyncio.ensure_future(resync()))

    def _push_gates(self) -> None:
        """A gate was written (here or on another replica): every agent connected here gets the new snapshot."""

        async def push(session: Session) -> None:
            try:
                await session.send_gates()
            except Exception as exc:  # a session that is ending; it reconciles on its next connection
                log.debug("cluster %s: gate snapshot not sent: %s", session.cluster, exc)

        for session in list(self.sessions.values()):
            self.keep_until_done(asyncio.ensure_future(push(session)))

    def _push_works(self) -> None:
        """A work was written (here or on another replica): every agent connected here whose part
        of the works changed gets its new snapshot (the works are read once for all of them)."""

        async def push() -> None:
            try:
                works = await self.store.works()
            except Exception as exc:  # the store is down: agents reconcile on their next connection
                log.warning("works not pushed: %s", exc)
                return
            for session in list(self.sessions.values()):
                try:
                    await session.send_works(works)
                except Exception as exc:  # a session that is ending; it reconciles on its next connection
                    log.debug("cluster %s: works snapshot not sent: %s", session.cluster, exc)

        self.keep_until_done(asyncio.ensure_future(push()))

    # ---- timers -------------------------------------------------------------------------

    async def start(self) -> None:
        self.store.listen(self._on_notification)
        self.cluster_labels.start()
        await self.feed.start()
        await self.refresh.start()
        if self._timers is None:
            self._timers = asyncio.create_task(self.run_timers(), name="hub-timers")
        if self._leases is None:
            self._leases = asyncio.create_task(self.renew_leases(), name="hub-leases")

    async def stop(self) -> None:
        if self._timers is not None:
            await cancel_and_wait([self._timers])
            self._timers = None
        if self._leases is not None:
            await cancel_and_wait([self._leases])
            self._leases = None
        if self._background:  # sessions still closing: let them hand their leases back
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.refresh.stop()
        await self.writer.close()
        await self.feed.stop()

    async def renew_leases(self) -> None:
        """Every third of ``lease_ttl``, renew the leases of every agent connected to this replica in
        one store transaction (a transaction per agent cost a thousand agents 100 commits a second);
        a session whose lease another agent holds now ends. A store that cannot be written is tried
        again next time: a lease lasts three periods."""
        settings = self.settings
        while True:
            await asyncio.sleep(settings.lease_ttl / 3)
            sessions = {s.cluster: s for s in list(self.sessions.values()) if s.hello is not None and s.engine is not None and not s.superseded}
            held = [(cluster, s.hello.agent_id, s.hello.incarnation) for cluster, s in sessions.items() if s.hello is not None]
            try:
                lost = await self.store.renew_leases(held, hub_id=settings.hub_id, now=self.clock(), ttl=settings.lease_ttl)
            except Exception as exc:
                log.warning("the leases of %d clusters could not be renewed (%s); trying again", len(held), exc)
                continue
            for cluster in lost:
                session = sessions[cluster]
                log.warning("cluster %s: lease lost to another agent; ending the session", cluster)
                if session.end is not None:
                    self.keep_until_done(asyncio.ensure_future(session.end()))

    async def run_timers(self) -> None:
        period = min(1.0, self.settings.inactivity_timeout / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self.tick()
            except Exception:  # a store hiccup must not end the timers for good
                log.exception("hub timers failed; retrying in %.1fs", period)

    async def tick(self) -> None:
        now = self.clock()
        timeout = self.settings.inactivity_timeout
        for waiting in list(self.sessions.values()):
            if waiting.behind():  # its messages wait for this hub, not the other way round
                await self.store.touch_cluster(waiting.cluster, now=now)
        for name in await self.store.expire_clusters(cutoff=now - timeout):
            await self.events.record(name, events.INACTIVE, f"no message for {timeout:.0f}s; its last state is kept and flagged stale")
            if (session := self.sessions.get(name)) is not None:
                session.active = False
        for session in list(self.sessions.values()):
            await session.tick(now)
