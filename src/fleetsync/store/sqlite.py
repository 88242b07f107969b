"""The SQLite store engine: one file, WAL, one transaction per batch of bundles (group commit).

Two connections (each an aiosqlite thread): a writer, used under an asyncio lock so
that a transaction's statements never interleave with another coroutine's, and a
reader (``query_only``) for the hub's reads. In WAL mode the reader sees the last
committed state and neither waits for the writer nor sees half a bundle.

Durability: the hub acknowledges a bundle to its agent only after ``apply_bundle``
returned, i.e. after COMMIT. The agent then forgets what it sent, so a committed
bundle must survive whatever happens to the hub next. In WAL mode:

- ``synchronous=NORMAL`` fsyncs the WAL only at checkpoints: a commit survives the
  process being killed (-9: the WAL is in the OS page cache) but not a power loss
  or kernel crash, which can take the last commits with it -- acknowledged data the
  agent will never resend.
- ``synchronous=FULL`` (the default here) fsyncs the WAL at every commit, so a
  commit that returned is on disk. It costs one fsync per transaction, which is why
  the hub applies bundles of many clusters in one transaction (:meth:`SQLiteStore.apply_batch`,
  fed by :mod:`fleetsync.hub.writer`) and ``touch_cluster`` is buffered.

Hashes are unsigned 64-bit; SQLite integers are signed: they are stored as the
two's complement (``hash - 2**64`` for values >= 2**63) and converted back on read.

Requires SQLite >= 3.37 (STRICT tables; also upsert, row values and window functions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from fleetsync.store.contract import (
    Applied,
    BundleWrite,
    Change,
    ClusterDeletion,
    ClusterGateValue,
    ClusterRecord,
    EventRecord,
    GateChange,
    GateExists,
    GateRecord,
    Lease,
    LeaseResult,
    ObjectRecord,
    ReadScope,
    RefreshTarget,
    StoreUnavailable,
    StreamRecord,
    TokenRecord,
    WorkExists,
    WorkRecord,
    WorkStatusRecord,
)
from fleetsync.store.rows import (
    GATE_COLUMNS,
    GATE_HISTORY_COLUMNS,
    TOKEN_COLUMNS,
    TOUCH_INTERVAL,
    WORK_COLUMNS,
    WORK_STATUS_COLUMNS,
    cluster_gate_value_from_row,
    event_type,
    gate_change_from_row,
    gate_conflict,
    gate_from_row,
    gate_value_text,
    grants_text,
    lease_from_row,
    merge_labels,
    nested_counts,
    object_from_row,
    refresh_from_row,
    scope_text,
    to_unsigned,
    token_from_row,
    work_from_row,
    work_status_from_row,
)
from fleetsync.store.scopewalk import ScopedListing
from fleetsync.store.sqlitebatch import CHANGES_HEAD, LEASE_COLUMNS, OBJECT_FIELDS, ROWS_PER_STATEMENT, BatchConnection, LeaseRequest, open_batch_connection
from fleetsync.store.writerprocess import BATCH_WRITER_KINDS, BatchWriterKind, labels_json

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_SQLITE = (3, 37, 0)
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_MS = 10_000
#: Leases renewed by one statement: two parameters each, within SQLite's 32,766 a statement.
LEASES_PER_STATEMENT = 10_000
#: Page size of new databases. Compressed bodies are 1-3 KB: with 4 KB pages most rows
#: take a page of their own (two do not fit); 8 KB pages hold three or four, which made
#: the database a third smaller and bundles 20-30% faster to apply (bench/store_apply.py).
PAGE_SIZE = 8192

#: Schema migrations, applied in order at :meth:`SQLiteStore.open`; version N is
#: ``MIGRATIONS[N - 1]``. Never edit a released entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE tokens (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at REAL NOT NULL
    ) STRICT;

    CREATE TABLE clusters (
        name TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL DEFAULT '',
        incarnation TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'never',
        metadata TEXT NOT NULL DEFAULT '{}',  -- JSON object
        connected_at REAL NOT NULL DEFAULT 0,
        last_seen REAL NOT NULL DEFAULT 0,
        hub_id TEXT NOT NULL DEFAULT ''
    ) STRICT;

    CREATE TABLE leases (
        cluster TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        hub_id TEXT NOT NULL,
        expires_at REAL NOT NULL,
        connected INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE streams (
        cluster TEXT NOT NULL,
        type TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        seq INTEGER NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (cluster, type)
    ) STRICT;

    -- An ordinary rowid table: WITHOUT ROWID stores whole rows in the key b-tree,
    -- which is slow for rows of a few KB.
    CREATE TABLE objects (
        cluster TEXT NOT NULL,
        type TEXT NOT NULL,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        uid TEXT NOT NULL,
        resource_version TEXT NOT NULL,
        hash INTEGER NOT NULL,  -- unsigned 64-bit stored as signed two's complement
        labels TEXT NOT NULL,  -- JSON object
        owner TEXT NOT NULL,
        body BLOB NOT NULL,
        compression INTEGER NOT NULL,
        incarnation TEXT NOT NULL,
        full_seq INTEGER,  -- the last FULL that carried the object
        rev INTEGER NOT NULL,
        PRIMARY KEY (cluster, type, namespace, name)
    ) STRICT;
    CREATE INDEX objects_by_type ON objects (type, cluster, namespace, name);
    CREATE INDEX objects_by_rev ON objects (rev);

    -- One row per revision; for DELETED the object's last state.
    CREATE TABLE changes (
        rev INTEGER PRIMARY KEY,
        event TEXT NOT NULL,
        cluster TEXT NOT NULL,
        type TEXT NOT NULL,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        uid TEXT NOT NULL,
        resource_version TEXT NOT NULL,
        hash INTEGER NOT NULL,
        labels TEXT NOT NULL,
        owner TEXT NOT NULL,
        body BLOB NOT NULL,
        compression INTEGER NOT NULL,
        incarnation TEXT NOT NULL
    ) STRICT;

    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value ANY
    ) STRICT;
    INSERT INTO meta (key, value) VALUES ('rev', 0);
    """,
    # 2: cluster events; agent tokens scoped to types
    """
    ALTER TABLE tokens ADD COLUMN types TEXT NOT NULL DEFAULT '';  -- comma-separated gvks; '' = any

    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        cluster TEXT NOT NULL,
        reason TEXT NOT NULL,
        type TEXT NOT NULL,
        message TEXT NOT NULL,
        hub_id TEXT NOT NULL
    ) STRICT;
    CREATE INDEX events_by_cluster ON events (cluster, id);
    """,
    # 3: the refresh scheduler (seed 003) and its per-cluster locks
    """
    CREATE TABLE refresh (
        cluster TEXT PRIMARY KEY,
        mode TEXT NOT NULL,  -- push | pull
        url TEXT NOT NULL,
        interval REAL NOT NULL,
        next_refresh_at REAL NOT NULL
    ) STRICT;
    CREATE INDEX refresh_due ON refresh (next_refresh_at);

    CREATE TABLE locks (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) STRICT;
    """,
    # 4: feature gates (seed 004), deletes kept as tombstones; their own revision counter
    """
    CREATE TABLE gates (
        key TEXT PRIMARY KEY,
        enabled INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT NOT NULL,
        revision INTEGER NOT NULL,
        deleted INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX gates_by_revision ON gates (revision);
    INSERT INTO meta (key, value) VALUES ('gates_rev', 0);
    """,
    # 5: works (specs flowing down) with their own revision counter, what each cluster
    # reported of them, and hub settings
    """
    CREATE TABLE works (
        name TEXT PRIMARY KEY,
        spec BLOB NOT NULL,  -- JSON
        generation INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT NOT NULL
    ) STRICT;

    CREATE TABLE work_status (
        work TEXT NOT NULL,
        cluster TEXT NOT NULL,
        generation INTEGER NOT NULL,
        manifests BLOB NOT NULL,  -- JSON list
        updated_at REAL NOT NULL,
        PRIMARY KEY (work, cluster)
    ) STRICT;
    CREATE INDEX work_status_by_cluster ON work_status (cluster, work);

    CREATE TABLE hub_settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    INSERT INTO meta (key, value) VALUES ('works_rev', 0);
    """,
    # 6: the gate revision each cluster's agent has applied
    """
    CREATE TABLE cluster_gates (
        cluster TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        updated_at REAL NOT NULL
    ) STRICT;
    """,
    # 7: what an agent token may do beyond its own cluster (grants, e.g. gates), and the
    # labels an admin set per cluster (placement matches these, never an agent's Hello)
    """
    ALTER TABLE tokens ADD COLUMN grants TEXT NOT NULL DEFAULT '';  -- comma-separated; '' = none

    CREATE TABLE cluster_labels (
        cluster TEXT PRIMARY KEY,
        labels TEXT NOT NULL,  -- JSON object
        updated_at REAL NOT NULL
    ) STRICT;
    """,
    # 8: lease epochs (every grant takes the next; writes and renewals are fenced by it)
    """
    ALTER TABLE leases ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    """,
    # 9: the gate history (fleet writes and clusters' own changes, old -> new) and
    # each cluster's own gate values as its agent reported them
    """
    CREATE TABLE gate_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        cluster TEXT NOT NULL,  -- '': the fleet's gate
        old TEXT NOT NULL,  -- 'true' | 'false' | '' (unset)
        new TEXT NOT NULL,
        by TEXT NOT NULL,
        at REAL NOT NULL,
        revision INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX gate_history_by_key ON gate_history (key, id);

    CREATE TABLE cluster_gate_values (
        cluster TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,  -- 'true' | 'false' | '' (unset)
        updated_at REAL NOT NULL,
        PRIMARY KEY (cluster, key)
    ) STRICT;
    """,
    # 10: what a read token may see (issue 19): a JSON ReadScope, '' = everything
    """
    ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT '';
    """,
    # 11: the resource types each cluster's agent reported (discovery data, so the API serves
    # them while the agent is away)
    """
    CREATE TABLE cluster_types (
        cluster TEXT NOT NULL,
        type TEXT NOT NULL,  -- group/version/Kind
        info TEXT NOT NULL,  -- JSON object: see fleetsync.model.typeinfo
        updated_at REAL NOT NULL,
        PRIMARY KEY (cluster, type)
    ) STRICT;
    """,
    # 12: objects_by_rev was never read (changes are read from the change log, by its own
    # key), and every update of an object dirtied a random page of it: a second page per
    # change in a fleet's scattered updates, which each commit writes and syncs
    """
    DROP INDEX objects_by_rev;
    """,
)

_OBJECT_FIELDS = OBJECT_FIELDS
_OBJECT_COLUMNS = f"cluster, type, namespace, name, {_OBJECT_FIELDS}, rev"


def statements(script: str) -> list[str]:
    """The complete SQL statements of ``script`` (``executescript`` would commit the migration's transaction)."""
    out: list[str] = []
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                out.append(pending.strip())
            pending = ""
    if pending.strip(" \n\t;"):
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()[:80]!r}")
    return out


async def _record_gate_change(
    db: aiosqlite.Connection, keep: int, key: str, cluster: str, old: bool | None, new: bool | None, *, by: str, now: float, revision: int
) -> GateChange:
    """Append a gate history entry (in the caller's transaction) and trim the history to its newest ``keep``."""
    cursor = await db.execute(
        "INSERT INTO gate_history (key, cluster, old, new, by, at, revision) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (key, cluster, gate_value_text(old), gate_value_text(new), by, now, revision),
    )
    id_ = int(cursor.lastrowid or 0)
    if keep:
        await db.execute("DELETE FROM gate_history WHERE id <= ?", (id_ - keep,))
    return GateChange(id_, key, cluster, old, new, by, now, revision)


async def _live_value(db: aiosqlite.Connection, key: str) -> bool | None:
    """The fleet's value of gate ``key`` before a write: None if it is not set (never, or deleted)."""
    rows = list(await db.execute_fetchall("SELECT enabled, deleted FROM gates WHERE key = ?", (key,)))
    return None if not rows or rows[0][1] else bool(rows[0][0])


async def _check_based_on(db: aiosqlite.Connection, key: str, *, by: str, based_on: int | None) -> None:
    """Raise GateConflict if a write ``based_on`` a revision would undo someone else's later write (in the write's transaction)."""
    if based_on is None:
        return
    rows = list(await db.execute_fetchall(f"SELECT {GATE_COLUMNS} FROM gates WHERE key = ?", (key,)))
    if (conflict := gate_conflict(gate_from_row(rows[0]) if rows else None, by=by, based_on=based_on)) is not None:
        raise conflict


class SQLiteStore(ScopedListing):
    """The :class:`~fleetsync.store.contract.Store` in one SQLite file.

    ``change_log_keep``: applies trim the change log to its newest this many entries
    (in steps of 1% of it, so it may hold up to 1% more; 0: never trim automatically,
    :meth:`trim_changes` still works).
    ``synchronous``: the SQLite setting; keep FULL for the hub (see the module docstring).
    ``batch_writer``: where :meth:`apply_batch` writes, a thread of this process or a process
    of its own (:mod:`fleetsync.store.sqlitebatch`; the hub uses a process).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        change_log_keep: int = 100_000,
        events_keep: int = 10_000,
        gate_history_keep: int = 10_000,
        synchronous: str = "FULL",
        busy_timeout: float = BUSY_TIMEOUT_MS / 1000,
        batch_writer: BatchWriterKind = "thread",
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, not {synchronous!r}")
        if change_log_keep < 0:
            raise ValueError(f"change_log_keep must be >= 0, not {change_log_keep}")
        self.path = Path(path)
        self.change_log_keep = change_log_keep
        self.events_keep = events_keep
        if gate_history_keep < 0:
            raise ValueError(f"gate_history_keep must be >= 0, not {gate_history_keep}")
        #: The gate history keeps its newest this many entries (0: all).
        self.gate_history_keep = gate_history_keep
        self.synchronous = synchronous.upper()
        if batch_writer not in BATCH_WRITER_KINDS:
            raise ValueError(f"batch_writer must be one of {', '.join(BATCH_WRITER_KINDS)}, not {batch_writer!r}")
        self.batch_writer: BatchWriterKind = batch_writer
        #: Seconds a statement waits for another process's lock before "database is locked".
        self.busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None  # the writer
        self._rdb: aiosqlite.Connection | None = None  # the reader
        self._lock = asyncio.Lock()
        self._seen: dict[str, float] = {}  # cluster -> last_seen not yet written
        self._seen_written: dict[str, float] = {}  # cluster -> the ``now`` of its last write
        self._touches_flushed_at = -math.inf  # the ``now`` of the last flush: one a TOUCH_INTERVAL for all clusters
        self._callbacks: list[Callable[[str, str], None]] = []
        #: The connection batches are written on, on a thread or in a process of its own (see apply_batch).
        self._batch: BatchConnection | None = None

    # ---- connection ------------------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            return
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(f"the SQLite store needs SQLite >= {'.'.join(map(str, MIN_SQLITE))}; this Python has {sqlite3.sqlite_version}")
        db = await aiosqlite.connect(self.path, isolation_level=None)  # autocommit: transactions are explicit
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            await db.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # takes effect only in a new database
            mode = (await (await db.execute("PRAGMA journal_mode = WAL")).fetchone() or ("?",))[0]
            if str(mode).lower() != "wal":
                log.warning("%s: journal_mode is %s, not wal (readers will wait for writers)", self.path, mode)
            await db.execute(f"PRAGMA synchronous = {self.synchronous}")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute("PRAGMA temp_store = MEMORY")
            await self._migrate(db)
            rdb = await aiosqlite.connect(self.path, isolation_level=None)
        except BaseException:
            await db.close()
            raise
        try:
            await rdb.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            await rdb.execute("PRAGMA query_only = ON")
        except BaseException:
            await rdb.close()
            await db.close()
            raise
        try:
            self._batch = await open_batch_connection(
                self.batch_writer, self.path, busy_timeout=self.busy_timeout, synchronous=self.synchronous, change_log_keep=self.change_log_keep
            )
        except BaseException:
            await rdb.close()
            await db.close()
            raise
        self._db, self._rdb = db, rdb

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        """Bring the schema to ``len(MIGRATIONS)`` in one transaction (a no-op when it is there)."""
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL) STRICT")
            rows = list(await db.execute_fetchall("SELECT coalesce(max(version), 0) FROM schema_version"))
            version = int(rows[0][0])
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this fleetsync ({len(MIGRATIONS)}): upgrade fleetsync")
            for number in range(version + 1, len(MIGRATIONS) + 1):
                for statement in statements(MIGRATIONS[number - 1]):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (number, time.time()))
                log.info("%s: applied schema migration %d", self.path, number)
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise

    async def schema_version(self) -> int:
        rows = await self._read("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(rows[0][0])

    async def close(self) -> None:
        if self._db is None:
            return
        try:
            await self._flush_touches()
        finally:
            db, rdb, batch = self._db, self._rdb, self._batch
            self._db = self._rdb = self._batch = None
            if rdb is not None:
                await rdb.close()
            if batch is not None:
                await batch.close()
            await db.close()

    def _writer(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    def _reader(self) -> aiosqlite.Connection:
        if self._rdb is None:
            raise RuntimeError("the store is not open")
        return self._rdb

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on the writer, holding the write lock; ROLLBACK on any exception
        (cancellation included). Pending ``touch_cluster`` times are written along."""
        db = self._writer()
        async with self._lock:
            await self._write_touches()  # committed first: they only ever move last_seen forward
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise

    @contextlib.asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer for single statements (each its own transaction), holding the write lock."""
        db = self._writer()
        async with self._lock:
            yield db

    async def _read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        return list(await self._reader().execute_fetchall(sql, parameters))

    # ---- notifications: one process only (SQLite is not shared by replicas) -------------

    def listen(self, callback: Callable[[str, str], None]) -> None:
        self._callbacks.append(callback)

    async def notify(self, channel: str, payload: str) -> None:
        self._dispatch(channel, payload)

    def _dispatch(self, channel: str, payload: str) -> None:
        for callback in list(self._callbacks):
            try:
                callback(channel, payload)
            except Exception:
                log.exception("store notification callback failed")

    # ---- tokens --------------------------------------------------------------------------

    async def add_token(
        self, *, name: str, role: str, token_hash: str, types: Sequence[str] = (), grants: Sequence[str] = (), scope: ReadScope | None = None
    ) -> None:
        async with self._autocommit() as db:
            await db.execute(
                "INSERT INTO tokens (token_hash, name, role, types, grants, scope, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (token_hash) DO UPDATE SET name = excluded.name, role = excluded.role, types = excluded.types, grants = excluded.grants,"
                " scope = excluded.scope",
                (token_hash, name, role, ",".join(types), grants_text(grants), scope_text(scope), time.time()),
            )

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        rows = await self._read(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,))
        return token_from_row(rows[0]) if rows else None

    async def tokens(self) -> list[TokenRecord]:
        rows = await self._read(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name, role, created_at")
        return [token_from_row(r) for r in rows]

    async def delete_tokens(self, name: str, role: str | None = None) -> int:
        async with self._autocommit() as db:
            cursor = await db.execute("DELETE FROM tokens WHERE name = ? AND (? IS NULL OR role = ?)", (name, role, role))
            return cursor.rowcount

    async def set_token_grants(self, name: str, grants: Sequence[str]) -> int:
        async with self._autocommit() as db:
            cursor = await db.execute("UPDATE tokens SET grants = ? WHERE name = ? AND role = 'agent'", (grants_text(grants), name))
            return cursor.rowcount

    # ---- feature gates ---------------------------------------------------------------------

    async def gates(self, *, since: int | None = None) -> list[GateRecord]:
        if since is not None:
            rows = await self._read(f"SELECT {GATE_COLUMNS} FROM gates WHERE revision > ? ORDER BY key", (since,))
        else:
            rows = await self._read(f"SELECT {GATE_COLUMNS} FROM gates WHERE NOT deleted ORDER BY key")
        return [gate_from_row(r) for r in rows]

    async def gate(self, key: str) -> GateRecord | None:
        rows = await self._read(f"SELECT {GATE_COLUMNS} FROM gates WHERE key = ? AND NOT deleted", (key,))
        return gate_from_row(rows[0]) if rows else None

    async def set_gate(self, key: str, enabled: bool, *, by: str, now: float, create: bool = False, based_on: int | None = None) -> GateRecord:
        async with self._transaction() as db:
            await _check_based_on(db, key, by=by, based_on=based_on)
            old = await _live_value(db, key)
            if create and old is not None:
                raise GateExists(key)
            revision = await _next_gate_revision(db)
            await _record_gate_change(db, self.gate_history_keep, key, "", old, enabled, by=by, now=now, revision=revision)
            await db.execute(
                "INSERT INTO gates (key, enabled, updated_at, updated_by, revision, deleted) VALUES (?, ?, ?, ?, ?, 0)"
                " ON CONFLICT (key) DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at,"
                " updated_by = excluded.updated_by, revision = excluded.revision, deleted = 0",
                (key, int(enabled), now, by, revision),
            )
        return GateRecord(key, enabled, now, by, revision)

    async def delete_gate(self, key: str, *, by: str, now: float, based_on: int | None = None) -> GateRecord | None:
        async with self._transaction() as db:
            await _check_based_on(db, key, by=by, based_on=based_on)
            rows = list(await db.execute_fetchall("SELECT enabled FROM gates WHERE key = ? AND NOT deleted", (key,)))
            if not rows:
                return None
            revision = await _next_gate_revision(db)
            await db.execute("UPDATE gates SET deleted = 1, updated_at = ?, updated_by = ?, revision = ? WHERE key = ?", (now, by, revision, key))
            await _record_gate_change(db, self.gate_history_keep, key, "", bool(rows[0][0]), None, by=by, now=now, revision=revision)
        return GateRecord(key, bool(rows[0][0]), now, by, revision, deleted=True)

    # ---- works -----------------------------------------------------------------------------

    async def works(self) -> list[WorkRecord]:
        return [work_from_row(r) for r in await self._read(f"SELECT {WORK_COLUMNS} FROM works ORDER BY name")]

    async def work(self, name: str) -> WorkRecord | None:
        rows = await self._read(f"SELECT {WORK_COLUMNS} FROM works WHERE name = ?", (name,))
        return work_from_row(rows[0]) if rows else None

    async def put_work(self, name: str, spec: bytes, *, by: str, now: float, create: bool = False) -> WorkRecord:
        async with self._transaction() as db:
            rows = list(await db.execute_fetchall(f"SELECT {WORK_COLUMNS} FROM works WHERE name = ?", (name,)))
            if rows:
                if create:
                    raise WorkExists(name)
                stored = work_from_row(rows[0])
                if stored.spec == spec:
                    return stored  # nothing to write: no revision taken
            revision = await _next_work_revision(db)
            written = list(
                await db.execute_fetchall(
                    "INSERT INTO works (name, spec, generation, revision, created_at, updated_at, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, generation = excluded.generation, revision = excluded.revision,"
                    f" updated_at = excluded.updated_at, updated_by = excluded.updated_by RETURNING {WORK_COLUMNS}",
                    (name, spec, revision, revision, now, now, by),
                )
            )
        return work_from_row(written[0])

    async def delete_work(self, name: str) -> bool:
        async with self._autocommit() as db:
            return (await db.execute("DELETE FROM works WHERE name = ?", (name,))).rowcount > 0

    async def work_statuses(self, *, work: str | None = None, cluster: str | None = None) -> list[WorkStatusRecord]:
        where: list[str] = []
        params: list[Any] = []
        if work is not None:
            where.append("work = ?")
            params.append(work)
        if cluster is not None:
            where.append("cluster = ?")
            params.append(cluster)
        sql = f"SELECT {WORK_STATUS_COLUMNS} FROM work_status" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY work, cluster"
        return [work_status_from_row(r) for r in await self._read(sql, params)]

    async def set_work_status(self, record: WorkStatusRecord) -> None:
        async with self._autocommit() as db:
            await db.execute(
                f"INSERT INTO work_status ({WORK_STATUS_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (work, cluster) DO UPDATE SET generation = excluded.generation, manifests = excluded.manifests,"
                " updated_at = excluded.updated_at",
                (record.work, record.cluster, record.generation, record.manifests, record.updated_at),
            )

    async def delete_work_status(self, work: str, cluster: str) -> None:
        async with self._autocommit() as db:
            await db.execute("DELETE FROM work_status WHERE work = ? AND cluster = ?", (work, cluster))

    # ---- hub settings ------------------------------------------------------------------------

    async def hub_settings(self) -> dict[str, str]:
        return {r[0]: r[1] for r in await self._read("SELECT key, value FROM hub_settings ORDER BY key")}

    async def set_hub_setting(self, key: str, value: str | None) -> None:
        async with self._autocommit() as db:
            if value is None:
                await db.execute("DELETE FROM hub_settings WHERE key = ?", (key,))
            else:
                await db.execute("INSERT INTO hub_settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    async def set_gates_applied(self, cluster: str, revision: int, *, now: float) -> None:
        async with self._autocommit() as db:
            await db.execute(
                "INSERT INTO cluster_gates (cluster, revision, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (cluster) DO UPDATE SET revision = excluded.revision, updated_at = excluded.updated_at",
                (cluster, revision, now),
            )

    async def gates_applied(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in await self._read("SELECT cluster, revision FROM cluster_gates ORDER BY cluster")}

    async def report_cluster_gate(self, cluster: str, key: str, enabled: bool | None, *, old: bool | None, by: str, now: float) -> GateChange | None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO cluster_gate_values (cluster, key, value, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (cluster, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (cluster, key, gate_value_text(enabled), now),
            )
            if old == enabled:
                return None
            return await _record_gate_change(db, self.gate_history_keep, key, cluster, old, enabled, by=by, now=now, revision=0)

    async def cluster_gate_values(self, *, key: str | None = None, cluster: str | None = None) -> list[ClusterGateValue]:
        rows = await self._read(
            "SELECT cluster, key, value, updated_at FROM cluster_gate_values WHERE (? IS NULL OR key = ?) AND (? IS NULL OR cluster = ?) ORDER BY key, cluster",
            (key, key, cluster, cluster),
        )
        return [cluster_gate_value_from_row(r) for r in rows]

    async def gate_history(self, *, key: str | None = None, cluster: str | None = None, limit: int = 100) -> list[GateChange]:
        rows = await self._read(
            f"SELECT {GATE_HISTORY_COLUMNS} FROM gate_history WHERE (? IS NULL OR key = ?) AND (? IS NULL OR cluster = ?) ORDER BY id DESC LIMIT ?",
            (key, key, cluster, cluster, limit),
        )
        return [gate_change_from_row(r) for r in rows]

    # ---- reported types -------------------------------------------------------------------

    async def reported_types(self) -> dict[str, dict[str, str]]:
        rows = await self._read("SELECT cluster, type, info FROM cluster_types ORDER BY cluster, type")
        found: dict[str, dict[str, str]] = {}
        for cluster, type_, info in rows:
            found.setdefault(cluster, {})[type_] = info
        return found

    async def set_reported_types(self, cluster: str, types: Mapping[str, str], *, now: float) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM cluster_types WHERE cluster = ?", (cluster,))
            if types:
                await db.executemany(
                    "INSERT INTO cluster_types (cluster, type, info, updated_at) VALUES (?, ?, ?, ?)",
                    [(cluster, type_, info, now) for type_, info in sorted(types.items())],
                )

    # ---- cluster labels --------------------------------------------------------------------

    async def cluster_labels(self, name: str | None = None) -> dict[str, dict[str, str]]:
        rows = await self._read("SELECT cluster, labels FROM cluster_labels WHERE ? IS NULL OR cluster = ? ORDER BY cluster", (name, name))
        return {r[0]: orjson.loads(r[1]) for r in rows}

    async def label_cluster(self, name: str, *, add: Mapping[str, str], remove: Sequence[str], now: float) -> dict[str, str]:
        async with self._transaction() as db:
            rows = list(await db.execute_fetchall("SELECT labels FROM cluster_labels WHERE cluster = ?", (name,)))
            labels = merge_labels(orjson.loads(rows[0][0]) if rows else {}, add=add, remove=remove)
            if labels:
                await db.execute(
                    "INSERT INTO cluster_labels (cluster, labels, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (cluster) DO UPDATE SET labels = excluded.labels, updated_at = excluded.updated_at",
                    (name, labels_json(labels), now),
                )
            else:
                await db.execute("DELETE FROM cluster_labels WHERE cluster = ?", (name,))
        return labels

    # ---- clusters and leases -------------------------------------------------------------

    async def upsert_cluster(self, record: ClusterRecord) -> None:
        async with self._autocommit() as db:
            await db.execute(
                """
                INSERT INTO clusters (name, agent_id, incarnation, status, metadata, connected_at, last_seen, hub_id)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET
                    agent_id = excluded.agent_id, incarnation = excluded.incarnation, status = excluded.status,
                    metadata = excluded.metadata, connected_at = excluded.connected_at, last_seen = excluded.last_seen,
                    hub_id = excluded.hub_id
                """,
                (
                    record.name,
                    record.agent_id,
                    record.incarnation,
                    record.status,
                    orjson.dumps(dict(record.metadata)).decode(),
                    record.connected_at,
                    record.last_seen,
                    record.hub_id,
                ),
            )
            self._seen_written[record.name] = record.last_seen

    async def set_cluster_status(self, name: str, *, status: str, now: float) -> None:
        """Set the status of a known cluster (unknown: nothing happens); ``now`` counts as seen,
        and as the connection time when the status becomes "active"."""
        async with self._autocommit() as db:
            await db.execute(
                "UPDATE clusters SET status = ?, last_seen = max(last_seen, ?),"
                " connected_at = CASE WHEN ? = 'active' THEN ? ELSE connected_at END WHERE name = ?",
                (status, now, status, now, name),
            )

    async def touch_cluster(self, name: str, *, now: float) -> None:
        """Buffered: written at most every ``TOUCH_INTERVAL`` seconds for all clusters together (a
        fleet of thousands does not cost a write per cluster per second), with the next
        transaction, or at close; a write that fails is kept for the next one; :meth:`clusters` shows buffered times. A crash can lose the
        last second of ``last_seen``, never acknowledged data, and a busy cluster does not
        cost an fsync per message."""
        self._seen[name] = max(now, self._seen.get(name, -math.inf))
        if now - self._touches_flushed_at >= TOUCH_INTERVAL:
            self._touches_flushed_at = now
            try:
                await self._flush_touches()
            except Exception as exc:  # kept buffered for the next flush: a liveness time must not end a session
                log.warning("cluster last-seen times not written yet: %s", exc)

    async def _flush_touches(self) -> None:
        if not self._seen:
            return
        async with self._lock:
            await self._write_touches()

    async def _write_touches(self) -> None:
        """Write the pending ``touch_cluster`` times, holding the write lock: one call of the
        batch connection (a batch of no bundles), whatever the number of clusters. (On the
        writer connection it took a statement per cluster, each a round trip through a busy
        event loop: a thousand clusters' touches held the lock, and every batch behind it,
        for half a second.)"""
        batch = self._batch
        if not self._seen or batch is None:
            return
        await self._with_touches(lambda seen: batch.write([], seen))

    async def _with_touches(self, write: Callable[[dict[str, float]], Awaitable[T]]) -> T:
        """``write(seen)``, a call of the batch connection that writes the pending touches
        ``seen`` (cluster -> time) in its transaction, with the write lock held by the caller.
        Touches of a write that failed are pending again; a cancelled caller's transaction ran
        to its end (committed, its touches with it)."""
        seen, self._seen = self._seen, {}
        try:
            result = await write(seen)
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._unflushed(seen)
            raise
        self._seen_written.update(seen)
        return result

    def _unflushed(self, seen: dict[str, float]) -> None:
        """Put back touches whose write failed."""
        for name, t in seen.items():
            self._seen[name] = max(t, self._seen.get(name, -math.inf))

    async def clusters(self) -> list[ClusterRecord]:
        return await self._clusters("")

    async def cluster(self, name: str) -> ClusterRecord | None:
        found = await self._clusters("WHERE name = ?", name)
        return found[0] if found else None

    async def _clusters(self, where: str, *params: Any) -> list[ClusterRecord]:
        rows = await self._read(
            f"SELECT name, agent_id, incarnation, status, metadata, connected_at, last_seen, hub_id FROM clusters {where} ORDER BY name", params
        )
        seen = dict(self._seen)
        return [
            ClusterRecord(
                name=r[0],
                agent_id=r[1],
                incarnation=r[2],
                status=r[3],
                metadata=orjson.loads(r[4]),
                connected_at=r[5],
                last_seen=max(r[6], seen.get(r[0], r[6])),
                hub_id=r[7],
            )
            for r in rows
        ]

    async def expire_clusters(self, *, cutoff: float) -> list[str]:
        # Asked every few seconds, and almost always no cluster is silent: the reader and the
        # pending touches say so without the write lock (which every batch waits for).
        silent = await self._read(
            "SELECT name FROM clusters WHERE status = 'active' AND last_seen < ? AND name NOT IN (SELECT cluster FROM refresh WHERE mode = 'pull')", (cutoff,)
        )
        if all(self._seen.get(name, -math.inf) >= cutoff for (name,) in silent):
            return []
        async with self._transaction() as db:  # writes pending touches first: their times count
            rows = await db.execute_fetchall(
                "UPDATE clusters SET status = 'inactive' WHERE status = 'active' AND last_seen < ?"
                " AND name NOT IN (SELECT cluster FROM refresh WHERE mode = 'pull') RETURNING name",
                (cutoff,),
            )
            return sorted(r[0] for r in rows)

    async def delete_cluster(self, name: str) -> ClusterDeletion:
        """See the contract: one transaction on the writer; each object's ``DELETED`` change takes
        the next revision, in key order, as a FULL's removals do."""
        async with self._transaction() as db:
            rows = list(await db.execute_fetchall("SELECT count(*) FROM objects WHERE cluster = ?", (name,)))
            objects = int(rows[0][0])
            rows = list(await db.execute_fetchall("SELECT value FROM meta WHERE key = 'rev'"))
            base = int(rows[0][0])
            if objects:
                await db.execute(
                    f"{CHANGES_HEAD} SELECT ? + row_number() OVER (ORDER BY type, namespace, name), 'DELETED', cluster, type, namespace, name, {_OBJECT_FIELDS}"
                    " FROM objects WHERE cluster = ?",
                    (base, name),
                )
                await db.execute("DELETE FROM objects WHERE cluster = ?", (name,))
                await db.execute("UPDATE meta SET value = ? WHERE key = 'rev'", (base + objects,))
            tokens = (await db.execute("DELETE FROM tokens WHERE name = ? AND role = 'agent'", (name,))).rowcount
            found = bool(objects or tokens)
            for table in ("clusters WHERE name = ?", "leases WHERE cluster = ?", "streams WHERE cluster = ?", "cluster_labels WHERE cluster = ?"):
                found = (await db.execute(f"DELETE FROM {table}", (name,))).rowcount > 0 or found
            for table in ("cluster_gates", "cluster_gate_values", "cluster_types", "work_status", "refresh"):
                found = (await db.execute(f"DELETE FROM {table} WHERE cluster = ?", (name,))).rowcount > 0 or found
        if objects:
            self._dispatch("changes", str(base + objects))
        return ClusterDeletion(objects=objects, tokens=tokens, rev=base + objects, found=found)

    async def leases(self) -> list[Lease]:
        rows = await self._read(f"SELECT {LEASE_COLUMNS} FROM leases ORDER BY cluster")
        return [lease_from_row(r) for r in rows]

    async def acquire_lease(
        self, cluster: str, *, holder: str, incarnation: str, hub_id: str, now: float, ttl: float, silent_before: float = -math.inf
    ) -> LeaseResult:
        """One call of the batch connection (:func:`~fleetsync.store.sqlitebatch.take_lease`),
        pending touches written along: the holder's last message counts."""
        batch = self._batch
        if batch is None:
            raise RuntimeError("the store is not open")
        request = LeaseRequest(cluster, holder, incarnation, hub_id, now, ttl, silent_before)
        async with self._lock:
            return await self._with_touches(lambda seen: batch.take_lease(request, seen))

    async def renew_leases(self, leases: Sequence[tuple[str, int]], *, hub_id: str, now: float, ttl: float) -> list[str]:
        if not leases:
            return []
        renewed: set[str] = set()
        # One statement (its own transaction) per LEASES_PER_STATEMENT leases, not a transaction
        # of several: the write lock is held for one round trip through the event loop, and a
        # renewal (idempotent per lease) needs no atomicity across statements. As a transaction
        # (pending touches, BEGIN, a statement per 500 leases, COMMIT) it held the lock 160 ms on
        # average and up to 0.7 s at 1,000 clusters, and every batch waited behind it.
        for start in range(0, len(leases), LEASES_PER_STATEMENT):
            chunk = leases[start : start + LEASES_PER_STATEMENT]
            async with self._autocommit() as db:
                rows = await db.execute_fetchall(
                    "UPDATE leases SET expires_at = ?, hub_id = ?, connected = 1 FROM (VALUES "
                    + ", ".join(["(?, ?)"] * len(chunk))
                    + ") AS v WHERE leases.cluster = v.column1 AND leases.epoch = v.column2 RETURNING leases.cluster",
                    [now + ttl, hub_id, *(v for cluster, epoch in chunk for v in (cluster, epoch))],
                )
            renewed.update(r[0] for r in rows)
        return sorted({cluster for cluster, _ in leases} - renewed)

    async def release_lease(self, cluster: str, *, holder: str, incarnation: str, now: float, grace: float) -> None:
        async with self._autocommit() as db:
            await db.execute(
                "UPDATE leases SET connected = 0, expires_at = ? WHERE cluster = ? AND holder = ? AND incarnation = ?",
                (now + grace, cluster, holder, incarnation),
            )

    # ---- streams and apply -----------------------------------------------------------

    async def streams(self, cluster: str | None) -> list[StreamRecord]:
        rows = await self._read(
            "SELECT cluster, type, incarnation, seq, error, updated_at FROM streams WHERE ? IS NULL OR cluster = ? ORDER BY cluster, type", (cluster, cluster)
        )
        return [StreamRecord(cluster=r[0], type=r[1], incarnation=r[2], seq=r[3], error=r[4], updated_at=r[5]) for r in rows]

    async def apply_bundle(
        self,
        cluster: str,
        type: str,  # noqa: A002
        *,
        incarnation: str,
        seq: int,
        upserts: Sequence[ObjectRecord],
        deletes: Sequence[str],
        full_seq: int | None,
        full_end: bool,
        move_to: tuple[str, int] | None,
        now: float,
    ) -> int:
        write = BundleWrite(cluster, type, incarnation, seq, upserts, deletes, full_seq, full_end, move_to, now)
        return await self.apply_batch([write])

    async def apply_batch(self, writes: Sequence[BundleWrite]) -> Applied:
        """See the contract and :mod:`fleetsync.store.plan`: per round of the batch, one lookup
        statement for its keys, one for each FULL that ends, and one multi-row statement per kind
        of write (per ``ROWS_PER_STATEMENT`` rows); one COMMIT (and one fsync) for the whole batch.
        SQLite's operational errors (locked past the busy timeout, disk full, I/O errors) are
        raised as StoreUnavailable."""
        try:
            return await self._apply_batch(writes)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite {self.path}: {exc}") from exc

    async def _apply_batch(self, writes: Sequence[BundleWrite]) -> Applied:
        """The whole transaction is one call of the batch connection (a thread or a process of
        its own: :mod:`fleetsync.store.sqlitebatch`). The write lock keeps the other writer
        connection out meanwhile."""
        batch = self._batch
        if batch is None:
            raise RuntimeError("the store is not open")
        async with self._lock:
            rev, first, changes = await self._with_touches(lambda seen: batch.write(writes, seen))
        if rev != first:
            self._dispatch("changes", str(rev))
        return Applied(rev, changes)

    async def set_stream_error(self, cluster: str, type: str, error: str, *, now: float) -> None:  # noqa: A002
        """A type without a stream row yet gets one at position ("", 0) to hold its error (no
        incarnation matches "", so the hub still treats the type as never applied)."""
        async with self._autocommit() as db:
            if error:
                await db.execute(
                    "INSERT INTO streams (cluster, type, incarnation, seq, error, updated_at) VALUES (?, ?, '', 0, ?, ?)"
                    " ON CONFLICT (cluster, type) DO UPDATE SET error = excluded.error, updated_at = excluded.updated_at",
                    (cluster, type, error, now),
                )
            else:
                await db.execute("UPDATE streams SET error = '', updated_at = ? WHERE cluster = ? AND type = ? AND error != ''", (now, cluster, type))

    async def object_hashes(self, cluster: str, type: str) -> dict[str, int]:  # noqa: A002
        rows = await self._read("SELECT namespace, name, hash FROM objects WHERE cluster = ? AND type = ?", (cluster, type))
        return {f"{r[0]}/{r[1]}": to_unsigned(r[2]) for r in rows}

    # ---- reads -----------------------------------------------------------------------

    async def get_object(self, cluster: str, type: str, namespace: str, name: str) -> ObjectRecord | None:  # noqa: A002
        rows = await self._read(
            f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE cluster = ? AND type = ? AND namespace = ? AND name = ?", (cluster, type, namespace, name)
        )
        return object_from_row(rows[0]) if rows else None

    async def _clusters_of_type(self, type: str) -> list[str]:  # noqa: A002
        """The clusters holding objects of ``type``, by a skip scan of objects_by_type (one probe per cluster)."""
        rows = await self._read(
            "WITH RECURSIVE c(name) AS (SELECT min(cluster) FROM objects WHERE type = ?"
            " UNION ALL SELECT (SELECT min(cluster) FROM objects WHERE type = ? AND cluster > c.name) FROM c WHERE c.name IS NOT NULL)"
            " SELECT name FROM c WHERE name IS NOT NULL",
            (type, type),
        )
        return [r[0] for r in rows]

    async def _list_objects(
        self,
        type: str,  # noqa: A002
        cluster: str | None,
        namespace: str | None,
        after: tuple[str, str, str] | None,
        limit: int,
        labels: Mapping[str, str] | None,
    ) -> list[ObjectRecord]:
        # The conditions are shaped so that SQLite walks objects_by_type in order (no sort).
        where, params = ["type = ?"], [type]
        for key, value in (labels or {}).items():  # label keys are qualified names: no quote to escape
            where.append("json_extract(labels, ?) = ?")
            params += [f'$."{key}"', value]
        if cluster is not None:
            where.append("cluster = ?")
            params.append(cluster)
            if namespace is not None:
                where.append("namespace = ?")
                params.append(namespace)
                if after is not None:
                    if after[:2] > (cluster, namespace):
                        return []
                    if after[:2] == (cluster, namespace):
                        where.append("name > ?")
                        params.append(after[2])
            elif after is not None:
                if after[0] > cluster:
                    return []
                if after[0] == cluster:
                    where.append("(namespace, name) > (?, ?)")
                    params += after[1:]
        else:
            if namespace is not None:
                where.append("namespace = ?")
                params.append(namespace)
            if after is not None:
                where.append("(cluster, namespace, name) > (?, ?, ?)")
                params += after
        sql = f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE {' AND '.join(where)} ORDER BY cluster, namespace, name"
        if limit > 0:
            sql += f" LIMIT {int(limit)}"
        return [object_from_row(r) for r in await self._read(sql, params)]

    async def counts(self, cluster: str) -> dict[str, int]:
        rows = await self._read("SELECT type, count(*) FROM objects WHERE cluster = ? GROUP BY type ORDER BY type", (cluster,))
        return {r[0]: r[1] for r in rows}

    async def counts_by_cluster(self) -> dict[str, dict[str, int]]:
        rows = await self._read("SELECT cluster, type, count(*) FROM objects GROUP BY cluster, type ORDER BY cluster, type")
        return nested_counts(rows)

    async def current_rev(self) -> int:
        return await _current_rev(self._reader())

    async def oldest_rev(self) -> int:
        rows = await self._read("SELECT coalesce((SELECT min(rev) FROM changes) - 1, (SELECT value FROM meta WHERE key = 'rev'))")
        return int(rows[0][0])

    async def changes_since(self, rev: int, *, limit: int = 1000) -> list[Change]:
        """``limit`` <= 0: all of them."""
        rows = await self._read(
            f"SELECT event, cluster, type, namespace, name, {_OBJECT_FIELDS}, rev FROM changes WHERE rev > ? ORDER BY rev LIMIT ?",
            (rev, limit if limit > 0 else -1),
        )
        return [Change(rev=r[13], type=event_type(r[0]), obj=object_from_row(r[1:])) for r in rows]

    async def trim_changes(self, *, keep: int) -> None:
        async with self._autocommit() as db:
            if keep <= 0:
                await db.execute("DELETE FROM changes")
            else:
                await db.execute("DELETE FROM changes WHERE rev < (SELECT rev FROM changes ORDER BY rev DESC LIMIT 1 OFFSET ?)", (keep - 1,))

    # ---- refresh scheduling and locks ------------------------------------------------------

    async def set_refresh(self, cluster: str, *, mode: str, url: str = "", interval: float, next_refresh_at: float) -> None:
        async with self._autocommit() as db:
            await db.execute(
                "INSERT INTO refresh (cluster, mode, url, interval, next_refresh_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (cluster) DO UPDATE SET mode = excluded.mode, url = excluded.url, interval = excluded.interval,"
                " next_refresh_at = min(refresh.next_refresh_at, excluded.next_refresh_at)",
                (cluster, mode, url, interval, next_refresh_at),
            )

    async def remove_refresh(self, cluster: str) -> bool:
        async with self._autocommit() as db:
            return (await db.execute("DELETE FROM refresh WHERE cluster = ?", (cluster,))).rowcount > 0

    async def refresh_targets(self, cluster: str | None = None) -> list[RefreshTarget]:
        rows = await self._read(
            "SELECT cluster, mode, url, interval, next_refresh_at FROM refresh WHERE ? IS NULL OR cluster = ? ORDER BY cluster", (cluster, cluster)
        )
        return [refresh_from_row(r) for r in rows]

    async def claim_due_refreshes(self, *, hub_id: str, now: float, limit: int = 100) -> list[RefreshTarget]:
        # Asked every second, and almost always nothing is due: the reader says so without the
        # write lock (which every batch waits for); the claim itself is the one statement below.
        if not await self._read("SELECT 1 FROM refresh WHERE next_refresh_at <= ? LIMIT 1", (now,)):
            return []
        async with self._autocommit() as db:  # one statement: atomic, and SQLite has one writer
            rows = await db.execute_fetchall(
                """
                UPDATE refresh SET next_refresh_at = ? + interval
                WHERE cluster IN (
                    SELECT cluster FROM refresh
                    WHERE next_refresh_at <= ? AND (
                        mode = 'pull' OR cluster IN (SELECT cluster FROM leases WHERE hub_id = ? AND connected AND expires_at > ?)
                    )
                    ORDER BY next_refresh_at LIMIT ?
                )
                RETURNING cluster, mode, url, interval, next_refresh_at
                """,
                (now, now, hub_id, now, limit),
            )
        return sorted((refresh_from_row(r) for r in rows), key=lambda t: t.cluster)

    async def postpone_refresh(self, cluster: str, *, until: float) -> None:
        async with self._autocommit() as db:
            await db.execute("UPDATE refresh SET next_refresh_at = max(next_refresh_at, ?) WHERE cluster = ?", (until, cluster))

    async def try_lock(self, name: str, *, holder: str, now: float, ttl: float) -> bool:
        async with self._autocommit() as db:
            rows = await db.execute_fetchall(
                "INSERT INTO locks (name, holder, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
                " WHERE locks.expires_at <= ? OR locks.holder = excluded.holder RETURNING holder",
                (name, holder, now + ttl, now),
            )
            return bool(list(rows))

    async def lock_holder(self, name: str, *, now: float) -> str | None:
        rows = await self._read("SELECT holder FROM locks WHERE name = ? AND expires_at > ?", (name, now))
        return str(rows[0][0]) if rows else None

    async def unlock(self, name: str, *, holder: str) -> None:
        async with self._autocommit() as db:
            await db.execute("DELETE FROM locks WHERE name = ? AND holder = ?", (name, holder))

    # ---- events ----------------------------------------------------------------------

    async def add_events(self, events: Sequence[EventRecord]) -> None:
        if not events:
            return
        # A multi-row INSERT ... RETURNING: one round trip (and, per statement, one commit) where
        # executemany and a max(id) query were two, and a commit per row: on a busy event loop each
        # round trip holds the write lock, and every batch behind it, for a turn of the loop.
        newest = 0
        async with self._autocommit() as db:
            for start in range(0, len(events), ROWS_PER_STATEMENT):
                chunk = events[start : start + ROWS_PER_STATEMENT]
                rows = await db.execute_fetchall(
                    "INSERT INTO events (at, cluster, reason, type, message, hub_id) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
                    + " RETURNING id",
                    [v for e in chunk for v in (e.time, e.cluster, e.reason, e.type, e.message, e.hub_id)],
                )
                newest = max(newest, *(int(r[0]) for r in rows))
            # trim in steps of 1% of the window, as the change log does
            step = max(1, self.events_keep // 100)
            if self.events_keep and newest // step != (newest - len(events)) // step:
                await db.execute("DELETE FROM events WHERE id <= ?", (newest - self.events_keep,))
        self._dispatch("events", str(newest))

    async def events(
        self, *, cluster: str | None = None, reason: str | None = None, after: int | None = None, limit: int = 100, clusters: Collection[str] | None = None
    ) -> list[EventRecord]:
        where: list[str] = []
        params: list[Any] = []
        if clusters is not None:
            if not clusters:
                return []
            where.append("cluster IN (SELECT value FROM json_each(?))")
            params.append(orjson.dumps(sorted(clusters)).decode())
        if cluster is not None:
            where.append("cluster = ?")
            params.append(cluster)
        if reason is not None:
            where.append("reason = ?")
            params.append(reason)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        sql = "SELECT id, at, cluster, reason, type, message, hub_id FROM events" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += f" ORDER BY id {'ASC' if after is not None else 'DESC'} LIMIT {max(0, int(limit))}"
        rows = await self._read(sql, params)
        records = [EventRecord(id=r[0], time=r[1], cluster=r[2], reason=r[3], type=r[4], message=r[5], hub_id=r[6]) for r in rows]
        return records if after is not None else records[::-1]


async def _current_rev(db: aiosqlite.Connection) -> int:
    rows = list(await db.execute_fetchall("SELECT value FROM meta WHERE key = 'rev'"))
    return int(rows[0][0])


async def _rollback(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("ROLLBACK")
    except sqlite3.Error as exc:  # e.g. no transaction left: SQLite rolled back already, or COMMIT went through
        log.debug("rollback: %s", exc)


async def _next_gate_revision(db: aiosqlite.Connection) -> int:
    """The next gate revision (in the caller's write transaction)."""
    rows = list(await db.execute_fetchall("UPDATE meta SET value = value + 1 WHERE key = 'gates_rev' RETURNING value"))
    return int(rows[0][0])


async def _next_work_revision(db: aiosqlite.Connection) -> int:
    """The next work revision (in the caller's write transaction)."""
    rows = list(await db.execute_fetchall("UPDATE meta SET value = value + 1 WHERE key = 'works_rev' RETURNING value"))
    return int(rows[0][0])
