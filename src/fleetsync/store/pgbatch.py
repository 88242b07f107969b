"""Writing a batch of bundles to PostgreSQL: one transaction of a handful of statements, from
the hub's event loop or from a process of its own.

:func:`write_batch` is the transaction (the store's revisions, the lookups, the plan of
:mod:`fleetsync.store.plan`, a statement per kind of write: see
:mod:`fleetsync.store.postgres` on how revisions stay gap-free across replicas). Two places
to run it, ``fleetsync hub --db-writer``:

- ``thread``: a connection of the store's pool, on the hub's event loop. What tests and tools
  that open a store use. Each of the transaction's eight or so round trips (fence, lookups,
  the counter, the writes, notify, commit) is a turn of that loop, which takes tens of
  milliseconds when a thousand agents keep it busy; the revision counter's row lock is held
  across the later ones, and every replica's batches wait for it.
- ``process`` (:class:`ProcessBatchConnection`, the hub's default): a process of its own
  (:mod:`fleetsync.store.writerprocess`) with its own connection and an event loop that does
  nothing else, so the round trips take what the network and the server take, and the
  counter's lock is held that long.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import asyncpg

from fleetsync.store.contract import Applied, BundleWrite, LeaseLost, StoreUnavailable
from fleetsync.store.leasing import fenced, fenced_message
from fleetsync.store.plan import Held, RoundPlan, lookups, plan_round, rounds
from fleetsync.store.rows import to_signed, to_unsigned
from fleetsync.store.writerprocess import WriterProcess, labels_json, packed, serve, stdin, unpacked

#: The one PostgreSQL notification channel; payloads are "CHANNEL\nPAYLOAD".
PG_CHANNEL = "fleetsync"

OBJECT_FIELDS = "uid, resource_version, hash, labels, owner, body, compression, incarnation"
_ROW_ARRAYS = "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::text[], $9::text[], $10::bytea[], $11::int2[], $12::text[], $13::int8[]"
_ROW_NAMES = "cl, ty, ns, nm, uid, rv, h, l, ow, b, co, inc, r"

# One statement writes every changed object of a batch round, one its change-log entries.
_UPSERT_OBJECTS = f"""
    INSERT INTO objects (cluster, type, namespace, name, {OBJECT_FIELDS}, full_seq, rev)
    SELECT cl, ty, ns, nm, uid, rv, h, l::jsonb, ow, b, co, inc, fs, r
    FROM unnest({_ROW_ARRAYS}, $14::int8[]) AS x({_ROW_NAMES}, fs)
    ON CONFLICT (cluster, type, namespace, name) DO UPDATE SET
        uid = excluded.uid, resource_version = excluded.resource_version, hash = excluded.hash,
        labels = excluded.labels, owner = excluded.owner, body = excluded.body,
        compression = excluded.compression, incarnation = excluded.incarnation,
        full_seq = coalesce(excluded.full_seq, objects.full_seq), rev = excluded.rev
"""
_INSERT_CHANGES = f"""
    INSERT INTO changes (rev, event, cluster, type, namespace, name, {OBJECT_FIELDS})
    SELECT r, CASE WHEN added THEN 'ADDED' ELSE 'MODIFIED' END, cl, ty, ns, nm, uid, rv, h, l::jsonb, ow, b, co, inc
    FROM unnest({_ROW_ARRAYS}, $14::bool[]) AS x({_ROW_NAMES}, added)
"""
# Statements by key are planned so that each key is one primary-key lookup, whatever the
# table statistics say: joined with ``unnest`` instead, the planner -- with statistics from
# when the table was small, as during the first FULL into a new database -- read every
# row of the cluster and type for every bundle (measured: ~0.7 s per 500-object bundle at
# 20k objects). Lookups go through a LATERAL subquery with LIMIT (never flattened into a
# join); updates and deletes by key are pipelined single-row statements (executemany).
_MARK_FULL = "UPDATE objects SET full_seq = $3 WHERE cluster = $1 AND type = $2 AND namespace = $4 AND name = $5"
_HELD = """
    SELECT k.cl, k.ty, k.ns, k.nm, o.hash, o.full_seq FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS k(cl, ty, ns, nm)
    CROSS JOIN LATERAL (
        SELECT hash, full_seq FROM objects WHERE cluster = k.cl AND type = k.ty AND namespace = k.ns AND name = k.nm LIMIT 1
    ) AS o
"""
_UNMARKED = "SELECT namespace, name FROM objects WHERE cluster = $1 AND type = $2 AND full_seq IS DISTINCT FROM $3 ORDER BY namespace, name"
_DELETE_KEY = f"""
    WITH gone AS (DELETE FROM objects WHERE cluster = $1 AND type = $2 AND namespace = $3 AND name = $4 RETURNING *)
    INSERT INTO changes (rev, event, cluster, type, namespace, name, {OBJECT_FIELDS})
    SELECT $5, 'DELETED', cluster, type, namespace, name, {OBJECT_FIELDS} FROM gone
"""
_MOVE_STREAM = """
    INSERT INTO streams (cluster, type, incarnation, seq, error, updated_at) VALUES ($1, $2, $3, $4, '', $5)
    ON CONFLICT (cluster, type) DO UPDATE SET incarnation = excluded.incarnation, seq = excluded.seq, updated_at = excluded.updated_at
"""
#: Errors that say the database could not be written at all, whatever was being written.
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # asyncpg's own state machine, confused by a connection cut in the middle of an operation
    # ("cannot switch to state 15; another operation (2) is in progress", seen while PostgreSQL
    # restarted): nothing to do with the bundle being written, so not a reason to refuse it
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


async def write_batch(conn: asyncpg.Connection, writes: Sequence[BundleWrite], change_log_keep: int) -> Applied:
    """One transaction for ``writes`` on ``conn``; the store's revision after it, and each
    write's changes (:class:`~fleetsync.store.contract.Applied`). Per round: one lookup
    statement, the plan, then the revisions taken with one ``UPDATE`` of the counter (its row
    lock, held to the commit, orders the batches of every replica), then one statement per
    kind of write. ``change_log_keep``: the change log is trimmed to its newest this many
    entries, in steps of 1% of it (0: never)."""
    async with conn.transaction():
        await _fence(conn, writes)
        rev = first = None
        changes: list[int] = []
        for writes_ in rounds(writes):
            keys = lookups(writes_)
            held: dict[tuple[str, str, str, str], Held] = {}
            if keys:
                rows = await conn.fetch(_HELD, *(list(column) for column in zip(*keys, strict=True)))
                held = {(r[0], r[1], r[2], r[3]): Held(to_unsigned(r[4]), r[5]) for r in rows}
            unmarked = {(w.cluster, w.type): [(r[0], r[1]) for r in await conn.fetch(_UNMARKED, w.cluster, w.type, w.full_seq)] for w in writes_ if w.full_end}
            plan = plan_round(writes_, held, unmarked)
            changes += plan.changes_per_bundle
            base = 0
            if plan.changes:
                rev = int(await conn.fetchval("UPDATE meta SET value = value + $1 WHERE key = 'rev' RETURNING value", plan.changes))
                base = rev - plan.changes
                first = base if first is None else first
            await _write_round(conn, plan, base)
        if rev is None or first is None:
            return Applied(int(await conn.fetchval("SELECT value FROM meta WHERE key = 'rev'")), changes)
        await conn.execute("SELECT pg_notify($1, $2)", PG_CHANNEL, f"changes\n{rev}")
        step = max(1, change_log_keep // 100)
        if change_log_keep and rev // step != first // step:
            await conn.execute("DELETE FROM changes WHERE rev <= $1", rev - change_log_keep)
    return Applied(rev, changes)


async def _fence(conn: asyncpg.Connection, writes: Sequence[BundleWrite]) -> None:
    """Raise LeaseLost, before anything is written, if a fenced write's session no longer holds
    its cluster: one statement for the batch. FOR SHARE holds the lease rows to the commit,
    so a grant (which updates the row) waits for this batch: none can slip in between."""
    clusters = sorted({w.cluster for w in writes if w.epoch})
    if not clusters:
        return
    rows = await conn.fetch("SELECT cluster, epoch FROM leases WHERE cluster = ANY($1::text[]) ORDER BY cluster FOR SHARE", clusters)
    epochs = {r[0]: int(r[1]) for r in rows}
    lost = fenced(writes, epochs)
    if lost:
        raise LeaseLost(lost, fenced_message(writes, lost, epochs))


async def _write_round(conn: asyncpg.Connection, plan: RoundPlan, base: int) -> None:
    """Write a planned round whose offsets count from revision ``base``."""
    columns: list[list[Any]] = [[] for _ in range(14)]
    added: list[bool] = []
    for w, u in plan.upserts:
        o = u.record
        row = (
            w.cluster,
            w.type,
            o.namespace,
            o.name,
            o.uid,
            o.resource_version,
            to_signed(o.hash),
            labels_json(o.labels),
            o.owner,
            o.body,
            o.compression,
            o.incarnation,
            base + u.offset,
            w.full_seq,
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
        added.append(u.added)
    if added:
        await conn.execute(_UPSERT_OBJECTS, *columns)
        await conn.execute(_INSERT_CHANGES, *columns[:13], added)
    marks = [(w.cluster, w.type, w.full_seq, *key) for w, key in plan.marks]
    if marks:
        await conn.executemany(_MARK_FULL, marks)
    deletes = [(w.cluster, w.type, *d.key, base + d.offset) for w, d in plan.deletes]
    if deletes:
        await conn.executemany(_DELETE_KEY, deletes)
    moves = [(w.cluster, w.type, *w.move_to, w.now) for w in plan.moves if w.move_to is not None]
    if moves:
        await conn.executemany(_MOVE_STREAM, moves)


def safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"


class ProcessBatchConnection:
    """Batches written in a process of its own, ``python -m fleetsync.store.pgbatch`` (see the
    module docstring). Its errors are the store's: an unreachable or refusing database is
    StoreUnavailable, a fenced bundle LeaseLost."""

    def __init__(self, url: str, *, timeout: float, change_log_keep: int) -> None:
        self.process = WriterProcess(__name__, (url, timeout, change_log_keep), name=f"PostgreSQL at {safe_url(url)}")

    async def open(self) -> None:
        await self.process.open()

    async def write(self, writes: Sequence[BundleWrite]) -> Applied:
        rev, changes = await self.process.call([packed(w) for w in writes])
        return Applied(rev, changes)

    async def close(self) -> None:
        await self.process.close()


class _ProcessWriter:
    """The writer in the process: its own event loop and connection, :func:`write_batch` for
    each request. A connection lost (PostgreSQL restarted, the network cut) fails the batch
    as StoreUnavailable and is opened again for the next one."""

    def __init__(self, config: tuple[str, float, int]) -> None:
        self.url, self.timeout, self.change_log_keep = config
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection | None = None
        try:
            self.conn = self.loop.run_until_complete(self._connect())
        except (TimeoutError, OSError, asyncpg.PostgresError, ValueError) as exc:
            self.loop.close()
            raise RuntimeError(f"cannot connect to PostgreSQL at {safe_url(self.url)}: {exc}") from None

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, timeout=self.timeout, command_timeout=self.timeout)

    def write(self, request: list[Any]) -> tuple[int, tuple[int, ...]]:
        applied = self.loop.run_until_complete(self._write([unpacked(p) for p in request]))
        return int(applied), applied.changes

    async def _write(self, writes: list[BundleWrite]) -> Applied:
        try:
            if self.conn is None or self.conn.is_closed():
                self.conn = None
                self.conn = await self._connect()
            return await write_batch(self.conn, writes, self.change_log_keep)
        except UNAVAILABLE as exc:
            if self.conn is not None:
                self.conn.terminate()  # in an unknown state: the next batch opens a new one
                self.conn = None
            raise StoreUnavailable(f"PostgreSQL at {safe_url(self.url)}: {exc!r}") from None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.loop.run_until_complete(self.conn.close(timeout=2))
            except Exception:  # gone already: nothing of it to keep
                self.conn.terminate()
        self.loop.close()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the hub stops this process itself
    serve(stdin(), sys.stdout.buffer, _ProcessWriter)
