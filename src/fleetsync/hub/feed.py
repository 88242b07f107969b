"""The change feed: the store's change log as a live stream, read once per replica, shared by every watcher.

One reader task follows the change log in revision order. It wakes when the store
announces a commit (``changes`` notifications: this replica's own applies, or, on
PostgreSQL, any replica's, through LISTEN/NOTIFY) and, in case a notification is lost,
every ``poll_interval``. What it reads is kept in memory for a while, so a hundred
watchers cost one query per batch of commits, not a hundred.

While nobody watches, the reader reads no changes, only the newest revision: an initial
sync of a thousand clusters commits a million changes, and reading them back (a row with
its body each, decoded into records) took a fifth of the hub's event loop and a reader
thread contending for its GIL, for no one. The memory is dropped then too.

A watcher follows from a revision: older entries come from the store (while the change
log still holds them), then from memory, then as they commit. Revisions arrive in
order and without gaps in what the log holds: the stores commit revisions in order
(see the PostgreSQL engine's docstring), so nothing below the newest revision read can
appear later.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import AsyncGenerator

from fleetsync import tracing
from fleetsync.aio import cancel_and_wait
from fleetsync.errors import FleetsyncError
from fleetsync.store.contract import Change, Store

log = logging.getLogger(__name__)


class Gone(FleetsyncError):
    """The revision asked for is older than the change log's window (HTTP 410 for a watch)."""

    def __init__(self, rev: int, oldest: int) -> None:
        super().__init__(f"revision {rev} is too old: the change log starts after {oldest}; list again")
        self.rev = rev
        self.oldest = oldest


class ChangeFeed:
    def __init__(self, store: Store, *, memory: int = 20_000, batch: int = 1000, poll_interval: float = 1.0) -> None:
        self.store = store
        self.batch = batch
        self.poll_interval = poll_interval
        self.memory = memory
        self._recent: list[Change] = []  # in revision order, without gaps; trimmed to ``memory`` now and then
        self.rev = 0  # the newest revision read (while nobody follows: the newest committed)
        self._followers = 0
        self._wake = asyncio.Event()
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        """How many changes the feed holds in memory (up to twice ``memory`` while anyone follows; none otherwise)."""
        return len(self._recent)

    @property
    def followers(self) -> int:
        """How many follow the feed now."""
        return self._followers

    async def start(self) -> None:
        if self._task is not None:
            return
        self.rev = await self.store.current_rev()
        self.store.listen(self._on_notification)
        self._task = asyncio.create_task(self._run(), name="change-feed")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    def _on_notification(self, channel: str, payload: str) -> None:
        if channel == "changes":
            self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):  # not wait_for: it can swallow a cancellation (aio.py)
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._catch_up()
            except Exception as exc:  # a store hiccup: try again at the next wake-up
                log.warning("change feed: reading the change log failed: %s; retrying", exc)

    async def _catch_up(self) -> None:
        if not self._followers:
            self._recent.clear()  # it would have a gap once changes are skipped
            rev = await self.store.current_rev()
            if rev > self.rev:
                self.rev = rev
                async with self._advanced:
                    self._advanced.notify_all()
            return
        while True:
            changes = await self.store.changes_since(self.rev, limit=self.batch)
            if not changes:
                return
            self._recent.extend(changes)
            if len(self._recent) > 2 * self.memory:
                del self._recent[: len(self._recent) - self.memory]
            self.rev = changes[-1].rev
            async with self._advanced:
                self._advanced.notify_all()
            if len(changes) < self.batch:
                return

    async def follow(self, since: int, *, idle: float | None = None) -> AsyncGenerator[list[Change], None]:
        """Batches of changes after revision ``since``, in order, as they come; forever; an
        empty batch after ``idle`` seconds without any (a watch's cue for a bookmark).
        Raises :class:`Gone` if the change log no longer reaches back to ``since``."""
        self._followers += 1
        if self._followers == 1:
            self._wake.set()  # the reader reads changes again from the next commit on
        try:
            async with contextlib.aclosing(self._follow(since, idle)) as batches:
                async for batch in batches:
                    yield batch
        finally:
            self._followers -= 1

    async def _follow(self, since: int, idle: float | None) -> AsyncGenerator[list[Change], None]:
        oldest = await self.store.oldest_rev()
        if since < oldest:
            raise Gone(since, oldest)
        while True:
            if self._recent and self._recent[0].rev <= since + 1:
                start = bisect.bisect_right(self._recent, since, key=lambda c: c.rev)
                batch = self._recent[start : start + self.batch]
            elif since < self.rev:  # before what memory holds: from the store
                batch = await self.store.changes_since(since, limit=self.batch)
                if batch and batch[0].rev != since + 1 and since < await self.store.oldest_rev():
                    raise Gone(since, await self.store.oldest_rev())
            else:
                batch = []
            if batch:
                since = batch[-1].rev
                if tracing.enabled():
                    tracing.delivered(batch)
                yield batch
                continue
            try:
                async with asyncio.timeout(idle):
                    await self._wait_beyond(since)
            except TimeoutError:
                yield []

    async def _wait_beyond(self, rev: int) -> None:
        async with self._advanced:
            await self._advanced.wait_for(lambda: self.rev > rev)
