"""Reading the Kubernetes API's JSON: LIST pages and watch lines, as Python values or raw fields.

The agent reads the types it syncs as raw fields (:data:`RAW`): each object's top-level
fields stay slices of the page's bytes until :mod:`fleetsync.protocol.wireobject` makes
the wire form, and nothing is parsed whole. The works' watches read Python values
(:data:`DICTS`): they compare and patch what they read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import orjson

from fleetsync.model.watchevents import decode_event, event_version, raise_error_event
from fleetsync.protocol.wireobject import RawFields

#: An object as a watcher hands it over: Python values (:data:`DICTS`) or raw JSON fields (:data:`RAW`).
Item = TypeVar("Item", bound=dict[str, Any])


@dataclass(frozen=True)
class Decoding(Generic[Item]):
    """How a watcher reads the API's JSON: a LIST page into (objects, continue token,
    resourceVersion), a watch line into (event type, object, resourceVersion or "") or None."""

    page: Callable[[bytes], tuple[list[Item], str, str]]
    event: Callable[[bytes], tuple[str, Item, str] | None]


def _dict_page(data: bytes) -> tuple[list[dict[str, Any]], str, str]:
    page = orjson.loads(data)
    metadata = page.get("metadata") or {}
    return page.get("items") or [], str(metadata.get("continue") or ""), str(metadata.get("resourceVersion", ""))


def _dict_event(line: bytes) -> tuple[str, dict[str, Any], str] | None:
    decoded = decode_event(line)
    return None if decoded is None else (decoded[0], decoded[1], event_version(decoded[1], ""))


class _ListMeta(msgspec.Struct):
    resourceVersion: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class _RawPage(msgspec.Struct):
    items: list[RawFields] | None = None
    metadata: _ListMeta = msgspec.field(default_factory=_ListMeta)


_raw_page_decoder = msgspec.json.Decoder(_RawPage)


def _raw_page(data: bytes) -> tuple[list[RawFields], str, str]:
    try:
        page = _raw_page_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"a LIST page that is not a Kubernetes list: {exc}") from None
    return page.items or [], page.metadata.continue_, page.metadata.resourceVersion


class _Version(msgspec.Struct):
    resourceVersion: str = ""


class _RawEvent(msgspec.Struct):
    type: str = ""
    object: RawFields = msgspec.field(default_factory=dict)


_raw_event = msgspec.json.Decoder(_RawEvent)
_version = msgspec.json.Decoder(_Version)


def decode_raw_event(line: bytes) -> tuple[str, RawFields, str] | None:
    """(type, object as its raw JSON fields, the resourceVersion it moves the watch to or "") of
    one line of a watch (None for a blank one); an ERROR event raises as
    :func:`fleetsync.model.watchevents.decode_event` does. The line is scanned once, and the
    object's metadata once more for its version."""
    if not line.strip():
        return None
    try:
        event = _raw_event.decode(line)
        if event.type == "ERROR":
            raise_error_event({name: msgspec.json.decode(value) for name, value in event.object.items()})
        metadata = event.object.get("metadata")
        version = _version.decode(metadata).resourceVersion if metadata is not None else ""
    except msgspec.DecodeError as exc:
        raise ValueError(f"a watch event that is not a Kubernetes WatchEvent with an object: {exc}") from None
    return event.type, event.object, version


#: Objects as Python values (what the works' watches read).
DICTS: Decoding[dict[str, Any]] = Decoding(_dict_page, _dict_event)
#: Objects as their raw JSON fields, never parsed whole (the synced types: ``protocol/wireobject.py``).
RAW: Decoding[RawFields] = Decoding(_raw_page, decode_raw_event)
