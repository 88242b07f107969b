"""``fleetsync pull add|remove|list``: clusters whose state the hub fetches on schedule (pull mode, seed 003).

A pull cluster runs ``fleetsync agent --serve-state HOST:PORT`` and connects to no hub;
every hub replica's refresh scheduler fetches ``http://HOST:PORT/v1/state`` every
``--interval`` seconds (each refresh by one replica, never two at once).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fleetsync.cli.flags import add_flag, positive_float
from fleetsync.model.names import check_cluster_name
from fleetsync.store import open_store
from fleetsync.store.contract import Store


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "pull",
        help="manage pull clusters (the hub fetches their state)",
        description="Clusters whose agent serves its state (--serve-state) for the hub to fetch.",
    )
    sub = p.add_subparsers(dest="pull_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="register (or update) a pull cluster; its first refresh is due at once")
    add.add_argument("name", help="the cluster's name on the hub")
    add.add_argument("url", help="its agent's state address: http://HOST:PORT (/v1/state is added) or the full URL")
    add_flag(add, "--interval", type=positive_float, default=30.0, help="seconds between refreshes")
    remove = sub.add_parser("remove", help="stop refreshing a pull cluster (its last state stays)")
    remove.add_argument("name")
    listing = sub.add_parser("list", help="list refresh targets (pull clusters, and push clusters with scheduled refreshes)")
    for parser in (add, remove, listing):
        add_flag(parser, "--db", default="sqlite:///fleetsync.db", help="the hub's store URL")
    add.set_defaults(run=lambda args: _run(args, _add))
    remove.set_defaults(run=lambda args: _run(args, _remove))
    listing.set_defaults(run=lambda args: _run(args, _list))


def state_url(url: str) -> str:
    """``http://HOST:PORT`` -> ``http://HOST:PORT/v1/state``; checks that it is an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL of an agent run with --serve-state")
    return url if parts.path not in ("", "/") else url.rstrip("/") + "/v1/state"


async def _add(store: Store, args: argparse.Namespace) -> str:
    name, url = check_cluster_name(args.name), state_url(args.url)
    await store.set_refresh(name, mode="pull", url=url, interval=args.interval, next_refresh_at=time.time())
    return f"pull cluster {name}: {url} every {args.interval:g}s"


async def _remove(store: Store, args: argparse.Namespace) -> str:
    if not await store.remove_refresh(args.name):
        raise ValueError(f"{args.name!r} is not a refresh target")
    return f"{args.name}: no longer refreshed (its last state stays on the hub)"


async def _list(store: Store, args: argparse.Namespace) -> str:
    rows = [("CLUSTER", "MODE", "INTERVAL", "NEXT", "URL")]
    now = time.time()
    for t in await store.refresh_targets():
        rows.append((t.cluster, t.mode, f"{t.interval:g}s", f"in {max(0.0, t.next_refresh_at - now):.0f}s", t.url or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _run(args: argparse.Namespace, action: Callable[[Store, argparse.Namespace], Awaitable[str]]) -> int:
    async def main() -> str:
        store = open_store(args.db)
        await store.open()
        try:
            return await action(store, args)
        finally:
            await store.close()

    try:
        print(asyncio.run(main()))
    except (ValueError, RuntimeError, OSError) as exc:
        raise SystemExit(f"fleetsync pull {args.pull_command}: {exc}") from None
    return 0
