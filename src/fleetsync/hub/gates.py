"""Feature gates between the hub and its agents (seed 004): snapshots down, local changes up.

Down: on connect, and whenever any replica writes a gate (the store's ``gates``
notification), each session sends a ``SpecUpdate`` with every gate ever set, deleted ones
as tombstones, so an agent that missed pushes (or was away for the unset) reconciles from
any one of them. Up: an agent's ``LocalChange`` (its local config changed: the hook) is
written to the store like an API write, recorded as by ``agent CLUSTER``, if the agent's
token has the ``gates`` grant (gate writes reach every cluster: least authority keeps them
off by default). A change carries the gate revision it was based on (``base_revision``):
if someone else wrote the gate after it, the change is a stale resend (its confirming
snapshot was lost with a connection) and is dropped, so it cannot undo a later write;
otherwise the last write wins by gate revision. Each snapshot also says up to which local
change of that agent it reflects (``applied_local_ms``: a refused or dropped change counts
as reflected, the agent takes the snapshot's value instead), so the agent knows which of its
changes the hub has and which are still in flight, whether the cluster is new to the fleet
(``join``: its local gates are overwritten by the fleet's, seed 004), and, after a refusal,
why (``refused``).

Each cluster's own values: every checked local change is also recorded as that cluster's value
(:meth:`Store.report_cluster_gate`, with a history entry when it changed), whether or not it
reaches the fleet's gates, and :func:`cluster_value` says what a cluster's local config holds
of a gate from that, the fleet's gate and the snapshot revision the cluster applied ("what's
set where", seed 004).
"""

from __future__ import annotations

from typing import Any

import orjson

from fleetsync.model.gates import gate_key_problem
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.contract import ClusterGateValue, GateRecord, Store

#: The token grant that lets an agent's local gate changes reach the fleet's gates.
GATES_GRANT = "gates"

#: The store notification channel of gate writes (payload: the revision) and of deployment-type changes.
GATES_CHANNEL = "gates"
#: The hub setting (store) that holds seed 004's deployment type, and the values it takes.
DEPLOYMENT_TYPE = "deployment-type"
DEPLOYMENT_TYPES = ("local", "maas")


def deployment_type(settings: dict[str, str], default: str) -> str:
    """The deployment type in force: the hub setting, else the hub's flag (``default``); "" means unset (agents take local)."""
    return settings.get(DEPLOYMENT_TYPE) or default


def snapshot(gates: list[GateRecord], *, applied_local_ms: int, deployment_type: str = "", join: bool = False, refused: str = "") -> pb.SpecUpdate:
    """A full gate snapshot for one agent's session (with the deployment type, if the hub has one;
    ``join``: the cluster never applied the fleet's gates; ``refused``: why its last change was not taken)."""
    doc: dict[str, Any] = {
        # (updated-at-ms: when the hub took the write, for the agents' gate propagation latency)
        "gates": [
            {"gate-key": g.key, "enabled": g.enabled, "revision": g.revision, "deleted": g.deleted, "updated-at-ms": int(g.updated_at * 1000)} for g in gates
        ],
        "applied_local_ms": applied_local_ms,
    }
    if deployment_type:
        doc["deployment-type"] = deployment_type
    if join:
        doc["join"] = True
    if refused:
        doc["refused"] = refused
    return pb.SpecUpdate(revision=max((g.revision for g in gates), default=0), gates_json=orjson.dumps(doc), full=True)


def local_change_problem(change: pb.LocalChange) -> str:
    """Why an agent's local change cannot be applied ("" if it can)."""
    if problem := gate_key_problem(change.key):
        return f"local change: {problem}"
    if not change.unset and change.value not in ("true", "false"):
        return f"local change of {change.key}: value {change.value!r} is not true or false"
    return ""


def grant_problem(cluster: str, grants: tuple[str, ...]) -> str:
    """Why the token of ``cluster``'s agent may not write the fleet's gates ("" if it may)."""
    if GATES_GRANT in grants:
        return ""
    return (
        f"the token of cluster {cluster!r} may not change the fleet's gates (it has no {GATES_GRANT!r} grant): its local gate changes are "
        f"refused and the fleet's values stand; an admin allows them with `fleetsync token create {cluster} --grant {GATES_GRANT}`"
    )


async def apply_local_change(store: Store, cluster: str, change: pb.LocalChange, *, now: float) -> GateRecord | None:
    """Write an agent's local change (a checked one) to the store; None for an unset of a gate that is not set.
    Raises GateConflict if someone else wrote the gate after the change's ``base_revision``
    (an agent older than the field sends none: its change is written as before)."""
    by = f"agent {cluster}"
    based_on = change.base_revision if change.HasField("base_revision") else None
    if change.unset:
        return await store.delete_gate(change.key, by=by, now=now, based_on=based_on)
    return await store.set_gate(change.key, change.value == "true", by=by, now=now, based_on=based_on)


def _shown(enabled: bool | None) -> str:
    return "unset" if enabled is None else "true" if enabled else "false"


def cluster_value(*, deployment_type: str, fleet: GateRecord | None, applied: int | None, reported: ClusterGateValue | None) -> tuple[str, str]:
    """What a cluster's local config holds of one gate, as the hub knows it: (value, source).

    value is ``true``, ``false``, ``unset`` or ``unknown``; source says why: ``fleet`` (in
    ``local`` deployments, the cluster applied a snapshot at or after the fleet's last write of
    the gate, which put the fleet's value there), ``pending`` (the fleet's last write is not
    applied yet: its old value, or its own, is still there), ``local`` (what its agent last
    reported: in ``maas`` the hub never writes down, so this is the cluster's value; in
    ``local`` deployments, a gate the fleet never had), ``unreported`` (nothing to go by: an
    agent without a local config target, or one that never changed the gate).
    ``fleet``: the gate, a tombstone included (None: never set)."""
    if deployment_type != "maas" and fleet is not None:
        if applied is not None and applied >= fleet.revision:
            return _shown(None if fleet.deleted else fleet.enabled), "fleet"
        if applied is not None:
            return "unknown", "pending"
    if reported is not None:
        return _shown(reported.enabled), "local"
    return "unknown", "unreported"


def fleet_value(fleet: GateRecord | None) -> str:
    """The fleet's value of a gate (None or a tombstone: ``unset``), as :func:`cluster_value` shows values."""
    return _shown(None if fleet is None or fleet.deleted else fleet.enabled)


_VALUES: dict[str, bool | None] = {"true": True, "false": False, "unset": None}


def previous_value(*, deployment_type: str, fleet: GateRecord | None, applied: int | None, reported: ClusterGateValue | None) -> bool | None:
    """What the hub knew a cluster held of a gate before its agent's next change (the old side of
    that change's history entry): :func:`cluster_value`, else its last report, else unset. In
    ``local`` deployments the fleet's writes replace a cluster's earlier reports once applied,
    so a change back to what it reported before is a change too."""
    value, _ = cluster_value(deployment_type=deployment_type, fleet=fleet, applied=applied, reported=reported)
    if value == "unknown":
        return None if reported is None else reported.enabled
    return _VALUES[value]


async def record_local_value(store: Store, cluster: str, change: pb.LocalChange, *, default_deployment_type: str, now: float) -> None:
    """Record a (checked) local change as ``cluster``'s own value of the gate, whatever becomes of
    it in the fleet's gates (refused for want of the grant, dropped as stale, or written), with a
    history entry when it differs from what the hub knew the cluster held."""
    kind = deployment_type(await store.hub_settings(), default_deployment_type) or "local"
    fleet = next((g for g in await store.gates(since=0) if g.key == change.key), None)
    reported = next(iter(await store.cluster_gate_values(key=change.key, cluster=cluster)), None)
    old = previous_value(deployment_type=kind, fleet=fleet, applied=(await store.gates_applied()).get(cluster), reported=reported)
    new = None if change.unset else change.value == "true"
    await store.report_cluster_gate(cluster, change.key, new, old=old, by=f"agent {cluster}", now=now)
