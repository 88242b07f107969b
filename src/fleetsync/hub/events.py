"""Cluster events: what happened to each cluster's connection and streams, kept in the store.

Reasons are CamelCase, like a Kubernetes Event's ``reason``; each event also goes to
the log and to a counter on ``/metrics``. They are for people and dashboards, so the
noisy ones are emitted once per incident (a gap, not every bundle past it) and a
routine anti-entropy digest that finds nothing to repair makes none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fleetsync.hub.metrics import HubMetrics
from fleetsync.store.contract import EventRecord, Store

log = logging.getLogger(__name__)

CONNECTED = "Connected"
DISCONNECTED = "Disconnected"
REJECTED = "Rejected"
INACTIVE = "Inactive"
ACTIVE = "Active"
RESYNC_REQUESTED = "ResyncRequested"
RESYNC_STARTED = "ResyncStarted"
RESYNC_FINISHED = "ResyncFinished"
GAP_DETECTED = "GapDetected"
TYPE_FAILED = "TypeFailed"
TYPE_RECOVERED = "TypeRecovered"
TYPE_REFUSED = "TypeRefused"
# the refresh scheduler (pull clusters), from the difference of the cluster view (seed 003)
REFRESHED = "Refreshed"
REFRESH_FAILED = "RefreshFailed"
CLUSTER_NEW = "ClusterNew"
CLUSTER_CHANGED = "ClusterChanged"
AGENT_UP = "AgentUp"
AGENT_DOWN = "AgentDown"
NODE_UP = "NodeUp"
NODE_DOWN = "NodeDown"
# an admin deleted the cluster (api/clusters.py)
CLUSTER_DELETED = "ClusterDeleted"
#: An agent's local config change of a gate that the hub cannot take (not a feature.* key, not true/false).
GATE_REFUSED = "GateRefused"
#: A manifest of a work failed to apply on the cluster (reported once per failure, not per retry).
WORK_FAILED = "WorkFailed"
#: An agent's work status that the hub cannot take (a bad work name, condition, or too many manifests).
WORK_STATUS_REFUSED = "WorkStatusRefused"

REASONS = (
    CONNECTED,
    DISCONNECTED,
    REJECTED,
    INACTIVE,
    ACTIVE,
    RESYNC_REQUESTED,
    RESYNC_STARTED,
    RESYNC_FINISHED,
    GAP_DETECTED,
    TYPE_FAILED,
    TYPE_RECOVERED,
    TYPE_REFUSED,
    REFRESHED,
    REFRESH_FAILED,
    CLUSTER_NEW,
    CLUSTER_CHANGED,
    AGENT_UP,
    AGENT_DOWN,
    NODE_UP,
    NODE_DOWN,
    CLUSTER_DELETED,
    GATE_REFUSED,
    WORK_FAILED,
    WORK_STATUS_REFUSED,
)

#: Reasons logged as warnings (the rest at info).
_WARNINGS = {REJECTED, INACTIVE, GAP_DETECTED, TYPE_FAILED, TYPE_REFUSED, REFRESH_FAILED, AGENT_DOWN, NODE_DOWN, GATE_REFUSED, WORK_FAILED, WORK_STATUS_REFUSED}


def bounded(text: str, max_bytes: int) -> str:
    """``text`` if its UTF-8 form has at most ``max_bytes`` bytes; else its start, saying how much was cut."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    keep = max(0, max_bytes - 40)
    return encoded[:keep].decode(errors="ignore") + f"… ({len(encoded) - keep} more bytes)"


class EventLog:
    """Records events for one hub replica."""

    def __init__(self, store: Store, metrics: HubMetrics, *, hub_id: str, clock: Callable[[], float] = time.time, max_bytes: int = 2048) -> None:
        self.store = store
        self.metrics = metrics
        self.hub_id = hub_id
        self.clock = clock
        #: An event's message and type are cut to this many bytes: they often quote what a peer
        #: sent (a type name, a work's error), and the kept window is counted in events, not bytes.
        self.max_bytes = max_bytes

    async def record(self, cluster: str, reason: str, message: str, *, type: str = "") -> None:  # noqa: A002
        """Record (and log) one event; its message and type are cut to ``max_bytes``."""
        assert reason in REASONS, reason
        message, type = bounded(message, self.max_bytes), bounded(type, self.max_bytes)  # noqa: A001
        log.log(logging.WARNING if reason in _WARNINGS else logging.INFO, "cluster %s: %s%s: %s", cluster, reason, f" {type}" if type else "", message)
        self.metrics.events.labels(reason).inc()
        try:
            await self.store.add_events([EventRecord(time=self.clock(), cluster=cluster, reason=reason, message=message, type=type, hub_id=self.hub_id)])
        except Exception as exc:  # the log line above has it; an event the store cannot take must not stop what it reports on
            log.warning("cluster %s: event %s not stored: %s", cluster, reason, exc)
