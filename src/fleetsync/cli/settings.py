"""``fleetsync settings list | set KEY=VALUE | unset KEY``: the hub's runtime settings (every replica reads them)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fleetsync.cli.client import UsageError, add_hub_flags, fetch, hub_session, item_url, print_table, run_client


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "settings",
        help="show and change the hub's runtime settings (e.g. deployment-type)",
        description="Settings live in the hub's store: a change takes effect at once on every replica (reading needs a read token, changing an admin token).",
    )
    sub = p.add_subparsers(dest="settings_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="every setting, its value and the values it takes")
    listing.add_argument("-o", "--output", default="", choices=["", "json"], help="output format")
    set_ = sub.add_parser("set", help="set a setting: KEY=VALUE")
    set_.add_argument("assignment", metavar="KEY=VALUE", help="e.g. deployment-type=maas")
    unset = sub.add_parser("unset", help="unset a setting (its default applies)")
    unset.add_argument("key", help="e.g. deployment-type")
    for action in (listing, set_, unset):
        add_hub_flags(action)
    listing.set_defaults(run=lambda a: run_client(_list(a)))
    set_.set_defaults(run=lambda a: run_client(_set(a)))
    unset.set_defaults(run=lambda a: run_client(_unset(a)))


async def _list(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        items: list[dict[str, Any]] = (await fetch(session, item_url(args, "/api/v1/settings"), token=args.token))["items"]
    if args.output == "json":
        print(json.dumps(items, indent=2))
    else:
        print_table(["SETTING", "VALUE", "VALUES", "MEANING"], [[i["key"], i["value"] or "(unset)", "|".join(i["values"]), i["description"]] for i in items])
    return 0


async def _set(args: argparse.Namespace) -> int:
    key, sep, value = args.assignment.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"expected KEY=VALUE, not {args.assignment!r} (e.g. deployment-type=maas)")
    async with hub_session(args) as session:
        answer = await fetch(session, item_url(args, "/api/v1/settings", key.strip()), token=args.token, method="PUT", body={"value": value.strip()})
    print(f"{answer['key']}={answer['value']}")
    return 0


async def _unset(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        await fetch(session, item_url(args, "/api/v1/settings", args.key), token=args.token, method="DELETE")
    print(f"{args.key} unset")
    return 0
