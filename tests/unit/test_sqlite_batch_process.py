"""The SQLite batch writer process (store/sqlitebatch.py), as the hub runs it: what it
writes is what the store holds, errors come back as the store's own, and a writer
process that dies costs its batch (StoreUnavailable, which the hub retries) and nothing else.
Also the SQLite store's lease renewals, a statement of their own per so many leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from fleetsync.heap import release_free_memory
from fleetsync.store import sqlite as sqlite_store
from fleetsync.store.contract import BundleWrite, LeaseLost, LeaseResult, ObjectRecord, StoreUnavailable
from fleetsync.store.sqlite import SQLiteStore

POD = "v1/Pod"


def pod(cluster: str, name: str, version: int) -> ObjectRecord:
    return ObjectRecord(cluster, POD, "default", name, f"uid-{name}", str(version), 1000 + version, {"app": name}, "", b'{"v": %d}' % version, 0)


def bundle(cluster: str, seq: int, *objects: ObjectRecord, epoch: int = 0) -> BundleWrite:
    return BundleWrite(cluster, POD, "inc", seq, list(objects), move_to=("inc", seq), now=1.0, epoch=epoch)


def writer_process(store: SQLiteStore) -> psutil.Process:
    (child,) = [c for c in psutil.Process().children() if "fleetsync.store.sqlitebatch" in " ".join(c.cmdline())]
    assert store.batch_writer == "process"
    return child


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "hub.db", batch_writer="process", busy_timeout=0.2)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_a_batch_of_many_clusters_is_written_by_the_process_and_read_back(store: SQLiteStore) -> None:
    rev = await store.apply_batch([bundle(f"c{i}", 1, pod(f"c{i}", "web", 1), pod(f"c{i}", "db", 1)) for i in range(50)])
    assert rev == 100 and rev.changes == (2,) * 50
    assert await store.current_rev() == 100
    held = await store.get_object("c7", POD, "default", "web")
    assert held is not None and held.body == b'{"v": 1}' and held.labels == {"app": "web"}
    again = await store.apply_batch([bundle("c7", 2, pod("c7", "web", 1), pod("c7", "db", 2))])  # web unchanged
    assert again == 101 and again.changes == (1,)


async def test_a_fenced_bundle_comes_back_as_lease_lost_naming_it(store: SQLiteStore) -> None:
    granted = await store.acquire_lease("c1", holder="agent-1", incarnation="i1", hub_id="hub", ttl=30, now=1.0)
    assert granted.granted
    stale = granted.lease.epoch + 1  # an epoch this cluster's lease does not have
    with pytest.raises(LeaseLost) as raised:
        await store.apply_batch([bundle("c1", 1, pod("c1", "web", 1), epoch=granted.lease.epoch), bundle("c1", 2, pod("c1", "db", 1), epoch=stale)])
    assert raised.value.fenced == (1,)
    assert await store.current_rev() == 0  # nothing of the batch was written


async def test_a_locked_database_is_store_unavailable_and_the_next_batch_goes_through(store: SQLiteStore, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "hub.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write lock, held past --db-busy-timeout
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.apply_batch([bundle("c1", 1, pod("c1", "web", 1))])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.apply_batch([bundle("c1", 1, pod("c1", "web", 1))]) == 1


async def test_a_killed_writer_process_fails_its_batch_as_unavailable_and_a_new_one_takes_the_next(store: SQLiteStore) -> None:
    assert await store.apply_batch([bundle("c1", 1, pod("c1", "web", 1))]) == 1
    first = writer_process(store)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    with pytest.raises(StoreUnavailable, match="batch writer process exited"):
        await store.apply_batch([bundle("c1", 2, pod("c1", "web", 2))])
    assert writer_process(store).pid != first.pid
    assert await store.apply_batch([bundle("c1", 2, pod("c1", "web", 2))]) == 2
    held = await store.get_object("c1", POD, "default", "web")
    assert held is not None and held.body == b'{"v": 2}'


async def test_a_caller_cancelled_twice_mid_write_leaves_the_next_call_its_own_answer(store: SQLiteStore) -> None:
    # a session ending cancels its tasks, sometimes twice: the write runs to its end either
    # way, and the next request must not start on the pipe before that write's answer is read
    big = [bundle(f"c{i}", 1, *(pod(f"c{i}", f"p{j}", 1) for j in range(200))) for i in range(40)]
    for _ in range(5):
        writing = asyncio.create_task(store.apply_batch(big))
        await asyncio.sleep(0.005)
        writing.cancel()
        await asyncio.sleep(0)
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
        lease = await store.acquire_lease("c0", holder="agent-0", incarnation="i1", hub_id="hub", ttl=30, now=1.0)
        assert isinstance(lease, LeaseResult), lease
        assert lease.lease.cluster == "c0"
    assert await store.current_rev() > 0


async def test_the_writer_process_ends_with_the_store(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "hub.db", batch_writer="process")
    await s.open()
    child = writer_process(s)
    await s.close()  # waits for the process (it exits when its stdin closes)
    assert not child.is_running()


async def test_leases_renewed_in_several_statements_are_all_renewed_and_the_lost_ones_named(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "LEASES_PER_STATEMENT", 3)  # 8 leases: three statements
    held = []
    for i in range(8):
        granted = await store.acquire_lease(f"c{i}", holder=f"agent-{i}", incarnation="i1", hub_id="hub", ttl=30, now=1.0)
        held.append((f"c{i}", granted.lease.epoch))
    held[5] = ("c5", held[5][1] + 1)  # an epoch c5's lease does not have: lost
    assert await store.renew_leases(held, hub_id="hub", now=20.0, ttl=30) == ["c5"]
    expiry = {lease.cluster: lease.expires_at for lease in await store.leases()}
    assert expiry == {f"c{i}": 31.0 if i == 5 else 50.0 for i in range(8)}


async def test_the_writer_process_gives_back_a_large_batch_once_it_is_written(store: SQLiteStore) -> None:
    """A hub's writer process passes gigabytes through it in an initial sync: its RSS follows
    the batch it writes, not the largest it ever wrote (store/writerprocess.py, ``serve``)."""
    if not release_free_memory():
        pytest.skip("this libc cannot give free heap pages back (no malloc_trim)")
    child = writer_process(store)
    await store.apply_batch([bundle("c0", 1, pod("c0", "warm", 1))])
    before = child.memory_info().rss
    body = os.urandom(3000)
    objects = [
        ObjectRecord(f"c{c}", POD, "default", f"p{i}", f"uid-{c}-{i}", "1", i, {"app": f"a{i}"}, "", body + b"%d" % i, 0)
        for c in range(20)
        for i in range(1000)
    ]
    await store.apply_batch([bundle(f"c{c}", 1, *objects[c * 1000 : (c + 1) * 1000]) for c in range(20)])  # ~60 MB of rows
    deadline = asyncio.get_running_loop().time() + 10
    while (rss := child.memory_info().rss) > before + 40 * 2**20:  # ~20 MiB measured; 80 MiB kept before
        assert asyncio.get_running_loop().time() < deadline, f"the writer process kept {(rss - before) / 2**20:.0f} MiB of a written batch"
        await asyncio.sleep(0.1)
    assert await store.current_rev() == 20_001
