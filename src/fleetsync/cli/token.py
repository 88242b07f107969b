"""``fleetsync token create NAME [--role agent|read|admin] [--grant gates] --db URL`` (prints a new token once),
``fleetsync token list --db URL``, ``fleetsync token delete NAME [--role ROLE] --db URL`` and
``fleetsync token grant CLUSTER [GRANT...] --db URL`` (sets what a cluster's agent tokens may do
beyond writing it, e.g. ``gates``, without a new secret).

A read token may be scoped (``--clusters c1,c2 --cluster-selector env=prod --namespaces
team-a --types pods,deployments``): it then reads only that part of the fleet (rules in
``model/scope.py``, applied by ``api/scope.py``)."""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fleetsync.cli.flags import add_flag
from fleetsync.hub.auth import ROLES, hash_token, new_token
from fleetsync.model.names import check_cluster_name
from fleetsync.model.scope import scope_problem, split_names
from fleetsync.model.types import HUB_TYPES, TypeRegistry, UnknownResourceType
from fleetsync.store import open_store
from fleetsync.store.contract import GRANTS, ReadScope, Store

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
    add_flag(
        create,
        "--types",
        default="",
        help="role agent: only these types may be written; role read: only these types may be read (comma-separated; a type the hub learns from agents, e.g. a CRD's, as group/version/Kind; default: every type)",
    )
    add_flag(create, "--clusters", default="", help="role read: only these clusters may be read (comma-separated; with --cluster-selector: either)")
    add_flag(
        create,
        "--cluster-selector",
        default="",
        help="role read: only clusters whose admin-set labels (fleetsync clusters label) match this selector, e.g. env=prod, may be read",
    )
    add_flag(
        create,
        "--namespaces",
        default="",
        help="role read: only objects of these namespaces may be read (comma-separated; cluster-scoped types are then refused)",
    )
    add_flag(
        create,
        "--grant",
        default="",
        help=f"role agent: what else it may do (comma-separated, of: {', '.join(GRANTS)}); gates: its cluster's local gate changes are written "
        "to the fleet's gates (default: none, they are refused)",
    )
    create.set_defaults(run=run_create)
    listing = sub.add_parser("list", help="list the tokens (names and roles; secrets are never stored)")
    add_flag(listing, "--db", default="sqlite:///fleetsync.db", help="the hub's store URL")
    listing.set_defaults(run=run_list)
    delete = sub.add_parser("delete", help="delete (revoke) every token of NAME; hubs stop accepting them within seconds")
    delete.add_argument("name", help="the token's name: the cluster of an agent token, the client of an API token")
    add_flag(delete, "--role", default=None, choices=ROLES, help="only tokens of this role (default: every role)")
    add_flag(delete, "--db", default="sqlite:///fleetsync.db", help="the hub's store URL")
    delete.set_defaults(run=run_delete)
    grant = sub.add_parser(
        "grant",
        help="set what the agent tokens of cluster NAME may do beyond writing it (no new secret to hand out)",
        description="Sets the grants of every agent token of cluster NAME to exactly GRANT... (none: revoke them all). "
        "A connected agent's session keeps what it had at its Hello: the change applies from its next connection.",
    )
    grant.add_argument("name", help="the cluster whose agent tokens change")
    grant.add_argument("grants", nargs="*", metavar="GRANT", help=f"what its agent tokens may do, of: {', '.join(GRANTS)} (none: nothing beyond its cluster)")
    add_flag(grant, "--db", default="sqlite:///fleetsync.db", help="the hub's store URL")
    grant.set_defaults(run=run_grant)


def _grants(args: argparse.Namespace) -> list[str]:
    names = [g.strip() for g in args.grant.split(",") if g.strip()]
    if names and args.role != "agent":
        raise ValueError("--grant applies to agent tokens only")
    if unknown := [g for g in names if g not in GRANTS]:
        raise ValueError(f"--grant: unknown grant {unknown[0]!r} (known: {', '.join(GRANTS)})")
    return names


def _types(args: argparse.Namespace) -> list[str]:
    names = [t.strip() for t in args.types.split(",") if t.strip()]
    if names and args.role not in ("agent", "read"):
        raise ValueError("--types applies to agent and read tokens only (an admin token reads everything)")
    registry = TypeRegistry(HUB_TYPES)
    resolved = []
    for name in names:
        try:
            resolved.append(registry.resolve(name).gvk)
        except UnknownResourceType as exc:
            if not _WIRE_NAME.fullmatch(name):  # a type the hub learns from its agents (a CRD's) is named group/version/Kind
                raise ValueError(f"--types: {exc} (name a type this hub was not built with as group/version/Kind, e.g. example.com/v1/Widget)") from None
            resolved.append(name)
    return resolved


#: The wire name of a custom type: ``example.com/v1/Widget``.
_WIRE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/v[0-9]+((alpha|beta)[0-9]+)?/[A-Za-z][A-Za-z0-9]{0,62}")


def _scope(args: argparse.Namespace, types: list[str]) -> ReadScope | None:
    """A read token's scope from the flags (None: it reads everything); ValueError naming a bad flag."""
    given = ReadScope(
        clusters=split_names(args.clusters),
        cluster_selector=args.cluster_selector.strip(),
        namespaces=split_names(args.namespaces),
        types=tuple(sorted(set(types))) if args.role == "read" else (),
    )
    if given == ReadScope():
        return None
    if args.role != "read":
        raise ValueError("--clusters, --cluster-selector and --namespaces apply to read tokens only (an admin token reads everything)")
    if problem := scope_problem(given):
        raise ValueError(problem)
    return given


def describe_scope(scope: ReadScope) -> str:
    """A read token's scope as ``token list`` shows it."""
    parts = [f"clusters={','.join(scope.clusters)}" if scope.clusters else "", f"selector={scope.cluster_selector}" if scope.cluster_selector else ""]
    parts += [f"namespaces={','.join(scope.namespaces)}" if scope.namespaces else "", f"types={','.join(scope.types)}" if scope.types else ""]
    return " ".join(p for p in parts if p)


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
        await store.add_token(
            name=args.name, role=args.role, token_hash=hash_token(token), types=types if args.role == "agent" else (), grants=grants, scope=scope
        )
        return token

    try:
        types = _types(args)
        scope = _scope(args, types)
        grants = _grants(args)
        if args.role == "agent":
            check_cluster_name(args.name)
    except ValueError as exc:
        raise SystemExit(f"fleetsync token create: {exc}") from None
    print(_run("create", _with_store(args.db, create)))
    return 0


def run_list(args: argparse.Namespace) -> int:
    tokens = _run("list", _with_store(args.db, lambda store: store.tokens()))
    rows = [("NAME", "ROLE", "MAY WRITE", "GRANTS", "MAY READ")] + [
        (
            t.name,
            t.role,
            ",".join(t.types) or ("cluster " + t.name if t.role == "agent" else "-"),
            ",".join(t.grants) or "-",
            describe_scope(t.scope) if t.scope is not None else ("everything" if t.role in ("read", "admin") else "-"),
        )
        for t in tokens
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
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


def run_grant(args: argparse.Namespace) -> int:
    if unknown := [g for g in args.grants if g not in GRANTS]:
        raise SystemExit(f"fleetsync token grant: unknown grant {unknown[0]!r} (known: {', '.join(GRANTS)})")
    changed = _run("grant", _with_store(args.db, lambda store: store.set_token_grants(args.name, args.grants)))
    if not changed:
        raise SystemExit(f"fleetsync token grant: cluster {args.name!r} has no agent token (create one with `fleetsync token create {args.name}`)")
    granted = ", ".join(sorted(set(args.grants))) or "nothing beyond its cluster"
    print(f"the {changed} agent token{'s' if changed > 1 else ''} of {args.name!r} may now do: {granted}")
    return 0
