"""The change feed (hub/feed.py) on real stores of both engines: a watch gets every change after its
revision, in order, whether or not anyone was watching when the changes were committed, and
the feed holds changes in memory only while someone follows it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from fleetsync.hub.feed import ChangeFeed
from fleetsync.store.contract import BundleWrite, Change, ObjectRecord, Store
from tests.harness import eventually

POD = "v1/Pod"


def pod(cluster: str, name: str, version: int) -> ObjectRecord:
    return ObjectRecord(cluster, POD, "default", name, f"uid-{name}", str(version), version, {}, "", b'{"v": %d}' % version, 0)


async def commit(store: Store, version: int, clusters: int = 5, pods: int = 4) -> None:
    """One batch: every Pod of every cluster at ``version`` (each a change)."""
    await store.apply_batch(
        [
            BundleWrite(f"c{c}", POD, "inc", version, [pod(f"c{c}", f"p{i}", version) for i in range(pods)], move_to=("inc", version), now=1.0)
            for c in range(clusters)
        ]
    )


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    async def holds() -> bool:
        return condition()

    await eventually(holds, timeout=timeout, what=what)


@pytest.fixture
async def feed(each_store: Store) -> AsyncIterator[ChangeFeed]:
    f = ChangeFeed(each_store, memory=50, batch=30, poll_interval=0.05)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


async def collect(feed: ChangeFeed, since: int, until_rev: int, seen: list[Change]) -> None:
    async for batch in feed.follow(since, idle=0.1):
        seen.extend(batch)
        if seen and seen[-1].rev >= until_rev:
            return


async def test_a_watch_gets_every_change_committed_while_nobody_watched_in_order(each_store: Store, feed: ChangeFeed) -> None:
    store = each_store
    for version in range(1, 6):
        await commit(store, version)
    await until(lambda: feed.rev == 100, "the feed knows the newest revision")
    assert feed.held == 0  # nobody follows: nothing read into memory
    seen: list[Change] = []
    follower = asyncio.create_task(collect(feed, 10, 160, seen))
    await until(lambda: len(seen) >= 90, "the follower read the log's older changes")
    for version in range(6, 9):  # and then live ones
        await commit(store, version)
    await asyncio.wait_for(follower, 10)
    assert [c.rev for c in seen] == list(range(11, 161))
    assert [(c.obj.cluster, c.obj.name, c.obj.resource_version) for c in seen[-20:]] == [(f"c{c}", f"p{i}", "8") for c in range(5) for i in range(4)]


async def test_the_feed_holds_changes_only_while_someone_follows(each_store: Store, feed: ChangeFeed) -> None:
    store = each_store
    seen: list[Change] = []
    follower = asyncio.create_task(collect(feed, 0, 10**9, seen))
    await until(lambda: feed.followers == 1, "the follower is counted")
    for version in range(1, 4):
        await commit(store, version)
    await until(lambda: len(seen) == 60, "the follower saw every change")
    assert 0 < feed.held <= 100  # memory: up to twice the feed's 50
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    assert feed.followers == 0
    await commit(store, 4)
    await until(lambda: feed.rev == 80 and feed.held == 0, "the feed let go of its memory and still knows the newest revision")
    late: list[Change] = []
    await asyncio.wait_for(collect(feed, 50, 80, late), 10)  # a later watch still gets what it missed
    assert [c.rev for c in late] == list(range(51, 81))
