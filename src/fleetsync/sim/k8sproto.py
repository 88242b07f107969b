"""Kubernetes' protobuf encoding, read just far enough for a TokenRequest (pure code).

The simulator speaks JSON, and answers a protobuf body with 415. ``kubectl create token``
(kubectl 1.37) sends its TokenRequest only as protobuf and does not fall back to JSON, so
the simulator reads that one message itself: the ``k8s\\x00`` envelope (a
``runtime.Unknown`` holding the message's bytes), then ``TokenRequest.spec``'s
``audiences`` (field 1) and ``expirationSeconds`` (field 4), as
``k8s.io/api/authentication/v1/generated.proto`` numbers them. Anything else in it is
skipped. See https://kubernetes.io/docs/reference/using-api/api-concepts/#protobuf-encoding
"""

from __future__ import annotations

from typing import Any

from fleetsync.errors import FleetsyncError

MAGIC = b"k8s\x00"
#: Larger bodies are not read (a TokenRequest is a few hundred bytes).
MAX_BYTES = 64 * 1024

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ProtobufError(FleetsyncError, ValueError):
    """A body that is not the protobuf message it should be."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtobufError("a truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of every field of one message: varints as ints, length-delimited as bytes."""
    found: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
            found.append((number, value))
        elif wire == _LEN:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ProtobufError("a field runs past the end of the message")
            found.append((number, data[pos : pos + size]))
            pos += size
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4  # not used by a TokenRequest: skipped
        else:
            raise ProtobufError(f"wire type {wire} is not supported")
    if pos != len(data):
        raise ProtobufError("a fixed-size field runs past the end of the message")
    return found


def _message(data: bytes, number: int) -> bytes:
    values = [v for n, v in fields(data) if n == number and isinstance(v, bytes)]
    return values[-1] if values else b""


def token_request(body: bytes) -> dict[str, Any]:
    """A protobuf TokenRequest as the JSON object it stands for (only ``kind`` and ``spec``)."""
    if len(body) > MAX_BYTES:
        raise ProtobufError(f"larger than {MAX_BYTES} bytes")
    if not body.startswith(MAGIC):
        raise ProtobufError("no k8s protobuf envelope")
    unknown = body[len(MAGIC) :]
    kind = _message(_message(unknown, 1), 2).decode(errors="replace")  # Unknown.typeMeta.kind
    spec = _message(_message(unknown, 2), 2)  # Unknown.raw -> TokenRequest.spec
    parsed: dict[str, Any] = {}
    for number, value in fields(spec):
        if number == 1 and isinstance(value, bytes):
            parsed.setdefault("audiences", []).append(value.decode(errors="replace"))
        elif number == 4 and isinstance(value, int):
            parsed["expirationSeconds"] = value
    return {"apiVersion": "authentication.k8s.io/v1", "kind": kind or "TokenRequest", "spec": parsed}
