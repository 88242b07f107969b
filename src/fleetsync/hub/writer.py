"""Group commit: the bundles of many clusters applied in one store transaction, each acked after it.

At fleet scale almost every bundle is small (a change or two), and a store commits
transactions, not rows: SQLite with ``synchronous=FULL`` spends ~1.4 ms on each commit's
fsync, so a transaction per bundle caps a hub at ~700 bundles/s whatever the machine.
:class:`BatchWriter` is the one place bundles are written: every cluster's engine hands
it its next bundle and waits; the writer takes whatever is waiting, up to
``max_bundles`` bundles and ``max_bytes`` bytes, and applies it with one
:meth:`~fleetsync.store.contract.Store.apply_batch`, like PostgreSQL's group commit or
the batches of etcd raft's ``Ready``. While one batch commits, the next one gathers, so
batches grow with the load by themselves and an idle hub commits a lone bundle at once.

Each engine waits for its own bundle and so never has more than one in the writer:
a stream's bundles reach the store in order, and the protocol's rules (decided before,
in the engine) are untouched.

**Failures stay with their bundle.** If a batch fails:

- :class:`~fleetsync.store.contract.StoreUnavailable` (locked, full, unreachable):
  nothing in the batch is at fault; every bundle of it fails with that error, and each
  engine retries with backoff or ends its session (the agent resends after reconnecting);
- :class:`~fleetsync.store.contract.LeaseLost` (a session's lease epoch is no longer its
  cluster's: another session holds the cluster now): the fenced bundles fail with it
  (their sessions end) and the rest of the batch is committed again without them;
- anything else: the batch is split in halves, and the halves tried again, down to
  single bundles, so the bundle at fault fails alone and every other one commits.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from fleetsync.aio import cancel_and_wait
from fleetsync.hub.metrics import HubMetrics
from fleetsync.store.contract import BundleWrite, LeaseLost, Store, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    write: BundleWrite
    size: int
    done: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class BatchWriter:
    """Applies bundles from every cluster in shared transactions; see the module docstring.

    ``max_bundles`` and ``max_bytes`` bound one batch (and so the memory and the time of
    one transaction); ``linger``: under load (the last batch held more than one bundle)
    the writer waits this long for more before committing, which makes batches larger
    when bundles arrive spread out.
    """

    def __init__(
        self,
        store: Store,
        *,
        metrics: HubMetrics | None = None,
        max_bundles: int = 1000,
        max_bytes: int = 16 * 1024 * 1024,
        linger: float = 0.002,
    ) -> None:
        if max_bundles < 1 or max_bytes < 1:
            raise ValueError("a batch must allow at least one bundle and one byte")
        self.store = store
        self.metrics = metrics or HubMetrics()
        self.max_bundles = max_bundles
        self.max_bytes = max_bytes
        self.linger = linger
        self._waiting: deque[_Pending] = deque()
        self._task: asyncio.Task[None] | None = None
        self._last_batch = 0
        self._committing: list[_Pending] = []

    async def apply(self, write: BundleWrite, *, size: int = 0) -> None:
        """Apply ``write`` with whatever else is waiting; returns once it is committed.

        Raises what the store raised for it: :class:`StoreUnavailable` when the store could
        not be written at all, another exception when this bundle itself could not be.
        ``size``: its bytes as received (bounds a batch).
        """
        await self.apply_counted(write, size=size)

    async def apply_counted(self, write: BundleWrite, *, size: int = 0) -> int:
        """:meth:`apply`, returning how many changes (revisions) ``write`` made, as the store's
        plan counted them: 0 if the store held all of it already (a pull refresh reports it)."""
        pending = _Pending(write, size)
        self._waiting.append(pending)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="batch-writer")
        return await pending.done  # cancelled (the session ended) before it was taken: it is skipped

    async def close(self) -> None:
        """Stop the writer; bundles still waiting fail with StoreUnavailable (their agents resend)."""
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        stopping = StoreUnavailable("the hub is stopping")
        for pending in [*self._committing, *self._waiting]:
            _finish(pending, stopping)
        self._committing = []
        self._waiting.clear()

    async def _run(self) -> None:
        """Commit batches while bundles wait; the task ends when none do (an idle hub has none)."""
        while self._waiting:
            if self._last_batch > 1 and self.linger > 0 and len(self._waiting) < self.max_bundles:
                await asyncio.sleep(self.linger)
            batch = self._take()
            if batch:
                self._last_batch = len(batch)
                self._committing = batch
                await self._commit(batch)
                self._committing = []
        self._last_batch = 0

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._waiting and len(batch) < self.max_bundles:
            pending = self._waiting[0]
            if batch and size + pending.size > self.max_bytes:
                break
            self._waiting.popleft()
            if pending.done.cancelled():  # its engine stopped waiting (the session ended)
                continue
            batch.append(pending)
            size += pending.size
        return batch

    async def _commit(self, batch: Sequence[_Pending]) -> None:
        started = time.perf_counter()
        try:
            applied = await self.store.apply_batch([p.write for p in batch])
        except LeaseLost as exc:
            self.metrics.store_errors.labels("fenced").inc()
            fenced = set(exc.fenced)
            log.warning("%s; %d bundles not written", exc, len(fenced))
            for i in fenced:
                _finish(batch[i], exc)
            rest = [p for i, p in enumerate(batch) if i not in fenced]
            if rest:
                await self._commit(rest)
            return
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("unavailable").inc()
            log.warning("store unavailable: a batch of %d bundles was not written: %s", len(batch), exc)
            for p in batch:
                _finish(p, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                self.metrics.store_errors.labels("bundle").inc()
                w = batch[0].write
                log.error("cluster %s: bundle seq %d of %s could not be written: %r", w.cluster, w.seq, w.type, exc)
                _finish(batch[0], exc)
                return
            half = len(batch) // 2  # isolate the bundle at fault: the others commit without it
            await self._commit(batch[:half])
            await self._commit(batch[half:])
            return
        self.metrics.committed(len(batch), time.perf_counter() - started)
        # one count per write, as the contract says (were one missing, its write still completes)
        for p, changes in zip(batch, itertools.chain(applied.changes, itertools.repeat(0)), strict=False):
            _finish(p, None, changes)


def _finish(pending: _Pending, error: BaseException | None, changes: int = 0) -> None:
    if pending.done.done():
        return
    if error is None:
        pending.done.set_result(changes)
    else:
        pending.done.set_exception(error)
