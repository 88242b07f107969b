"""The ``fleetsync.io/v1`` ``Cluster`` resource (like OCM's ManagedCluster): what the hub knows of
one cluster, shaped as a Kubernetes object so that ``kubectl get clusters`` and
``kubectl get cluster c1 -o yaml`` work on the hub.

Pure code: the API reads the store once for the whole fleet and hands each cluster's part to
:func:`cluster_object`. Conditions follow the Kubernetes convention (``type``, ``status``
True/False/Unknown, ``reason``, ``message``, ``lastTransitionTime``); transition times are the
best the store knows: when the agent connected (Connected=True), when the cluster was last heard
from (Connected=False, Available=False), and when its streams last moved (Synced).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleetsync.model.objects import rfc3339

if TYPE_CHECKING:  # only named in annotations: the model stays below the store, and the agent (which reads this module's metadata keys) loads no store
    from fleetsync.store.contract import ClusterRecord, StreamRecord

API_VERSION = "fleetsync.io/v1"
KIND = "Cluster"
#: The Hello metadata key under which an agent reports its cluster's Kubernetes version (``/version``'s gitVersion).
KUBERNETES_VERSION = "fleetsync.io/kubernetes-version"
#: The Hello metadata key under which an agent reports how many nodes its cluster had when it connected.
NODE_COUNT = "fleetsync.io/node-count"
NODE = "v1/Node"


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """Everything the hub knows of one cluster, read by the API for the whole fleet at once."""

    record: ClusterRecord
    connected: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    streams: Sequence[StreamRecord] = ()
    objects: Mapping[str, int] = field(default_factory=dict)
    #: Seconds from the cluster's last change to its commit on the hub, if its agent is connected to this replica.
    sync_lag: float | None = None


def _time(ts: float) -> str | None:
    return rfc3339(ts) if ts > 0 else None


def _condition(type_: str, status: str, reason: str, message: str, since: float) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": _time(since)}


def node_count(facts: ClusterFacts) -> int | None:
    """Its synced Nodes if it syncs v1/Node, else what its agent reported when it connected (None: unknown)."""
    if any(s.type == NODE for s in facts.streams) or facts.objects.get(NODE):
        return facts.objects.get(NODE, 0)
    reported = facts.record.metadata.get(NODE_COUNT, "")
    return int(reported) if reported.isdigit() else None


def conditions(facts: ClusterFacts) -> list[dict[str, Any]]:
    """Connected (an agent holds its lease now), Available (heard from within the hub's
    inactivity timeout) and Synced (every type it streams is applied without error)."""
    c = facts.record
    if facts.connected:
        connected = _condition("Connected", "True", "AgentConnected", f"agent {c.agent_id} is connected to hub replica {c.hub_id}", c.connected_at)
    elif c.status == "never":
        connected = _condition("Connected", "Unknown", "NeverConnected", "no agent of this cluster has connected yet", 0)
    else:
        connected = _condition("Connected", "False", "AgentDisconnected", f"agent {c.agent_id} is not connected", c.last_seen)
    if c.status == "active":
        available = _condition("Available", "True", "ClusterActive", "its agent reports within the inactivity timeout", c.connected_at)
    elif c.status == "inactive":
        available = _condition(
            "Available", "False", "ClusterInactive", "no message from its agent within the inactivity timeout: reads show its last known state", c.last_seen
        )
    else:
        available = _condition("Available", "Unknown", "NeverConnected", "no agent of this cluster has connected yet", 0)
    failing = sorted(s.type for s in facts.streams if s.error)
    moved = max((s.updated_at for s in facts.streams), default=0.0)
    if failing:
        synced = _condition("Synced", "False", "TypesFailing", "failing: " + "; ".join(f"{s.type}: {s.error}" for s in facts.streams if s.error)[:1000], moved)
    elif facts.streams:
        synced = _condition("Synced", "True", "AllTypesSynced", f"{len(facts.streams)} type(s) synced without error", moved)
    else:
        synced = _condition("Synced", "Unknown", "NoStreams", "no type of this cluster has been synced yet", 0)
    return [connected, available, synced]


def cluster_object(facts: ClusterFacts, *, resource_version: str = "") -> dict[str, Any]:
    """The Cluster object of one cluster: admin labels as ``metadata.labels`` (what placement and
    ``clusterSelector`` match), what the agent reports and the hub sees under ``status``."""
    c = facts.record
    metadata: dict[str, Any] = {"name": c.name, "labels": dict(facts.labels)}
    if created := _time(c.connected_at):
        metadata["creationTimestamp"] = created
    if resource_version:
        metadata["resourceVersion"] = resource_version
    status: dict[str, Any] = {
        "phase": c.status,
        "connected": facts.connected,
        "agent": c.agent_id,
        "incarnation": c.incarnation,
        "hub": c.hub_id,
        "connectedAt": _time(c.connected_at),
        "lastHeartbeatTime": _time(c.last_seen),
        "syncLagSeconds": None if facts.sync_lag is None else round(facts.sync_lag, 3),
        "kubernetesVersion": c.metadata.get(KUBERNETES_VERSION) or None,
        "nodeCount": node_count(facts),
        "objects": sum(facts.objects.values()),
        "reported": dict(c.metadata),
        "conditions": conditions(facts),
    }
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "status": status}
