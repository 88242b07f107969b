"""When the agent sends the cluster's changes: at once when the uplink is idle, batched when it is busy.

Nagle's algorithm for bundles. A change that finds nothing unacknowledged on the
connection (the hub has committed everything sent) goes at once: waiting could not
save a bundle, only add latency. While something is in flight the hub is busy with
this cluster, so changes accumulate (the agent's pending maps keep the latest state
of each key) and go together when the in-flight messages are acknowledged, or
``max_delay`` after the previous send, whichever comes first -- and at once if that
send is already longer ago. A change therefore waits at most ``max_delay``, and a
busy connection carries at most one batch of changes per ``max_delay`` plus one per
acknowledgement, each in one bundle per type.

Pure, like the uplink: the runner passes the time and what the uplink says.
"""

from __future__ import annotations

import math


class ChangeBatcher:
    def __init__(self, max_delay: float) -> None:
        #: The longest a change waits while the connection is busy (seconds; 0: never waits).
        self.max_delay = max_delay
        self._since: float | None = None  # when changes were first seen waiting (None: none wait)
        self._last_sent = -math.inf

    def send_at(self, now: float, *, waiting: bool, busy: bool) -> float | None:
        """When the waiting changes should go (``<= now``: now); None if none wait.

        ``waiting``: the uplink has changes it could send now; ``busy``: messages sent on
        this connection are not acknowledged yet."""
        if not waiting:
            self._since = None
            return None
        if self._since is None:
            self._since = now
        if not busy:
            return now
        return max(self._since, self._last_sent + self.max_delay)

    def sent(self, now: float) -> None:
        """The waiting changes went out (as far as the flow-control window let them)."""
        self._last_sent = now
        self._since = None
