"""The hub's store: one contract (:mod:`.contract`), two engines: SQLite (embedded) and PostgreSQL (scale-out)."""

from __future__ import annotations

from pathlib import Path

from fleetsync.store.contract import Store


def open_store(url: str, *, change_log_keep: int = 100_000, busy_timeout: float = 10.0) -> Store:
    """A store for ``sqlite:///PATH`` or ``postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE``;
    ``change_log_keep``: how many changes the log keeps (watches from older revisions get 410);
    ``busy_timeout``: SQLite only, seconds a write waits for another process's lock."""
    if url.startswith("sqlite:///"):
        from fleetsync.store.sqlite import SQLiteStore

        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.exists():
            raise ValueError(f"--db {url}: directory {path.parent} does not exist")
        return SQLiteStore(path, change_log_keep=change_log_keep, busy_timeout=busy_timeout)
    if url.startswith(("postgresql://", "postgres://")):
        from fleetsync.store.postgres import PostgresStore

        return PostgresStore(url, change_log_keep=change_log_keep)
    raise ValueError(f"--db {url!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")
