"""The PostgreSQL batch writer process (store/pgbatch.py), as the hub runs it: what it writes
is what the store holds, errors come back as the store's own, a writer process that dies costs
its batch (StoreUnavailable, which the hub retries) and nothing else, and a PostgreSQL restart
costs the batch in flight while the next one goes through on a new connection.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import psutil
import pytest

from fleetsync.store.contract import BundleWrite, LeaseLost, ObjectRecord, StoreUnavailable
from fleetsync.store.postgres import PostgresStore
from fleetsync.testing.postgres import PostgresServer

POD = "v1/Pod"


def pod(cluster: str, name: str, version: int) -> ObjectRecord:
    return ObjectRecord(cluster, POD, "default", name, f"uid-{name}", str(version), 1000 + version, {"app": name}, "", b'{"v": %d}' % version, 0)


def bundle(cluster: str, seq: int, *objects: ObjectRecord, epoch: int = 0) -> BundleWrite:
    return BundleWrite(cluster, POD, "inc", seq, list(objects), move_to=("inc", seq), now=1.0, epoch=epoch)


def writer_process() -> psutil.Process:
    (child,) = [c for c in psutil.Process().children() if "fleetsync.store.pgbatch" in " ".join(c.cmdline())]
    return child


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_url, batch_writer="process", timeout=5)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_a_batch_of_many_clusters_is_written_by_the_process_and_read_back(store: PostgresStore) -> None:
    rev = await store.apply_batch([bundle(f"c{i}", 1, pod(f"c{i}", "web", 1), pod(f"c{i}", "db", 1)) for i in range(50)])
    assert rev == 100 and rev.changes == (2,) * 50
    assert await store.current_rev() == 100
    held = await store.get_object("c7", POD, "default", "web")
    assert held is not None and held.body == b'{"v": 1}' and held.labels == {"app": "web"}
    again = await store.apply_batch([bundle("c7", 2, pod("c7", "web", 1), pod("c7", "db", 2))])  # web unchanged
    assert again == 101 and again.changes == (1,)
    assert [(s.cluster, s.seq) for s in await store.streams("c7")] == [("c7", 2)]


async def test_a_fenced_bundle_comes_back_as_lease_lost_naming_it(store: PostgresStore) -> None:
    granted = await store.acquire_lease("c1", holder="agent-1", incarnation="i1", hub_id="hub", ttl=30, now=1.0)
    assert granted.granted
    stale = granted.lease.epoch + 1  # an epoch this cluster's lease does not have
    with pytest.raises(LeaseLost) as raised:
        await store.apply_batch([bundle("c1", 1, pod("c1", "web", 1), epoch=granted.lease.epoch), bundle("c1", 2, pod("c1", "db", 1), epoch=stale)])
    assert raised.value.fenced == (1,)
    assert await store.current_rev() == 0  # nothing of the batch was written


async def test_a_bundle_the_database_refuses_comes_back_as_an_error_naming_the_problem(store: PostgresStore) -> None:
    bad = ObjectRecord("c1", POD, "default", "web", "uid", "1", 1, {}, "", b"{}", 0, "inc\x00ident")  # PostgreSQL text holds no NUL
    with pytest.raises(Exception, match="0x00") as raised:
        await store.apply_batch([bundle("c1", 1, bad)])
    assert not isinstance(raised.value, StoreUnavailable)  # the bundle is at fault: the hub isolates it, not retries it
    assert await store.apply_batch([bundle("c1", 1, pod("c1", "web", 1))]) == 1


async def test_a_killed_writer_process_fails_its_batch_as_unavailable_and_a_new_one_takes_the_next(store: PostgresStore) -> None:
    assert await store.apply_batch([bundle("c1", 1, pod("c1", "web", 1))]) == 1
    first = writer_process()
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    with pytest.raises(StoreUnavailable, match="batch writer process exited"):
        await store.apply_batch([bundle("c1", 2, pod("c1", "web", 2))])
    assert writer_process().pid != first.pid
    assert await store.apply_batch([bundle("c1", 2, pod("c1", "web", 2))]) == 2
    held = await store.get_object("c1", POD, "default", "web")
    assert held is not None and held.body == b'{"v": 2}'


async def test_a_postgresql_restart_fails_the_batch_in_flight_as_unavailable_and_the_next_reconnects() -> None:
    with PostgresServer() as pg:
        store = PostgresStore(pg.create_database("restarted"), batch_writer="process", timeout=5)
        await store.open()
        try:
            assert await store.apply_batch([bundle("c1", 1, pod("c1", "web", 1))]) == 1
            writer = writer_process()
            pg.restart()  # every connection dropped, the writer's among them
            with pytest.raises(StoreUnavailable, match="PostgreSQL at"):
                await store.apply_batch([bundle("c1", 2, pod("c1", "web", 2))])
            assert await store.apply_batch([bundle("c1", 2, pod("c1", "web", 2))]) == 2
            assert writer_process().pid == writer.pid  # the same process, on a new connection
        finally:
            await store.close()


async def test_the_writer_process_ends_with_the_store(pg_url: str) -> None:
    s = PostgresStore(pg_url, batch_writer="process")
    await s.open()
    child = writer_process()
    await s.close()  # waits for the process (it exits when its stdin closes)
    assert not child.is_running()
