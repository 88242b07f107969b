"""The hub's store: one contract (:mod:`.contract`), engines behind it (SQLite now, PostgreSQL later)."""

from __future__ import annotations

from pathlib import Path

from fleetsync.store.contract import Store


def open_store(url: str) -> Store:
    """A store for ``sqlite:///PATH`` (PostgreSQL arrives with the scale-out work)."""
    if url.startswith("sqlite:///"):
        from fleetsync.store.sqlite import SQLiteStore

        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.exists():
            raise ValueError(f"--db {url}: directory {path.parent} does not exist")
        return SQLiteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"--db {url}: PostgreSQL is not supported yet; use sqlite:///PATH")
    raise ValueError(f"--db {url!r}: expected sqlite:///PATH")
