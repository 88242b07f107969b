"""The one codec every transport uses: protocol messages <-> bytes, object bodies <-> wire.

An object is serialized, hashed and compressed once, on the agent; the hub stores
the compressed body as received and decompresses only to answer a read.

Nothing from the wire is decompressed without a bound: lz4 reaches ratios of about 250
to 1, so a 247 KB frame could become 59 MB of memory. :func:`decompress` stops at a
limit (python-lz4's streaming decompressor with ``max_length``) and refuses the frame
with a :class:`CodecError` naming the limit; :func:`declared_size_problem` refuses a
body whose frame header claims more than the limit before it is stored at all.
"""

from __future__ import annotations

from typing import Any

import lz4.frame
from google.protobuf.message import DecodeError

from fleetsync.errors import FleetsyncError
from fleetsync.model.objects import object_key
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.wireobject import LAST_APPLIED, fields_of_dict, wire_object
from fleetsync.protocol.wireobject import object_hash as object_hash  # (the digest hash, by the name the codec's users know)


class CodecError(FleetsyncError, ValueError):
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
        if isinstance(annotations, dict) and LAST_APPLIED in annotations:
            del annotations[LAST_APPLIED]
            if not annotations:
                del meta["annotations"]
    return obj


def make_object(obj: dict[str, Any], *, compress: bool = True) -> pb.Object:
    """The wire form of an object held as Python values (``obj`` is not changed): as the agent
    makes it from the cluster's JSON (:func:`fleetsync.protocol.wireobject.wire_object`)."""
    return wire_object(fields_of_dict(obj), compress=compress)


#: The most a stored object body may decompress to when it is read (a hub's
#: ``--max-object-bytes`` may not exceed it): a body whose frame lied about its size stops here.
READ_LIMIT = 64 * 1024 * 1024


def decompress(frame: bytes, limit: int, what: str) -> bytes:
    """The content of one lz4 frame, if it is at most ``limit`` bytes; else a CodecError.

    The frame is decompressed in one bounded step: at most ``limit`` bytes are ever
    produced, whatever the frame says about itself, so a frame that would expand further
    costs the hub ``limit`` bytes and is refused. A frame that declares its content size
    (every agent's does) is decompressed into a buffer of that size, not of ``limit``: the
    output buffer is allocated whole, and a 64 MiB one for a 3 KB body (a fresh mapping
    each time) cost 15-20 µs a body where the body itself takes 2; content beyond what the
    frame declared is refused as invalid."""
    try:
        declared = int(lz4.frame.get_frame_info(frame).get("content_size") or 0)
    except RuntimeError as exc:
        raise CodecError(f"{what} is not valid lz4: {exc}") from None
    bound = min(declared, limit) if declared else limit
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        out = decompressor.decompress(frame, max_length=bound)
        if not decompressor.eof and not decompressor.needs_input:  # more output is waiting
            if bound < limit:
                raise CodecError(f"{what} is not valid lz4: it holds more than the {declared} bytes its frame declares")
            raise CodecError(f"{what} decompresses to more than {limit} bytes (the limit); refused")
    except RuntimeError as exc:
        raise CodecError(f"{what} is not valid lz4: {exc}") from None
    if not decompressor.eof:
        raise CodecError(f"{what} is not valid lz4: the frame is truncated ({len(frame)} bytes)")
    if decompressor.unused_data:
        raise CodecError(f"{what} is not valid lz4: {len(decompressor.unused_data)} bytes follow the frame")
    return bytes(out)


def declared_size_problem(frame: bytes, limit: int) -> str:
    """What is wrong with an lz4 body's frame header ("" if nothing): it must state its
    content size (every agent's frames do), and that size must be at most ``limit``.

    Cheap (the header only): the hub stores bodies compressed and does not decompress them
    on the way in; a frame whose content exceeds what it declared is stopped when read."""
    try:
        info = lz4.frame.get_frame_info(frame)
    except RuntimeError as exc:
        return f"object body is not valid lz4: {exc}"
    size = int(info.get("content_size") or 0)
    if size == 0 and len(frame) > 64:  # only an empty body may leave its size out (an lz4 frame of nothing is ~15 bytes)
        return "object body's lz4 frame does not state its content size"
    if size > limit:
        return f"object body declares {size} bytes decompressed, over the hub's limit of {limit} bytes (--max-object-bytes)"
    return ""


def body_json(body: bytes, compression: int, *, limit: int = READ_LIMIT) -> bytes:
    """The JSON of a stored body (a CodecError if it is not valid lz4 or would exceed ``limit``)."""
    if compression == pb.COMPRESSION_LZ4:
        return decompress(body, limit, "object body")
    return body


#: The object key (:func:`fleetsync.model.objects.object_key`), by the name the agent and inbox know it.
key_of = object_key


def pack_digest_entries(entries: list[pb.DigestEntry]) -> bytes:
    """The LZ4 form of digest entries (sorted keys share prefixes: ~22 bytes per entry, not ~47)."""
    return bytes(lz4.frame.compress(pb.DigestEntries(entries=entries).SerializeToString()))


def digest_entries(digest: pb.Digest, *, limit: int = READ_LIMIT) -> dict[str, int]:
    """key -> hash of one digest chunk, whatever its compression; packed entries may not
    decompress to more than ``limit`` bytes (a CodecError naming it)."""
    if digest.compression == pb.COMPRESSION_LZ4:
        packed = pb.DigestEntries()
        raw = decompress(digest.packed, limit, f"digest of {digest.type} chunk {digest.chunk}: packed entries")
        try:
            packed.ParseFromString(raw)
        except DecodeError as exc:
            raise CodecError(f"digest of {digest.type} chunk {digest.chunk}: packed entries are not valid: {exc}") from None
        return {e.key: e.hash for e in packed.entries}
    if digest.compression != pb.COMPRESSION_NONE:
        raise CodecError(f"digest of {digest.type}: unknown compression {digest.compression}")
    return {e.key: e.hash for e in digest.entries}
