"""``fleetsync gates list | get KEY | set KEY=true|false | unset KEY``: the hub's feature gates (seed 004)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fleetsync.cli.client import ClientError, add_hub_flags, fetch, hub_session, item_url, print_table, run_client


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "gates",
        help="list and change the fleet's feature gates",
        description="Feature gates (feature.* keys) live in the hub's store, the single source of truth (seed 004); reading needs a read token, changing an admin token.",
    )
    sub = p.add_subparsers(dest="gates_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="every gate that is set")
    listing.add_argument("-o", "--output", default="", choices=["", "json"], help="output format")
    get = sub.add_parser("get", help="one gate")
    get.add_argument("key", help="e.g. feature.multi-region")
    get.add_argument("-o", "--output", default="", choices=["", "json"], help="output format")
    set_ = sub.add_parser("set", help="set a gate: KEY=true or KEY=false")
    set_.add_argument("assignment", metavar="KEY=true|false", help="e.g. feature.storage.ceph=true")
    unset = sub.add_parser("unset", help="unset a gate (agents unset it too)")
    unset.add_argument("key", help="e.g. feature.multi-region")
    for action in (listing, get, set_, unset):
        add_hub_flags(action)
    listing.set_defaults(run=lambda a: run_client(_list(a)))
    get.set_defaults(run=lambda a: run_client(_get(a)))
    set_.set_defaults(run=lambda a: run_client(_set(a)))
    unset.set_defaults(run=lambda a: run_client(_unset(a)))


def _rows(gates: list[dict[str, Any]]) -> None:
    now = time.time()
    print_table(
        ["GATE", "ENABLED", "REVISION", "UPDATED-BY", "UPDATED"],
        [[g["gate-key"], str(g["enabled"]).lower(), g["revision"], g["updated-by"], f"{now - g['updated-at']:.0f}s ago"] for g in gates],
    )


async def _list(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        gates = (await fetch(session, item_url(args, "/1.0/feature-gates"), token=args.token))["metadata"]
    if args.output == "json":
        print(json.dumps(gates, indent=2))
    elif gates:
        _rows(gates)
    else:
        print("No feature gates are set.", file=sys.stderr)
    return 0


async def _get(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        gate = (await fetch(session, item_url(args, "/1.0/feature-gates", args.key), token=args.token))["metadata"]
    if args.output == "json":
        print(json.dumps(gate, indent=2))
    else:
        _rows([gate])
    return 0


def _assignment(text: str) -> tuple[str, bool]:
    key, sep, value = text.partition("=")
    if not sep or value.strip().lower() not in ("true", "false"):
        raise ClientError(f"expected KEY=true or KEY=false, not {text!r} (e.g. feature.storage.ceph=true)")
    return key.strip(), value.strip().lower() == "true"


async def _set(args: argparse.Namespace) -> int:
    key, enabled = _assignment(args.assignment)
    async with hub_session(args) as session:
        gate = (await fetch(session, item_url(args, "/1.0/feature-gates", key), token=args.token, method="PUT", body={"enabled": enabled}))["metadata"]
    print(f"{gate['gate-key']}={str(gate['enabled']).lower()} (revision {gate['revision']})")
    return 0


async def _unset(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        gate = (await fetch(session, item_url(args, "/1.0/feature-gates", args.key), token=args.token, method="DELETE"))["metadata"]
    print(f"{gate['gate-key']} unset (revision {gate['revision']})")
    return 0
