"""Reading a Kubernetes watch stream: one JSON ``WatchEvent`` per line, failures as ERROR events.

Shared by every client of a watch in fleetsync: the agent watching its cluster and the
informer watching the hub.
"""

from __future__ import annotations

from typing import Any

import orjson

from fleetsync.errors import FleetsyncError


class Expired(FleetsyncError):
    """The watched resourceVersion is gone from the server's history (410): list again."""


class WatchError(FleetsyncError):
    """Any other ERROR event: the server's Status code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_event(line: bytes) -> tuple[str, dict[str, Any]] | None:
    """``(type, object)`` of one line of a watch (None for a blank one); an ERROR event
    raises :class:`Expired` (410) or :class:`WatchError`."""
    if not line.strip():
        return None
    event = orjson.loads(line)
    kind, obj = event.get("type"), event.get("object") or {}
    if kind == "ERROR":
        raise_error_event(obj)
    return str(kind), obj


def raise_error_event(status: Any) -> None:
    """Raise what an ERROR event's Status says: :class:`Expired` (410) or :class:`WatchError`."""
    obj = status if isinstance(status, dict) else {}
    if obj.get("code") == 410:
        raise Expired(obj.get("message") or "410 Gone")
    code = obj.get("code")
    raise WatchError(code if isinstance(code, int) and 400 <= code < 600 else 500, str(obj.get("message") or obj))


def event_version(obj: dict[str, Any], current: str) -> str:
    """The resourceVersion an event moves a watch to (``current`` if it carries none)."""
    return str((obj.get("metadata") or {}).get("resourceVersion") or current)
