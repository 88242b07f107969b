"""Lease epochs fence writes: a session that lost its cluster (to a session on another replica)
writes nothing more, ends, and never moves a stream position backwards.

Two hub cores share one real SQLite file, as two replicas share a database.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleetsync.hub.auth import hash_token
from fleetsync.hub.core import HubCore, HubSettings
from fleetsync.hub.session import Session
from fleetsync.hub.writer import BatchWriter
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.contract import BundleWrite, LeaseLost, ObjectRecord
from fleetsync.store.sqlite import SQLiteStore
from tests.harness import eventually

POD = "v1/Pod"
TOKEN = "test-token"


def record(cluster: str, name: str, hash_: int) -> ObjectRecord:
    return ObjectRecord(
        cluster=cluster,
        type=POD,
        namespace="default",
        name=name,
        uid=f"uid-{name}",
        resource_version="1",
        hash=hash_,
        labels={},
        owner="",
        body=b'{"kind": "Pod"}',
        compression=pb.COMPRESSION_NONE,
        incarnation="inc",
    )


async def _true(value: bool) -> bool:
    return value


async def test_the_writer_fails_a_fenced_bundle_alone_and_commits_the_rest_of_its_batch(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hub.db")
    await store.open()
    writer = BatchWriter(store)
    try:
        epochs = {f"c{i}": (await store.acquire_lease(f"c{i}", holder="a", incarnation="i", hub_id="h", now=0.0, ttl=30)).lease.epoch for i in range(6)}
        await store.acquire_lease("c3", holder="a", incarnation="i", hub_id="other", now=1.0, ttl=30)  # c3's agent moved to another replica
        writes = [BundleWrite(c, POD, "inc", 1, [record(c, "web", 1)], move_to=("inc", 1), epoch=e) for c, e in epochs.items()]
        results = await asyncio.gather(*(writer.apply(w) for w in writes), return_exceptions=True)
        assert isinstance(results[3], LeaseLost) and "'c3'" in str(results[3])
        assert [r for i, r in enumerate(results) if i != 3] == [None] * 5
        assert await store.get_object("c3", POD, "default", "web") is None
        assert await store.current_rev() == 5
        assert writer.metrics.registry.get_sample_value("fleetsync_store_errors_total", {"kind": "fenced"}) == 1
    finally:
        await writer.close()
        await store.close()


class Agent:
    """One connection of an agent to one replica: a real Session fed protocol messages."""

    def __init__(self, core: HubCore) -> None:
        self.received: list[pb.HubMessage] = []
        self.ended = asyncio.Event()

        async def send(message: object) -> None:
            assert isinstance(message, pb.HubMessage)
            self.received.append(message)

        async def end() -> None:
            self.ended.set()

        self.session = Session(core, send, peer="test", end=end)

    async def hello(self) -> None:
        hello = pb.Hello(cluster_id="c0", agent_id="agent-c0", incarnation="inc", token=TOKEN, protocol_version=1)
        await self.session.handle(pb.AgentMessage(hello=hello))
        assert self.received[0].WhichOneof("message") == "welcome", self.received

    async def send(self, seq: int, name: str, *, full: bool = False) -> None:
        obj = pb.Object(namespace="default", name=name, uid=f"uid-{name}", resource_version=str(seq), hash=seq, body=b'{"kind": "Pod"}')
        kind = pb.FULL if full else pb.DELTA
        bundle = pb.Bundle(type=POD, incarnation="inc", seq=seq, base_seq=0 if full else seq - 1, kind=kind, upserts=[obj], last=full)
        await self.session.handle(pb.AgentMessage(bundle=bundle))
        await self.session.room()  # as a transport does before it reads the next message

    def acked(self, seq: int) -> bool:
        return any(m.WhichOneof("message") == "ack" and m.ack.seq >= seq and not m.ack.partial for m in self.received)

    def rejects(self) -> list[pb.Reject]:
        return [m.reject for m in self.received if m.WhichOneof("message") == "reject"]


async def test_a_replica_whose_session_lost_the_lease_writes_nothing_more_and_ends_the_session(tmp_path: Path) -> None:
    stores = [SQLiteStore(tmp_path / "hub.db", busy_timeout=1.0) for _ in range(2)]
    for store in stores:
        await store.open()
    await stores[0].add_token(name="c0", role="agent", token_hash=hash_token(TOKEN))
    a, b = (HubCore(store, HubSettings(hub_id=f"hub-{name}", resync_on_startup=False, lease_ttl=3.0)) for name, store in zip("ab", stores, strict=True))
    try:
        on_a = Agent(a)
        await on_a.hello()
        await on_a.send(1, "web", full=True)
        await on_a.send(2, "web")
        await eventually(lambda: _true(on_a.acked(2)), timeout=10, what="the agent's writes through replica A")
        # replica A stalls (a pause, a partition); the agent reconnects to B and goes on there
        on_b = Agent(b)
        await on_b.hello()
        await on_b.send(3, "db")
        await on_b.send(4, "cache")
        await eventually(lambda: _true(on_b.acked(4)), timeout=10, what="the agent's writes through replica B")
        # A wakes up with a bundle it had received before (seq 3, an older position than B's 4)
        await on_a.send(3, "stale")
        await asyncio.wait_for(on_a.ended.wait(), timeout=10)
        (reject,) = on_a.rejects()
        assert reject.reason == pb.UNAVAILABLE and "lost its lease" in reject.message, reject
        assert not on_a.acked(3)
        (stream,) = await stores[1].streams("c0")
        assert (stream.incarnation, stream.seq) == ("inc", 4), "no stream position moves backwards"
        assert await stores[1].get_object("c0", POD, "default", "stale") is None
        # and A's lease renewal is fenced too: B's session keeps the lease
        assert await stores[0].renew_leases([("c0", on_a.session.epoch)], hub_id="hub-a", now=a.clock(), ttl=3.0) == ["c0"]
        (lease,) = await stores[1].leases()
        assert (lease.hub_id, lease.epoch) == ("hub-b", on_b.session.epoch)
        assert not on_b.ended.is_set()
    finally:
        for core in (a, b):
            await core.stop()
        for store in stores:
            await store.close()
