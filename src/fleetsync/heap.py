"""Keep a process's heap from holding on to memory it no longer uses (glibc's malloc tunables and ``malloc_trim``).

Both the agent and the hub use it. The hub's case: an initial sync of a thousand agents
passes a gigabyte of FULL chunks through it (each decoded, checked and written, then
garbage), and without this its RSS stayed near that high-water mark after the sync although
the objects live in the store; :func:`trim_every` gives the free pages back while it runs.
The agent's case:

A LIST parses page after page of JSON (a 500-Pod page is ~3 MB, ~10 MB of Python objects)
and builds the wire form of every object; once the page is taken in, almost all of it is
free again, but glibc keeps freed chunks in its heap, and the agent's RSS would stay at
its high-water mark for the rest of its life. ``malloc_trim(0)`` returns the free pages
(it costs a few milliseconds, once per LIST).

:func:`retain_less`, once at the agent's start, makes glibc give memory back by itself: a
block of 256 KiB or more (a page's JSON, a FULL chunk of 512 KiB, its serialized message;
not the 128 KiB chunks hubs ask for by default, which the trims return) gets its own mapping, returned when freed (by default that threshold grows up to 32 MiB
after the first such block is freed, and such blocks then stay in the heap), free memory
at the heap's top beyond 1 MiB is returned, and the threads of the gRPC core share two
heaps (arenas) instead of one per thread. On a libc without these (musl, macOS) both do
nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()

# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def retain_less(*, mmap_threshold: int = 256 * 1024, trim_threshold: int = 1024 * 1024, arenas: int = 2) -> bool:
    """Set glibc's allocator to return freed memory to the kernel (see above); False if this libc cannot."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in ((M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold), (M_ARENA_MAX, arenas)))


def release_free_memory() -> bool:
    """Give free heap pages back to the kernel; False if this libc cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


async def trim_every(interval: float) -> None:
    """:func:`release_free_memory` every ``interval`` seconds, on a thread (a trim of a large
    heap takes milliseconds, which the event loop need not wait for; ctypes lets go of the GIL)."""
    if _TRIM is None:
        return
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(release_free_memory)
