"""``fleetsync token create NAME [--role agent|read|admin] --db URL`` (prints a new token once),
``fleetsync token list --db URL`` and ``fleetsync token delete NAME [--role ROLE] --db URL``."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fleetsync.cli.flags import add_flag
from fleetsync.hub.auth import ROLES, hash_token, new_token
from fleetsync.model.names import check_cluster_name
from fleetsync.model.types import HUB_TYPES, TypeRegistry, UnknownResourceType
from fleetsync.store import open_store
from fleetsync.store.contract import Store

T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "token", help="manage hub tokens", description="Tokens authenticate agents (role agent: may write cluster NAME only) and API clients (read, admin)."
    )
    sub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create a token and print it (only its hash is stored)")
    create.add_argument("name", help="role agent: the cluster the token may write; read/admin: a name for the API client")
    add_flag(create, "--role", default="agent", choices=ROLES, help="what the token may do")
    add_flag(create, "--db", default="sqlite:///fleetsync.db", help="the hub's store URL")
    add_flag(create, "--types", default="", help="role agent: only these types may be written (comma-separated; default: every type)")
    create.set_defaults(run=run_create)
    listing = sub.add_parser("list", help="list the tokens (names and roles; secrets are never stored)")
    add_flag(listing, "--db", default="sqlite:///fleetsync.db", help="the hub's store URL")
    listing.set_defaults(run=run_list)
    delete = sub.add_parser("delete", help="delete (revoke) every token of NAME; hubs stop accepting them within seconds")
    delete.add_argument("name", help="the token's name: the cluster of an agent token, the client of an API token")
    add_flag(delete, "--role", default=None, choices=ROLES, help="only tokens of this role (default: every role)")
    add_flag(delete, "--db", default="sqlite:///fleetsync.db", help="the hub's store URL")
    delete.set_defaults(run=run_delete)


def _types(args: argparse.Namespace) -> list[str]:
    names = [t.strip() for t in args.types.split(",") if t.strip()]
    if names and args.role != "agent":
        raise ValueError("--types applies to agent tokens only")
    registry = TypeRegistry(HUB_TYPES)
    try:
        return [registry.resolve(name).gvk for name in names]
    except UnknownResourceType as exc:
        raise ValueError(f"--types: {exc}") from None


async def _with_store(url: str, action: Callable[[Store], Awaitable[T]]) -> T:
    store = open_store(url)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


def _run(command: str, work: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(work)
    except (ValueError, RuntimeError, OSError) as exc:
        raise SystemExit(f"fleetsync token {command}: {exc}") from None


def run_create(args: argparse.Namespace) -> int:
    async def create(store: Store) -> str:
        token = new_token()
        await store.add_token(name=args.name, role=args.role, token_hash=hash_token(token), types=types)
        return token

    try:
        types = _types(args)
        if args.role == "agent":
            check_cluster_name(args.name)
    except ValueError as exc:
        raise SystemExit(f"fleetsync token create: {exc}") from None
    print(_run("create", _with_store(args.db, create)))
    return 0


def run_list(args: argparse.Namespace) -> int:
    tokens = _run("list", _with_store(args.db, lambda store: store.tokens()))
    rows = [("NAME", "ROLE", "MAY WRITE")] + [(t.name, t.role, ",".join(t.types) or ("cluster " + t.name if t.role == "agent" else "-")) for t in tokens]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def run_delete(args: argparse.Namespace) -> int:
    deleted = _run("delete", _with_store(args.db, lambda store: store.delete_tokens(args.name, args.role)))
    what = f"{args.role} token" if args.role else "token"
    if not deleted:
        raise SystemExit(f"fleetsync token delete: no {what} named {args.name!r}")
    print(f"deleted {deleted} {what}{'s' if deleted > 1 else ''} of {args.name!r}")
    return 0
