"""A cluster object from its JSON bytes to its wire form, without building it in Python.

Parsing an object into Python dicts was most of the agent's cost per object: a 5.6 KB
Pod of the sim took 85 µs to parse with orjson (two thirds of it its ``managedFields``,
which the agent then drops) and 27 µs more to serialize again with sorted keys, against
about 30 µs for everything here. msgspec decodes an object into its top-level fields
left as raw JSON (:data:`RawFields`, ``msgspec.Raw`` slices of the page's bytes), and the
few fields the wire carries beside the body (name, namespace, uid, resourceVersion,
labels, the controlling owner) into a small struct, skipping the rest unread.

The body is the object as the server wrote it, with two changes: ``managedFields``
and the ``kubectl.kubernetes.io/last-applied-configuration`` annotation are dropped,
and the top-level and ``metadata`` keys are sorted. Values below them are the server's
bytes. Kubernetes API servers encode an object's fields in a fixed order, so an object
that did not change serializes to the same bytes and hashes the same; one whose
content did change may also change order, which costs nothing but being sent.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import lz4.frame
import msgspec
import orjson
import xxhash

from fleetsync.errors import FleetsyncError
from fleetsync.protocol import fleetsync_pb2 as pb

#: One object's top-level fields, each its raw JSON.
RawFields = dict[str, msgspec.Raw]

#: The annotation ``kubectl apply`` leaves, a second copy of the object: dropped with ``managedFields``.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_LAST_APPLIED_BYTES = LAST_APPLIED.encode()


class ObjectJsonError(FleetsyncError, ValueError):
    """JSON that is not a Kubernetes object (or whose metadata has the wrong shape); says which."""


class _Owner(msgspec.Struct):
    kind: str = ""
    name: str = ""
    controller: bool | None = None


class Meta(msgspec.Struct):
    """What the wire carries of an object's metadata beside its body (the rest is skipped unread)."""

    name: str = ""
    namespace: str = ""
    uid: str = ""
    resourceVersion: str = ""
    labels: dict[str, str] | None = None
    ownerReferences: list[_Owner] | None = None

    @property
    def owner(self) -> str:
        """``Kind/name`` of the controlling owner ("" if none)."""
        return next((f"{o.kind}/{o.name}" for o in self.ownerReferences or () if o.controller), "")


_fields = msgspec.json.Decoder(RawFields)
_meta = msgspec.json.Decoder(Meta)
_annotations = msgspec.json.Decoder(dict[str, str])
_EMPTY_META = Meta()


def fields_of(data: bytes | msgspec.Raw) -> RawFields:
    """The top-level fields of one object's JSON (ObjectJsonError if it is not a JSON object).

    The values are skipped, not validated: invalid UTF-8 inside a string, or a number no
    double holds, passes here (an API server writes neither: Go's encoder replaces invalid
    UTF-8) and is refused by the hub's check of each body, which refuses the bundle's type
    on that connection."""
    try:
        return _fields.decode(data)
    except msgspec.DecodeError as exc:
        raise ObjectJsonError(f"not a Kubernetes object: {exc}") from None


def fields_of_dict(obj: dict[str, Any]) -> RawFields:
    """The fields of an object held as Python values (a source that builds its objects, a test)."""
    return fields_of(orjson.dumps(obj))


class Metadata(NamedTuple):
    """An object's metadata read once: what the wire carries beside the body, and the metadata
    as the body holds it (without managedFields and the last-applied annotation, keys sorted;
    None if the object has none)."""

    meta: Meta
    synced: bytes | None


def metadata_of(fields: RawFields) -> Metadata:
    """The object's metadata, its raw JSON scanned once: ``managedFields`` (most of it) is
    skipped there, and the wire's fields are decoded from the stripped metadata."""
    raw = fields.get("metadata")
    if raw is None:
        return Metadata(_EMPTY_META, None)
    synced = _stripped_metadata(raw)
    try:
        return Metadata(_meta.decode(synced), synced)
    except msgspec.DecodeError as exc:
        raise ObjectJsonError(f"object metadata: {exc}") from None


@lru_cache(maxsize=4096)
def _key(name: str) -> bytes:
    """``"name":`` as JSON (escaped as the name needs); the few names objects use are made once."""
    return orjson.dumps(name) + b":"


def _object(fields: dict[str, msgspec.Raw | bytes]) -> bytes:
    """A JSON object of raw values, its keys sorted."""
    parts: list[bytes | msgspec.Raw] = []
    for name in sorted(fields):
        if parts:
            parts.append(b",")
        parts.append(_key(name))
        parts.append(fields[name])
    return b"{" + b"".join(parts) + b"}"


def _stripped_metadata(raw: msgspec.Raw) -> bytes:
    """``metadata`` without managedFields and the last-applied annotation, its keys sorted."""
    try:
        meta: dict[str, msgspec.Raw | bytes] = dict(_fields.decode(raw))
    except msgspec.DecodeError as exc:
        raise ObjectJsonError(f"object metadata: {exc}") from None
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations is not None and _LAST_APPLIED_BYTES in memoryview(annotations).tobytes():
        try:
            kept = _annotations.decode(annotations)
        except msgspec.DecodeError as exc:
            raise ObjectJsonError(f"object annotations: {exc}") from None
        kept.pop(LAST_APPLIED, None)
        if kept:
            meta["annotations"] = orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)
        else:
            del meta["annotations"]
    return _object(meta)


def body_of(fields: RawFields, metadata: Metadata | None = None) -> bytes:
    """The object's body as synced (module docstring): what is hashed, compressed and stored
    (``metadata``: :func:`metadata_of` of ``fields``, if the caller has it already)."""
    synced = (metadata or metadata_of(fields)).synced
    out: dict[str, msgspec.Raw | bytes] = dict(fields)
    if synced is not None:
        out["metadata"] = synced
    return _object(out)


def object_hash(body: bytes) -> int:
    """The digest hash of a body."""
    return xxhash.xxh3_64_intdigest(body)


def wire_object(fields: RawFields, *, compress: bool = True, metadata: Metadata | None = None) -> pb.Object:
    """The object's wire form: its body (:func:`body_of`) hashed and compressed once, and beside
    it the metadata the hub indexes without reading the body (``metadata``: :func:`metadata_of`
    of ``fields``, if the caller has it already)."""
    metadata = metadata or metadata_of(fields)
    meta, body = metadata.meta, body_of(fields, metadata)
    return pb.Object(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        resource_version=meta.resourceVersion,
        hash=object_hash(body),
        labels=meta.labels or {},
        owner=meta.owner,
        body=lz4.frame.compress(body) if compress else body,
    )
