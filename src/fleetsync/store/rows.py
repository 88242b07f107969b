"""Conversions every store engine shares between records and database rows."""

from __future__ import annotations

from fleetsync.store.contract import EventType

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
