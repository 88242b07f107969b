"""``fleetsync gates list | get KEY | set KEY=true|false | unset KEY | where KEY | history [KEY]``: the hub's
feature gates (seed 004), what each cluster's local config holds of one, and who changed what when."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from typing import Any

from fleetsync.cli.client import UsageError, add_hub_flags, fetch, hub_session, item_url, print_table, run_client
from fleetsync.model.gates import gate_key_problem


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
    where = sub.add_parser("where", help="what each cluster's local config holds of a gate (what's set where)")
    where.add_argument("key", help="e.g. feature.multi-region")
    where.add_argument("-o", "--output", default="", choices=["", "json"], help="output format")
    history = sub.add_parser("history", help="who changed the gates when, old -> new (the fleet's writes and clusters' local changes), newest first")
    history.add_argument("key", nargs="?", default=None, help="only this gate")
    history.add_argument("--cluster", default=None, help="only this cluster's own changes")
    history.add_argument("--limit", type=int, default=100, help="the newest this many (1-1000; default: 100)")
    history.add_argument("-o", "--output", default="", choices=["", "json"], help="output format")
    for action in (listing, get, set_, unset, where, history):
        add_hub_flags(action)
    where.set_defaults(run=lambda a: run_client(_where(a)))
    history.set_defaults(run=lambda a: run_client(_history(a)))
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
        raise UsageError(f"expected KEY=true or KEY=false, not {text!r} (e.g. feature.storage.ceph=true)")
    if problem := gate_key_problem(key.strip()):
        raise UsageError(problem)
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


async def _where(args: argparse.Namespace) -> int:
    if problem := gate_key_problem(args.key):
        raise UsageError(problem)
    async with hub_session(args) as session:
        answer = (await fetch(session, f"{item_url(args, '/1.0/feature-gates', args.key)}/clusters", token=args.token))["metadata"]
    if args.output == "json":
        print(json.dumps(answer, indent=2))
        return 0
    print(f"{answer['gate-key']}: {answer['fleet']} in the fleet (revision {answer['revision']}, deployment type {answer['deployment-type']})")
    now = time.time()
    rows = [
        [
            c["cluster"],
            c["value"],
            c["source"],
            "yes" if c["in-sync"] else "no",
            "-" if c["applied-revision"] is None else c["applied-revision"],
            "-" if c["reported"] is None else f"{c['reported']['value']} ({now - c['reported']['at']:.0f}s ago)",
        ]
        for c in answer["clusters"]
    ]
    if rows:
        print_table(["CLUSTER", "VALUE", "SOURCE", "IN-SYNC", "APPLIED", "REPORTED"], rows)
    else:
        print("No clusters.", file=sys.stderr)
    return 0


async def _history(args: argparse.Namespace) -> int:
    if args.key is not None and (problem := gate_key_problem(args.key)):
        raise UsageError(problem)
    if not 1 <= args.limit <= 1000:
        raise UsageError(f"--limit must be from 1 to 1000, not {args.limit}")
    query = {"limit": str(args.limit)} | ({"cluster": args.cluster} if args.cluster is not None else {})
    path = f"{item_url(args, '/1.0/feature-gates', args.key)}/history" if args.key else item_url(args, "/1.0/feature-gate-history")
    async with hub_session(args) as session:
        changes = (await fetch(session, f"{path}?{urllib.parse.urlencode(query)}", token=args.token))["metadata"]
    if args.output == "json":
        print(json.dumps(changes, indent=2))
        return 0
    if not changes:
        print("No gate changes recorded.", file=sys.stderr)
        return 0
    print_table(
        ["TIME", "GATE", "WHERE", "OLD", "NEW", "BY", "REVISION"],
        [
            [
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c["at"])),
                c["gate-key"],
                c["cluster"] or "(fleet)",
                c["old"],
                c["new"],
                c["by"],
                c["revision"] or "-",
            ]
            for c in changes
        ],
    )
    return 0
