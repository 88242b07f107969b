"""The hub's store: one contract (:mod:`.contract`), two engines: SQLite (embedded) and PostgreSQL (scale-out)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fleetsync.store.contract import Store


def open_store(
    url: str,
    *,
    change_log_keep: int = 100_000,
    events_keep: int = 10_000,
    gate_history_keep: int = 10_000,
    busy_timeout: float = 10.0,
    timeout: float = 30.0,
    batch_writer: Literal["thread", "process"] = "thread",
) -> Store:
    """A store for ``sqlite:///PATH`` or ``postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE``;
    ``change_log_keep``: how many changes the log keeps (watches from older revisions get 410);
    ``events_keep``: how many events are kept (the oldest go first);
    ``gate_history_keep``: how many gate history entries are kept (the oldest go first);
    ``busy_timeout``: SQLite only, seconds a write waits for another process's lock;
    ``timeout``: PostgreSQL only, seconds a connection attempt or a statement may take;
    ``batch_writer``: where batches are written, in this process or a process of the store's
    own (:mod:`fleetsync.store.writerprocess`)."""
    if url.startswith("sqlite:///"):
        from fleetsync.store.sqlite import SQLiteStore

        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.exists():
            raise ValueError(f"--db {url}: directory {path.parent} does not exist")
        return SQLiteStore(
            path,
            change_log_keep=change_log_keep,
            events_keep=events_keep,
            gate_history_keep=gate_history_keep,
            busy_timeout=busy_timeout,
            batch_writer=batch_writer,
        )
    if url.startswith(("postgresql://", "postgres://")):
        from fleetsync.store.postgres import PostgresStore

        return PostgresStore(
            url, change_log_keep=change_log_keep, events_keep=events_keep, gate_history_keep=gate_history_keep, timeout=timeout, batch_writer=batch_writer
        )
    raise ValueError(f"--db {url!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")
