"""What refused Hellos may cost the hub: a rate per peer, and a fleet-wide cap on their events.

Anyone who reaches the hub's port can send a Hello with a wrong token, as fast as it can
connect. Each refusal used to be a ``Rejected`` event and a log line: 8 clients made
6,837 events in 15 s and pushed every real cluster's events out of the kept window. Now:

- **per peer** (its address without the port): a token bucket of
  ``auth_failure_burst`` refusals, refilled at ``auth_failures_per_minute``. A refusal
  beyond it is still answered ``UNAUTHENTICATED``, after ``auth_failure_delay`` seconds,
  and recorded nowhere but a counter (``fleetsync_hello_throttled_total``). The buckets
  of at most ``auth_failure_peers`` peers are kept (the least recently seen go first).
- **fleet-wide**: at most ``rejected_events`` refusals per ``rejected_events_window``
  become events; the others (the throttled ones included) are counted, and once the window is over one event sums
  them up ("and 6,800 more refused Hellos from 8 peers"). The kept-events window can
  thus lose at most ``rejected_events + 1`` events per window to unauthenticated peers.

Pure bookkeeping with an injected clock; the session decides what to refuse.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fleetsync.hub.limits import ProtocolLimits

#: Distinct peers counted for a summary (beyond it, "at least N peers").
MAX_SUMMARY_PEERS = 10_000
#: What :meth:`HelloGuard.refused` says to do with a refusal.
RECORD, QUIET, THROTTLE = "record", "quiet", "throttle"


def peer_host(peer: str) -> str:
    """The address part of a transport's peer name: ``ipv4:10.0.0.1:5555`` -> ``ipv4:10.0.0.1``,
    ``ipv6:[::1]:5555`` -> ``ipv6:[::1]``; a name without a port stays as it is."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit() and host not in ("ipv4", "ipv6"):
            return host
    return peer


@dataclass
class _Bucket:
    tokens: float
    at: float


class HelloGuard:
    def __init__(self, limits: ProtocolLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._window_start = clock()
        self._recorded = 0
        self._suppressed = 0
        self._suppressed_peers: set[str] = set()

    def refused(self, peer: str) -> str:
        """Account for one refused Hello of ``peer``: :data:`RECORD` it (an event and a log
        line), keep it :data:`QUIET` (counted for the window's summary), or :data:`THROTTLE`
        it (past the peer's rate: answer late, and count it for the summary too)."""
        within = self._take(peer)
        if within and self._recorded < self.limits.rejected_events:
            self._recorded += 1
            return RECORD
        self._suppressed += 1
        if len(self._suppressed_peers) < MAX_SUMMARY_PEERS:
            self._suppressed_peers.add(peer_host(peer))
        return QUIET if within else THROTTLE

    def _take(self, peer: str) -> bool:
        """Whether a refusal for ``peer`` is within its rate (it takes one token)."""
        limits, now, host = self.limits, self.clock(), peer_host(peer)
        bucket = self._buckets.pop(host, None)
        if bucket is None:
            bucket = _Bucket(float(limits.auth_failure_burst), now)
        bucket.tokens = min(float(limits.auth_failure_burst), bucket.tokens + (now - bucket.at) * limits.auth_failures_per_minute / 60.0)
        bucket.at = now
        self._buckets[host] = bucket  # most recently seen last
        while len(self._buckets) > limits.auth_failure_peers:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def summary(self) -> str:
        """If the window is over: the summary of what was not recorded in it ("" if nothing), and a new window."""
        now, window = self.clock(), self.limits.rejected_events_window
        if now - self._window_start < window:
            return ""
        suppressed, peers = self._suppressed, len(self._suppressed_peers)
        self._window_start, self._recorded, self._suppressed = now, 0, 0
        self._suppressed_peers = set()
        if not suppressed:
            return ""
        at_least = "at least " if peers >= MAX_SUMMARY_PEERS else ""
        return (
            f"and {suppressed:,} more refused Hellos from {at_least}{peers:,} peer{'s' if peers != 1 else ''} in the last {window:g}s, not recorded one by one "
            f"(at most {self.limits.rejected_events} per window: --rejected-events)"
        )
