"""Conversions every store engine shares between records and database rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from fleetsync.model import objects
from fleetsync.store.contract import (
    ClusterGateValue,
    EventType,
    GateChange,
    GateConflict,
    GateRecord,
    Lease,
    ObjectRecord,
    ReadScope,
    RefreshTarget,
    TokenRecord,
    WorkRecord,
    WorkStatusRecord,
)

#: ``touch_cluster`` writes at most this often per cluster (seconds of its ``now``);
#: in between the time is kept in memory, folded into the next write and overlaid on reads.
TOUCH_INTERVAL = 1.0

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1

Key = tuple[str, str]  # (namespace, name)

_EVENTS: dict[str, EventType] = {"ADDED": "ADDED", "MODIFIED": "MODIFIED", "DELETED": "DELETED"}


def to_signed(h: int) -> int:
    """An unsigned 64-bit hash as the signed 64-bit integer databases store."""
    if not 0 <= h < _U64:
        raise ValueError(f"hash {h} is not an unsigned 64-bit integer")
    return h - _U64 if h > _I64_MAX else h


def to_unsigned(v: int) -> int:
    return v + _U64 if v < 0 else v


def split_key(key: str) -> Key:
    """ "namespace/name" -> (namespace, name) (:func:`fleetsync.model.objects.split_key`)."""
    return objects.split_key(key)


def event_type(value: str) -> EventType:
    """A change-log event name read back from the database."""
    try:
        return _EVENTS[value]
    except KeyError:
        raise ValueError(f"unknown change event {value!r} in the change log") from None


def object_from_row(r: Sequence[Any], rev: int | None = None) -> ObjectRecord:
    """A record from a row of ``cluster, type, namespace, name, uid, resource_version, hash,
    labels, owner, body, compression, incarnation, rev`` (``rev`` overrides the row's)."""
    # positional, in ObjectRecord's field order: every change a watch reads passes here
    return ObjectRecord(r[0], r[1], r[2], r[3], r[4], r[5], to_unsigned(r[6]), orjson.loads(r[7]), r[8], r[9], r[10], r[11], r[12] if rev is None else rev)


def lease_from_row(r: Sequence[Any]) -> Lease:
    """A lease from a row of ``cluster, holder, incarnation, hub_id, expires_at, connected, epoch``."""
    return Lease(cluster=r[0], holder=r[1], incarnation=r[2], hub_id=r[3], expires_at=r[4], connected=bool(r[5]), epoch=int(r[6]))


def refresh_from_row(r: Sequence[Any]) -> RefreshTarget:
    """A refresh target from a row of ``cluster, mode, url, interval, next_refresh_at``."""
    return RefreshTarget(cluster=r[0], mode=r[1], url=r[2], interval=r[3], next_refresh_at=r[4])


def nested_counts(rows: Sequence[Sequence[Any]]) -> dict[str, dict[str, int]]:
    """cluster -> type -> count, from rows of ``cluster, type, count``."""
    counts: dict[str, dict[str, int]] = {}
    for cluster, type_, count in rows:
        counts.setdefault(cluster, {})[type_] = int(count)
    return counts


#: The columns :func:`gate_from_row` reads, in order.
GATE_COLUMNS = "key, enabled, updated_at, updated_by, revision, deleted"


def gate_from_row(r: Sequence[Any]) -> GateRecord:
    return GateRecord(key=r[0], enabled=bool(r[1]), updated_at=float(r[2]), updated_by=r[3], revision=int(r[4]), deleted=bool(r[5]))


#: The columns :func:`gate_change_from_row` reads, in order.
GATE_HISTORY_COLUMNS = "id, key, cluster, old, new, by, at, revision"


def gate_value_text(enabled: bool | None) -> str:
    """A gate value as the history and cluster values store it: 'true', 'false', '' (unset)."""
    return "" if enabled is None else "true" if enabled else "false"


def gate_value_of(text: str) -> bool | None:
    """The inverse of :func:`gate_value_text`."""
    return None if text == "" else text == "true"


def gate_change_from_row(r: Sequence[Any]) -> GateChange:
    return GateChange(id=int(r[0]), key=r[1], cluster=r[2], old=gate_value_of(r[3]), new=gate_value_of(r[4]), by=r[5], at=float(r[6]), revision=int(r[7]))


def cluster_gate_value_from_row(r: Sequence[Any]) -> ClusterGateValue:
    return ClusterGateValue(cluster=r[0], key=r[1], enabled=gate_value_of(r[2]), updated_at=float(r[3]))


def gate_conflict(current: GateRecord | None, *, by: str, based_on: int | None) -> GateConflict | None:
    """The conflict of a write by ``by`` based on revision ``based_on`` with the gate as it is
    (live or tombstone; None: never set), or None if the write may go ahead: one engine-neutral rule."""
    if based_on is None or current is None or current.revision <= based_on or current.updated_by == by:
        return None
    return GateConflict(current)


def grants_text(grants: Sequence[str]) -> str:
    """A token's grants as stored (comma-separated, sorted, no repeats)."""
    return ",".join(sorted(set(grants)))


def split_list(text: str) -> tuple[str, ...]:
    """A stored comma-separated list (types, grants) as a tuple ("" -> ())."""
    return tuple(t for t in text.split(",") if t)


#: The token columns :func:`token_from_row` reads, in order.
TOKEN_COLUMNS = "name, role, types, grants, scope"


def scope_text(scope: ReadScope | None) -> str:
    """A read scope as stored: a JSON object ("" for none, so that old rows mean "everything")."""
    if scope is None:
        return ""
    return orjson.dumps(
        {"clusters": list(scope.clusters), "clusterSelector": scope.cluster_selector, "namespaces": list(scope.namespaces), "types": list(scope.types)}
    ).decode()


def scope_from_text(text: str) -> ReadScope | None:
    """The read scope :func:`scope_text` stored."""
    if not text:
        return None
    raw = orjson.loads(text)
    return ReadScope(
        clusters=tuple(raw.get("clusters", ())),
        cluster_selector=str(raw.get("clusterSelector", "")),
        namespaces=tuple(raw.get("namespaces", ())),
        types=tuple(raw.get("types", ())),
    )


def token_from_row(r: Sequence[Any]) -> TokenRecord:
    return TokenRecord(name=r[0], role=r[1], types=split_list(r[2]), grants=split_list(r[3]), scope=scope_from_text(r[4]))


def merge_labels(labels: dict[str, str], *, add: Mapping[str, str], remove: Sequence[str]) -> dict[str, str]:
    """``labels`` with ``remove``'s keys removed, then ``add`` set (a key in both ends up set)."""
    merged = {k: v for k, v in labels.items() if k not in set(remove)}
    merged.update(add)
    return dict(sorted(merged.items()))


#: The columns :func:`work_from_row` reads, in order.
WORK_COLUMNS = "name, spec, generation, revision, created_at, updated_at, updated_by"


def work_from_row(r: Sequence[Any]) -> WorkRecord:
    return WorkRecord(name=r[0], spec=bytes(r[1]), generation=int(r[2]), revision=int(r[3]), created_at=float(r[4]), updated_at=float(r[5]), updated_by=r[6])


#: The columns :func:`work_status_from_row` reads, in order.
WORK_STATUS_COLUMNS = "work, cluster, generation, manifests, updated_at"


def work_status_from_row(r: Sequence[Any]) -> WorkStatusRecord:
    return WorkStatusRecord(work=r[0], cluster=r[1], generation=int(r[2]), manifests=bytes(r[3]), updated_at=float(r[4]))
