"""The PostgreSQL store engine: several hub replicas on one database.

Bodies are the agent's compressed bytes in a ``bytea`` column, never JSONB: on this
kind of machine PostgreSQL upserts 3 KB JSONB rows at ~3.3k/s (one backend's CPU goes
to parsing JSON) and the same rows as bytes at ~10.8k/s. Only the small label map is
JSONB. Rows stay inline (``toast_tuple_target``) and are not compressed again
(``STORAGE EXTERNAL``): they are lz4 already.

A batch is one transaction of a handful of statements whatever its size: the rows
travel as arrays (``unnest``), so there is no round trip per object.

**Revisions across replicas.** A batch of bundles (group commit: many clusters' bundles
in one transaction) takes its revisions with one ``UPDATE`` of the revision counter
after its lookups and before it writes; the counter's row lock, held until the commit,
makes transactions that change objects commit one after another, so revisions are
gap-free and become visible in order: a watcher reading ``changes_since(rev)`` can
never miss a revision that commits later with a smaller number. Event ids are ordered
the same way (an advisory lock). The lock is taken once per batch and not held during
the lookups, so replicas overlap their reads and planning; PostgreSQL's own WAL writer
serialises most of the rest anyway.

**Notifications.** After each commit the store sends ``NOTIFY fleetsync`` in the same
transaction (delivered only if it commits); every replica LISTENs on one connection of
its own and passes them to :meth:`PostgresStore.listen` callbacks, so watches and events
fan out across replicas.

**Migrations** are applied at :meth:`PostgresStore.open` under an advisory lock, so
replicas starting together apply each one once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from fleetsync.aio import cancel_and_wait
from fleetsync.backoff import Backoff
from fleetsync.errors import FleetsyncError
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
from fleetsync.store.leasing import may_take
from fleetsync.store.pgbatch import OBJECT_FIELDS, PG_CHANNEL, UNAVAILABLE, ProcessBatchConnection, safe_url, write_batch
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
from fleetsync.store.writerprocess import BATCH_WRITER_KINDS, BatchWriterKind

log = logging.getLogger(__name__)

#: Advisory lock keys (any 64-bit numbers no one else uses).
MIGRATION_LOCK = 0x666C_7379_6E63_0001
EVENTS_LOCK = 0x666C_7379_6E63_0002

#: Schema migrations, applied in order; version N is ``MIGRATIONS[N - 1]``. Never edit a
#: released entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema (the SQLite engine's migrations 1-3 in one)
    """
    CREATE TABLE tokens (
        token_hash text PRIMARY KEY,
        name text NOT NULL,
        role text NOT NULL,
        types text NOT NULL DEFAULT '',  -- comma-separated gvks; '' = any
        created_at double precision NOT NULL
    );

    CREATE TABLE clusters (
        name text PRIMARY KEY,
        agent_id text NOT NULL DEFAULT '',
        incarnation text NOT NULL DEFAULT '',
        status text NOT NULL DEFAULT 'never',
        metadata jsonb NOT NULL DEFAULT '{}',
        connected_at double precision NOT NULL DEFAULT 0,
        last_seen double precision NOT NULL DEFAULT 0,
        hub_id text NOT NULL DEFAULT ''
    );

    CREATE TABLE leases (
        cluster text PRIMARY KEY,
        holder text NOT NULL,
        incarnation text NOT NULL,
        hub_id text NOT NULL,
        expires_at double precision NOT NULL,
        connected boolean NOT NULL
    );

    CREATE TABLE streams (
        cluster text NOT NULL,
        type text NOT NULL,
        incarnation text NOT NULL,
        seq bigint NOT NULL,
        error text NOT NULL DEFAULT '',
        updated_at double precision NOT NULL,
        PRIMARY KEY (cluster, type)
    );

    CREATE TABLE objects (
        cluster text NOT NULL,
        type text NOT NULL,
        namespace text NOT NULL,
        name text NOT NULL,
        uid text NOT NULL,
        resource_version text NOT NULL,
        hash bigint NOT NULL,  -- unsigned 64-bit stored as signed two's complement
        labels jsonb NOT NULL,
        owner text NOT NULL,
        body bytea NOT NULL,
        compression smallint NOT NULL,
        incarnation text NOT NULL,
        full_seq bigint,  -- the last FULL that carried the object
        rev bigint NOT NULL,
        PRIMARY KEY (cluster, type, namespace, name)
    ) WITH (toast_tuple_target = 8160, fillfactor = 90);
    ALTER TABLE objects ALTER COLUMN body SET STORAGE EXTERNAL;
    CREATE INDEX objects_by_type ON objects (type, cluster, namespace, name);

    CREATE TABLE changes (
        rev bigint PRIMARY KEY,
        event text NOT NULL,
        cluster text NOT NULL,
        type text NOT NULL,
        namespace text NOT NULL,
        name text NOT NULL,
        uid text NOT NULL,
        resource_version text NOT NULL,
        hash bigint NOT NULL,
        labels jsonb NOT NULL,
        owner text NOT NULL,
        body bytea NOT NULL,
        compression smallint NOT NULL,
        incarnation text NOT NULL
    ) WITH (toast_tuple_target = 8160);
    ALTER TABLE changes ALTER COLUMN body SET STORAGE EXTERNAL;

    CREATE TABLE meta (
        key text PRIMARY KEY,
        value bigint NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('rev', 0);

    CREATE TABLE events (
        id bigserial PRIMARY KEY,
        at double precision NOT NULL,
        cluster text NOT NULL,
        reason text NOT NULL,
        type text NOT NULL,
        message text NOT NULL,
        hub_id text NOT NULL
    );
    CREATE INDEX events_by_cluster ON events (cluster, id);

    CREATE TABLE refresh (
        cluster text PRIMARY KEY,
        mode text NOT NULL,  -- push | pull
        url text NOT NULL,
        interval double precision NOT NULL,
        next_refresh_at double precision NOT NULL
    );
    CREATE INDEX refresh_due ON refresh (next_refresh_at);

    CREATE TABLE locks (
        name text PRIMARY KEY,
        holder text NOT NULL,
        expires_at double precision NOT NULL
    );
    """,
    # 4: feature gates (seed 004), deletes kept as tombstones; their own revision counter,
    # whose row lock orders gate writes across replicas (the last write wins)
    """
    CREATE TABLE gates (
        key text PRIMARY KEY,
        enabled boolean NOT NULL,
        updated_at double precision NOT NULL,
        updated_by text NOT NULL,
        revision bigint NOT NULL,
        deleted boolean NOT NULL
    );
    CREATE INDEX gates_by_revision ON gates (revision);
    INSERT INTO meta (key, value) VALUES ('gates_rev', 0);
    """,
    # 5: works (specs flowing down) with their own revision counter, whose row lock orders
    # work writes across replicas; what each cluster reported of them; hub settings
    """
    CREATE TABLE works (
        name text PRIMARY KEY,
        spec bytea NOT NULL,  -- JSON
        generation bigint NOT NULL,
        revision bigint NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        updated_by text NOT NULL
    );

    CREATE TABLE work_status (
        work text NOT NULL,
        cluster text NOT NULL,
        generation bigint NOT NULL,
        manifests bytea NOT NULL,  -- JSON list
        updated_at double precision NOT NULL,
        PRIMARY KEY (work, cluster)
    );
    CREATE INDEX work_status_by_cluster ON work_status (cluster, work);

    CREATE TABLE hub_settings (
        key text PRIMARY KEY,
        value text NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('works_rev', 0);
    """,
    # 6: the gate revision each cluster's agent has applied
    """
    CREATE TABLE cluster_gates (
        cluster text PRIMARY KEY,
        revision bigint NOT NULL,
        updated_at double precision NOT NULL
    );
    """,
    # 7: what an agent token may do beyond its own cluster (grants, e.g. gates), and the
    # labels an admin set per cluster (placement matches these, never an agent's Hello)
    """
    ALTER TABLE tokens ADD COLUMN grants text NOT NULL DEFAULT '';  -- comma-separated; '' = none

    CREATE TABLE cluster_labels (
        cluster text PRIMARY KEY,
        labels jsonb NOT NULL,
        updated_at double precision NOT NULL
    );
    """,
    # 8: lease epochs (every grant takes the next; writes and renewals are fenced by it)
    """
    ALTER TABLE leases ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
    """,
    # 9: the gate history (fleet writes and clusters' own changes, old -> new) and
    # each cluster's own gate values as its agent reported them
    """
    CREATE TABLE gate_history (
        id bigserial PRIMARY KEY,
        key text NOT NULL,
        cluster text NOT NULL,  -- '': the fleet's gate
        old text NOT NULL,  -- 'true' | 'false' | '' (unset)
        new text NOT NULL,
        by text NOT NULL,
        at double precision NOT NULL,
        revision bigint NOT NULL
    );
    CREATE INDEX gate_history_by_key ON gate_history (key, id);

    CREATE TABLE cluster_gate_values (
        cluster text NOT NULL,
        key text NOT NULL,
        value text NOT NULL,  -- 'true' | 'false' | '' (unset)
        updated_at double precision NOT NULL,
        PRIMARY KEY (cluster, key)
    );
    """,
    # 10: what a read token may see (issue 19): a JSON ReadScope, '' = everything
    """
    ALTER TABLE tokens ADD COLUMN scope text NOT NULL DEFAULT '';
    """,
    # 11: the resource types each cluster's agent reported (discovery data, so the API serves
    # them while the agent is away)
    """
    CREATE TABLE cluster_types (
        cluster text NOT NULL,
        type text NOT NULL,  -- group/version/Kind
        info text NOT NULL,  -- JSON object: see fleetsync.model.typeinfo
        updated_at double precision NOT NULL,
        PRIMARY KEY (cluster, type)
    );
    """,
)

_OBJECT_COLUMNS = f"cluster, type, namespace, name, {OBJECT_FIELDS}, rev"


_LEASE_COLUMNS = "cluster, holder, incarnation, hub_id, expires_at, connected, epoch"
_REFRESH_COLUMNS = "cluster, mode, url, interval, next_refresh_at"


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``INSERT 0 12`` or ``DELETE 3``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _text(value: Mapping[str, str]) -> str:
    return orjson.dumps(dict(value)).decode()


async def _record_gate_change(
    conn: asyncpg.Connection, keep: int, key: str, cluster: str, old: bool | None, new: bool | None, *, by: str, now: float, revision: int
) -> GateChange:
    """Append a gate history entry (in the caller's transaction) and trim the history to its newest ``keep``."""
    id_ = int(
        await conn.fetchval(
            "INSERT INTO gate_history (key, cluster, old, new, by, at, revision) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            key,
            cluster,
            gate_value_text(old),
            gate_value_text(new),
            by,
            now,
            revision,
        )
    )
    if keep:
        await conn.execute("DELETE FROM gate_history WHERE id <= $1", id_ - keep)
    return GateChange(id_, key, cluster, old, new, by, now, revision)


async def _check_based_on(conn: asyncpg.Connection, key: str, *, by: str, based_on: int | None) -> None:
    """Raise GateConflict if a write ``based_on`` a revision would undo someone else's later write
    (in the write's transaction, after the gate revision's row lock)."""
    if based_on is None:
        return
    row = await conn.fetchrow(f"SELECT {GATE_COLUMNS} FROM gates WHERE key = $1", key)
    if (conflict := gate_conflict(gate_from_row(row) if row is not None else None, by=by, based_on=based_on)) is not None:
        raise conflict


class PostgresStore(ScopedListing):
    """The :class:`~fleetsync.store.contract.Store` on PostgreSQL (``postgresql://USER@HOST:PORT/DB``).

    ``change_log_keep`` and ``events_keep`` as for the SQLite engine; ``pool_size``: the
    most connections this replica opens (plus one for LISTEN, and one for the batch writer's
    process); ``batch_writer``: where :meth:`apply_batch` writes, on this process's event loop
    or in a process of its own (:mod:`fleetsync.store.pgbatch`).
    """

    def __init__(
        self,
        url: str,
        *,
        change_log_keep: int = 100_000,
        events_keep: int = 10_000,
        gate_history_keep: int = 10_000,
        pool_size: int = 8,
        timeout: float = 30.0,
        batch_writer: BatchWriterKind = "thread",
    ) -> None:
        if batch_writer not in BATCH_WRITER_KINDS:
            raise ValueError(f"batch_writer must be one of {', '.join(BATCH_WRITER_KINDS)}, not {batch_writer!r}")
        self.batch_writer: BatchWriterKind = batch_writer
        self._batch: ProcessBatchConnection | None = None
        if change_log_keep < 0:
            raise ValueError(f"change_log_keep must be >= 0, not {change_log_keep}")
        if gate_history_keep < 0:
            raise ValueError(f"gate_history_keep must be >= 0, not {gate_history_keep}")
        #: The gate history keeps its newest this many entries (0: all).
        self.gate_history_keep = gate_history_keep
        self.url = url
        self.change_log_keep = change_log_keep
        self.events_keep = events_keep
        self.pool_size = pool_size
        #: Seconds a connection attempt or one statement may take before it fails as
        #: unavailable (a replica cut off from the database must not hang on it for good).
        self.timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[str, str], None]] = []
        self._seen: dict[str, float] = {}  # cluster -> last_seen not yet written
        self._seen_written: dict[str, float] = {}
        self._touches_flushed_at = -math.inf  # the ``now`` of the last flush: one a TOUCH_INTERVAL for all clusters

    # ---- connection ------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size, timeout=self.timeout, command_timeout=self.timeout)
        except (OSError, asyncpg.PostgresError, ValueError) as exc:
            raise RuntimeError(f"cannot connect to PostgreSQL at {safe_url(self.url)}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        ready = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen(ready), name="postgres-listen")
        try:
            await ready
            if self.batch_writer == "process":
                batch = ProcessBatchConnection(self.url, timeout=self.timeout, change_log_keep=self.change_log_keep)
                await batch.open()
                self._batch = batch
        except BaseException:
            await self._close()
            raise

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at double precision NOT NULL)")
            version = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{safe_url(self.url)} has schema version {version}, newer than this fleetsync ({len(MIGRATIONS)}): upgrade fleetsync")
            for number in range(version + 1, len(MIGRATIONS) + 1):
                await conn.execute(MIGRATIONS[number - 1])
                await conn.execute("INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)", number, time.time())
                log.info("%s: applied schema migration %d", safe_url(self.url), number)

    async def schema_version(self) -> int:
        return int(await self._fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        """Hold a LISTEN connection, reconnecting with backoff; after a reconnect, tell the
        callbacks the current revision (notifications sent meanwhile are lost)."""
        backoff = Backoff(initial=0.2, maximum=5.0)
        first = True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.url, timeout=self.timeout)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())  # type: ignore[misc]
                await conn.add_listener(PG_CHANNEL, self._on_notification)
                if not first:
                    rev = await conn.fetchval("SELECT value FROM meta WHERE key = 'rev'")
                    self._dispatch("changes", str(rev))
                    log.info("listening for PostgreSQL notifications again")
                if not ready.done():
                    ready.set_result(None)
                first = False
                backoff.reset()
                await lost.wait()
                log.warning("lost the PostgreSQL notification connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not ready.done():
                    ready.set_exception(exc)
                    return
                log.warning("cannot listen for PostgreSQL notifications: %s", exc)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await backoff.sleep()

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        channel, _, value = payload.partition("\n")
        self._dispatch(channel, value)

    def _dispatch(self, channel: str, payload: str) -> None:
        for callback in list(self._callbacks):
            try:
                callback(channel, payload)
            except Exception:
                log.exception("store notification callback failed")

    def listen(self, callback: Callable[[str, str], None]) -> None:
        self._callbacks.append(callback)

    async def notify(self, channel: str, payload: str) -> None:
        await self._execute("SELECT pg_notify($1, $2)", PG_CHANNEL, f"{channel}\n{payload}")

    async def close(self) -> None:
        if self._pool is None:
            return
        try:
            await self._flush_touches()
        finally:
            await self._close()

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        batch, self._batch = self._batch, None
        if batch is not None:
            await batch.close()
        if self._listener is not None:
            await cancel_and_wait([self._listener])
            self._listener = None
        if pool is not None:
            await pool.close()

    def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._get_pool().acquire() as conn, conn.transaction():
            yield conn

    async def _execute(self, sql: str, *args: Any) -> str:
        return str(await self._get_pool().execute(sql, *args))

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await self._get_pool().fetch(sql, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self._get_pool().fetchval(sql, *args)

    # ---- tokens --------------------------------------------------------------------------

    async def add_token(
        self, *, name: str, role: str, token_hash: str, types: Sequence[str] = (), grants: Sequence[str] = (), scope: ReadScope | None = None
    ) -> None:
        await self._execute(
            "INSERT INTO tokens (token_hash, name, role, types, grants, scope, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (token_hash) DO UPDATE SET name = excluded.name, role = excluded.role, types = excluded.types, grants = excluded.grants,"
            " scope = excluded.scope",
            token_hash,
            name,
            role,
            ",".join(types),
            grants_text(grants),
            scope_text(scope),
            time.time(),
        )

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        rows = await self._fetch(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = $1", token_hash)
        return token_from_row(rows[0]) if rows else None

    async def tokens(self) -> list[TokenRecord]:
        rows = await self._fetch(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name, role, created_at")
        return [token_from_row(r) for r in rows]

    async def delete_tokens(self, name: str, role: str | None = None) -> int:
        status = await self._execute("DELETE FROM tokens WHERE name = $1 AND ($2::text IS NULL OR role = $2)", name, role)
        return int(status.rsplit(" ", 1)[1])  # "DELETE n"

    async def set_token_grants(self, name: str, grants: Sequence[str]) -> int:
        status = await self._execute("UPDATE tokens SET grants = $1 WHERE name = $2 AND role = 'agent'", grants_text(grants), name)
        return int(status.rsplit(" ", 1)[1])  # "UPDATE n"

    # ---- feature gates ---------------------------------------------------------------------

    async def gates(self, *, since: int | None = None) -> list[GateRecord]:
        if since is not None:
            rows = await self._fetch(f"SELECT {GATE_COLUMNS} FROM gates WHERE revision > $1 ORDER BY key", since)
        else:
            rows = await self._fetch(f"SELECT {GATE_COLUMNS} FROM gates WHERE NOT deleted ORDER BY key")
        return [gate_from_row(r) for r in rows]

    async def gate(self, key: str) -> GateRecord | None:
        rows = await self._fetch(f"SELECT {GATE_COLUMNS} FROM gates WHERE key = $1 AND NOT deleted", key)
        return gate_from_row(rows[0]) if rows else None

    async def set_gate(self, key: str, enabled: bool, *, by: str, now: float, create: bool = False, based_on: int | None = None) -> GateRecord:
        async with self._transaction() as conn:
            revision = await _next_gate_revision(conn)  # first: its row lock serialises gate writers
            await _check_based_on(conn, key, by=by, based_on=based_on)
            row = await conn.fetchrow("SELECT enabled, deleted FROM gates WHERE key = $1", key)
            old = None if row is None or row[1] else bool(row[0])
            if create and old is not None:
                raise GateExists(key)
            await _record_gate_change(conn, self.gate_history_keep, key, "", old, enabled, by=by, now=now, revision=revision)
            await conn.execute(
                "INSERT INTO gates (key, enabled, updated_at, updated_by, revision, deleted) VALUES ($1, $2, $3, $4, $5, false)"
                " ON CONFLICT (key) DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at,"
                " updated_by = excluded.updated_by, revision = excluded.revision, deleted = false",
                key,
                enabled,
                now,
                by,
                revision,
            )
        return GateRecord(key, enabled, now, by, revision)

    async def delete_gate(self, key: str, *, by: str, now: float, based_on: int | None = None) -> GateRecord | None:
        try:
            async with self._transaction() as conn:
                revision = await _next_gate_revision(conn)
                await _check_based_on(conn, key, by=by, based_on=based_on)
                enabled = await conn.fetchval(
                    "UPDATE gates SET deleted = true, updated_at = $2, updated_by = $3, revision = $4 WHERE key = $1 AND NOT deleted RETURNING enabled",
                    key,
                    now,
                    by,
                    revision,
                )
                if enabled is None:
                    raise _NothingToDelete  # rolls the revision back: nothing was written
                await _record_gate_change(conn, self.gate_history_keep, key, "", bool(enabled), None, by=by, now=now, revision=revision)
        except _NothingToDelete:
            return None
        return GateRecord(key, bool(enabled), now, by, revision, deleted=True)

    # ---- works -----------------------------------------------------------------------------

    async def works(self) -> list[WorkRecord]:
        return [work_from_row(r) for r in await self._fetch(f"SELECT {WORK_COLUMNS} FROM works ORDER BY name")]

    async def work(self, name: str) -> WorkRecord | None:
        rows = await self._fetch(f"SELECT {WORK_COLUMNS} FROM works WHERE name = $1", name)
        return work_from_row(rows[0]) if rows else None

    async def put_work(self, name: str, spec: bytes, *, by: str, now: float, create: bool = False) -> WorkRecord:
        async with self._transaction() as conn:
            # first: the counter's row lock serialises work writers across replicas, so the
            # check below sees every earlier write and the highest revision commits last
            await conn.execute("SELECT value FROM meta WHERE key = 'works_rev' FOR UPDATE")
            row = await conn.fetchrow(f"SELECT {WORK_COLUMNS} FROM works WHERE name = $1", name)
            if row is not None:
                if create:
                    raise WorkExists(name)
                stored = work_from_row(row)
                if stored.spec == spec:
                    return stored  # nothing to write: no revision taken
            revision = await _next_work_revision(conn)
            written = await conn.fetchrow(
                "INSERT INTO works (name, spec, generation, revision, created_at, updated_at, updated_by) VALUES ($1, $2, $3, $3, $4, $4, $5)"
                " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, generation = excluded.generation, revision = excluded.revision,"
                f" updated_at = excluded.updated_at, updated_by = excluded.updated_by RETURNING {WORK_COLUMNS}",
                name,
                spec,
                revision,
                now,
                by,
            )
        return work_from_row(written)

    async def delete_work(self, name: str) -> bool:
        return _rowcount(await self._execute("DELETE FROM works WHERE name = $1", name)) > 0

    async def work_statuses(self, *, work: str | None = None, cluster: str | None = None) -> list[WorkStatusRecord]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("work", work), ("cluster", cluster)):
            if value is not None:
                params.append(value)
                where.append(f"{column} = ${len(params)}")
        sql = f"SELECT {WORK_STATUS_COLUMNS} FROM work_status" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY work, cluster"
        return [work_status_from_row(r) for r in await self._fetch(sql, *params)]

    async def set_work_status(self, record: WorkStatusRecord) -> None:
        await self._execute(
            f"INSERT INTO work_status ({WORK_STATUS_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (work, cluster) DO UPDATE SET generation = excluded.generation, manifests = excluded.manifests, updated_at = excluded.updated_at",
            record.work,
            record.cluster,
            record.generation,
            record.manifests,
            record.updated_at,
        )

    async def delete_work_status(self, work: str, cluster: str) -> None:
        await self._execute("DELETE FROM work_status WHERE work = $1 AND cluster = $2", work, cluster)

    # ---- hub settings ------------------------------------------------------------------------

    async def hub_settings(self) -> dict[str, str]:
        return {r[0]: r[1] for r in await self._fetch("SELECT key, value FROM hub_settings ORDER BY key")}

    async def set_hub_setting(self, key: str, value: str | None) -> None:
        if value is None:
            await self._execute("DELETE FROM hub_settings WHERE key = $1", key)
        else:
            await self._execute("INSERT INTO hub_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value)

    async def set_gates_applied(self, cluster: str, revision: int, *, now: float) -> None:
        await self._execute(
            "INSERT INTO cluster_gates (cluster, revision, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (cluster) DO UPDATE SET revision = excluded.revision, updated_at = excluded.updated_at",
            cluster,
            revision,
            now,
        )

    async def gates_applied(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in await self._fetch("SELECT cluster, revision FROM cluster_gates ORDER BY cluster")}

    async def report_cluster_gate(self, cluster: str, key: str, enabled: bool | None, *, old: bool | None, by: str, now: float) -> GateChange | None:
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO cluster_gate_values (cluster, key, value, updated_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (cluster, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                cluster,
                key,
                gate_value_text(enabled),
                now,
            )
            if old == enabled:
                return None
            return await _record_gate_change(conn, self.gate_history_keep, key, cluster, old, enabled, by=by, now=now, revision=0)

    async def cluster_gate_values(self, *, key: str | None = None, cluster: str | None = None) -> list[ClusterGateValue]:
        rows = await self._fetch(
            "SELECT cluster, key, value, updated_at FROM cluster_gate_values WHERE ($1::text IS NULL OR key = $1) AND ($2::text IS NULL OR cluster = $2)"
            " ORDER BY key, cluster",
            key,
            cluster,
        )
        return [cluster_gate_value_from_row(r) for r in rows]

    async def gate_history(self, *, key: str | None = None, cluster: str | None = None, limit: int = 100) -> list[GateChange]:
        rows = await self._fetch(
            f"SELECT {GATE_HISTORY_COLUMNS} FROM gate_history WHERE ($1::text IS NULL OR key = $1) AND ($2::text IS NULL OR cluster = $2)"
            " ORDER BY id DESC LIMIT $3",
            key,
            cluster,
            limit,
        )
        return [gate_change_from_row(r) for r in rows]

    # ---- reported types -------------------------------------------------------------------

    async def reported_types(self) -> dict[str, dict[str, str]]:
        rows = await self._fetch("SELECT cluster, type, info FROM cluster_types ORDER BY cluster, type")
        found: dict[str, dict[str, str]] = {}
        for cluster, type_, info in rows:
            found.setdefault(cluster, {})[type_] = info
        return found

    async def set_reported_types(self, cluster: str, types: Mapping[str, str], *, now: float) -> None:
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM cluster_types WHERE cluster = $1", cluster)
            if types:
                await conn.executemany(
                    "INSERT INTO cluster_types (cluster, type, info, updated_at) VALUES ($1, $2, $3, $4)",
                    [(cluster, type_, info, now) for type_, info in sorted(types.items())],
                )

    # ---- cluster labels --------------------------------------------------------------------

    async def cluster_labels(self, name: str | None = None) -> dict[str, dict[str, str]]:
        rows = await self._fetch("SELECT cluster, labels FROM cluster_labels WHERE $1::text IS NULL OR cluster = $1 ORDER BY cluster", name)
        return {r[0]: orjson.loads(r[1]) for r in rows}

    async def label_cluster(self, name: str, *, add: Mapping[str, str], remove: Sequence[str], now: float) -> dict[str, str]:
        async with self._transaction() as conn:
            # the row lock (or, for a new row, the primary key) orders concurrent labellers of one cluster
            await conn.execute("INSERT INTO cluster_labels (cluster, labels, updated_at) VALUES ($1, '{}'::jsonb, $2) ON CONFLICT DO NOTHING", name, now)
            stored = await conn.fetchval("SELECT labels FROM cluster_labels WHERE cluster = $1 FOR UPDATE", name)
            labels = merge_labels(orjson.loads(stored), add=add, remove=remove)
            if labels:
                await conn.execute("UPDATE cluster_labels SET labels = $2::jsonb, updated_at = $3 WHERE cluster = $1", name, _text(labels), now)
            else:
                await conn.execute("DELETE FROM cluster_labels WHERE cluster = $1", name)
        return labels

    # ---- clusters and leases -------------------------------------------------------------

    async def upsert_cluster(self, record: ClusterRecord) -> None:
        await self._execute(
            """
            INSERT INTO clusters (name, agent_id, incarnation, status, metadata, connected_at, last_seen, hub_id)
            VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)
            ON CONFLICT (name) DO UPDATE SET
                agent_id = excluded.agent_id, incarnation = excluded.incarnation, status = excluded.status,
                metadata = excluded.metadata, connected_at = excluded.connected_at, last_seen = excluded.last_seen,
                hub_id = excluded.hub_id
            """,
            record.name,
            record.agent_id,
            record.incarnation,
            record.status,
            _text(record.metadata),
            record.connected_at,
            record.last_seen,
            record.hub_id,
        )
        self._seen_written[record.name] = record.last_seen

    async def set_cluster_status(self, name: str, *, status: str, now: float) -> None:
        await self._execute(
            "UPDATE clusters SET status = $1, last_seen = greatest(last_seen, $2),"
            " connected_at = CASE WHEN $1 = 'active' THEN $2 ELSE connected_at END WHERE name = $3",
            status,
            now,
            name,
        )

    async def touch_cluster(self, name: str, *, now: float) -> None:
        """Buffered as in the SQLite engine: at most one write per ``TOUCH_INTERVAL`` for every cluster together."""
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
        seen, self._seen = self._seen, {}
        try:
            await self._execute(
                "UPDATE clusters c SET last_seen = greatest(c.last_seen, t.seen) FROM unnest($1::text[], $2::float8[]) AS t(name, seen) WHERE c.name = t.name",
                list(seen),
                list(seen.values()),
            )
        except BaseException:
            for name, t in seen.items():
                self._seen[name] = max(t, self._seen.get(name, -math.inf))
            raise
        self._seen_written.update(seen)

    async def clusters(self) -> list[ClusterRecord]:
        return await self._clusters("")

    async def cluster(self, name: str) -> ClusterRecord | None:
        found = await self._clusters("WHERE name = $1", name)
        return found[0] if found else None

    async def _clusters(self, where: str, *params: Any) -> list[ClusterRecord]:
        rows = await self._fetch(
            f"SELECT name, agent_id, incarnation, status, metadata, connected_at, last_seen, hub_id FROM clusters {where} ORDER BY name", *params
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
        await self._flush_touches()  # this replica's pending times count
        rows = await self._fetch(
            "UPDATE clusters SET status = 'inactive' WHERE status = 'active' AND last_seen < $1"
            " AND name NOT IN (SELECT cluster FROM refresh WHERE mode = 'pull') RETURNING name",
            cutoff,
        )
        return sorted(r[0] for r in rows)

    async def delete_cluster(self, name: str) -> ClusterDeletion:
        """See the contract. The lease row goes first (a batch of the cluster's session that
        fences after it is refused); the revision counter's row lock then orders the ``DELETED``
        changes with every other replica's writes, as a batch's revisions are ordered."""
        async with self._transaction() as conn:
            found = int((await conn.execute("DELETE FROM leases WHERE cluster = $1", name)).rsplit(" ", 1)[1]) > 0
            base = int(await conn.fetchval("SELECT value FROM meta WHERE key = 'rev' FOR UPDATE"))
            objects = int(await conn.fetchval("SELECT count(*) FROM objects WHERE cluster = $1", name))
            if objects:
                await conn.execute(
                    f"INSERT INTO changes (rev, event, cluster, type, namespace, name, {OBJECT_FIELDS})"
                    f" SELECT $1 + row_number() OVER (ORDER BY type, namespace, name), 'DELETED', cluster, type, namespace, name, {OBJECT_FIELDS}"
                    " FROM objects WHERE cluster = $2",
                    base,
                    name,
                )
                await conn.execute("DELETE FROM objects WHERE cluster = $1", name)
                await conn.execute("UPDATE meta SET value = $1 WHERE key = 'rev'", base + objects)
                await conn.execute("SELECT pg_notify($1, $2)", PG_CHANNEL, f"changes\n{base + objects}")
            tokens = int((await conn.execute("DELETE FROM tokens WHERE name = $1 AND role = 'agent'", name)).rsplit(" ", 1)[1])
            found = found or bool(objects or tokens)
            for statement in (
                "DELETE FROM clusters WHERE name = $1",
                "DELETE FROM streams WHERE cluster = $1",
                "DELETE FROM cluster_labels WHERE cluster = $1",
                "DELETE FROM cluster_gates WHERE cluster = $1",
                "DELETE FROM cluster_gate_values WHERE cluster = $1",
                "DELETE FROM cluster_types WHERE cluster = $1",
                "DELETE FROM work_status WHERE cluster = $1",
                "DELETE FROM refresh WHERE cluster = $1",
            ):
                found = int((await conn.execute(statement, name)).rsplit(" ", 1)[1]) > 0 or found
        return ClusterDeletion(objects=objects, tokens=tokens, rev=base + objects, found=found)

    async def leases(self) -> list[Lease]:
        return [lease_from_row(r) for r in await self._fetch(f"SELECT {_LEASE_COLUMNS} FROM leases ORDER BY cluster")]

    async def acquire_lease(
        self, cluster: str, *, holder: str, incarnation: str, hub_id: str, now: float, ttl: float, silent_before: float = -math.inf
    ) -> LeaseResult:
        await self._flush_touches()  # this replica's pending times count: the holder's last message may be one
        async with self._transaction() as conn:
            # The row lock (FOR UPDATE) serializes racing replicas and waits for any batch that
            # checked the old epoch (FOR SHARE) to commit: no write of the old session lands after.
            await conn.execute(f"INSERT INTO leases ({_LEASE_COLUMNS}) VALUES ($1, '', '', '', 0, false, 0) ON CONFLICT (cluster) DO NOTHING", cluster)
            row = await conn.fetchrow(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE cluster = $1 FOR UPDATE", cluster)
            current = lease_from_row(row)
            seen = await conn.fetchval("SELECT last_seen FROM clusters WHERE name = $1", cluster)
            last_seen = float(seen) if seen is not None else -math.inf
            if current.holder and not may_take(current, holder=holder, incarnation=incarnation, now=now, last_seen=last_seen, silent_before=silent_before):
                return LeaseResult(granted=False, lease=current)
            granted = await conn.fetchrow(
                f"""
                UPDATE leases SET holder = $2, incarnation = $3, hub_id = $4, expires_at = $5, connected = true, epoch = epoch + 1
                WHERE cluster = $1 RETURNING {_LEASE_COLUMNS}
                """,
                cluster,
                holder,
                incarnation,
                hub_id,
                now + ttl,
            )
            return LeaseResult(granted=True, lease=lease_from_row(granted))

    async def renew_leases(self, leases: Sequence[tuple[str, int]], *, hub_id: str, now: float, ttl: float) -> list[str]:
        if not leases:
            return []
        clusters = [cluster for cluster, _ in leases]
        async with self._transaction() as conn:
            # rows locked in cluster order, as a batch's fence check takes them: no deadlock between the two
            rows = await conn.fetch(
                """
                WITH mine AS (
                    SELECT l.cluster FROM leases l JOIN unnest($1::text[], $2::bigint[]) AS t(c, e) ON l.cluster = t.c AND l.epoch = t.e
                    ORDER BY l.cluster FOR UPDATE OF l
                )
                UPDATE leases SET expires_at = $3, hub_id = $4, connected = true FROM mine WHERE leases.cluster = mine.cluster
                RETURNING leases.cluster
                """,
                clusters,
                [epoch for _, epoch in leases],
                now + ttl,
                hub_id,
            )
        renewed = {r[0] for r in rows}
        return sorted(set(clusters) - renewed)

    async def release_lease(self, cluster: str, *, holder: str, incarnation: str, now: float, grace: float) -> None:
        await self._execute(
            "UPDATE leases SET connected = false, expires_at = $1 WHERE cluster = $2 AND holder = $3 AND incarnation = $4",
            now + grace,
            cluster,
            holder,
            incarnation,
        )

    # ---- streams and apply -----------------------------------------------------------

    async def streams(self, cluster: str | None) -> list[StreamRecord]:
        rows = await self._fetch(
            "SELECT cluster, type, incarnation, seq, error, updated_at FROM streams WHERE $1::text IS NULL OR cluster = $1 ORDER BY cluster, type", cluster
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
        """See the contract and :mod:`fleetsync.store.plan`; revisions are assigned exactly as the
        SQLite engine does. The transaction is :func:`~fleetsync.store.pgbatch.write_batch`, on a
        connection of the pool or in the batch writer's process (``batch_writer``). A lost or
        refused connection, a server shutting down or out of disk is raised as StoreUnavailable."""
        if self._batch is not None:
            return await self._batch.write(writes)
        try:
            async with self._get_pool().acquire() as conn:
                return await write_batch(conn, writes, self.change_log_keep)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL at {safe_url(self.url)}: {exc!r}") from exc

    async def set_stream_error(self, cluster: str, type: str, error: str, *, now: float) -> None:  # noqa: A002
        if error:
            await self._execute(
                "INSERT INTO streams (cluster, type, incarnation, seq, error, updated_at) VALUES ($1, $2, '', 0, $3, $4)"
                " ON CONFLICT (cluster, type) DO UPDATE SET error = excluded.error, updated_at = excluded.updated_at",
                cluster,
                type,
                error,
                now,
            )
        else:
            await self._execute("UPDATE streams SET error = '', updated_at = $1 WHERE cluster = $2 AND type = $3 AND error != ''", now, cluster, type)

    async def object_hashes(self, cluster: str, type: str) -> dict[str, int]:  # noqa: A002
        rows = await self._fetch("SELECT namespace, name, hash FROM objects WHERE cluster = $1 AND type = $2", cluster, type)
        return {f"{r[0]}/{r[1]}": to_unsigned(r[2]) for r in rows}

    # ---- reads -----------------------------------------------------------------------

    async def get_object(self, cluster: str, type: str, namespace: str, name: str) -> ObjectRecord | None:  # noqa: A002
        rows = await self._fetch(
            f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE cluster = $1 AND type = $2 AND namespace = $3 AND name = $4", cluster, type, namespace, name
        )
        return object_from_row(rows[0]) if rows else None

    async def _clusters_of_type(self, type: str) -> list[str]:  # noqa: A002
        """The clusters holding objects of ``type``, by a skip scan of objects_by_type (one probe per cluster)."""
        rows = await self._fetch(
            "WITH RECURSIVE c(name) AS (SELECT min(cluster) FROM objects WHERE type = $1"
            " UNION ALL SELECT (SELECT min(cluster) FROM objects WHERE type = $1 AND cluster > c.name) FROM c WHERE c.name IS NOT NULL)"
            " SELECT name FROM c WHERE name IS NOT NULL",
            type,
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
        where, params = ["type = $1"], [type]

        def param(value: str) -> str:
            params.append(value)
            return f"${len(params)}"

        if labels:
            where.append(f"labels @> {param(_text(labels))}::jsonb")
        if cluster is not None:
            where.append(f"cluster = {param(cluster)}")
        if namespace is not None:
            where.append(f"namespace = {param(namespace)}")
        if after is not None:
            # row comparison on the index's columns: PostgreSQL walks objects_by_type from the cursor
            where.append(f"(cluster, namespace, name) > ({param(after[0])}, {param(after[1])}, {param(after[2])})")
        sql = f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE {' AND '.join(where)} ORDER BY cluster, namespace, name"
        if limit > 0:
            sql += f" LIMIT {int(limit)}"
        return [object_from_row(r) for r in await self._fetch(sql, *params)]

    async def counts(self, cluster: str) -> dict[str, int]:
        rows = await self._fetch("SELECT type, count(*) FROM objects WHERE cluster = $1 GROUP BY type ORDER BY type", cluster)
        return {r[0]: r[1] for r in rows}

    async def counts_by_cluster(self) -> dict[str, dict[str, int]]:
        rows = await self._fetch("SELECT cluster, type, count(*) FROM objects GROUP BY cluster, type ORDER BY cluster, type")
        return nested_counts(rows)

    async def current_rev(self) -> int:
        return int(await self._fetchval("SELECT value FROM meta WHERE key = 'rev'"))

    async def oldest_rev(self) -> int:
        return int(await self._fetchval("SELECT coalesce((SELECT min(rev) FROM changes) - 1, (SELECT value FROM meta WHERE key = 'rev'))"))

    async def changes_since(self, rev: int, *, limit: int = 1000) -> list[Change]:
        """``limit`` <= 0: all of them."""
        sql = f"SELECT event, cluster, type, namespace, name, {OBJECT_FIELDS}, rev FROM changes WHERE rev > $1 ORDER BY rev"
        if limit > 0:
            sql += f" LIMIT {int(limit)}"
        rows = await self._fetch(sql, rev)
        return [Change(rev=r[13], type=event_type(r[0]), obj=object_from_row(r[1:])) for r in rows]

    async def trim_changes(self, *, keep: int) -> None:
        if keep <= 0:
            await self._execute("DELETE FROM changes")
        else:
            await self._execute("DELETE FROM changes WHERE rev < (SELECT rev FROM changes ORDER BY rev DESC LIMIT 1 OFFSET $1)", keep - 1)

    # ---- events ----------------------------------------------------------------------

    async def add_events(self, events: Sequence[EventRecord]) -> None:
        if not events:
            return
        async with self._transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)  # ids commit in order
            newest = int(
                await conn.fetchval(
                    "WITH added AS (INSERT INTO events (at, cluster, reason, type, message, hub_id)"
                    " SELECT * FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) RETURNING id)"
                    " SELECT max(id) FROM added",
                    [e.time for e in events],
                    [e.cluster for e in events],
                    [e.reason for e in events],
                    [e.type for e in events],
                    [e.message for e in events],
                    [e.hub_id for e in events],
                )
            )
            step = max(1, self.events_keep // 100)
            if self.events_keep and newest // step != (newest - len(events)) // step:
                await conn.execute("DELETE FROM events WHERE id <= $1", newest - self.events_keep)
            await conn.execute("SELECT pg_notify($1, $2)", PG_CHANNEL, f"events\n{newest}")

    async def events(
        self, *, cluster: str | None = None, reason: str | None = None, after: int | None = None, limit: int = 100, clusters: Collection[str] | None = None
    ) -> list[EventRecord]:
        where: list[str] = []
        params: list[Any] = []
        if clusters is not None:
            if not clusters:
                return []
            params.append(sorted(clusters))
            where.append(f"cluster = ANY(${len(params)}::text[])")
        for column, value in (("cluster =", cluster), ("reason =", reason), ("id >", after)):
            if value is not None:
                params.append(value)
                where.append(f"{column} ${len(params)}")
        sql = "SELECT id, at, cluster, reason, type, message, hub_id FROM events" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += f" ORDER BY id {'ASC' if after is not None else 'DESC'} LIMIT {max(0, int(limit))}"
        rows = await self._fetch(sql, *params)
        records = [EventRecord(id=r[0], time=r[1], cluster=r[2], reason=r[3], type=r[4], message=r[5], hub_id=r[6]) for r in rows]
        return records if after is not None else records[::-1]

    # ---- refresh scheduling and locks ----------------------------------------------------

    async def set_refresh(self, cluster: str, *, mode: str, url: str = "", interval: float, next_refresh_at: float) -> None:
        await self._execute(
            f"INSERT INTO refresh ({_REFRESH_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (cluster) DO UPDATE SET mode = excluded.mode, url = excluded.url, interval = excluded.interval,"
            " next_refresh_at = least(refresh.next_refresh_at, excluded.next_refresh_at)",
            cluster,
            mode,
            url,
            interval,
            next_refresh_at,
        )

    async def remove_refresh(self, cluster: str) -> bool:
        return _rowcount(await self._execute("DELETE FROM refresh WHERE cluster = $1", cluster)) > 0

    async def refresh_targets(self, cluster: str | None = None) -> list[RefreshTarget]:
        rows = await self._fetch(f"SELECT {_REFRESH_COLUMNS} FROM refresh WHERE $1::text IS NULL OR cluster = $1 ORDER BY cluster", cluster)
        return [refresh_from_row(r) for r in rows]

    async def claim_due_refreshes(self, *, hub_id: str, now: float, limit: int = 100) -> list[RefreshTarget]:
        # SKIP LOCKED: replicas claiming at once take disjoint sets instead of waiting for each other
        rows = await self._fetch(
            """
            UPDATE refresh r SET next_refresh_at = $2 + r.interval
            FROM (
                SELECT cluster FROM refresh
                WHERE next_refresh_at <= $2 AND (
                    mode = 'pull' OR cluster IN (SELECT cluster FROM leases WHERE hub_id = $1 AND connected AND expires_at > $2)
                )
                ORDER BY next_refresh_at LIMIT $3 FOR UPDATE SKIP LOCKED
            ) due
            WHERE r.cluster = due.cluster
            RETURNING r.cluster, r.mode, r.url, r.interval, r.next_refresh_at
            """,
            hub_id,
            now,
            limit,
        )
        return sorted((refresh_from_row(r) for r in rows), key=lambda t: t.cluster)

    async def postpone_refresh(self, cluster: str, *, until: float) -> None:
        await self._execute("UPDATE refresh SET next_refresh_at = greatest(next_refresh_at, $1) WHERE cluster = $2", until, cluster)

    async def try_lock(self, name: str, *, holder: str, now: float, ttl: float) -> bool:
        row = await self._fetchval(
            "INSERT INTO locks (name, holder, expires_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
            " WHERE locks.expires_at <= $4 OR locks.holder = excluded.holder RETURNING holder",
            name,
            holder,
            now + ttl,
            now,
        )
        return row is not None

    async def lock_holder(self, name: str, *, now: float) -> str | None:
        holder = await self._fetchval("SELECT holder FROM locks WHERE name = $1 AND expires_at > $2", name, now)
        return None if holder is None else str(holder)

    async def unlock(self, name: str, *, holder: str) -> None:
        await self._execute("DELETE FROM locks WHERE name = $1 AND holder = $2", name, holder)


class _NothingToDelete(FleetsyncError):
    """Ends a gate delete's transaction without writing (see :meth:`PostgresStore.delete_gate`)."""


async def _next_gate_revision(conn: asyncpg.Connection) -> int:
    """The next gate revision (in the caller's transaction, whose commit releases the counter's row lock)."""
    return int(await conn.fetchval("UPDATE meta SET value = value + 1 WHERE key = 'gates_rev' RETURNING value"))


async def _next_work_revision(conn: asyncpg.Connection) -> int:
    """The next work revision (in the caller's transaction, whose commit releases the counter's row lock)."""
    return int(await conn.fetchval("UPDATE meta SET value = value + 1 WHERE key = 'works_rev' RETURNING value"))
