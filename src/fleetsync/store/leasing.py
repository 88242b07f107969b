"""Who may take a cluster's lease, and which writes a lease fences out: pure rules, no I/O.

Both store engines read what they hold in the lease's transaction and ask these
functions, so the rules are written once and tested in microseconds.

**One live agent per identity.** An agent id is a name an operator chose (or the host's
name, by default), not a proof of uniqueness: two processes started with the same id
would otherwise take the cluster from each other on every reconnect, forever. So a
*new incarnation* of the holder takes over only when the current one looks gone: its
session disconnected (the lease is in its grace period), the lease expired, or the
cluster has not been heard from since ``silent_before`` (the hub passes about 1.5
heartbeat intervals ago: a live agent sends at least a heartbeat per interval). The
same incarnation reconnecting (a half-open connection's successor) always takes over.

**Epochs.** Every grant takes the next epoch of the cluster; renewals keep it. A write
carries the epoch of the session that makes it and is applied only if the lease still
has that epoch. Safety therefore does not depend on clocks: a replica whose clock is
skewed, or that was paused past its lease, may *believe* it holds a cluster, but once
another session was granted it (a new epoch, in the store), none of its writes or
renewals apply. Clocks only decide *when* a takeover is allowed (liveness).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetsync.store.contract import BundleWrite, Lease


def may_take(current: Lease | None, *, holder: str, incarnation: str, now: float, last_seen: float, silent_before: float) -> bool:
    """Whether a new session of ``holder`` (``incarnation``) may take a lease that is ``current``.

    ``last_seen``: when the cluster's agent was last heard from (the store's record of it);
    ``silent_before``: a holder of another incarnation not heard from since counts as gone.
    """
    if current is None or current.expires_at <= now:
        return True
    if current.holder != holder:
        return False  # another agent's lease, connected or in its grace period
    if not current.connected or current.incarnation == incarnation:
        return True  # a restart after a disconnect, or the same process reconnecting
    return last_seen < silent_before  # another live process with the same agent id: only if it went silent


def fenced(writes: Sequence[BundleWrite], epochs: Mapping[str, int]) -> list[int]:
    """Indexes of the fenced ``writes`` whose cluster's lease (``epochs``: cluster -> the lease's
    epoch, absent if it has none) no longer has their epoch."""
    return [i for i, w in enumerate(writes) if w.epoch and epochs.get(w.cluster) != w.epoch]


def fenced_message(writes: Sequence[BundleWrite], indexes: Sequence[int], epochs: Mapping[str, int]) -> str:
    """A readable reason for :class:`~fleetsync.store.contract.LeaseLost`."""
    parts = sorted({f"cluster {writes[i].cluster!r} (epoch {writes[i].epoch}, the lease now has {epochs.get(writes[i].cluster, 'none')})" for i in indexes})
    return "lease lost, writes fenced: " + "; ".join(parts) + ": another session holds the cluster now"
