"""Shutdown never hangs on a task whose cancellation got lost."""

from __future__ import annotations

import asyncio

from fleetsync.aio import cancel_and_wait


async def test_a_task_that_lost_its_cancellation_is_cancelled_again() -> None:
    lost = 0

    async def swallows_the_first_cancellation() -> None:
        # what asyncio.wait_for does on Python 3.11 when the cancellation races a completion
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                lost += 1
                if lost > 1:
                    raise

    task = asyncio.create_task(swallows_the_first_cancellation())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait([task], again_after=0.05)
    assert task.cancelled() and lost == 2


async def test_finished_and_failed_tasks_are_left_as_they_are() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    done = asyncio.create_task(asyncio.sleep(0, result=7))
    failed = asyncio.create_task(fails())
    await asyncio.sleep(0.01)
    await cancel_and_wait([done, failed])
    assert done.result() == 7 and isinstance(failed.exception(), ValueError)
