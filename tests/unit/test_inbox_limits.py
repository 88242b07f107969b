"""A digest that never ends, or carries a bomb, is refused by the inbox with the bytes it
held handed back; a bundle whose lz4 bodies claim too much is refused before it is queued."""

from __future__ import annotations

import lz4.frame
import pytest

from fleetsync.hub.inbox import Inbox
from fleetsync.hub.limits import ProtocolLimits
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb


def chunk(n: int, *, keys: int = 3, last: bool = False, seq: int = 7) -> pb.Digest:
    entries = [pb.DigestEntry(key=f"default/p{n}-{i}", hash=i) for i in range(keys)]
    return pb.Digest(type="v1/Pod", incarnation="i1", seq=seq, chunk=n, last=last, compression=pb.COMPRESSION_LZ4, packed=codec.pack_digest_entries(entries))


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_digest_whose_chunks_never_end_is_refused_at_its_chunk_limit() -> None:
    inbox = Inbox(limits=ProtocolLimits(max_digest_chunks=5))
    for n in range(5):
        inbox.put(chunk(n))
    assert inbox.bytes > 0 and not len(inbox)
    with pytest.raises(codec.CodecError, match=r"refused at chunk 5: more than 5 chunks \(--max-digest-chunks\)"):
        inbox.put(chunk(5))
    assert inbox.bytes == 0 and inbox.budget.bytes == 0  # what it held is handed back
    for n in range(3):  # the next digest is taken as usual
        inbox.put(chunk(n, last=n == 2, seq=8))
    assert len(inbox) == 1


def test_a_digest_past_its_entries_or_its_time_is_refused() -> None:
    inbox = Inbox(limits=ProtocolLimits(max_digest_entries=10))
    inbox.put(chunk(0, keys=6))
    with pytest.raises(codec.CodecError, match="more than 10 entries"):
        inbox.put(chunk(1, keys=6))
    clock = Clock()
    inbox = Inbox(limits=ProtocolLimits(digest_timeout=60), clock=clock)
    inbox.put(chunk(0))
    clock.now = 61
    with pytest.raises(codec.CodecError, match=r"not complete 61s after its first chunk \(--digest-timeout 60s\)"):
        inbox.put(chunk(1, last=True))
    assert inbox.bytes == 0 and not len(inbox)


def test_a_digest_chunk_that_decompresses_past_its_limit_is_refused() -> None:
    inbox = Inbox(limits=ProtocolLimits(max_digest_ratio=2), max_message_bytes=1024)
    inbox.put(chunk(0))
    bomb = pb.Digest(type="v1/Pod", incarnation="i1", seq=7, chunk=1, compression=pb.COMPRESSION_LZ4, packed=lz4.frame.compress(bytes(1024 * 1024)))
    with pytest.raises(codec.CodecError, match="decompresses to more than 2048 bytes"):
        inbox.put(bomb)
    assert inbox.bytes == 0


def test_a_bundle_whose_body_claims_more_than_the_object_limit_is_refused_before_it_is_queued() -> None:
    inbox = Inbox(limits=ProtocolLimits(max_object_bytes=1000))
    small = pb.Object(namespace="default", name="ok", body=lz4.frame.compress(b"{}"))
    big = pb.Object(namespace="default", name="big", body=lz4.frame.compress(b" " * 5000))
    unsized = pb.Object(namespace="default", name="unsized", body=lz4.frame.compress(bytes(range(256)) * 4, store_size=False))
    for obj, why in ((big, "default/big: object body declares 5000 bytes"), (unsized, "does not state its content size")):
        bundle = pb.Bundle(type="v1/Pod", incarnation="i1", seq=1, kind=pb.DELTA, compression=pb.COMPRESSION_LZ4, upserts=[small, obj])
        with pytest.raises(codec.CodecError, match=why):
            inbox.put(bundle)
    assert inbox.bytes == 0 and not len(inbox)
    inbox.put(pb.Bundle(type="v1/Pod", incarnation="i1", seq=1, kind=pb.DELTA, compression=pb.COMPRESSION_LZ4, upserts=[small]))
    assert len(inbox) == 1
