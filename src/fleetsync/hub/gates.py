"""Feature gates between the hub and its agents (seed 004): snapshots down, local changes up.

Down: on connect, and whenever any replica writes a gate (the store's ``gates``
notification), each session sends a ``SpecUpdate`` with every gate ever set, deleted ones
as tombstones, so an agent that missed pushes (or was away for the unset) reconciles from
any one of them. Up: an agent's ``LocalChange`` (its local config changed: the hook) is
written to the store like an API write, recorded as by ``agent CLUSTER``; the last write
wins by gate revision. Each snapshot also says up to which local change of that agent it
reflects (``applied_local_ms``), so the agent knows which of its changes the hub has and
which are still in flight.
"""

from __future__ import annotations

from typing import Any

import orjson

from fleetsync.model.gates import gate_key_problem
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.contract import GateRecord, Store

#: The store notification channel of gate writes (payload: the revision) and of deployment-type changes.
GATES_CHANNEL = "gates"
#: The hub setting (store) that holds seed 004's deployment type, and the values it takes.
DEPLOYMENT_TYPE = "deployment-type"
DEPLOYMENT_TYPES = ("local", "maas")


def deployment_type(settings: dict[str, str], default: str) -> str:
    """The deployment type in force: the hub setting, else the hub's flag (``default``); "" means unset (agents take local)."""
    return settings.get(DEPLOYMENT_TYPE) or default


def snapshot(gates: list[GateRecord], *, applied_local_ms: int, deployment_type: str = "") -> pb.SpecUpdate:
    """A full gate snapshot for one agent's session (with the deployment type, if the hub has one)."""
    doc: dict[str, Any] = {
        "gates": [{"gate-key": g.key, "enabled": g.enabled, "revision": g.revision, "deleted": g.deleted} for g in gates],
        "applied_local_ms": applied_local_ms,
    }
    if deployment_type:
        doc["deployment-type"] = deployment_type
    return pb.SpecUpdate(revision=max((g.revision for g in gates), default=0), gates_json=orjson.dumps(doc), full=True)


def local_change_problem(change: pb.LocalChange) -> str:
    """Why an agent's local change cannot be applied ("" if it can)."""
    if problem := gate_key_problem(change.key):
        return f"local change: {problem}"
    if not change.unset and change.value not in ("true", "false"):
        return f"local change of {change.key}: value {change.value!r} is not true or false"
    return ""


async def apply_local_change(store: Store, cluster: str, change: pb.LocalChange, *, now: float) -> GateRecord | None:
    """Write an agent's local change (a checked one) to the store; None for an unset of a gate that is not set."""
    by = f"agent {cluster}"
    if change.unset:
        return await store.delete_gate(change.key, by=by, now=now)
    return await store.set_gate(change.key, change.value == "true", by=by, now=now)
