"""Conversions every store engine shares between records and database rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from fleetsync.store.contract import EventType, GateRecord, Lease, ObjectRecord, RefreshTarget, WorkRecord, WorkStatusRecord

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
    """ "namespace/name" -> (namespace, name); a key without "/" is a cluster-scoped name."""
    namespace, sep, name = key.partition("/")
    return (namespace, name) if sep else ("", key)


def event_type(value: str) -> EventType:
    """A change-log event name read back from the database."""
    try:
        return _EVENTS[value]
    except KeyError:
        raise ValueError(f"unknown change event {value!r} in the change log") from None


def object_from_row(r: Sequence[Any], rev: int | None = None) -> ObjectRecord:
    """A record from a row of ``cluster, type, namespace, name, uid, resource_version, hash,
    labels, owner, body, compression, incarnation, rev`` (``rev`` overrides the row's)."""
    return ObjectRecord(
        cluster=r[0],
        type=r[1],
        namespace=r[2],
        name=r[3],
        uid=r[4],
        resource_version=r[5],
        hash=to_unsigned(r[6]),
        labels=orjson.loads(r[7]),
        owner=r[8],
        body=r[9],
        compression=r[10],
        incarnation=r[11],
        rev=r[12] if rev is None else rev,
    )


def lease_from_row(r: Sequence[Any]) -> Lease:
    """A lease from a row of ``cluster, holder, incarnation, hub_id, expires_at, connected``."""
    return Lease(cluster=r[0], holder=r[1], incarnation=r[2], hub_id=r[3], expires_at=r[4], connected=bool(r[5]))


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


#: The columns :func:`work_from_row` reads, in order.
WORK_COLUMNS = "name, spec, generation, revision, created_at, updated_at, updated_by"


def work_from_row(r: Sequence[Any]) -> WorkRecord:
    return WorkRecord(name=r[0], spec=bytes(r[1]), generation=int(r[2]), revision=int(r[3]), created_at=float(r[4]), updated_at=float(r[5]), updated_by=r[6])


#: The columns :func:`work_status_from_row` reads, in order.
WORK_STATUS_COLUMNS = "work, cluster, generation, manifests, updated_at"


def work_status_from_row(r: Sequence[Any]) -> WorkStatusRecord:
    return WorkStatusRecord(work=r[0], cluster=r[1], generation=int(r[2]), manifests=bytes(r[3]), updated_at=float(r[4]))
