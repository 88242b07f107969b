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
  and its own core (:mod:`fleetsync.store.writerprocess`: how the batch travels, and what
  happens when the process dies). The hub runs it so by default (``fleetsync hub
  --db-writer``).

Either way the transaction is one call: a statement's round trip never waits for the event
loop, and the store's write lock (an asyncio lock in :class:`~fleetsync.store.sqlite.SQLiteStore`)
keeps the store's other writer connection out while it runs.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sqlite3
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from fleetsync.store.contract import BundleWrite, Lease, LeaseLost, LeaseResult
from fleetsync.store.leasing import fenced, fenced_message, may_take
from fleetsync.store.plan import Held, RoundPlan, lookups, plan_round, rounds
from fleetsync.store.rows import Key, lease_from_row, to_signed, to_unsigned
from fleetsync.store.writerprocess import BATCH_WRITER_KINDS, BatchWriterKind, WriterProcess, labels_json, packed, run_shielded, serve, stdin, unpacked

#: What a batch's transaction returns: the store's revision before and after it, and the
#: revisions (changes) each write took, in the batch's order.
BatchResult = tuple[int, int, list[int]]

OBJECT_FIELDS = "uid, resource_version, hash, labels, owner, body, compression, incarnation"


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
        _touch(db, seen)
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


LEASE_COLUMNS = "cluster, holder, incarnation, hub_id, expires_at, connected, epoch"


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """What :func:`take_lease` is asked (see :meth:`~fleetsync.store.contract.Store.acquire_lease`)."""

    cluster: str
    holder: str
    incarnation: str
    hub_id: str
    now: float
    ttl: float
    silent_before: float


def take_lease(db: sqlite3.Connection, request: LeaseRequest, seen: Mapping[str, float]) -> LeaseResult:
    """One transaction: the clusters' pending last-seen times ``seen`` (the holder's last
    message counts), the cluster's lease and last-seen time read, :func:`~fleetsync.store.leasing.may_take`
    decides, the lease written if taken.

    On the batch connection because every agent's Hello takes a lease, and the store's write
    lock is held for the whole transaction: as five statements on the hub's event loop it
    held the lock five turns of a loop that a thousand connecting agents keep busy (up to
    1.7 s measured), and every batch waited behind it. Here it is one call."""
    r = request
    db.execute("BEGIN IMMEDIATE")
    try:
        _touch(db, seen)
        row = db.execute(f"SELECT {LEASE_COLUMNS} FROM leases WHERE cluster = ?", (r.cluster,)).fetchone()
        current = lease_from_row(row) if row is not None else None
        seen_row = db.execute("SELECT last_seen FROM clusters WHERE name = ?", (r.cluster,)).fetchone()
        last_seen = float(seen_row[0]) if seen_row is not None else -math.inf
        if current is not None and not may_take(
            current, holder=r.holder, incarnation=r.incarnation, now=r.now, last_seen=last_seen, silent_before=r.silent_before
        ):
            db.execute("COMMIT")  # the touches
            return LeaseResult(granted=False, lease=current)
        epoch = (current.epoch if current is not None else 0) + 1
        lease = Lease(cluster=r.cluster, holder=r.holder, incarnation=r.incarnation, hub_id=r.hub_id, expires_at=r.now + r.ttl, connected=True, epoch=epoch)
        db.execute(
            f"""
            INSERT INTO leases ({LEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, 1, ?)
            ON CONFLICT (cluster) DO UPDATE SET holder = excluded.holder, incarnation = excluded.incarnation,
                hub_id = excluded.hub_id, expires_at = excluded.expires_at, connected = 1, epoch = excluded.epoch
            """,
            (r.cluster, r.holder, r.incarnation, r.hub_id, lease.expires_at, epoch),
        )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return LeaseResult(granted=True, lease=lease)


def _touch(db: sqlite3.Connection, seen: Mapping[str, float]) -> None:
    """Write the clusters' pending last-seen times (cluster -> time; they only move forward)."""
    if seen:
        touches = [(t, name) for name, t in seen.items()]
        _many(db, "UPDATE clusters SET last_seen = max(last_seen, v.column1) FROM (", "(?, ?)", ") AS v WHERE clusters.name = v.column2", touches)


class BatchConnection(Protocol):
    """Where :func:`write_batch` and :func:`take_lease` run; each returns once its transaction
    committed or failed."""

    async def write(self, writes: Sequence[BundleWrite], seen: Mapping[str, float]) -> BatchResult: ...

    async def take_lease(self, request: LeaseRequest, seen: Mapping[str, float]) -> LeaseResult: ...

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
    """``fn(*args)`` on ``executor``, run to its end even if the caller is cancelled."""
    return await run_shielded(asyncio.get_running_loop().run_in_executor(executor, fn, *args))


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

    async def take_lease(self, request: LeaseRequest, seen: Mapping[str, float]) -> LeaseResult:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return await _run_to_the_end(self._thread, take_lease, self._db, request, seen)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await _run_to_the_end(self._thread, db.close)
        self._thread.shutdown(wait=False)


def _connected(path: Path, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    return connect(path, busy_timeout=busy_timeout, synchronous=synchronous)


class ProcessBatchConnection:
    """Batches written in a process of its own, ``python -m fleetsync.store.sqlitebatch``
    (see the module docstring and :mod:`fleetsync.store.writerprocess`)."""

    def __init__(self, path: Path, *, busy_timeout: float, synchronous: str, change_log_keep: int) -> None:
        self.path = path
        self.process = WriterProcess(__name__, (str(path), busy_timeout, synchronous, change_log_keep), name=f"SQLite {path}")

    async def open(self) -> None:
        await self.process.open()

    async def write(self, writes: Sequence[BundleWrite], seen: Mapping[str, float]) -> BatchResult:
        result: BatchResult = await self.process.call(("batch", [packed(w) for w in writes], dict(seen)))
        return result

    async def take_lease(self, request: LeaseRequest, seen: Mapping[str, float]) -> LeaseResult:
        result: LeaseResult = await self.process.call(("lease", request, dict(seen)))
        return result

    async def close(self) -> None:
        await self.process.close()


class _ProcessWriter:
    """The writer in the process: a connection, and :func:`write_batch` or :func:`take_lease` for each request."""

    def __init__(self, config: tuple[str, float, str, int]) -> None:
        path, busy_timeout, synchronous, self.change_log_keep = config
        self.db = connect(Path(path), busy_timeout=busy_timeout, synchronous=synchronous)

    def write(self, request: tuple[str, Any, dict[str, float]]) -> BatchResult | LeaseResult:
        kind, what, seen = request
        if kind == "lease":
            return take_lease(self.db, what, seen)
        return write_batch(self.db, [unpacked(p) for p in what], seen, self.change_log_keep)

    def close(self) -> None:
        self.db.close()


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
    serve(stdin(), sys.stdout.buffer, _ProcessWriter)
