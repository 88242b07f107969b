"""Writing a batch of bundles to SQLite: one transaction of a handful of multi-row statements,
on a thread of the hub's process or in a process of its own.

The hub's group commit (:mod:`fleetsync.hub.writer`) hands the store one batch at a time;
:func:`write_batch` looks up what the store holds of the batch's keys, lets the pure plan
(:mod:`fleetsync.store.plan`) decide, writes it and commits. Two places to run it:

- ``thread`` (:class:`ThreadBatchConnection`): a thread of the hub's process. Cheap to
  start, and what tests and tools that open a store use. But the hub is bound by one core
  of Python (its event loop decodes and checks what a thousand agents send), and every
  row the writer binds needs the GIL from that busy loop: in a 1,000-cluster initial sync
  the writer held a quarter of the GIL's time, and each statement waited for it.
- ``process`` (:class:`ProcessBatchConnection`): a process of its own, with its own GIL
  and its own core. The batch travels to it pickled (its objects' bodies are the agent's
  compressed bytes, copied as they are), the answer (the revisions) comes back. The hub
  runs it so by default (``fleetsync hub --db-writer``). If the process dies, the batch in
  it fails as :class:`~fleetsync.store.contract.StoreUnavailable` (the hub retries it
  like a locked database) and the next batch starts a new one.

Either way the transaction is one call: a statement's round trip never waits for the event
loop, and the store's write lock (an asyncio lock in :class:`~fleetsync.store.sqlite.SQLiteStore`)
keeps the store's other writer connection out while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import pickle
import signal
import sqlite3
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, TypeVar

import orjson

from fleetsync.store.contract import BundleWrite, LeaseLost, ObjectRecord, StoreUnavailable
from fleetsync.store.leasing import fenced, fenced_message
from fleetsync.store.plan import Held, RoundPlan, lookups, plan_round, rounds
from fleetsync.store.rows import Key, to_signed, to_unsigned

#: Where batches are written: a thread of this process, or a process of its own.
BatchWriterKind = Literal["thread", "process"]
BATCH_WRITER_KINDS: tuple[BatchWriterKind, ...] = ("thread", "process")

#: What a batch's transaction returns: the store's revision before and after it, and the
#: revisions (changes) each write took, in the batch's order.
BatchResult = tuple[int, int, list[int]]

OBJECT_FIELDS = "uid, resource_version, hash, labels, owner, body, compression, incarnation"


def labels_json(labels: Mapping[str, str]) -> str:
    """An object's labels as the ``labels`` column holds them."""
    if type(labels) is _Labels:
        return labels.json
    return orjson.dumps(labels if type(labels) is dict else dict(labels)).decode()


def connect(path: Path, *, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """A connection for writing batches (autocommit: :func:`write_batch` begins and commits)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in (f"busy_timeout = {int(busy_timeout * 1000)}", f"synchronous = {synchronous}", "foreign_keys = ON", "temp_store = MEMORY"):
            db.execute(f"PRAGMA {pragma}")
    except BaseException:
        db.close()
        raise
    return db


def write_batch(db: sqlite3.Connection, writes: Sequence[BundleWrite], seen: Mapping[str, float], change_log_keep: int) -> BatchResult:
    """One transaction for ``writes`` and the clusters' pending last-seen times ``seen``
    (cluster -> time); see :data:`BatchResult`. ``change_log_keep``: the change log is trimmed
    to its newest this many entries, in steps of 1% of it (0: never)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if seen:
            touches = [(t, name) for name, t in seen.items()]
            _many(db, "UPDATE clusters SET last_seen = max(last_seen, v.column1) FROM (", "(?, ?)", ") AS v WHERE clusters.name = v.column2", touches)
        _fence(db, writes)
        rev = first = int(db.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()[0])
        changes: list[int] = []
        for writes_ in rounds(writes):
            held = _held(db, lookups(writes_))
            unmarked = {(w.cluster, w.type): _unmarked(db, w) for w in writes_ if w.full_end}
            plan = plan_round(writes_, held, unmarked)
            _write_round(db, plan, rev)
            rev += plan.changes
            changes += plan.changes_per_bundle
        if rev != first:
            db.execute("UPDATE meta SET value = ? WHERE key = 'rev'", (rev,))
            # trim in steps of 1% of the window (a statement per batch would cost a round trip each)
            step = max(1, change_log_keep // 100)
            if change_log_keep and rev // step != first // step:
                db.execute("DELETE FROM changes WHERE rev <= ?", (rev - change_log_keep,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return rev, first, changes


class BatchConnection(Protocol):
    """Where :func:`write_batch` runs; :meth:`write` returns once the transaction committed or failed."""

    async def write(self, writes: Sequence[BundleWrite], seen: Mapping[str, float]) -> BatchResult: ...

    async def close(self) -> None: ...


async def open_batch_connection(kind: BatchWriterKind, path: Path, *, busy_timeout: float, synchronous: str, change_log_keep: int) -> BatchConnection:
    """A connection of ``kind`` to the database at ``path``, open and ready to write."""
    connection: ThreadBatchConnection | ProcessBatchConnection
    if kind == "thread":
        connection = ThreadBatchConnection(path, busy_timeout=busy_timeout, synchronous=synchronous, change_log_keep=change_log_keep)
    elif kind == "process":
        connection = ProcessBatchConnection(path, busy_timeout=busy_timeout, synchronous=synchronous, change_log_keep=change_log_keep)
    else:
        raise ValueError(f"batch writer must be one of {', '.join(BATCH_WRITER_KINDS)}, not {kind!r}")
    await connection.open()
    return connection


T = TypeVar("T")


async def _run_to_the_end(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on ``executor``, run to its end (see :func:`_run_shielded`)."""
    return await _run_shielded(asyncio.get_running_loop().run_in_executor(executor, fn, *args))


async def _run_shielded(task: asyncio.Future[T]) -> T:
    """``task``'s result; if the caller is cancelled meanwhile, ``task`` still runs to its end
    before the cancellation goes on (a transaction is never left half-way)."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


class ThreadBatchConnection:
    """Batches written on a thread of this process (see the module docstring)."""

    def __init__(self, path: Path, *, busy_timeout: float, synchronous: str, change_log_keep: int) -> None:
        self.path, self.busy_timeout, self.synchronous, self.change_log_keep = path, busy_timeout, synchronous, change_log_keep
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-batch")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        try:
            self._db = await _run_to_the_end(self._thread, _connected, self.path, self.busy_timeout, self.synchronous)
        except BaseException:
            self._thread.shutdown(wait=False)
            raise

    async def write(self, writes: Sequence[BundleWrite], seen: Mapping[str, float]) -> BatchResult:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return await _run_to_the_end(self._thread, write_batch, self._db, writes, seen, self.change_log_keep)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await _run_to_the_end(self._thread, db.close)
        self._thread.shutdown(wait=False)


def _connected(path: Path, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    return connect(path, busy_timeout=busy_timeout, synchronous=synchronous)


class ProcessBatchConnection:
    """Batches written in a process of its own (see the module docstring).

    The process is ``python -m fleetsync.store.sqlitebatch``, spoken to over its stdin and
    stdout: each message a pickle with an 8-byte length before it, one request and one
    answer at a time. (Not ``multiprocessing``: its ``spawn`` runs the parent's main module
    again in the child, and ``fork`` copies a process full of gRPC's and SQLite's threads.)
    It ends when its stdin closes: when the connection is closed, or the hub is gone. Its
    stderr is the hub's, so what it logs is in the hub's log.
    """

    def __init__(self, path: Path, *, busy_timeout: float, synchronous: str, change_log_keep: int) -> None:
        self.config = (str(path), busy_timeout, synchronous, change_log_keep)
        self.path = path
        self._proc: asyncio.subprocess.Process | None = None
        self._exchange: asyncio.Task[Any] | None = None

    async def open(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=_MAX_ANSWER
        )
        try:
            await self._call(self.config)  # the answer: the connection is open (or why not)
        except BaseException:
            await self.close()
            raise

    async def write(self, writes: Sequence[BundleWrite], seen: Mapping[str, float]) -> BatchResult:
        if self._proc is None:
            raise RuntimeError("the store is not open")
        try:
            result: BatchResult = await self._call(([_packed(w) for w in writes], dict(seen)))
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            # killed (OOM, a signal) or crashed: what it was writing was rolled back by SQLite;
            # the next batch gets a new process
            await self.close()
            await self.open()
            raise StoreUnavailable(f"SQLite {self.path}: the batch writer process exited ({exc!r}); a new one takes the next batch") from exc
        return result

    async def _call(self, request: Any) -> Any:
        """Send ``request``, return the answer or raise what the process raised. The exchange
        runs to its end even if the caller is cancelled (the next one must find the pipe clean,
        and a transaction is never left half-way)."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        async def exchange() -> Any:
            data = _dumps(request)
            stdin.write(len(data).to_bytes(8, "little"))
            stdin.write(data)
            await stdin.drain()
            size = int.from_bytes(await stdout.readexactly(8), "little")
            return pickle.loads(await stdout.readexactly(size))

        self._exchange = asyncio.ensure_future(exchange())
        ok, value = await _run_shielded(self._exchange)
        if not ok:
            raise value
        return value

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._exchange is not None and not self._exchange.done():
            with contextlib.suppress(BaseException):
                await self._exchange
        if proc.stdin is not None:
            proc.stdin.close()  # the process's cue to close its connection and exit
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _dumps(value: Any) -> bytes:
    """``value`` pickled without the memo: a batch is a tree of tuples, strings and bytes with
    no shared or recursive parts, and memoizing each of its thousands of small strings cost
    more than writing them (pickling a batch took a third of the time it took to write it)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(value)
    return buffer.getvalue()


#: A bundle write as it travels to the process: plain tuples (what pickles fastest), its
#: objects' labels already as the JSON the ``labels`` column holds.
_Packed = tuple[str, str, str, int, list[tuple[Any, ...]], tuple[str, ...], int | None, bool, tuple[str, int] | None, float, int]


def _packed(w: BundleWrite) -> _Packed:
    rows = [(o.namespace, o.name, o.uid, o.resource_version, o.hash, labels_json(o.labels), o.owner, o.body, o.compression, o.incarnation) for o in w.upserts]
    return (w.cluster, w.type, w.incarnation, w.seq, rows, tuple(w.deletes), w.full_seq, w.full_end, w.move_to, w.now, w.epoch)


def _unpacked(p: _Packed) -> BundleWrite:
    cluster, type_, incarnation, seq, rows, deletes, full_seq, full_end, move_to, now, epoch = p
    upserts = [
        ObjectRecord(cluster, type_, ns, name, uid, rv, h, _Labels(labels), owner, body, compression, inc)
        for ns, name, uid, rv, h, labels, owner, body, compression, inc in rows
    ]
    return BundleWrite(cluster, type_, incarnation, seq, upserts, deletes, full_seq, full_end, move_to, now, epoch)


class _Labels(dict[str, str]):
    """Labels that travelled as their JSON (made once, in the hub's process): a mapping like any
    other, and :func:`labels_json` writes the JSON it came as instead of making it again."""

    __slots__ = ("json",)

    def __init__(self, json: str) -> None:
        super().__init__(orjson.loads(json))
        self.json = json


#: The largest answer the process sends is a batch's revisions: small.
_MAX_ANSWER = 1 << 20


# ---- in the batch writer process -----------------------------------------------------------


def _read(stream: BinaryIO) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        return None  # stdin closed: the hub is done with this process
    size = int.from_bytes(header, "little")
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def _answer(stream: BinaryIO, ok: bool, value: Any) -> None:
    try:
        data = pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that does not pickle is told by its text
        data = pickle.dumps((False, RuntimeError(repr(value))), protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little"))
    stream.write(data)
    stream.flush()


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The batch writer process: the first request is its configuration, each next one a batch."""
    config = _read(stdin)
    if config is None:
        return
    path, busy_timeout, synchronous, change_log_keep = config
    try:
        db = connect(Path(path), busy_timeout=busy_timeout, synchronous=synchronous)
    except Exception as exc:
        _answer(stdout, False, exc)
        return
    _answer(stdout, True, None)
    try:
        while (request := _read(stdin)) is not None:
            packed, seen = request
            writes = [_unpacked(p) for p in packed]
            try:
                _answer(stdout, True, write_batch(db, writes, seen, change_log_keep))
            except Exception as exc:
                _answer(stdout, False, exc)
    finally:
        db.close()


# ---- the statements ------------------------------------------------------------------------


#: Rows per multi-row statement (objects and change-log rows have 14 columns; SQLite allows
#: 32,766 parameters a statement).
ROWS_PER_STATEMENT = 500
_ROW14 = "(" + ", ".join(["?"] * 14) + ")"
_UPSERT_HEAD = f"INSERT INTO objects (cluster, type, namespace, name, {OBJECT_FIELDS}, full_seq, rev)"
_UPSERT_TAIL = """
    ON CONFLICT (cluster, type, namespace, name) DO UPDATE SET
        uid = excluded.uid, resource_version = excluded.resource_version, hash = excluded.hash,
        labels = excluded.labels, owner = excluded.owner, body = excluded.body,
        compression = excluded.compression, incarnation = excluded.incarnation,
        full_seq = coalesce(excluded.full_seq, objects.full_seq), rev = excluded.rev
"""
CHANGES_HEAD = f"INSERT INTO changes (rev, event, cluster, type, namespace, name, {OBJECT_FIELDS})"
#: Rows ``v`` of (anything, cluster, type, namespace, name) matched with ``objects`` by key.
_MATCH_V = "objects.cluster = v.column2 AND objects.type = v.column3 AND objects.namespace = v.column4 AND objects.name = v.column5"
_LOG_DELETES_HEAD = f"""
    INSERT INTO changes (rev, event, cluster, type, namespace, name, {OBJECT_FIELDS})
    SELECT v.column1, 'DELETED', o.cluster, o.type, o.namespace, o.name, {", ".join("o." + f.strip() for f in OBJECT_FIELDS.split(","))} FROM (
"""
_MOVES_HEAD = "INSERT INTO streams (cluster, type, incarnation, seq, error, updated_at)"
_MOVES_TAIL = "ON CONFLICT (cluster, type) DO UPDATE SET incarnation = excluded.incarnation, seq = excluded.seq, updated_at = excluded.updated_at"


def _many(db: sqlite3.Connection, head: str, row: str, tail: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head VALUES row, row, ... tail`` for ``rows``, ``ROWS_PER_STATEMENT`` at a time.

    Why not ``executemany``: it steps once per row, and every step hands the GIL back and
    forth. On the batch thread each hand-over waits for the busy event loop (up to Python's
    switch interval), which made a 250-row batch take 200 ms; one statement for many rows is
    one step."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        db.execute(f"{head} VALUES {', '.join([row] * len(chunk))} {tail}", [value for r in chunk for value in r])


def _fence(db: sqlite3.Connection, writes: Sequence[BundleWrite]) -> None:
    """Raise LeaseLost, before anything is written, if a fenced write's session no longer holds
    its cluster: one statement for the batch (BEGIN IMMEDIATE keeps every other writer out
    until the commit, so no grant can slip in between this check and the writes)."""
    clusters = sorted({w.cluster for w in writes if w.epoch})
    if not clusters:
        return
    epochs: dict[str, int] = {}
    for start in range(0, len(clusters), ROWS_PER_STATEMENT):
        chunk = clusters[start : start + ROWS_PER_STATEMENT]
        # the answer as one JSON row: one step, not one per lease (see _many on why steps cost)
        (answer,) = db.execute(f"SELECT json_group_object(cluster, epoch) FROM leases WHERE cluster IN ({', '.join(['?'] * len(chunk))})", chunk).fetchone()
        epochs.update((cluster, int(epoch)) for cluster, epoch in orjson.loads(answer).items())
    lost = fenced(writes, epochs)
    if lost:
        raise LeaseLost(lost, fenced_message(writes, lost, epochs))


def _held(db: sqlite3.Connection, keys: Sequence[tuple[str, str, str, str]]) -> dict[tuple[str, str, str, str], Held]:
    """What the store holds of ``keys`` (cluster, type, namespace, name): one statement per
    ``ROWS_PER_STATEMENT`` keys, each key an index lookup, the answer one JSON row (one step)."""
    found: dict[tuple[str, str, str, str], Held] = {}
    for start in range(0, len(keys), ROWS_PER_STATEMENT):
        chunk = keys[start : start + ROWS_PER_STATEMENT]
        (answer,) = db.execute(
            "SELECT json_group_array(json_array(k.column1, k.column2, k.column3, k.column4, o.hash, o.full_seq))"
            f" FROM (VALUES {', '.join(['(?, ?, ?, ?)'] * len(chunk))}) AS k"
            " CROSS JOIN objects AS o ON o.cluster = k.column1 AND o.type = k.column2 AND o.namespace = k.column3 AND o.name = k.column4",
            [part for key in chunk for part in key],
        ).fetchone()
        for r in orjson.loads(answer):
            found[(r[0], r[1], r[2], r[3])] = Held(to_unsigned(r[4]), r[5])
    return found


def _unmarked(db: sqlite3.Connection, write: BundleWrite) -> list[Key]:
    """The keys of ``write``'s stream not marked with its FULL, by (namespace, name)."""
    (answer,) = db.execute(
        "SELECT json_group_array(json_array(namespace, name)) FROM"
        " (SELECT namespace, name FROM objects WHERE cluster = ? AND type = ? AND full_seq IS NOT ? ORDER BY namespace, name)",
        (write.cluster, write.type, write.full_seq),
    ).fetchone()
    return [(r[0], r[1]) for r in orjson.loads(answer)]


def _write_round(db: sqlite3.Connection, plan: RoundPlan, base: int) -> None:
    """Write a planned round whose offsets count from revision ``base``: a statement per kind
    of write (per ``ROWS_PER_STATEMENT`` rows), whatever the number of bundles."""
    objects: list[tuple[Any, ...]] = []
    changes: list[tuple[Any, ...]] = []
    for w, u in plan.upserts:
        o = u.record
        fields = (o.uid, o.resource_version, to_signed(o.hash), labels_json(o.labels), o.owner, o.body, o.compression, o.incarnation)
        objects.append((w.cluster, w.type, o.namespace, o.name, *fields, w.full_seq, base + u.offset))
        changes.append((base + u.offset, "ADDED" if u.added else "MODIFIED", w.cluster, w.type, o.namespace, o.name, *fields))
    if objects:
        _many(db, _UPSERT_HEAD, _ROW14, _UPSERT_TAIL, objects)
        _many(db, CHANGES_HEAD, _ROW14, "", changes)
    marks = [(w.full_seq, w.cluster, w.type, *key) for w, key in plan.marks]
    if marks:
        _many(db, "UPDATE objects SET full_seq = v.column1 FROM (", "(?, ?, ?, ?, ?)", f") AS v WHERE {_MATCH_V}", marks)
    deletes = [(base + d.offset, w.cluster, w.type, *d.key) for w, d in plan.deletes]
    if deletes:
        _many(db, _LOG_DELETES_HEAD, "(?, ?, ?, ?, ?)", f") AS v CROSS JOIN objects AS o ON {_MATCH_V.replace('objects.', 'o.')}", deletes)
        _many(db, "DELETE FROM objects WHERE (cluster, type, namespace, name) IN (", "(?, ?, ?, ?)", ")", [row[1:] for row in deletes])
    moves = [(w.cluster, w.type, *w.move_to, w.now) for w in plan.moves if w.move_to is not None]
    if moves:
        _many(db, _MOVES_HEAD, "(?, ?, ?, ?, '', ?)", _MOVES_TAIL, moves)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the hub stops this process itself
    serve(sys.stdin.buffer, sys.stdout.buffer)
