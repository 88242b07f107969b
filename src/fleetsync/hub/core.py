"""What every session of one hub replica shares: the store, settings, metrics, events, and its timers.

The timers (one loop, :meth:`HubCore.run_timers`):

- **liveness**: a cluster with no message for ``inactivity_timeout`` becomes inactive
  (its state is kept and flagged stale; an ``Inactive`` event). The transition is one
  atomic store update, so with several replicas exactly one reports it. A message
  from an inactive cluster reactivates it and triggers a digest resync (the session
  does that);
- **leases**: the leases of every agent connected to this replica are renewed together,
  every third of ``lease_ttl`` (:mod:`fleetsync.hub.leases`);
- **periodic anti-entropy**: each session's tick asks its cluster's one syncer
  (:mod:`fleetsync.hub.antientropy`) what is due: a digest of some types (partial) or of
  every type (full).

The parts with a job of their own are modules of their own: the lease renewer
(:mod:`fleetsync.hub.leases`), the downstream pushes (:mod:`fleetsync.hub.downstream`),
anti-entropy (:mod:`fleetsync.hub.antientropy`), pull refreshes (:mod:`fleetsync.hub.refresh`).
They see a session as :class:`~fleetsync.hub.connected.ConnectedSession`, and the refresh
scheduler sees the core as :class:`~fleetsync.hub.refresh.RefreshHost`: no module imports
one that imports it, so there is no import cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import orjson

from fleetsync.aio import cancel_and_wait
from fleetsync.errors import FleetsyncError
from fleetsync.hub import events
from fleetsync.hub.clusterlabels import CLUSTERS_CHANNEL, ClusterLabels
from fleetsync.hub.connected import ConnectedSession
from fleetsync.hub.downstream import Downstream
from fleetsync.hub.events import EventLog
from fleetsync.hub.feed import ChangeFeed
from fleetsync.hub.gates import GATES_CHANNEL
from fleetsync.hub.guard import HelloGuard
from fleetsync.hub.inbox import InboxBudget
from fleetsync.hub.leases import LeaseRenewer
from fleetsync.hub.metrics import HubMetrics
from fleetsync.hub.refresh import RefreshScheduler
from fleetsync.hub.settings import DigestSchedule as DigestSchedule
from fleetsync.hub.settings import HubSettings as HubSettings
from fleetsync.hub.types import HubTypes
from fleetsync.hub.works import WORKS_CHANNEL, SpecCache
from fleetsync.hub.writer import BatchWriter
from fleetsync.model.types import HUB_TYPES, TypeRegistry
from fleetsync.store.contract import Store

log = logging.getLogger(__name__)

#: Store notifications asking the replica an agent is connected to for a resync.
RESYNC_CHANNEL = "resync"
#: The store notification channel on which a deleted cluster's name is announced: the replica its agent is connected to ends the session.
CLUSTER_DELETED_CHANNEL = "cluster-deleted"


class NotConnected(FleetsyncError, LookupError):
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
        #: The types this hub serves: its fixed ones and every one a cluster's agent reported.
        self.types = HubTypes(store, fixed=registry or HUB_TYPES)
        self.clock = clock
        self.events = EventLog(store, self.metrics, hub_id=self.settings.hub_id, clock=clock, max_bytes=self.settings.limits.max_event_bytes)
        #: Refused Hellos: rate-limited per peer, their events capped fleet-wide.
        self.guard = HelloGuard(self.settings.limits)
        #: The change log as a live stream (every replica's applies), for watches.
        self.feed = feed = ChangeFeed(store)
        self.metrics.feed_changes.set_function(lambda: feed.held)
        #: Every cluster's admin-set labels, for works' placement and watches with a cluster selector.
        self.cluster_labels = ClusterLabels(store)
        #: Scheduled refreshes of pull clusters (seed 003).
        self.refresh = RefreshScheduler(self, workers=self.settings.refresh_workers, token=self.settings.pull_token)
        #: Live sessions on this replica, by cluster.
        self.sessions: dict[str, ConnectedSession] = {}
        #: Keeps their leases (one agent per cluster across replicas).
        self.leases = LeaseRenewer(store, self.sessions, settings=self.settings, clock=clock, spawn=self._keep)
        #: Sends them new gate and work snapshots when any replica writes one.
        self.downstream = Downstream(store, self.sessions, spawn=self._keep)
        #: Work specs parsed once per generation, for every session's works snapshot.
        self.specs = SpecCache()
        #: Every session's bundles reach the store through this one writer (group commit).
        self.writer = BatchWriter(
            store, metrics=self.metrics, max_bundles=self.settings.batch_bundles, max_bytes=self.settings.batch_bytes, linger=self.settings.batch_linger
        )
        #: What every session's inbox may hold together.
        self.inbox_budget = budget = InboxBudget(self.settings.inbox_budget, reservation=self.settings.max_message_bytes)
        self.metrics.budget_bytes.set_function(lambda: budget.bytes)
        self.metrics.budget_peak_bytes.set_function(lambda: budget.peak)
        self._connected_since_start: set[str] = set()
        #: cluster -> the incarnation last refused ALREADY_CONNECTED here (one event per newcomer, not one per retry).
        self.refused_incarnations: dict[str, str] = {}
        self._loops: list[asyncio.Task[None]] = []  # the timers and the lease renewer, while started
        self._background: set[asyncio.Future[None]] = set()
        #: The newest event id announced by the store (this or another replica's), for event watches.
        self.newest_event = 0
        self._events_added = asyncio.Condition()
        #: What this replica still waits for before it can serve agents (``/readyz`` is 503
        #: until it is empty), by component: e.g. a broker it has not subscribed to yet.
        self.starting: dict[str, str] = {}

    @property
    def registry(self) -> TypeRegistry:
        """The types this replica serves now (see :class:`~fleetsync.hub.types.HubTypes`)."""
        return self.types.registry

    def _keep(self, work: Awaitable[None]) -> None:
        self.keep_until_done(asyncio.ensure_future(work))

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
            self.downstream.push_gates()
            return
        if channel == WORKS_CHANNEL:
            self.downstream.push_works()
            return
        if channel == CLUSTER_DELETED_CHANNEL:
            session = self.sessions.get(payload)
            if session is not None:
                self.keep_until_done(asyncio.ensure_future(session.revoke(f"cluster {payload} was deleted from the hub: its agent tokens are revoked")))
            return
        if channel == CLUSTERS_CHANNEL:
            self.downstream.push_works(payload)  # relabelled: the works its placement selects may differ now
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

    # ---- timers -------------------------------------------------------------------------

    async def start(self) -> None:
        self.store.listen(self._on_notification)
        self.cluster_labels.start()
        self.types.start()
        await self.feed.start()
        await self.refresh.start()
        if not self._loops:
            self._loops = [asyncio.create_task(self.run_timers(), name="hub-timers"), asyncio.create_task(self.leases.run(), name="hub-leases")]

    async def stop(self) -> None:
        await cancel_and_wait(self._loops)
        self._loops = []
        if self._background:  # sessions still closing: let them hand their leases back
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.refresh.stop()
        await self.writer.close()
        await self.feed.stop()

    async def run_timers(self) -> None:
        period = min(1.0, self.settings.inactivity_timeout / 4)
        failing = False
        while True:
            await asyncio.sleep(period)
            try:
                if summary := self.guard.summary():  # the refused Hellos of the window just over that were not recorded one by one
                    await self.events.record("", events.REJECTED, summary)
                await self.tick()
            except Exception as exc:  # a store hiccup must not end the timers for good
                if failing:  # the traceback once per outage, not every second of a full disk
                    log.warning("hub timers failed again (%s); retrying in %.1fs", exc, period)
                else:
                    log.exception("hub timers failed; retrying in %.1fs", period)
                failing = True
                continue
            if failing:
                log.info("hub timers running again")
                failing = False

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
