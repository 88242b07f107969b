"""``fleetsync works apply -f FILE | get [NAME] | delete NAME``: workloads the hub places on clusters."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from fleetsync.cli.client import ClientError, add_hub_flags, fetch, hub_session, item_url, print_table, run_client
from fleetsync.model.objects import parse_rfc3339


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "works",
        help="apply, show and delete works (manifests the hub's agents apply to the clusters a placement picks)",
        description="A work is a set of Kubernetes manifests and a placement (cluster names and/or a selector on cluster labels). "
        "The agents of the targeted clusters apply them (server-side apply), keep them as given, and report each manifest's status. "
        "Reading needs a read token, changing an admin token.",
    )
    sub = p.add_subparsers(dest="works_command", metavar="ACTION", required=True)
    apply = sub.add_parser("apply", help="create or replace the works in a YAML or JSON file")
    apply.add_argument("-f", "--filename", required=True, help="file with one or more Work documents (YAML or JSON; - for stdin)")
    apply.add_argument(
        "--wait", choices=["applied", "available"], help="then wait until every targeted cluster has applied (or made available) this generation"
    )
    apply.add_argument("--timeout", type=float, default=120.0, help="seconds --wait waits at most (default: 120)")
    get = sub.add_parser("get", help="every work, or one work's status per cluster")
    get.add_argument("name", nargs="?", help="a work's name")
    get.add_argument("-o", "--output", default="", choices=["", "json", "yaml"], help="output format")
    delete = sub.add_parser("delete", help="delete a work: agents remove its objects from their clusters")
    delete.add_argument("name", help="a work's name")
    for action in (apply, get, delete):
        add_hub_flags(action)
    apply.set_defaults(run=lambda a: run_client(_apply(a)))
    get.set_defaults(run=lambda a: run_client(_get(a)))
    delete.set_defaults(run=lambda a: run_client(_delete(a)))


def read_works(filename: str) -> list[dict[str, Any]]:
    """The Work documents of a YAML/JSON file (several YAML documents, or a WorkList's items)."""
    try:
        text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
    except OSError as exc:
        raise ClientError(f"{filename}: {exc.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ClientError(f"{filename}: not valid YAML or JSON: {exc}") from None
    works: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "WorkList":
            works.extend(doc.get("items") or [])
        else:
            works.append(doc)
    if not works:
        raise ClientError(f"{filename}: no Work in it")
    for i, work in enumerate(works):
        name = (work.get("metadata") or {}).get("name") if isinstance(work, dict) else None
        if not isinstance(name, str) or not name:
            raise ClientError(f"{filename}: document {i + 1} is not a Work with metadata.name")
    return works


async def _existing(session: aiohttp.ClientSession, args: argparse.Namespace, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = await fetch(session, item_url(args, "/api/v1/works", name), token=args.token)
    except ClientError as exc:
        if ": 404 " in str(exc):
            return None
        raise
    return found


async def _apply(args: argparse.Namespace) -> int:
    works = read_works(args.filename)
    written: list[dict[str, Any]] = []
    async with hub_session(args) as session:
        for work in works:
            name = work["metadata"]["name"]
            before = await _existing(session, args, name)
            after = await fetch(session, item_url(args, "/api/v1/works", name), token=args.token, method="PUT", body=work)
            change = "created" if before is None else ("unchanged" if before["metadata"]["generation"] == after["metadata"]["generation"] else "configured")
            print(f"work.fleetsync.io/{name} {change} (generation {after['metadata']['generation']})")
            written.append(after)
        if args.wait:
            return await _wait(session, args, written)
    return 0


async def _wait(session: aiohttp.ClientSession, args: argparse.Namespace, works: list[dict[str, Any]]) -> int:
    """Wait until every targeted cluster reports each work's generation applied (or available)."""
    deadline = time.monotonic() + args.timeout
    pending = {w["metadata"]["name"]: w["metadata"]["generation"] for w in works}
    while pending:
        for name, generation in list(pending.items()):
            work = await fetch(session, item_url(args, "/api/v1/works", name), token=args.token)
            if work["metadata"]["generation"] != generation:
                raise ClientError(f"work {name} was changed again (generation {work['metadata']['generation']}) while waiting")
            status = work["status"]
            if status["failed"]:
                _print_clusters(work, only_failed=True)
                print(f"error: work {name} failed on {status['failed']} of {status['targeted']} clusters", file=sys.stderr)
                return 1
            if status[args.wait] == status["targeted"]:
                print(f"work.fleetsync.io/{name} {args.wait} on {status['targeted']} clusters")
                del pending[name]
        if pending:
            if time.monotonic() > deadline:
                for name in pending:
                    _print_clusters(await fetch(session, item_url(args, "/api/v1/works", name), token=args.token), only_failed=False)
                print(f"error: timed out after {args.timeout:.0f}s waiting for {', '.join(pending)} to be {args.wait}", file=sys.stderr)
                return 1
            await asyncio.sleep(0.5)
    return 0


def _age(timestamp: str) -> str:
    seconds = max(0, int(time.time() - parse_rfc3339(timestamp)))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def _print_clusters(work: dict[str, Any], *, only_failed: bool) -> None:
    rows = []
    for entry in work["status"]["clusters"]:
        if only_failed and entry["state"] != "Failed":
            continue
        manifests = entry.get("manifests") or [{"manifest": "", "condition": "", "message": ""}]
        for i, m in enumerate(manifests):
            first = i == 0
            rows.append(
                [
                    entry["cluster"] if first else "",
                    entry["state"] if first else "",
                    entry.get("observedGeneration", "") if first else "",
                    m["manifest"],
                    m["condition"],
                    m["message"],
                ]
            )
    print_table(["CLUSTER", "STATE", "GENERATION", "MANIFEST", "CONDITION", "MESSAGE"], rows)


async def _get(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        found = await fetch(session, item_url(args, "/api/v1/works", args.name or ""), token=args.token)
    if args.output == "json":
        print(json.dumps(found, indent=2))
        return 0
    if args.output == "yaml":
        print(yaml.safe_dump(found, sort_keys=False), end="")
        return 0
    if args.name:
        meta, status = found["metadata"], found["status"]
        print(f"Work {meta['name']}: generation {meta['generation']}, {_summary(status)}")
        if status["clusters"]:
            _print_clusters(found, only_failed=False)
        return 0
    if not found["items"]:
        print("No works.", file=sys.stderr)
        return 0
    print_table(
        ["NAME", "GENERATION", "TARGETED", "APPLIED", "AVAILABLE", "FAILED", "PENDING", "AGE"],
        [
            [
                w["metadata"]["name"],
                w["metadata"]["generation"],
                w["status"]["targeted"],
                w["status"]["applied"],
                w["status"]["available"],
                w["status"]["failed"],
                w["status"]["pending"],
                _age(w["metadata"]["creationTimestamp"]),
            ]
            for w in found["items"]
        ],
    )
    return 0


def _summary(status: dict[str, Any]) -> str:
    return f"{status['targeted']} clusters targeted, {status['applied']} applied, {status['available']} available, {status['failed']} failed, {status['pending']} pending"


async def _delete(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        await fetch(session, item_url(args, "/api/v1/works", args.name), token=args.token, method="DELETE")
    print(f"work.fleetsync.io/{args.name} deleted (its agents remove its objects)")
    return 0
