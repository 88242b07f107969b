"""One anti-entropy schedule per push cluster: partial syncs often, a full sync rarely (Consul's ``ae.StateSyncer``).

Before this module a push cluster was reconciled by two schedules that knew nothing of
each other: per-type digests from the session's timer (``--digest-interval``) and the
refresh scheduler's digest of every type (``--push-refresh-interval``), so by default
every type was digested twice. Now one :class:`ClusterSyncer` per session decides both:

- a **partial sync** asks for a digest of the types whose own interval has passed
  (``--digest-interval 300,v1/Pod=60``; the first one spread with jitter so a fleet's
  sessions, all started together after a hub restart, do not digest at once);
- a **full sync** asks for a digest of every type (``--push-refresh-interval``) and
  counts as each type's partial sync too: no type is digested twice in a row for it.

Both intervals stretch with the number of clusters this replica serves, as Consul's do
(``agent/ae/ae.go``: ``scaleFactor``): by ``1 + ceil(log2(n / 128))`` above 128, so the
digests a replica asks for per second grow with the logarithm of its fleet, not linearly.

The decision is pure (time and fleet size are given), so it is tested without a clock;
:func:`reconcile` is the thin I/O that carries a decision out. Pull clusters are not
scheduled here: their refresh is a fetch, run by :mod:`fleetsync.hub.refresh`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fleetsync.hub import events
from fleetsync.hub.engine import PERIODIC, ClusterEngine
from fleetsync.hub.events import EventLog
from fleetsync.hub.metrics import HubMetrics
from fleetsync.hub.settings import DigestSchedule, HubSettings

#: Up to this many clusters on a replica, intervals are as configured (Consul's threshold).
SCALE_THRESHOLD = 128
#: The reason a full sync gives (events, metrics and the agent's log show it).
FULL_SYNC = "scheduled refresh"


def scale_factor(fleet_size: int, *, threshold: int = SCALE_THRESHOLD) -> int:
    """How much longer every interval is with ``fleet_size`` clusters: 1 up to ``threshold``,
    then one more per doubling (Consul's ``scaleFactor``)."""
    if fleet_size <= threshold:
        return 1
    return 1 + math.ceil(math.log2(fleet_size) - math.log2(threshold))


@dataclass(frozen=True, slots=True)
class AntiEntropySchedule:
    """Every push cluster's anti-entropy intervals, in seconds (0: never). Configured in one
    place, :class:`~fleetsync.hub.settings.HubSettings`, by the hub's two flags."""

    partial: DigestSchedule = field(default_factory=DigestSchedule)
    full: float = 600.0

    @classmethod
    def from_settings(cls, settings: HubSettings) -> AntiEntropySchedule:
        return cls(partial=settings.digest_schedule, full=settings.push_refresh_interval)


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """What to ask a cluster's agent for now: a digest of every type (``full``) or of ``types``."""

    full: bool = False
    types: tuple[str, ...] = ()


class ClusterSyncer:
    """When one cluster is reconciled. Pure: :meth:`due` is given the time and the fleet's size."""

    def __init__(self, *, connected_at: float, jitter: Callable[[], float] = random.random) -> None:
        self._connected_at = connected_at
        self._jitter = jitter
        self._next_full: float | None = None
        self._next_partial: dict[str, float] = {}
        #: When each type was last digested by this syncer (the connection's own sync before that).
        self._last: dict[str, float] = {}

    def due(self, now: float, schedule: AntiEntropySchedule, types: Iterable[str], *, fleet_size: int = 1) -> SyncPlan | None:
        """The sync due at ``now`` for a cluster syncing ``types``, if any (and moves the next times on).

        A type is digested when its own interval has passed (a partial sync) or, when the full
        sync is due, if its last digest is at least min(its interval, the full interval) ago:
        a full sync never digests a type a partial sync has just digested. It is reported as
        a full sync when it takes every type."""
        scale = scale_factor(fleet_size)
        types = list(types)
        full_due = False
        if schedule.full > 0:
            if self._next_full is None:
                self._next_full = self._connected_at + schedule.full * scale
            if now >= self._next_full:
                full_due = True
                self._next_full = now + schedule.full * scale
        due = [t for t in types if self._partial_due(t, now, schedule, scale) or (full_due and self._stale(t, now, schedule, scale))]
        for type_ in due:
            self._last[type_] = now
            if (interval := schedule.partial.interval(type_)) > 0:
                self._next_partial[type_] = now + interval * scale
        if full_due and due and len(due) == len(types):
            return SyncPlan(full=True)
        return SyncPlan(types=tuple(due)) if due else None

    def _partial_due(self, type_: str, now: float, schedule: AntiEntropySchedule, scale: int) -> bool:
        interval = schedule.partial.interval(type_)
        if interval <= 0:
            return False
        # the first one is spread over the second half of the interval: a fleet connected at once does not digest at once
        return now >= self._next_partial.setdefault(type_, now + interval * scale * (0.5 + 0.5 * self._jitter()))

    def _stale(self, type_: str, now: float, schedule: AntiEntropySchedule, scale: int) -> bool:
        """Whether the full sync takes ``type_``: not digested for min(its interval, the full interval)."""
        interval = schedule.partial.interval(type_)
        spacing = min(interval, schedule.full) if interval > 0 else schedule.full
        return now - self._last.get(type_, self._connected_at) >= spacing * scale


async def reconcile(plan: SyncPlan, *, cluster: str, engine: ClusterEngine, events_log: EventLog, metrics: HubMetrics) -> None:
    """Ask the agent for what ``plan`` says. A full sync is recorded as the scheduled refresh it
    was before (a ``ResyncRequested`` event, ``fleetsync_refreshes_total{mode="push"}``)."""
    if plan.full:
        await engine.request_resync([], FULL_SYNC, all_types=True)
        await events_log.record(cluster, events.RESYNC_REQUESTED, f"{FULL_SYNC}: every type")
        metrics.refreshes.labels("push", "ok").inc()
    elif plan.types:
        await engine.request_resync(plan.types, PERIODIC)
