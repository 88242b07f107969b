"""asyncio helpers that no library provides in the form needed here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], *, again_after: float = 2.0) -> None:
    """Cancel ``tasks`` and return once every one of them has ended.

    A cancellation can get lost: on Python 3.11, ``asyncio.wait_for`` swallows one that
    arrives as the awaited operation completes (python/cpython#86296, fixed in 3.12), and
    the client libraries use it (aiomqtt's publish, nats-py's fetch). A task cancelled
    once may therefore run on, and ``task.cancel(); await task`` hangs a shutdown for
    good. Here the tasks still running are cancelled again every ``again_after`` seconds
    (long enough for a task's own cleanup, a goodbye to a broker, say, to finish first).
    Their results and exceptions are left for the caller (``asyncio.wait`` raises none).
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)


async def cancel_the_rest(*, again_after: float = 2.0) -> None:
    """Cancel every task but the current one and wait until they have ended: what
    ``asyncio.run`` does at exit, except that a lost cancellation does not hang it."""
    current = asyncio.current_task()
    await cancel_and_wait([task for task in asyncio.all_tasks() if task is not current], again_after=again_after)
