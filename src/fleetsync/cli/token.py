"""``fleetsync token create NAME [--role agent|read|admin] --db URL``: prints a new token once."""

from __future__ import annotations

import argparse
import asyncio

from fleetsync.cli.flags import add_flag
from fleetsync.hub.auth import ROLES, hash_token, new_token
from fleetsync.model.names import check_cluster_name
from fleetsync.model.types import TypeRegistry, UnknownResourceType
from fleetsync.store import open_store


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


def _types(args: argparse.Namespace) -> list[str]:
    names = [t.strip() for t in args.types.split(",") if t.strip()]
    if names and args.role != "agent":
        raise ValueError("--types applies to agent tokens only")
    registry = TypeRegistry()
    try:
        return [registry.resolve(name).gvk for name in names]
    except UnknownResourceType as exc:
        raise ValueError(f"--types: {exc}") from None


async def _create(args: argparse.Namespace) -> str:
    types = _types(args)
    if args.role == "agent":
        check_cluster_name(args.name)
    store = open_store(args.db)
    await store.open()
    try:
        token = new_token()
        await store.add_token(name=args.name, role=args.role, token_hash=hash_token(token), types=types)
        return token
    finally:
        await store.close()


def run_create(args: argparse.Namespace) -> int:
    try:
        print(asyncio.run(_create(args)))
    except (ValueError, RuntimeError, OSError) as exc:
        raise SystemExit(f"fleetsync token create: {exc}") from None
    return 0
