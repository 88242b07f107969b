"""Fuzzing what the hub reads from the wire: arbitrary bytes and arbitrary or half-valid
``AgentMessage``s fed to a real hub Session (on a real SQLite store), and arbitrary lz4
frames to the codec. Whatever arrives, the answer is a clean result or a ``Reject`` (a
CodecError inside the codec): never an unhandled exception, never a failed engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import lz4.frame
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetsync.hub.auth import hash_token
from fleetsync.hub.core import HubCore, HubSettings
from fleetsync.hub.limits import ProtocolLimits
from fleetsync.hub.session import Session, SessionClosed
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.sqlite import SQLiteStore

TOKEN = "fuzz-token-of-cluster-c1"
U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
NAMES = st.sampled_from(["", "a", "web-1", "default", "kube-system"]) | st.text(max_size=30)
TYPES = st.sampled_from(["v1/Pod", "v1/Service", "apps/v1/Deployment", "v1/Nope", ""]) | st.text(max_size=20)
INCARNATIONS = st.sampled_from(["i1", "i2", ""]) | st.text(max_size=10)


def _frame(data: bytes) -> bytes:
    return bytes(lz4.frame.compress(data))


#: lz4 frames: valid ones, truncated ones, ones with trailing bytes, bombs, and noise.
FRAMES = st.one_of(
    st.binary(max_size=200).map(_frame),
    st.binary(max_size=200).map(lambda b: _frame(b)[: max(0, len(_frame(b)) - 3)]),
    st.binary(min_size=1, max_size=50).map(lambda b: _frame(b) + b"\x00junk"),
    st.integers(1, 20).map(lambda mb: _frame(bytes(mb * 1024 * 1024))),
    st.binary(max_size=200),
)
DIGEST_FRAMES = st.one_of(
    FRAMES,
    st.lists(st.builds(pb.DigestEntry, key=NAMES, hash=U64), max_size=20).map(lambda e: _frame(pb.DigestEntries(entries=e).SerializeToString())),
)
OBJECTS = st.builds(pb.Object, namespace=NAMES, name=NAMES, uid=NAMES, resource_version=NAMES, hash=U64, body=FRAMES, owner=NAMES)
HELLOS = st.builds(
    pb.Hello,
    cluster_id=st.sampled_from(["c1", "c2", ""]) | st.text(max_size=80),
    agent_id=st.sampled_from(["agent-1", ""]) | st.text(max_size=40),
    incarnation=INCARNATIONS,
    token=st.sampled_from([TOKEN, TOKEN, "wrong", ""]),
    metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
    capabilities=st.lists(st.sampled_from(["digest", "lz4", "gates", "works", "x"]), max_size=4),
    protocol_version=U32,
)
BUNDLES = st.builds(
    pb.Bundle,
    type=TYPES,
    incarnation=INCARNATIONS,
    seq=U64,
    base_seq=U64 | st.integers(0, 3),
    kind=st.integers(0, 3),
    upserts=st.lists(OBJECTS, max_size=3),
    deletes=st.lists(NAMES, max_size=3),
    compression=st.integers(0, 2),
    chunk=U32 | st.integers(0, 2),
    last=st.booleans(),
    error=st.sampled_from(["", "forbidden"]),
    collected_at_ms=I64,
)
DIGESTS = st.builds(
    pb.Digest,
    type=TYPES,
    incarnation=INCARNATIONS,
    seq=U64 | st.integers(0, 3),
    entries=st.lists(st.builds(pb.DigestEntry, key=NAMES, hash=U64), max_size=5),
    compression=st.integers(0, 2),
    packed=DIGEST_FRAMES,
    chunk=U32 | st.integers(0, 2),
    last=st.booleans(),
)
MANIFESTS = st.builds(pb.ManifestStatus, work=NAMES, generation=U64, manifest=NAMES, applied=st.booleans(), message=NAMES, condition=NAMES)
MESSAGES = st.one_of(
    HELLOS.map(lambda m: pb.AgentMessage(hello=m)),
    BUNDLES.map(lambda m: pb.AgentMessage(bundle=m)),
    DIGESTS.map(lambda m: pb.AgentMessage(digest=m)),
    st.builds(pb.Heartbeat, sent_at_ms=I64).map(lambda m: pb.AgentMessage(heartbeat=m)),
    st.builds(pb.Status, manifests=st.lists(MANIFESTS, max_size=3), removed=st.lists(NAMES, max_size=2), gates_revision=U64).map(
        lambda m: pb.AgentMessage(status=m)
    ),
    st.builds(pb.LocalChange, key=NAMES, unset=st.booleans(), value=NAMES, changed_at_ms=I64).map(lambda m: pb.AgentMessage(local_change=m)),
)
GOOD_HELLO = pb.AgentMessage(hello=pb.Hello(cluster_id="c1", agent_id="agent-1", incarnation="i1", token=TOKEN, capabilities=["works"], protocol_version=1))


class Hub:
    """A real hub core on a real SQLite store, kept across examples on one event loop."""

    def __init__(self, runner: asyncio.Runner, path: Path) -> None:
        self.runner = runner
        self.store = SQLiteStore(path)
        limits = ProtocolLimits(auth_failure_delay=0.0)  # throttled answers would only slow the fuzzing down
        self.core = HubCore(self.store, HubSettings(grace_period=0.0, lease_ttl=5.0, limits=limits))
        runner.run(self._open())

    async def _open(self) -> None:
        await self.store.open()
        await self.store.add_token(name="c1", role="agent", token_hash=hash_token(TOKEN))

    def feed(self, messages: list[pb.AgentMessage | bytes]) -> list[pb.HubMessage]:
        return self.runner.run(self._feed(messages))

    async def _feed(self, messages: list[pb.AgentMessage | bytes]) -> list[pb.HubMessage]:
        sent: list[pb.HubMessage] = []

        async def send(message: object) -> None:
            assert isinstance(message, pb.HubMessage)
            sent.append(message)

        session = Session(self.core, send, peer="ipv4:127.0.0.1:1")
        try:
            for item in messages:
                if isinstance(item, bytes):  # as a transport does: what does not decode ends the session with a Reject
                    try:
                        item = codec.decode_agent_message(item)
                    except codec.CodecError as exc:
                        await session.reject(pb.PROTOCOL, str(exc))
                async with asyncio.timeout(10):
                    await session.handle(item)
                    await session.room()
            if (engine := session.engine) is not None:  # what was queued is applied (or refused) before the session ends
                async with asyncio.timeout(10):
                    while len(engine.inbox) or engine.inbox.in_hand:  # noqa: ASYNC110 (the inbox has no "drained" event for a test to wait on)
                        await asyncio.sleep(0.005)
        except SessionClosed:
            assert sent and sent[-1].WhichOneof("message") == "reject", sent
        finally:
            await session.close()
        return sent

    def close(self) -> None:
        self.runner.run(self._close())

    async def _close(self) -> None:
        await self.core.stop()
        await self.store.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    with asyncio.Runner() as runner:
        h = Hub(runner, tmp_path / "hub.db")
        try:
            yield h
        finally:
            h.close()


def _no_engine_failure(caplog: pytest.LogCaptureFixture) -> None:
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures][:3]


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(messages=st.lists(MESSAGES, min_size=1, max_size=6))
def test_arbitrary_messages_get_an_answer_or_a_reject_never_a_crash(hub: Hub, caplog: pytest.LogCaptureFixture, messages: list[pb.AgentMessage]) -> None:
    hub.feed(list(messages))
    _no_engine_failure(caplog)


@FUZZ
@given(messages=st.lists(MESSAGES.filter(lambda m: m.WhichOneof("message") != "hello"), min_size=1, max_size=6))
def test_arbitrary_messages_after_a_good_hello(hub: Hub, caplog: pytest.LogCaptureFixture, messages: list[pb.AgentMessage]) -> None:
    sent = hub.feed([GOOD_HELLO, *messages])
    assert sent[0].WhichOneof("message") == "welcome", sent[0]
    _no_engine_failure(caplog)


@FUZZ
@given(data=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_arbitrary_bytes_after_a_good_hello(hub: Hub, caplog: pytest.LogCaptureFixture, data: list[bytes]) -> None:
    hub.feed([GOOD_HELLO, *data])
    _no_engine_failure(caplog)


@settings(max_examples=300, deadline=None)
@given(frame=FRAMES, limit=st.integers(0, 4 * 1024 * 1024))
def test_the_codec_decompresses_any_frame_within_its_limit_or_refuses_it(frame: bytes, limit: int) -> None:
    try:
        out = codec.decompress(frame, limit, "fuzzed frame")
    except codec.CodecError as exc:
        assert "fuzzed frame" in str(exc)
    else:
        assert len(out) <= limit and out == lz4.frame.decompress(frame)
    assert isinstance(codec.declared_size_problem(frame, limit), str)
    try:
        codec.digest_entries(pb.Digest(type="v1/Pod", compression=pb.COMPRESSION_LZ4, packed=frame), limit=limit)
    except codec.CodecError:
        pass


def _declaring(frame: bytes, size: int) -> bytes:
    """``frame`` (lz4, with its content size in the header) made to declare ``size`` instead,
    its header checksum fixed so that only the lie is wrong."""
    descriptor = bytearray(frame[4:14])  # FLG, BD, 8 bytes of content size
    descriptor[2:10] = size.to_bytes(8, "little")
    checksum = (xxhash.xxh32_intdigest(bytes(descriptor)) >> 8) & 0xFF
    return frame[:4] + bytes(descriptor) + bytes([checksum]) + frame[15:]


def test_a_frame_holding_more_than_its_header_declares_is_refused_and_an_honest_one_read() -> None:
    content = b'{"metadata": {"name": "x"}, "data": "' + b"y" * 5000 + b'"}'
    frame = lz4.frame.compress(content, store_size=True)
    assert _declaring(frame, len(content)) == frame  # the header is what the tool rewrites
    assert codec.decompress(frame, 1 << 20, "body") == content
    with pytest.raises(codec.CodecError, match="holds more than the 100 bytes its frame declares"):
        codec.decompress(_declaring(frame, 100), 1 << 20, "body")
    with pytest.raises(codec.CodecError, match="more than 1000 bytes"):  # declared honestly, over the limit
        codec.decompress(frame, 1000, "body")
