"""Peers that do not play by the protocol cost a running hub only what its limits allow:
a flood of Hellos with a wrong token, an lz4 bomb in a digest or an object body, gRPC
streams that never say Hello, a pull agent whose state is larger than the hub reads."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import lz4.frame

from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol import fleetsync_pb2_grpc as pb_grpc
from fleetsync.transport.base import HubAddress, TransportError
from fleetsync.transport.grpc import GrpcAgentConnection
from fleetsync.transport.mqtt import MqttAgentConnection
from tests.e2e.test_refresh import add_pull, start_pull_agent, wait_serving
from tests.harness import Hub, Sim, Transport, create_token, free_port, hub_events, metric, start_broker, start_hub, wait_until


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status memory figure, in bytes (VmRSS: now; VmHWM: the most ever)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def _db_bytes(db: str) -> int:
    path = db.removeprefix("sqlite:///")
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


async def _hello(hub: Hub, hello: pb.Hello) -> pb.HubMessage | None:
    """Say ``hello`` on a new connection; the hub's first answer (None if it closed without one)."""
    connection = await GrpcAgentConnection.open(HubAddress("grpc", "127.0.0.1", hub.grpc_port))
    try:
        await connection.send(pb.AgentMessage(hello=hello))
        return await connection.receive()
    finally:
        await connection.close()


def test_a_flood_of_wrong_token_hellos_leaves_bounded_events_log_and_database(tmp_path: Path) -> None:
    # 8 clients say Hello with a wrong token as fast as the hub answers, each naming a cluster
    # of 100 KB: every one is refused, but only 10 become events (and log lines), then one
    # event sums up the rest; the database and the log stay small.
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, "--rejected-events", "10", "--rejected-events-window", "4", "--auth-failure-delay", "0.2")
    try:
        db_before, log_before = _db_bytes(db), hub.proc.log.stat().st_size
        answers: list[pb.HubMessage | None] = []

        async def client(n: int, until: float) -> None:
            i = 0
            while time.monotonic() < until:
                i += 1
                name = f"c{n}-{i}-" + "x" * 100_000  # not a cluster name: refused as malformed, never stored
                hello = pb.Hello(cluster_id=name if i % 2 else f"c{n}-{i}", agent_id="a", incarnation="i", token="wrong-token")
                try:
                    answers.append(await _hello(hub, hello))
                except TransportError:
                    answers.append(None)

        async def flood() -> None:
            until = time.monotonic() + 4
            await asyncio.gather(*(client(n, until) for n in range(8)))

        asyncio.run(flood())
        refused = [a for a in answers if a is not None and a.WhichOneof("message") == "reject"]
        # Nothing but refusals; a few writes of a big Hello fail in the client's gRPC core as the
        # hub ends the stream (no answer read: 9 of 174 in one loaded run), the rest read the Reject.
        assert all(a is None or a.WhichOneof("message") == "reject" for a in answers), [a for a in answers if a is not None][:3]
        assert len(refused) >= 40 and len(refused) >= 0.8 * len(answers), (len(refused), len(answers))
        reasons = {pb.RejectReason.Name(a.reject.reason) for a in refused}
        assert reasons == {"UNAUTHENTICATED", "PROTOCOL"}, reasons
        assert any("is not a valid cluster name" in a.reject.message and len(a.reject.message) < 400 for a in refused)
        throttled = metric(f"{hub.url}/metrics", "fleetsync_hello_throttled_total")
        assert throttled > 0, "no refusal was past the peer's rate"

        summary = wait_until(
            lambda: [e for e in hub_events(hub, reason="Rejected") if "more refused Hellos" in e["message"]], timeout=15, what="the summary event"
        )
        rejected = hub_events(hub, reason="Rejected")
        assert len(rejected) <= 10 + 2, len(rejected)  # at most 10 a window, and a summary per window
        assert "from 1 peer" in summary[0]["message"], summary  # all 8 clients are one address
        assert all(len(e["message"]) <= 2048 and "xxxxxxxxxx" not in e["cluster"] for e in rejected)
        assert _db_bytes(db) - db_before < 2 * 1024 * 1024, (db_before, _db_bytes(db))
        assert hub.proc.log.stat().st_size - log_before < 100_000, hub.proc.log.stat().st_size - log_before
    finally:
        hub.proc.stop()


def test_lz4_bombs_are_refused_without_the_hub_growing(tmp_path: Path) -> None:
    # A 232 KB digest chunk that would expand to 59 MB, and an object body that claims 100 MB,
    # from an agent with a valid token: each is refused with a Reject naming the limit, and the
    # hub's peak memory does not grow by the bomb's size.
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    token = create_token(tmp_path, db, "c1").read_text().strip()
    bomb = lz4.frame.compress(bytes(59 * 1024 * 1024))
    assert len(bomb) < 300_000
    body = lz4.frame.compress(bytes(100 * 1024 * 1024))

    async def attack() -> list[pb.Reject]:
        connection = await GrpcAgentConnection.open(HubAddress("grpc", "127.0.0.1", hub.grpc_port))
        try:
            await connection.send(pb.AgentMessage(hello=pb.Hello(cluster_id="c1", agent_id="a", incarnation="i1", token=token, protocol_version=1)))
            rejects: list[pb.Reject] = []
            digest = pb.Digest(type="v1/Pod", incarnation="i1", seq=1, chunk=0, last=True, compression=pb.COMPRESSION_LZ4, packed=bomb)
            await connection.send(pb.AgentMessage(digest=digest))
            obj = pb.Object(namespace="default", name="big", hash=1, body=body[:300_000])  # the header claims 100 MB
            bundle = pb.Bundle(type="v1/Service", incarnation="i1", seq=1, base_seq=0, kind=pb.DELTA, compression=pb.COMPRESSION_LZ4, upserts=[obj])
            await connection.send(pb.AgentMessage(bundle=bundle))
            async with asyncio.timeout(20):
                while len(rejects) < 2:
                    message = await connection.receive()
                    assert message is not None, "the hub closed the session"
                    if message.WhichOneof("message") == "reject":
                        rejects.append(message.reject)
            return rejects
        finally:
            await connection.close()

    try:
        peak_before = _status(hub.proc.process.pid, "VmHWM")
        digest_reject, bundle_reject = asyncio.run(attack())
        assert digest_reject.reason == pb.PROTOCOL and digest_reject.type == "v1/Pod", digest_reject
        assert "decompresses to more than 8388608 bytes" in digest_reject.message, digest_reject.message
        assert bundle_reject.reason == pb.PROTOCOL and bundle_reject.type == "v1/Service", bundle_reject
        assert "declares 104857600 bytes" in bundle_reject.message and "--max-object-bytes" in bundle_reject.message, bundle_reject.message
        grown = _status(hub.proc.process.pid, "VmHWM") - peak_before
        assert grown < 30 * 1024 * 1024, f"the hub's peak RSS grew by {grown / 2**20:.0f} MiB"
        assert hub.proc.process.poll() is None
        assert not [e for e in hub_events(hub, cluster="c1") if e["reason"] == "TypeFailed"]
    finally:
        hub.proc.stop()


def test_grpc_streams_that_never_say_hello_are_closed_and_capped(tmp_path: Path) -> None:
    # 210 streams open and say nothing: 200 wait (--max-pending-hellos), each told and closed
    # after the Hello timeout; the 10 past the cap are refused at once.
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, "--hello-timeout", "4", "--max-pending-hellos", "200")

    async def silent() -> None:
        # a connection each 8 streams (channels to one target share one by default), the hub's limit per connection
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}", options=options) for _ in range(27)]
        try:
            calls = [pb_grpc.FleetSyncStub(channels[i // 8]).Connect() for i in range(210)]  # type: ignore[no-untyped-call]
            started = time.monotonic()

            async def first(call: grpc.aio.StreamStreamCall) -> tuple[float, object]:  # type: ignore[type-arg]
                try:
                    answer: object = await call.read()
                except grpc.aio.AioRpcError as exc:
                    answer = exc.code()
                return time.monotonic() - started, answer

            async with asyncio.timeout(30):
                ends = await asyncio.gather(*(first(call) for call in calls))
            told = [(t, a) for t, a in ends if isinstance(a, pb.HubMessage)]
            refused = [(t, a) for t, a in ends if a == grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert len(told) == 200 and len(refused) == 10, [a for _, a in ends if not isinstance(a, pb.HubMessage)]
            assert all(a.reject.reason == pb.PROTOCOL and "no Hello within 4s" in a.reject.message for _, a in told), told[0]  # type: ignore[union-attr]
            assert all(3.5 < t < 20 for t, _ in told), sorted(t for t, _ in told)[:3]
            assert all(t < 3.5 for t, _ in refused), refused
            async with asyncio.timeout(10):
                closed = await asyncio.gather(*(call.read() for call, (_, a) in zip(calls, ends, strict=True) if isinstance(a, pb.HubMessage)))
            assert all(end is grpc.aio.EOF for end in closed), closed
        finally:
            for channel in channels:
                await channel.close()

    try:
        asyncio.run(silent())
        # and the hub still serves: a Hello is answered
        answer = asyncio.run(_hello(hub, pb.Hello(cluster_id="c1", agent_id="a", incarnation="i", token="wrong-token")))
        assert answer is not None and answer.reject.reason == pb.UNAUTHENTICATED, answer
    finally:
        hub.proc.stop()


def test_a_pull_fetch_larger_than_the_bound_is_refused_with_a_clear_event(tmp_path: Path, sim: Sim) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    port = free_port()
    agent = start_pull_agent(tmp_path, sim, "c1", port)
    hub = start_hub(tmp_path, db, "--pull-max-bytes", "4096")
    try:
        wait_serving(port)
        add_pull(db, "c1", port, 60)
        failed = wait_until(lambda: hub_events(hub, cluster="c1", reason="RefreshFailed"), timeout=30, what="the RefreshFailed event")
        assert "over the hub's limit of 4096 (--pull-max-bytes)" in failed[0]["message"], failed
        assert not [e for e in hub_events(hub, cluster="c1") if e["reason"] == "Refreshed"]
    finally:
        hub.proc.stop()
        agent.stop()


def test_the_codec_refuses_what_it_cannot_bound() -> None:
    # (no process: the codec's own contract, which the tests above rely on)
    frame = lz4.frame.compress(b"x" * 1000)
    assert codec.decompress(frame, 1000, "body") == b"x" * 1000
    for bad, why in ((frame, "more than 999 bytes"), (frame[:-4], "truncated"), (frame + b"??", "follow the frame"), (b"nope", "not valid lz4")):
        try:
            codec.decompress(bad, 999 if bad is frame else 5000, "body")
        except codec.CodecError as exc:
            assert why in str(exc), (why, exc)
        else:
            raise AssertionError(f"{why}: not refused")


def test_an_agent_flooding_its_mqtt_session_is_told_and_ended(tmp_path: Path) -> None:
    # The broker delivers as fast as an agent publishes: 3,000 messages in a burst would all
    # wait in the hub's memory. Past --broker-session-queue the session is refused and ended.
    broker = start_broker(tmp_path, "mqtt")
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, "--broker-session-queue", "20", transport=Transport("mqtt", broker))
    token = create_token(tmp_path, db, "c1").read_text().strip()

    async def flood() -> pb.Reject:
        address = HubAddress("mqtt", "127.0.0.1", broker.port)
        connection = await MqttAgentConnection.open(address, cluster_id="c1", agent_id="a")
        try:
            await connection.send(pb.AgentMessage(hello=pb.Hello(cluster_id="c1", agent_id="a", incarnation="i1", token=token, protocol_version=1)))
            async with asyncio.timeout(20):
                welcome = await connection.receive()
                assert welcome is not None and welcome.WhichOneof("message") == "welcome", welcome
                beat = pb.AgentMessage(status=pb.Status(removed=[f"w{i}" for i in range(50)]))  # each costs the hub 50 store writes
                await asyncio.gather(*(connection.send(beat) for _ in range(3000)))
                while (message := await connection.receive()) is not None:
                    if message.WhichOneof("message") == "reject":
                        return message.reject
            raise AssertionError("the session ended without a Reject")
        finally:
            await connection.close()

    try:
        reject = asyncio.run(flood())
        assert reject.reason == pb.PROTOCOL and "--broker-session-queue" in reject.message, reject
        assert metric(f"{hub.url}/metrics", "fleetsync_messages_refused_total", reason="flooded") >= 1
        assert hub.proc.process.poll() is None
    finally:
        hub.proc.stop()
        broker.stop()
