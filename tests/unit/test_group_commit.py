"""Group commit: many clusters' bundles in one transaction, failures kept to their bundle, memory held to the budget.

Everything runs against a real SQLite store; "the store is unavailable" is a real lock
held by another connection for longer than the store's busy timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetsync.hub.auth import hash_token
from fleetsync.hub.core import HubCore, HubSettings
from fleetsync.hub.inbox import Inbox, InboxBudget
from fleetsync.hub.session import Session
from fleetsync.hub.writer import BatchWriter
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.contract import BundleWrite, ObjectRecord, StoreUnavailable
from fleetsync.store.sqlite import SQLiteStore
from tests.harness import eventually

POD = "v1/Pod"
TOKEN = "test-token"


def record(cluster: str, name: str, hash_: int, *, namespace: str = "default") -> ObjectRecord:
    return ObjectRecord(
        cluster=cluster,
        type=POD,
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        resource_version="1",
        hash=hash_,
        labels={"app": name},
        owner="",
        body=b'{"kind": "Pod"}',
        compression=pb.COMPRESSION_NONE,
        incarnation="inc",
    )


def delta(cluster: str, seq: int, *objects: ObjectRecord, deletes: tuple[str, ...] = ()) -> BundleWrite:
    return BundleWrite(cluster, POD, "inc", seq, list(objects), list(deletes), move_to=("inc", seq), now=float(seq))


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another connection holds SQLite's write lock (a real lock, as another process would)."""
    ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        ready.set()
        release.wait(60)
        db.execute("ROLLBACK")
        db.close()

    holder = threading.Thread(target=hold)
    holder.start()
    ready.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join()


async def test_bundles_of_many_clusters_commit_together_and_a_bad_one_fails_alone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hub.db")
    await store.open()
    writer = BatchWriter(store)
    try:
        writes = [delta(f"c{i}", 1, record(f"c{i}", "web", 1000 + i)) for i in range(20)]
        writes[7] = delta("c7", 1, record("c7", "web", 2**64))  # not a 64-bit hash: the store cannot write it
        results = await asyncio.gather(*(writer.apply(w) for w in writes), return_exceptions=True)

        assert isinstance(results[7], ValueError) and "64-bit" in str(results[7])
        assert [r for i, r in enumerate(results) if i != 7] == [None] * 19
        for i in range(20):
            stored = await store.get_object(f"c{i}", POD, "default", "web")
            assert (stored is None) if i == 7 else (stored is not None and stored.hash == 1000 + i)
        assert await store.current_rev() == 19  # gap-free: the failed bundle took no revision
        batches = writer.metrics.batch_bundles.collect()[0].samples
        committed = {s.name: s.value for s in batches}
        # one attempt with all 20 failed; the halves without c7 (10, then 5, 3, 1 ...) committed
        assert committed["fleetsync_batch_bundles_sum"] == 19
        assert committed["fleetsync_batch_bundles_count"] < 19
    finally:
        await writer.close()
        await store.close()


async def test_a_locked_store_fails_the_batch_as_unavailable_and_the_same_write_succeeds_later(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hub.db", busy_timeout=0.1)
    await store.open()
    writer = BatchWriter(store)
    try:
        with locked(tmp_path / "hub.db"):
            results = await asyncio.gather(*(writer.apply(delta(f"c{i}", 1, record(f"c{i}", "web", 1))) for i in range(5)), return_exceptions=True)
            assert all(isinstance(r, StoreUnavailable) and "locked" in str(r) for r in results), results
        await asyncio.gather(*(writer.apply(delta(f"c{i}", 1, record(f"c{i}", "web", 1))) for i in range(5)))
        assert await store.current_rev() == 5
    finally:
        await writer.close()
        await store.close()


class Agent:
    """A protocol-level agent driving a real hub Session (what the transports do)."""

    def __init__(self, core: HubCore, cluster: str) -> None:
        self.cluster = cluster
        self.received: list[pb.HubMessage] = []
        self.ended = asyncio.Event()

        async def send(message: object) -> None:
            assert isinstance(message, pb.HubMessage)
            self.received.append(message)

        async def end() -> None:
            self.ended.set()

        self.session = Session(core, send, peer="test", end=end)

    async def hello(self) -> None:
        hello = pb.Hello(cluster_id=self.cluster, agent_id=f"agent-{self.cluster}", incarnation="inc", token=f"{TOKEN}-{self.cluster}", protocol_version=1)
        await self.session.handle(pb.AgentMessage(hello=hello))
        assert self.received[0].WhichOneof("message") == "welcome", self.received
        await self.send(pb.Bundle(type=POD, incarnation="inc", seq=1, kind=pb.FULL, chunk=0, last=True))  # a stream starts with a FULL

    async def send(self, bundle: pb.Bundle) -> None:
        """As a transport does: the message handled, then its next one read once there is room."""
        await self.session.handle(pb.AgentMessage(bundle=bundle))
        await self.session.room()

    def acked(self, seq: int) -> bool:
        return any(m.WhichOneof("message") == "ack" and m.ack.seq >= seq and not m.ack.partial for m in self.received)

    def rejects(self) -> list[pb.Reject]:
        return [m.reject for m in self.received if m.WhichOneof("message") == "reject"]


def pod_delta(seq: int, name: str, body: bytes = b'{"kind": "Pod"}') -> pb.Bundle:
    obj = pb.Object(namespace="default", name=name, uid=f"uid-{name}", resource_version=str(seq), hash=seq, body=body)
    return pb.Bundle(type=POD, incarnation="inc", seq=seq, base_seq=seq - 1, kind=pb.DELTA, upserts=[obj])


async def hub(tmp_path: Path, clusters: int, **settings: object) -> tuple[SQLiteStore, HubCore]:
    store = SQLiteStore(tmp_path / "hub.db", busy_timeout=0.1)
    await store.open()
    for i in range(clusters):
        await store.add_token(name=f"c{i}", role="agent", token_hash=hash_token(f"{TOKEN}-c{i}"))
    return store, HubCore(store, HubSettings(resync_on_startup=False, **settings))  # type: ignore[arg-type]


async def test_while_the_store_is_locked_a_cluster_retries_and_is_acked_once_it_is_written(tmp_path: Path) -> None:
    store, core = await hub(tmp_path, 1, store_retry=30.0)
    try:
        agent = Agent(core, "c0")
        await agent.hello()
        with locked(tmp_path / "hub.db"):
            await agent.send(pod_delta(2, "web"))
            await eventually(
                lambda: _async((core.metrics.registry.get_sample_value("fleetsync_store_errors_total", {"kind": "unavailable"}) or 0) >= 2),
                timeout=10,
                what="failed attempts",
            )
            assert not agent.acked(2)  # never acked before it is committed
        await eventually(lambda: _async(agent.acked(2)), timeout=10, what="the ack after the lock is gone")
        assert await store.get_object("c0", POD, "default", "web") is not None
        assert not agent.ended.is_set()
    finally:
        await core.stop()
        await store.close()


async def test_a_store_unavailable_past_store_retry_ends_the_session_with_a_reason(tmp_path: Path) -> None:
    store, core = await hub(tmp_path, 1, store_retry=0.5)
    try:
        agent = Agent(core, "c0")
        await agent.hello()
        await eventually(lambda: _async(agent.acked(1)), timeout=10, what="the FULL applied")
        with locked(tmp_path / "hub.db"):
            await agent.send(pod_delta(2, "web"))
            await asyncio.wait_for(agent.ended.wait(), timeout=10)
        (reject,) = agent.rejects()
        assert reject.reason == pb.UNAVAILABLE and "cannot write cluster 'c0'" in reject.message and not reject.type
        assert not agent.acked(2)
    finally:
        await core.stop()
        await store.close()


async def test_backpressure_holds_what_the_hub_keeps_of_received_bundles_under_the_budget(tmp_path: Path) -> None:
    budget = 1024 * 1024
    body = b'{"x": "' + b"x" * 60_000 + b'"}'  # ~60 KB a bundle: the budget holds about 17
    store, core = await hub(tmp_path, 4, inbox_budget=budget, store_retry=60.0)
    try:
        agents = [Agent(core, f"c{i}") for i in range(4)]
        for agent in agents:
            await agent.hello()

        async def pump(agent: Agent) -> None:
            for seq in range(2, 42):  # 40 bundles x 4 clusters = ~9.6 MB in all
                await agent.send(pod_delta(seq, f"p{seq}", body))

        with locked(tmp_path / "hub.db"):
            pumps = [asyncio.create_task(pump(a)) for a in agents]
            await eventually(
                lambda: _async(core.inbox_budget.held >= budget // 2 and all(a.session.engine and a.session.engine.inbox.waiting for a in agents)),
                timeout=10,
                what="the budget filled, every agent waiting",
            )
            peak = 0
            for _ in range(50):  # while the store is locked, the agents wait instead of the hub's memory growing
                peak = max(peak, core.inbox_budget.bytes)
                await asyncio.sleep(0.01)
            assert not any(p.done() for p in pumps)
            assert peak <= budget + 4 * 70_000  # at most one message over, per cluster
        await asyncio.wait_for(asyncio.gather(*pumps), timeout=60)
        await eventually(lambda: _async(all(a.acked(41) for a in agents)), timeout=30, what="every bundle applied")
        assert core.inbox_budget.bytes == 0
        counts = [(await store.counts(f"c{i}")).get(POD, 0) for i in range(4)]
        assert counts == [40] * 4
    finally:
        await core.stop()
        await store.close()


async def test_an_agent_held_back_by_the_budget_hears_a_heartbeat_every_interval(tmp_path: Path) -> None:
    # its own heartbeats are not read while it waits: without word from the hub for four
    # intervals it would count the hub as gone and start over on a new connection
    body = b'{"x": "' + b"x" * 60_000 + b'"}'
    store, core = await hub(tmp_path, 2, inbox_budget=100_000, store_retry=60.0, heartbeat_interval=0.2)
    try:
        agents = [Agent(core, f"c{i}") for i in range(2)]
        for agent in agents:
            await agent.hello()

        async def pump(agent: Agent) -> None:
            for seq in range(2, 8):
                await agent.send(pod_delta(seq, f"p{seq}", body))

        def heartbeats(agent: Agent) -> int:
            return sum(m.WhichOneof("message") == "heartbeat" for m in agent.received)

        with locked(tmp_path / "hub.db"):
            pumps = [asyncio.create_task(pump(a)) for a in agents]
            await eventually(lambda: _async(all(a.session.engine and a.session.engine.inbox.waiting for a in agents)), timeout=10, what="every agent held back")
            heard = [heartbeats(a) for a in agents]
            await eventually(
                lambda: _async(all(heartbeats(a) >= n + 3 for a, n in zip(agents, heard, strict=True))), timeout=10, what="heartbeats while held back"
            )
            assert not any(p.done() for p in pumps)  # still held back: the heartbeats did not let more in
        await asyncio.wait_for(asyncio.gather(*pumps), timeout=60)
        await eventually(lambda: _async(all(a.acked(7) for a in agents)), timeout=30, what="every bundle applied")
        assert not any(a.ended.is_set() for a in agents)
    finally:
        await core.stop()
        await store.close()


async def _async(value: bool) -> bool:
    return value


# ---- one batch leaves the store exactly as its bundles one by one -------------------------

KEYS = ["default/a", "default/b", "default/c", "kube-system/a"]


@st.composite
def write_sequences(draw: st.DrawFn) -> list[BundleWrite]:
    writes: list[BundleWrite] = []
    for seq in range(1, draw(st.integers(1, 12)) + 1):
        cluster = draw(st.sampled_from(["c1", "c2"]))
        upserts = [
            record(cluster, k.split("/")[1], draw(st.integers(1, 3)), namespace=k.split("/")[0]) for k in draw(st.lists(st.sampled_from(KEYS), max_size=4))
        ]
        deletes = draw(st.lists(st.sampled_from(KEYS), max_size=2))
        full = draw(st.integers(0, 3))  # 0: a DELTA; else part of FULL mark ``full``, ending it or not
        writes.append(
            BundleWrite(
                cluster, POD, "inc", seq, upserts, deletes, full_seq=full or None, full_end=bool(full) and draw(st.booleans()), move_to=("inc", seq), now=1.0
            )
        )
    return writes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=write_sequences(), cuts=st.lists(st.integers(1, 11), max_size=4))
async def test_a_batch_leaves_the_store_as_its_bundles_applied_one_by_one(
    tmp_path_factory: pytest.TempPathFactory, writes: list[BundleWrite], cuts: list[int]
) -> None:
    one_by_one, batched = SQLiteStore(tmp_path_factory.mktemp("a") / "hub.db"), SQLiteStore(tmp_path_factory.mktemp("b") / "hub.db")
    await one_by_one.open()
    await batched.open()
    try:
        for w in writes:
            await one_by_one.apply_batch([w])
        bounds = sorted({0, len(writes), *(c for c in cuts if c < len(writes))})
        for start, end in itertools.pairwise(bounds):
            await batched.apply_batch(writes[start:end])
        assert await batched.current_rev() == await one_by_one.current_rev()
        assert await _state(batched) == await _state(one_by_one)
    finally:
        await one_by_one.close()
        await batched.close()


async def _state(store: SQLiteStore) -> tuple[object, ...]:
    objects = [(o.cluster, o.key, o.hash, o.rev) for c in ("c1", "c2") for o in await store.list_objects(POD, cluster=c)]
    changes = [(c.rev, c.type, c.obj.cluster, c.obj.key, c.obj.hash) for c in await store.changes_since(0, limit=10_000)]
    streams = [(s.cluster, s.type, s.incarnation, s.seq) for s in await store.streams(None)]
    return objects, changes, streams


async def test_sessions_waiting_for_the_budget_are_let_in_one_message_at_a_time() -> None:
    # 200 sessions each read a 100 KB message whenever the budget lets them, and an engine
    # drains slowly: had the budget let every waiting session in as soon as there was room,
    # each would put one message over it (20 MB on a 1 MB budget).
    budget = InboxBudget(1_000_000, reservation=100_000, reservation_seconds=0.1)
    inboxes = [Inbox(budget=budget) for _ in range(200)]
    peak = 0

    async def session(inbox: Inbox) -> None:
        nonlocal peak
        for seq in range(1, 4):
            await inbox.room()
            inbox.put(pod_bundle(seq, 100_000))
            peak = max(peak, budget.bytes)

    async def engine() -> None:
        while True:
            for inbox in inboxes:
                if len(inbox):
                    await inbox.get()
                    inbox.done()
            await asyncio.sleep(0.001)

    drain = asyncio.create_task(engine())
    try:
        await asyncio.wait_for(asyncio.gather(*(session(i) for i in inboxes)), timeout=60)
    finally:
        drain.cancel()
    assert peak <= 1_000_000 + 100_000, peak  # within the budget (and a message: each is a little over its reservation)


async def test_a_fleet_starting_at_once_is_let_in_a_budget_at_a_time_and_quiet_sessions_reserve_what_they_send() -> None:
    # 200 sessions start together, the budget empty: each may read only with a reservation of
    # the largest message (it has sent nothing yet), so 10 of them read at once, not 200.
    budget = InboxBudget(1_000_000, reservation=100_000, reservation_seconds=10)
    inboxes = [Inbox(budget=budget) for _ in range(200)]
    waiting = [asyncio.create_task(inbox.room()) for inbox in inboxes]
    await asyncio.sleep(0)
    assert sum(task.done() for task in waiting) == 10
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    # a session whose last message was a small DELTA reserves that much for its next read
    quiet = InboxBudget(1_000_000, reservation=100_000, reservation_seconds=10)
    sessions = [Inbox(budget=quiet) for _ in range(200)]
    for inbox in sessions:
        inbox.put(pod_bundle(1, 1_000))
        await inbox.get()
        inbox.done()
    await asyncio.wait_for(asyncio.gather(*(inbox.room() for inbox in sessions)), timeout=5)
    assert quiet.held < 200 * 2_000, "200 quiet sessions reading hold reservations of their small messages, not 200 x 100 KB"


async def test_a_session_in_the_middle_of_a_full_keeps_its_reservation_until_its_next_chunk_comes() -> None:
    # On a busy loop a FULL's next chunk can take longer than the short lapse to arrive; had
    # its reservation lapsed, another session would be let in and both chunks held over the
    # budget. A session whose last message ended what it had to send still lapses at once.
    now = [0.0]
    budget = InboxBudget(1_000, reservation=600, reservation_seconds=0.05, continuing_seconds=2.0, clock=lambda: now[0])
    sending, other = Inbox(budget=budget), Inbox(budget=budget)
    for inbox, last in ((sending, False), (other, True)):
        inbox.put(full_chunk(last=last, size=500))
        await inbox.get()
        inbox.done()
    assert sending.try_room()  # reserves its next chunk, which is on its way
    now[0] = 1.0  # long past the short lapse
    assert not other.try_room(), "the FULL's next chunk still has its room"
    now[0] = 2.5  # the chunk never came: the room is given back
    assert other.try_room()
    now[0] = 2.6  # the other session's last message was a FULL's last chunk: it may have nothing more
    assert sending.try_room(), "a reservation of a session that ended its FULL lapses after the short lapse"


def full_chunk(*, last: bool, size: int) -> pb.Bundle:
    obj = pb.Object(namespace="default", name="p", body=b'{"x": "' + b"x" * size + b'"}')
    return pb.Bundle(type=POD, incarnation="inc", seq=1, base_seq=0, kind=pb.FULL, chunk=0, last=last, upserts=[obj])


def pod_bundle(seq: int, size: int) -> pb.Bundle:
    obj = pb.Object(namespace="default", name=f"p{seq}", body=b'{"x": "' + b"x" * size + b'"}')  # a JSON object, as the hub applies only those
    return pb.Bundle(type=POD, incarnation="inc", seq=seq, base_seq=seq - 1, kind=pb.DELTA, upserts=[obj])


async def test_room_is_found_at_once_only_when_it_fits_and_nobody_waits_first() -> None:
    budget = InboxBudget(100, reservation=60, reservation_seconds=60)
    a, b, c = Inbox(budget=budget), Inbox(budget=budget), Inbox(budget=budget)
    assert a.try_room()  # a reserves 60 of 100
    assert not b.try_room()  # 60 more do not fit
    waiting = asyncio.create_task(b.room())
    await eventually(lambda: _async(b.waiting), timeout=5, what="b waiting")
    c.last_size = 10
    assert not c.try_room()  # 10 would fit, but b waits first: no overtaking
    budget.release(a)  # a's message came and went
    await asyncio.wait_for(waiting, timeout=5)


async def test_agents_are_asked_for_chunks_of_the_hubs_size_and_the_budgets_peak_is_reported(tmp_path: Path) -> None:
    store, core = await hub(tmp_path, 1, chunk_bytes=32 * 1024, max_message_bytes=256 * 1024)
    try:
        agent = Agent(core, "c0")
        await agent.hello()
        welcome = agent.received[0].welcome
        assert (welcome.chunk_bytes, welcome.max_message_bytes) == (32 * 1024, 256 * 1024)
        await agent.send(pod_delta(2, "web", body=b'{"kind": "Pod", "x": "' + b"x" * 10_000 + b'"}'))
        await eventually(lambda: _async(agent.acked(2)), timeout=10, what="the delta acked")
        sample = core.metrics.registry.get_sample_value
        assert sample("fleetsync_inbox_budget_bytes") == 0, "nothing is held once applied"
        assert (sample("fleetsync_inbox_budget_peak_bytes") or 0) > 10_000, "the delta was held until it was applied"
    finally:
        await core.stop()
        await store.close()
    (tmp_path / "second").mkdir()
    store, core = await hub(tmp_path / "second", 1, chunk_bytes=1024 * 1024, max_message_bytes=256 * 1024)
    try:
        agent = Agent(core, "c0")
        await agent.hello()
        assert agent.received[0].welcome.chunk_bytes == 256 * 1024, "never more than an agent may send"
    finally:
        await core.stop()
        await store.close()


async def test_a_short_reservation_taken_behind_a_long_one_wakes_the_next_session_when_it_lapses() -> None:
    # The timer that lets waiting sessions in when a reservation lapses was set for a FULL's
    # long reservation; a quiet session's short one, taken after, lapses first, and the next
    # session must not wait for the long one.
    budget = InboxBudget(1_000, reservation=1_000, reservation_seconds=0.05, continuing_seconds=60.0)
    sending, quiet, third = object(), object(), object()
    assert budget.try_room(sending, 300, more=True)  # 60 s: its next chunk is on its way
    budget.take(400)  # queued bytes
    waiting_quiet = asyncio.create_task(budget.room(quiet, 500))  # 300 + 400 + 500 > 1,000: waits
    waiting_third = asyncio.create_task(budget.room(third, 600))
    await asyncio.sleep(0)
    budget.give(400)  # applied: quiet fits (800); third does not (1,400)
    await asyncio.wait_for(waiting_quiet, timeout=5)
    await asyncio.wait_for(waiting_third, timeout=5)  # let in once quiet's 50 ms lapsed, not after 60 s


async def test_a_session_waiting_for_its_own_inbox_holds_no_reservation_of_the_hubs_budget() -> None:
    budget = InboxBudget(10_000_000, reservation=100_000, reservation_seconds=60, continuing_seconds=60)
    inbox = Inbox(budget=budget, max_bytes=1_000)
    assert inbox.try_room()  # reserves the largest message: it has sent nothing yet
    message = pod_bundle(1, 2_000)
    inbox.put(message)  # over this cluster's own limit
    waiting = asyncio.create_task(inbox.room())
    await eventually(lambda: _async(inbox.waiting), timeout=5, what="the session waiting")
    assert budget.held == message.ByteSize(), "the message's bytes count, and its reservation no longer"
    await inbox.get()
    inbox.done()
    await asyncio.wait_for(waiting, timeout=5)
