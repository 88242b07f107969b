"""The one codec every transport uses: protocol messages <-> bytes, object bodies <-> wire.

An object is serialized, hashed and compressed once, on the agent; the hub stores
the compressed body as received and decompresses only to answer a read.
"""

from __future__ import annotations

from typing import Any

import lz4.frame
import orjson
import xxhash
from google.protobuf.message import DecodeError

from fleetsync.protocol import fleetsync_pb2 as pb

#: Fields that are noise for a consolidated view and dominate object size.
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class CodecError(ValueError):
    """Bytes that are not a valid protocol message; the message says what was expected."""


def encode(message: pb.AgentMessage | pb.HubMessage) -> bytes:
    return message.SerializeToString()


def _decode(cls: type[Any], data: bytes, what: str) -> Any:
    message = cls()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise CodecError(f"not a valid {what} ({len(data)} bytes): {exc}") from None
    if message.WhichOneof("message") is None:
        raise CodecError(f"empty {what}: no message set ({len(data)} bytes)")
    return message


def decode_agent_message(data: bytes) -> pb.AgentMessage:
    result: pb.AgentMessage = _decode(pb.AgentMessage, data, "AgentMessage")
    return result


def decode_hub_message(data: bytes) -> pb.HubMessage:
    result: pb.HubMessage = _decode(pb.HubMessage, data, "HubMessage")
    return result


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop what a consolidated view must not carry: managedFields and the last-applied annotation."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if isinstance(annotations, dict) and _LAST_APPLIED in annotations:
            del annotations[_LAST_APPLIED]
            if not annotations:
                del meta["annotations"]
    return obj


def object_hash(body: bytes) -> int:
    """The digest hash of a canonical JSON body."""
    return xxhash.xxh3_64_intdigest(body)


def make_object(obj: dict[str, Any], *, compress: bool = True) -> pb.Object:
    """Strip, serialize (sorted keys, so equal objects hash equal), hash and compress ``obj`` once."""
    strip(obj)
    body = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    meta = obj.get("metadata") or {}
    owner = next((f"{o.get('kind')}/{o.get('name')}" for o in meta.get("ownerReferences") or () if o.get("controller")), "")
    return pb.Object(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        hash=object_hash(body),
        labels=meta.get("labels") or {},
        owner=owner,
        body=lz4.frame.compress(body) if compress else body,
    )


def body_json(body: bytes, compression: int) -> bytes:
    """The JSON of a stored body."""
    if compression == pb.COMPRESSION_LZ4:
        try:
            return bytes(lz4.frame.decompress(body))
        except RuntimeError as exc:
            raise CodecError(f"object body is not valid lz4: {exc}") from None
    return body


def key_of(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def pack_digest_entries(entries: list[pb.DigestEntry]) -> bytes:
    """The LZ4 form of digest entries (sorted keys share prefixes: ~22 bytes per entry, not ~47)."""
    return bytes(lz4.frame.compress(pb.DigestEntries(entries=entries).SerializeToString()))


def digest_entries(digest: pb.Digest) -> dict[str, int]:
    """key -> hash of one digest chunk, whatever its compression."""
    if digest.compression == pb.COMPRESSION_LZ4:
        packed = pb.DigestEntries()
        try:
            packed.ParseFromString(lz4.frame.decompress(digest.packed))
        except (RuntimeError, DecodeError) as exc:
            raise CodecError(f"digest of {digest.type} chunk {digest.chunk}: packed entries are not valid: {exc}") from None
        return {e.key: e.hash for e in packed.entries}
    if digest.compression != pb.COMPRESSION_NONE:
        raise CodecError(f"digest of {digest.type}: unknown compression {digest.compression}")
    return {e.key: e.hash for e in digest.entries}
