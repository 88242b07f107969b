"""A store engine's batch writer in a process of its own, spoken to over its stdin and stdout.

The hub is bound by one core of Python: its event loop decodes and checks what a thousand
agents send. A batch written from that loop waits for a turn of it at every step (a
statement's round trip, a commit), and a turn takes tens of milliseconds when the loop is
busy. Written by a process of its own, a batch's steps never wait for the hub's loop, and
the writer has a core and a GIL of its own. Both engines do so
(:mod:`fleetsync.store.sqlitebatch`, :mod:`fleetsync.store.pgbatch`); this module is what
they share:

- the hub's side, :class:`WriterProcess`: starts ``python -m MODULE``, sends it a request
  and returns its answer, one at a time; if the process dies, the batch in it fails as
  :class:`~fleetsync.store.contract.StoreUnavailable` (the hub retries it like a locked or
  unreachable database) and the next batch starts a new process;
- the process's side, :func:`serve`: reads requests, hands them to the engine's writer,
  answers;
- a batch as it travels (:func:`packed`, :func:`unpacked`): plain tuples, its objects'
  bodies the agent's compressed bytes copied as they are, their labels already as the JSON
  both engines store.

The wire: each message a pickle with an 8-byte length before it; the first request is the
writer's configuration, each next one a batch; each answer ``(ok, value)``, where a value
that is not ``ok`` is the exception to raise. Not ``multiprocessing``: its ``spawn`` runs
the parent's main module again in the child, and ``fork`` copies a process full of gRPC's
and the database drivers' threads. The process ends when its stdin closes: when the store
is closed, or the hub is gone. Its stderr is the hub's, so what it logs is in the hub's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import pickle
import select
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO, Literal, Protocol, TypeVar

import orjson

from fleetsync.errors import FleetsyncError
from fleetsync.heap import release_free_memory, retain_less
from fleetsync.store.contract import BundleWrite, ObjectRecord, StoreUnavailable

T = TypeVar("T")

#: Where an engine writes its batches: in the hub's process (SQLite: a thread of it;
#: PostgreSQL: its event loop), or in a process of its own.
BatchWriterKind = Literal["thread", "process"]
BATCH_WRITER_KINDS: tuple[BatchWriterKind, ...] = ("thread", "process")

#: The largest answer a writer process sends is a batch's revisions: small.
MAX_ANSWER = 1 << 20


async def run_shielded(task: asyncio.Future[T]) -> T:
    """``task``'s result; if the caller is cancelled meanwhile, ``task`` still runs to its end
    before the cancellation goes on (a transaction is never left half-way)."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


class WriterProcess:
    """The hub's side of a writer process: ``python -m module``, configured with ``config``
    (the first request). ``name`` says which store it writes, in errors."""

    def __init__(self, module: str, config: Any, *, name: str) -> None:
        self.module, self.config, self.name = module, config, name
        self._proc: asyncio.subprocess.Process | None = None
        self._exchange: asyncio.Task[Any] | None = None
        self._lock = asyncio.Lock()  # one request at a time on the pipes
        self._closed = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def open(self) -> None:
        """Start the process and configure it; raises what it raised if it could not start."""
        self._closed = False
        await self._start()

    async def _start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=MAX_ANSWER
        )
        try:
            ok, value = await self._exchange_once(self.config)  # the answer: the writer is ready (or why not)
            if not ok:
                raise value
        except BaseException:
            await self._stop()
            raise

    async def call(self, request: Any) -> Any:
        """``request``'s answer, or what the process raised for it.

        The exchange runs to its end even if the caller is cancelled (a transaction is never
        left half-way), and the next request waits for it: the pipe is free only once the
        answer was read. (Had the next request started while a cancelled caller's answer was
        still to come, it would have read that answer as its own.)"""
        await self._lock.acquire()
        try:
            if self._closed:
                raise RuntimeError("the store is not open")
            exchange = self._exchange = asyncio.ensure_future(self._exchange_or_replace(request))
        except BaseException:
            self._lock.release()
            raise
        exchange.add_done_callback(lambda _: self._lock.release())
        ok, value = await asyncio.shield(exchange)
        if not ok:
            raise value
        return value

    async def _exchange_or_replace(self, request: Any) -> tuple[bool, Any]:
        """The exchange; a process that exited (killed, crashed, out of memory) fails the
        request as StoreUnavailable and is replaced for the next one: what it was writing was
        rolled back by the database."""
        try:
            if self._proc is None:  # the last one could not be started again
                await self._start()
            return await self._exchange_once(request)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            await self._stop()
            await self._start()
            return False, StoreUnavailable(f"{self.name}: the batch writer process exited ({exc!r}); a new one takes the next batch")

    async def _exchange_once(self, request: Any) -> tuple[bool, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        data = dumps(request)
        proc.stdin.write(len(data).to_bytes(8, "little"))
        proc.stdin.write(data)
        await proc.stdin.drain()
        size = int.from_bytes(await proc.stdout.readexactly(8), "little")
        answer: tuple[bool, Any] = pickle.loads(await proc.stdout.readexactly(size))
        return answer

    async def close(self) -> None:
        """Wait for the exchange in progress, if any, then stop the process."""
        self._closed = True
        if self._exchange is not None and not self._exchange.done():
            with contextlib.suppress(BaseException):
                await self._exchange
        await self._stop()

    async def _stop(self) -> None:
        """Close the process's stdin (its cue to close its connection and exit) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def dumps(value: Any) -> bytes:
    """``value`` pickled without the memo: a batch is a tree of tuples, strings and bytes with
    no shared or recursive parts, and memoizing each of its thousands of small strings cost
    more than writing them (pickling a batch took a third of the time it took to write it)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(value)
    return buffer.getvalue()


# ---- a batch as it travels -------------------------------------------------------------------


def labels_json(labels: Mapping[str, str]) -> str:
    """An object's labels as both engines' ``labels`` column holds them (JSON text)."""
    if type(labels) is Labels:
        return labels.json
    return orjson.dumps(labels if type(labels) is dict else dict(labels)).decode()


#: A bundle write as it travels to the process: plain tuples (what pickles fastest), its
#: objects' labels already as JSON.
Packed = tuple[str, str, str, int, list[tuple[Any, ...]], tuple[str, ...], int | None, bool, tuple[str, int] | None, float, int]


def packed(w: BundleWrite) -> Packed:
    rows = [(o.namespace, o.name, o.uid, o.resource_version, o.hash, labels_json(o.labels), o.owner, o.body, o.compression, o.incarnation) for o in w.upserts]
    return (w.cluster, w.type, w.incarnation, w.seq, rows, tuple(w.deletes), w.full_seq, w.full_end, w.move_to, w.now, w.epoch)


def unpacked(p: Packed) -> BundleWrite:
    cluster, type_, incarnation, seq, rows, deletes, full_seq, full_end, move_to, now, epoch = p
    upserts = [
        ObjectRecord(cluster, type_, ns, name, uid, rv, h, Labels(labels), owner, body, compression, inc)
        for ns, name, uid, rv, h, labels, owner, body, compression, inc in rows
    ]
    return BundleWrite(cluster, type_, incarnation, seq, upserts, deletes, full_seq, full_end, move_to, now, epoch)


class Labels(Mapping[str, str]):
    """Labels that travelled as their JSON (made once, in the hub's process): :func:`labels_json`
    writes the JSON they came as, and the writer, which only stores them, never parses them
    (a mapping all the same, parsed when first read)."""

    __slots__ = ("_parsed", "json")

    def __init__(self, json: str) -> None:
        self.json = json
        self._parsed: dict[str, str] | None = None

    def _mapping(self) -> dict[str, str]:
        if self._parsed is None:
            self._parsed = orjson.loads(self.json)
        return self._parsed

    def __getitem__(self, key: str) -> str:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __repr__(self) -> str:
        return f"Labels({self.json})"


# ---- in the writer process -------------------------------------------------------------------


class Writer(Protocol):
    """An engine's writer, in the writer process."""

    def write(self, request: Any) -> Any:
        """The answer to a request; an exception raised is sent back to be raised in the hub."""
        ...

    def close(self) -> None: ...


#: Seconds without a request after which the writer process gives its heap's free pages
#: back to the kernel (:func:`serve`).
TRIM_WHEN_IDLE = 0.5

#: At most this many seconds between two such returns while batches keep coming.
TRIM_INTERVAL = 5.0


def serve(stdin: io.RawIOBase, stdout: BinaryIO, start: Callable[[Any], Writer]) -> None:
    """The writer process's life: ``start(config)`` with the first request, then each next
    request to the writer, until stdin (unbuffered: :func:`stdin`) closes.

    A batch passes up to ``--batch-bytes`` through this process three times over (the
    request's bytes, the unpickled rows, the statements' parameters), all garbage once it is
    committed. glibc would keep the heap at that high-water mark for good (in a 1,000-cluster
    initial sync the process stayed at ~150 MiB for the hub's whole life), so the process
    returns large blocks as they are freed (:func:`~fleetsync.heap.retain_less`) and its free
    pages when no request has come for :data:`TRIM_WHEN_IDLE` s, or every
    :data:`TRIM_INTERVAL` s while batches keep coming (a trim costs a few milliseconds)."""
    retain_less()
    config = _read(stdin)
    if config is None:
        return
    try:
        writer = start(config)
    except Exception as exc:
        _answer(stdout, False, exc)
        return
    _answer(stdout, True, None)
    trimmed = time.monotonic()
    written = False
    try:
        while True:
            if written and (time.monotonic() - trimmed >= TRIM_INTERVAL or not _ready(stdin, TRIM_WHEN_IDLE)):
                release_free_memory()
                trimmed, written = time.monotonic(), False
            if (request := _read(stdin)) is None:
                break
            written = True
            try:
                _answer(stdout, True, writer.write(request))
            except Exception as exc:
                _answer(stdout, False, exc)
            del request  # garbage before the next trim, not kept until the next request
    finally:
        writer.close()


def stdin() -> io.RawIOBase:
    """This process's stdin, unbuffered (what :func:`serve` reads)."""
    return open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)


def _ready(stream: io.RawIOBase, timeout: float) -> bool:
    """Whether ``stream`` has something to read within ``timeout`` s (it is unbuffered:
    nothing of it waits in this process where ``select`` would not see it)."""
    readable, _, _ = select.select([stream], [], [], timeout)
    return bool(readable)


def _read(stream: io.RawIOBase) -> Any:
    header = _read_exactly(stream, 8)
    if header is None:
        return None  # stdin closed: the hub is done with this process
    data = _read_exactly(stream, int.from_bytes(header, "little"))
    return None if data is None else pickle.loads(data)


def _read_exactly(stream: io.RawIOBase, size: int) -> bytearray | None:
    """``size`` bytes of ``stream``; None if it ends first (an unbuffered read may return
    less than asked: a pipe gives what it holds)."""
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    while done < size:
        got = stream.readinto(view[done:])
        if not got:
            return None
        done += got
    return data


def _answer(stream: BinaryIO, ok: bool, value: Any) -> None:
    if not ok and not _travels(value):
        value = RuntimeError(f"{type(value).__name__}: {value}")
    try:
        data = pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that does not pickle is told by its text
        data = pickle.dumps((False, RuntimeError(repr(value))), protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little"))
    stream.write(data)
    stream.flush()


def _travels(exc: BaseException) -> bool:
    """Whether ``exc`` may be sent to the hub as it is: Python's own exceptions and fleetsync's
    pickle and unpickle alike; a driver's may not be importable or rebuildable in the hub (its
    constructor takes other arguments), so those travel as their text."""
    return type(exc).__module__ in ("builtins", "sqlite3") or isinstance(exc, FleetsyncError)
