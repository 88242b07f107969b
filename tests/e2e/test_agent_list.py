"""The agent's LIST (TypeWatcher into a TypeSync) against ``fleetsync sim``: taken in page by page,
each page made into wire objects as it arrives, and the type's state replaced only when the last
page is in, so a LIST cut off half-way (410 Gone on its continue token) changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from fleetsync.agent.apijson import RAW
from fleetsync.agent.kube import Pages, TypeWatcher, api_client
from fleetsync.agent.typesync import TypeSync
from fleetsync.model.types import POD, ResourceType
from fleetsync.protocol.wireobject import RawFields
from tests.harness import Sim, run_sim, wait_until


def keys(objects: list[dict]) -> set[str]:  # type: ignore[type-arg]
    return {f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}" for o in objects}


class Taker:
    """The agent's side of a LIST, as the runner's: pages into a TypeSync listing, finished at the end.
    ``after_first_page``, if set, runs once the first page is taken (before the second is asked for)."""

    def __init__(self) -> None:
        self.sync = TypeSync(POD, "inc", max_message_bytes=512 * 1024)
        self.pages: list[int] = []
        self.after_first_page: Callable[[], Awaitable[None]] | None = None

    async def on_pages(self, _: ResourceType, pages: Pages[RawFields]) -> None:
        self.pages = []
        listing = self.sync.listing()
        async for items in pages:
            listing.add(items)
            self.pages.append(len(items))
            if len(self.pages) == 1 and self.after_first_page:
                await self.after_first_page()
        self.sync.finish_list(listing)

    def watcher(self, api: client.ApiClient, page_size: int) -> TypeWatcher[RawFields]:
        async def nothing(*_: object) -> None:
            pass

        return TypeWatcher(api, POD, RAW, on_list=self.on_pages, on_event=nothing, on_error=nothing, page_size=page_size)


@pytest.fixture
async def api(sim: Sim) -> AsyncIterator[client.ApiClient]:
    async with await api_client(str(sim.kubeconfig("c2"))) as api:
        yield api


async def test_a_list_in_many_pages_gives_every_object_once(api: client.ApiClient, quiet_sim: Sim) -> None:
    taker = Taker()
    rv = await taker.watcher(api, page_size=7).list()
    truth = quiet_sim.truth("c2", "v1/Pod")
    assert len(taker.pages) == -(-len(truth) // 7) and max(taker.pages) == 7, "one page per 7 objects"
    assert set(taker.sync.cache) == keys(truth) and set(taker.sync.pending) == keys(truth)
    assert int(rv) > 0 and taker.sync.listed


async def test_a_list_cut_off_by_410_changes_nothing_and_the_next_list_does(tmp_path: Path) -> None:
    with run_sim(tmp_path, "--clusters", "1", "--pods", "60", "--watch-history", "30") as sim:
        async with await api_client(str(sim.kubeconfig("c1"))) as api:
            taker = Taker()
            await taker.watcher(api, page_size=500).list()
            before = dict(taker.sync.cache)
            taker.sync.pending.clear()

            async def roll_the_history_over() -> None:
                sim.set_churn(50)
                await asyncio.to_thread(wait_until, lambda: sim.churn_operations() > 60, timeout=20, what="churn past the history")
                sim.set_churn(0)

            taker.after_first_page = roll_the_history_over
            with pytest.raises(ApiException) as gone:
                await taker.watcher(api, page_size=10).list()
            assert gone.value.status == 410 and taker.pages == [10]
            taker.after_first_page = None
            assert taker.sync.cache == before and not taker.sync.pending, "half a list must neither add nor delete"

            await taker.watcher(api, page_size=10).list()  # what TypeWatcher.run does on 410: list again
            assert set(taker.sync.cache) == keys(sim.truth("c1", "v1/Pod"))
            assert taker.sync.pending, "the churn's changes are pending for the hub"
