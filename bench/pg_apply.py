"""Objects/s the hub's PostgreSQL store applies, against the raw upsert rate of the same server.

The bench starts its own PostgreSQL (the Debian binaries, PostgreSQL's durable defaults:
fsync on, synchronous_commit on) on a free loopback port, builds N Pod-like objects
(bench/store_apply.py's ~3 KB JSON bodies, lz4-compressed as the agent sends them) and
measures, in one run on one server:

- **raw**: the server's own ceiling for these rows: upserts of (cluster, type, namespace,
  name, body bytea) into a bare table with only its primary key, B rows per transaction,
  sent the fastest way asyncpg knows (one ``INSERT ... SELECT FROM unnest(arrays)``
  statement per transaction; ``executemany`` is measured too and the faster one counts);
- **hub**: ``PostgresStore.apply_bundle`` with bundles of B objects, exactly what a hub does
  for each bundle (revision counter, object rows, change-log rows, stream position,
  NOTIFY): insert pass (all new), update pass (new bodies), no-op pass (same hashes: only
  the hash lookup);
- **replicas**: R processes (default 2), each a ``PostgresStore`` of its own applying its
  own cluster's objects at the same time, as R hub replicas would; and R raw writers at
  once for comparison. The figure is the total objects/s over the wall time.

The ratio hub/raw is the figure that matters: how close the store comes to what the
server can do with the same bytes.

Run (from the repository root)::

    .venv/bin/python bench/pg_apply.py                 # 20,000 objects, bundles of 500, 2 replicas
    .venv/bin/python bench/pg_apply.py -n 50000 -b 1000 --replicas 3
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import time
from typing import Any

import asyncpg

from fleetsync.store.contract import ObjectRecord
from fleetsync.store.postgres import PostgresStore
from fleetsync.testing.postgres import PostgresServer
from store_apply import POD, apply_all, records

RAW_TABLE = """
CREATE TABLE IF NOT EXISTS raw_objects (
    cluster text NOT NULL, type text NOT NULL, namespace text NOT NULL, name text NOT NULL, body bytea NOT NULL,
    PRIMARY KEY (cluster, type, namespace, name)
)
"""
RAW_UNNEST = """
INSERT INTO raw_objects (cluster, type, namespace, name, body)
SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::bytea[])
ON CONFLICT (cluster, type, namespace, name) DO UPDATE SET body = excluded.body
"""
RAW_MANY = """
INSERT INTO raw_objects (cluster, type, namespace, name, body) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (cluster, type, namespace, name) DO UPDATE SET body = excluded.body
"""


def renamed(objects: list[ObjectRecord], cluster: str) -> list[ObjectRecord]:
    return [dataclasses.replace(o, cluster=cluster) for o in objects]


async def raw_pass(url: str, objects: list[ObjectRecord], bundle: int, *, method: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        for start in range(0, len(objects), bundle):
            chunk = objects[start : start + bundle]
            cluster = chunk[0].cluster
            async with conn.transaction():
                if method == "unnest":
                    await conn.execute(RAW_UNNEST, cluster, POD, [o.namespace for o in chunk], [o.name for o in chunk], [o.body for o in chunk])
                else:
                    await conn.executemany(RAW_MANY, [(cluster, POD, o.namespace, o.name, o.body) for o in chunk])
        return time.perf_counter() - started
    finally:
        await conn.close()


def _replica(kind: str, url: str, cluster: str, n: int, bundle: int, seed: int, ready: Any, go: Any, out: Any) -> None:
    """One replica process: build its objects, connect, say ready, wait for the start signal, apply, report seconds."""
    objects = renamed(records(n, 0, seed)[0], cluster)

    async def main() -> float:
        if kind == "raw":
            ready.set()
            go.wait()
            return await raw_pass(url, objects, bundle, method="unnest")
        store = PostgresStore(url)
        await store.open()
        try:
            ready.set()
            go.wait()
            seconds, _ = await apply_all(store, objects, bundle, 0)
            return seconds
        finally:
            await store.close()

    try:
        out.put((cluster, asyncio.run(main())))
    except BaseException as exc:  # tell the parent, which would wait for the result otherwise
        ready.set()
        out.put((cluster, exc))
        raise


async def raw_database(pg: PostgresServer, name: str) -> str:
    """A new database with the bare table of the raw passes (made before writers race to make it)."""
    url = pg.create_database(name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(RAW_TABLE)
    finally:
        await conn.close()
    return url


def concurrent(kind: str, url: str, replicas: int, n: int, bundle: int, seed: int) -> float:
    """Total objects/s of ``replicas`` processes applying ``n`` objects each at once (wall time)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(replicas)]
    procs = [ctx.Process(target=_replica, args=(kind, url, f"{kind}-r{i}", n, bundle, seed + i, readies[i], go, out)) for i in range(replicas)]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(300)
    started = time.perf_counter()
    go.set()
    # Each replica puts (its cluster, its seconds or what it raised): see _replica.
    results: list[tuple[str, float | BaseException]] = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - started
    failed = [f"{cluster}: {result!r}" for cluster, result in results if isinstance(result, BaseException)]
    if failed:
        raise RuntimeError("replica processes failed: " + "; ".join(failed))
    for p in procs:
        p.join()
    slowest = max(seconds for _, seconds in results if not isinstance(seconds, BaseException))
    return replicas * n / max(wall, slowest)


async def run(args: argparse.Namespace) -> None:
    first, raw, packed = records(args.objects, 0, args.seed)
    second, _, _ = records(args.objects, 1, args.seed)
    print(f"{args.objects:,} objects in bundles of {args.bundle}; bodies {raw / args.objects:,.0f} B JSON, {packed / args.objects:,.0f} B lz4 on average")
    with PostgresServer(settings={}) as pg:
        version = pg.psql("postgres", "SHOW server_version").strip()
        print(f"PostgreSQL {version} of the bench's own on port {pg.port} (fsync on, synchronous_commit on)")
        raw_url, hub_url = await raw_database(pg, "raw"), pg.create_database("hub")

        # raw ceiling: insert then update, both methods; the best of each pass counts
        best: dict[str, float] = {}
        for method in ("executemany", "unnest"):
            for label, objects in (("insert", first), ("update", second)):
                seconds = await raw_pass(raw_url, renamed(objects, f"raw-{method}"), args.bundle, method=method)
                rate = len(objects) / seconds
                best[label] = max(best.get(label, 0.0), rate)
                print(f"   raw {method:>11} {label:>6}: {rate:>9,.0f} rows/s")

        store = PostgresStore(hub_url)
        await store.open()
        try:
            seq, hub = 0, {}
            for label, objects in (("insert", first), ("update", second), ("no-op", second)):
                seconds, seq = await apply_all(store, objects, args.bundle, seq)
                hub[label] = len(objects) / seconds
                ratio = f"  = {hub[label] / best[label]:.0%} of raw" if label in best else ""
                print(f"   hub store       {label:>6}: {hub[label]:>9,.0f} objects/s ({1000 * seconds / -(-len(objects) // args.bundle):.1f} ms/bundle){ratio}")
        finally:
            await store.close()

        if args.replicas > 1:
            raw_total = concurrent("raw", await raw_database(pg, "raw_replicas"), args.replicas, args.objects, args.bundle, args.seed)
            hub_total = concurrent("hub", pg.create_database("hub_replicas"), args.replicas, args.objects, args.bundle, args.seed)
            print(f"   {args.replicas} raw writers at once, insert: {raw_total:>9,.0f} rows/s in total")
            print(
                f"   {args.replicas} hub replicas at once, insert: {hub_total:>9,.0f} objects/s in total  = {hub_total / raw_total:.0%} of {args.replicas} raw writers"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", "--objects", type=int, default=20_000, help="objects per pass (per replica)")
    parser.add_argument("-b", "--bundle", type=int, default=500, help="objects per bundle (one transaction)")
    parser.add_argument("--replicas", type=int, default=2, help="hub replicas applying at once in the last pass (1: skip it)")
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
