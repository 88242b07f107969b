"""What a read token's scope costs on list latency, against an admin token (issue 19).

The bench stores C clusters x P Pods (default 20 x 5,000 = 100,000) as ``query.py`` does
(same Pods, ten apps in six namespaces, one bundle per cluster, SQLite in a temporary
directory), starts a real ``fleetsync hub`` on it, creates read tokens with scopes in the
same store (as ``fleetsync token create`` does), labels a quarter of the clusters
``tier=gold``, and times, one request at a time over a keep-alive connection, after
``--warmup`` rounds, ``--requests`` rounds of one request of each of these in turn (so that a
busy moment of the machine falls on every kind alike; p50 / p99 / max, items per answer):

- ``admin page``: ``GET /api/v1/pods?limit=500`` with the admin token (the first page of the fleet);
- ``scoped page (1 cluster)``: the same with a token scoped to one cluster by name: the
  first 500 of that cluster's Pods;
- ``scoped page (selector)``: the same with a token scoped by ``--cluster-selector tier=gold``;
- ``scoped page (cluster + namespace)``: one cluster and one namespace;
- ``scoped page (the last cluster)``: a token scoped to the cluster listed last (a scope
  applied after reading would read the rest of the fleet first);
- ``scoped page (1 namespace, every cluster)``: a token scoped to one namespace only (the
  clusters holding Pods are found by a skip scan of the index);
- ``admin cluster list`` / ``scoped fleet list (same cluster)``: every Pod of one cluster,
  through its cluster path with the admin token, and fleet-wide with a token scoped to it:
  the same objects, so the difference is the scope's whole cost;
- ``admin cluster+namespace list`` / ``scoped fleet list (same cluster + namespace)``: the same for one namespace.

Run from the repository root: ``.venv/bin/python bench/scoped_list.py [--clusters 20 --pods 5000]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchlib import DEFAULT_FLEETSYNC, HUB_AUTH, BenchError, Processes, admin_token_file, bench_start, ms, percentile, run_bench
from fleetsync.hub.auth import hash_token, new_token
from fleetsync.store import open_store
from fleetsync.store.contract import ReadScope
from query import APPS, CHANGE_LOG_KEEP, build_fleet, populate, start_hub


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    token: str  # "" : the admin token
    expect: int  # items every answer must hold


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path, fig: dict[str, Any]) -> None:
    db_url = f"sqlite:///{tmp / 'hub.db'}"
    print(f"building {args.clusters} clusters x {args.pods} Pods ...", flush=True)
    fleet, records = build_fleet(args.clusters, args.pods, args.seed)
    first = fleet.clusters[0]
    namespace = APPS[0][1]

    def in_namespace_of(clusters: list[str]) -> int:
        return sum(n for c in clusters for app, n in fleet.by_app[c].items() if dict(APPS)[app] == namespace)

    in_namespace = in_namespace_of([first])
    gold = fleet.clusters[:: max(1, 4)]
    store = open_store(db_url, change_log_keep=CHANGE_LOG_KEEP)
    await store.open()
    last = max(fleet.clusters)  # the last in the list's order: a scope filtered after reading would read the whole fleet first
    tokens = {"one": new_token(), "gold": new_token(), "one-ns": new_token(), "last": new_token(), "ns": new_token()}
    try:
        seconds = await populate(store, fleet, records)
        del records
        print(f"stored {fleet.pods:,} Pods in {seconds:.1f} s", flush=True)
        fig["fleet"] = {"clusters": len(fleet.clusters), "pods": fleet.pods, "populate_s": seconds}
        for cluster in gold:
            await store.label_cluster(cluster, add={"tier": "gold"}, remove=[], now=time.time())
        scopes = {
            "one": ReadScope(clusters=(first,)),
            "gold": ReadScope(cluster_selector="tier=gold"),
            "one-ns": ReadScope(clusters=(first,), namespaces=(namespace,)),
            "last": ReadScope(clusters=(last,)),
            "ns": ReadScope(namespaces=(namespace,)),
        }
        for name, token in tokens.items():
            await store.add_token(name=f"bench-{name}", role="read", token_hash=hash_token(token), scope=scopes[name])
    finally:
        await store.close()
    token_file = admin_token_file(tmp)
    async with aiohttp.ClientSession(headers=HUB_AUTH) as session:
        _hub, base = await start_hub(args, procs, session, db_url, token_file)
    # A first page holds 500 items, or every item the token may see when they are fewer.
    page = min(500, args.pods)
    cases = [
        Case("admin page", "/api/v1/pods?limit=500", "", min(500, fleet.pods)),
        Case("scoped page (1 cluster)", "/api/v1/pods?limit=500", tokens["one"], page),
        Case(f"scoped page (selector, {len(gold)} clusters)", "/api/v1/pods?limit=500", tokens["gold"], min(500, len(gold) * args.pods)),
        Case("scoped page (1 cluster + 1 namespace)", "/api/v1/pods?limit=500", tokens["one-ns"], min(500, in_namespace)),
        Case("scoped page (the last cluster)", "/api/v1/pods?limit=500", tokens["last"], page),
        Case("scoped page (1 namespace, every cluster)", "/api/v1/pods?limit=500", tokens["ns"], min(500, in_namespace_of(fleet.clusters))),
        Case("admin cluster list", f"/clusters/{first}/api/v1/pods", "", args.pods),
        Case("scoped fleet list (same cluster)", "/api/v1/pods", tokens["one"], args.pods),
        Case("admin cluster+namespace list", f"/clusters/{first}/api/v1/namespaces/{namespace}/pods", "", in_namespace),
        Case("scoped fleet list (same cluster + namespace)", "/api/v1/pods", tokens["one-ns"], in_namespace),
    ]
    fig["cases"] = {}
    print(f"hub ready at {base}; {args.warmup} warm-up and {args.requests} measured requests of each kind, one at a time, the kinds in turn", flush=True)
    admin = HUB_AUTH["Authorization"].split(" ", 1)[1]
    sessions = [aiohttp.ClientSession(headers={"Authorization": f"Bearer {case.token or admin}"}) for case in cases]
    took: list[list[float]] = [[] for _ in cases]
    try:
        for i in range(args.warmup + args.requests):  # round-robin: a slow moment of the machine is shared by every kind
            for k, (case, session) in enumerate(zip(cases, sessions, strict=True)):
                started = time.perf_counter()
                async with session.get(base + case.path, timeout=aiohttp.ClientTimeout(total=300)) as resp:
                    body = await resp.read()
                elapsed = time.perf_counter() - started
                if resp.status != 200:
                    raise BenchError(f"{case.name}: GET {case.path} answered HTTP {resp.status}: {body[:300]!r}")
                if i == 0 and (items := len(orjson.loads(body)["items"])) != case.expect:
                    raise BenchError(f"{case.name}: {items} items, expected {case.expect}")
                if i >= args.warmup:
                    took[k].append(elapsed)
    finally:
        for session in sessions:
            await session.close()
    for case, times in zip(cases, took, strict=True):
        row = {"p50": percentile(times, 0.5), "p99": percentile(times, 0.99), "max": max(times), "items": case.expect}
        fig["cases"][case.name] = row
        print(f"  {case.name:48} p50 {ms(row['p50']):>8}  p99 {ms(row['p99']):>8}  max {ms(row['max']):>8}  ({case.expect:,} items)", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clusters", type=int, default=20, help="clusters in the store")
    p.add_argument("--pods", type=int, default=5000, help="Pods per cluster")
    p.add_argument("--requests", type=int, default=50, help="measured list requests of each kind")
    p.add_argument("--warmup", type=int, default=5, help="warm-up list requests of each kind")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for the hub's /readyz")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync executable")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    args.hub_profile = None  # query.start_hub's option, not offered here
    if args.clusters < 1 or args.pods < 1 or args.requests < 1 or args.warmup < 0:
        p.error("need --clusters >= 1, --pods >= 1, --requests >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if bench_start("scoped_list", args) is None:
        return 1
    return run_bench("scoped_list", args, bench)


if __name__ == "__main__":
    sys.exit(main())
