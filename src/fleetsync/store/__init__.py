"""The hub's store: one contract (:mod:`.contract`), two engines: SQLite (embedded) and PostgreSQL (scale-out)."""

from __future__ import annotations

from pathlib import Path

from fleetsync.store.contract import Store


def open_store(url: str) -> Store:
    """A store for ``sqlite:///PATH`` or ``postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE``."""
    if url.startswith("sqlite:///"):
        from fleetsync.store.sqlite import SQLiteStore

        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.exists():
            raise ValueError(f"--db {url}: directory {path.parent} does not exist")
        return SQLiteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        from fleetsync.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"--db {url!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")
