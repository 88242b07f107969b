"""``fleetsync db migrate --db URL``: bring a store's schema up to date (the hub also does this at start)."""

from __future__ import annotations

import argparse
import asyncio

from fleetsync.cli.flags import add_flag
from fleetsync.store import open_store


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("db", help="manage the hub's store", description="Database tasks for the hub's store (SQLite or PostgreSQL).")
    sub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    migrate = sub.add_parser(
        "migrate",
        help="apply pending schema migrations and print the schema version",
        description="Apply the schema migrations this fleetsync knows and the store lacks. Safe to run while hubs run, and from several places at once.",
    )
    add_flag(migrate, "--db", default="sqlite:///fleetsync.db", help="store URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")
    migrate.set_defaults(run=run_migrate)


async def _migrate(url: str) -> int:
    store = open_store(url)
    await store.open()  # applies what is missing, logging each migration
    try:
        return await store.schema_version()
    finally:
        await store.close()


def run_migrate(args: argparse.Namespace) -> int:
    try:
        version = asyncio.run(_migrate(args.db))
    except (ValueError, RuntimeError, OSError) as exc:
        raise SystemExit(f"fleetsync db migrate: {exc}") from None
    print(f"{args.db}: schema at version {version}")
    return 0
