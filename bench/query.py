"""How fast the hub answers reads of a fleet: list latency with label selectors, and watch fan-out (issue 7).

The bench populates a store with C clusters x P Pods (default 100 x 100 = 10,000) through
the store contract, exactly as the hub applies agents' bundles: store_apply.py's ~3.5 KB
Pod JSON (labels ``app``, ``tier``, ``team``, ``pod-template-hash``; annotations, owner
reference, container with env and probes, status), serialized, hashed and lz4-compressed
by the agent's codec, one bundle per cluster. ``app`` is one of ten apps, each in its own
namespace, 10% of every cluster's Pods each. The store is SQLite in a temporary directory
(``--db sqlite``) or a PostgreSQL server of the bench's own with the durable defaults
(``--db postgres``; the tables are then ANALYZEd, as autovacuum would soon do: see
``--no-analyze``). Then it starts a real ``fleetsync hub`` on that store (free loopback
ports; ``--admin-token-file`` with a fresh token, sent as ``Authorization: Bearer`` on
every request; ``--no-auth`` for a hub without API access control) and measures:

(a) **list latency**, over one keep-alive HTTP connection, one request at a time, after
    ``--warmup`` requests of each kind: ``--requests`` (200) of each of

    - ``GET /api/v1/pods?labelSelector=app=X``: across the fleet, X cycling over the ten
      apps (1,000 of the 10,000 Pods match each);
    - ``GET /clusters/cK/api/v1/pods?labelSelector=app=X``: one cluster (10 of its 100);
    - ``GET /api/v1/pods?limit=500``: the first page of an unselective fleet-wide list
      (what ``kubectl get pods -A`` asks first).

    Latency is from sending the request to having read the whole body (the client's JSON
    parsing is not included); p50 / p99 / max, the items and bytes per response (every
    response's item count is checked against what the bench stored), the hub's CPU time
    per request, and the mean CPU (cores) of the hub, the bench and the rest of the machine.

(b) **watch fan-out**: ``--watchers`` (100) concurrent ``GET /api/v1/pods?watch=1&resourceVersion=RV``
    (RV: the current list's resourceVersion) in a separate process (so that reading
    them does not delay the writer's timestamps); with ``--cluster-watchers M``, M of them
    watch one cluster each (``/clusters/cK/api/v1/pods``, clusters in turn) instead of the
    fleet. Then the writer (this process, the store contract on the same database, as a
    hub replica would) updates Pods for ``--duration`` (20) s: bundles of ``--bundle`` (50)
    Pods of one cluster each (one transaction, each Pod a new revision: a new
    ``bench.fleetsync.io/written-at`` annotation and cluster resourceVersion), clusters in
    turn, at ``--rate`` changes/s (default 100, 1/s per cluster) or as fast as the store
    commits (``--rate 0``: the writer outruns the hub, so the events/s figure is the hub's
    fan-out ceiling and the lag mostly queueing, which the summary notes). When the
    writer stops, the bench waits (up to ``--drain-timeout`` s) until every watcher has
    the last change meant for it. Reported:

    - changes written/s (and the writer's commit time per bundle);
    - events delivered/s, the sum over the watchers, from the first commit to the last
      event received; per watcher min / median;
    - delivery lag: time from the writer's commit of a revision (recorded when
      ``apply_bundle`` returned) to a watcher's reading the event carrying that revision
      (``metadata.resourceVersion``), p50 / p99 / max over every (watcher, change), and
      the same for the last watcher to get each change (when the whole fan-out is done);
    - no loss: every watcher must have received every change meant for it, once and in
      revision order (a fleet watcher every change, a cluster watcher its cluster's); the
      bench fails (exit status 1) and says which watcher missed what otherwise.

    How the hub learns of the writer's commits decides the lag: the hub's change feed
    (src/fleetsync/hub/feed.py) wakes on the store's ``changes`` notification or, if none
    comes, every second. SQLite's notifications are in-process only and the writer is
    another process, so with SQLite the hub finds the changes by that 1 s poll (lag about
    0.5 s on average, up to 1 s, plus the work); PostgreSQL sends ``NOTIFY`` with each
    commit, so the feed wakes at once.

Everything shares the machine's cores (hub, writer, watcher process, PostgreSQL): the
CPU each used is reported, so that a figure limited by the hub's one core (Python: one
thread does the work) is recognisable as such, and so is the CPU of every *other*
process on the machine ("others"): figures taken while others used a core are not
comparable with figures from a quiet machine.

Run (from the repository root)::

    .venv/bin/python bench/query.py                                  # SQLite, 100 x 100 pods, 100 watchers, 20 s
    .venv/bin/python bench/query.py --db postgres
    .venv/bin/python bench/query.py --rate 1000 --duration 10        # more than the hub fans out: its ceiling
    .venv/bin/python bench/query.py --clusters 10 --pods 100 --watchers 10 --duration 5 --requests 20   # quick check

The last line printed is the figures as one JSON object (``--json FILE`` also writes them
to a file); ``--hub-profile FILE`` runs the hub under cProfile and leaves its stats there.
Exit status: 0 when every phase completed and no watcher missed a change, 1 otherwise
(the tail of the hub's log is printed), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import functools
import itertools
import multiprocessing
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from benchlib import (
    DEFAULT_FLEETSYNC,
    HUB_AUTH,
    BenchError,
    Child,
    Processes,
    admin_token_file,
    bench_start,
    cpu_seconds,
    free_port,
    get_json,
    mib,
    ms,
    percentile,
    rss,
    tail,
)
from fleetsync.store import open_store
from fleetsync.store.contract import ClusterRecord, ObjectRecord, Store
from fleetsync.testing.postgres import PostgresServer
from fleetsync.testing.services import die_with_parent
from store_apply import INCARNATION, apply_all, pod, pod_record

#: The fleet's apps (label ``app``) and the namespace each runs in; every cluster runs an equal share of each.
APPS = (
    ("frontend", "shop"),
    ("cart", "shop"),
    ("checkout", "shop"),
    ("catalog", "shop"),
    ("search", "search"),
    ("payments", "payments"),
    ("auth", "platform"),
    ("gateway", "platform"),
    ("worker", "batch"),
    ("metrics", "monitoring"),
)
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
#: The annotation each update of the writer sets (wall time), so that every update is a new version.
WRITTEN_AT = "bench.fleetsync.io/written-at"
#: Changes the bench's store and the hub keep for watches: enough that a watcher far behind a
#: full-speed writer still resumes (rather than getting 410 Expired).
CHANGE_LOG_KEEP = 2_000_000
POPULATE_BUNDLE = 500
#: A fan-out whose last event arrives this many seconds after the last commit did not keep up
#: (more than the 1 s poll of the SQLite case and a batch's worth of work).
SATURATED_AFTER = 2.5


# ---- the fleet ---------------------------------------------------------------------------


@dataclass
class Fleet:
    """What the bench stored: each cluster's Pods as canonical JSON (to update them), and counts by app."""

    clusters: list[str]
    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    by_app: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))  # cluster -> app -> pods
    seq: dict[str, int] = field(default_factory=dict)  # cluster -> the last bundle seq applied
    cluster_rv: dict[str, int] = field(default_factory=dict)  # cluster -> its own newest resourceVersion
    json_bytes: int = 0
    lz4_bytes: int = 0

    @property
    def pods(self) -> int:
        return sum(len(b) for b in self.bodies.values())

    def app_total(self, app: str) -> int:
        return sum(c[app] for c in self.by_app.values())


def build_fleet(clusters: int, pods: int, seed: int) -> tuple[Fleet, dict[str, list[ObjectRecord]]]:
    fleet = Fleet([f"c{k}" for k in range(1, clusters + 1)])
    records: dict[str, list[ObjectRecord]] = {}
    for k, cluster in enumerate(fleet.clusters, start=1):
        rng = random.Random(seed * 1_000_003 + k)
        bodies: list[bytes] = []
        recs: list[ObjectRecord] = []
        keys: set[str] = set()
        for i in range(pods):
            app, namespace = APPS[(i + k) % len(APPS)]
            body = pod(i, namespace, rng, 0, app=app)
            meta = body["metadata"]
            meta["resourceVersion"] = str(1000 + i)
            if f"{namespace}/{meta['name']}" in keys:  # two random names alike: keep the key unique
                meta["name"] += f"-{i}"
            keys.add(f"{namespace}/{meta['name']}")
            record, size = pod_record(cluster, body)
            bodies.append(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
            recs.append(record)
            fleet.by_app[cluster][app] += 1
            fleet.json_bytes += size
            fleet.lz4_bytes += len(record.body)
        fleet.bodies[cluster] = bodies
        fleet.cluster_rv[cluster] = 1000 + pods
        records[cluster] = recs
    return fleet, records


async def populate(store: Store, fleet: Fleet, records: dict[str, list[ObjectRecord]]) -> float:
    """Register the clusters (active, as if their agents had connected) and apply their Pods; seconds."""
    started = time.perf_counter()
    now = time.time()
    for k, cluster in enumerate(fleet.clusters):
        await store.upsert_cluster(
            ClusterRecord(
                name=cluster,
                agent_id=f"bench/{cluster}",
                incarnation=INCARNATION,
                status="active",
                metadata={"region": REGIONS[k % len(REGIONS)]},
                connected_at=now,
                last_seen=now,
                hub_id="bench",
            )
        )
        _, fleet.seq[cluster] = await apply_all(store, records[cluster], POPULATE_BUNDLE, 0)
    return time.perf_counter() - started


def updated(fleet: Fleet, cluster: str, i: int) -> ObjectRecord:
    """Pod ``i`` of ``cluster`` with a new written-at annotation and cluster resourceVersion, as the hub would store it."""
    body = orjson.loads(fleet.bodies[cluster][i])
    meta = body["metadata"]
    fleet.cluster_rv[cluster] += 1
    meta["resourceVersion"] = str(fleet.cluster_rv[cluster])
    meta["annotations"][WRITTEN_AT] = f"{time.time():.6f}"
    return pod_record(cluster, body)[0]


# ---- the hub -------------------------------------------------------------------------------


async def start_hub(args: argparse.Namespace, procs: Processes, session: aiohttp.ClientSession, db_url: str, token_file: Path | None) -> tuple[Child, str]:
    grpc_port, http_port = free_port(), free_port()
    hub_args = [
        "hub",
        "--db", db_url,
        "--grpc", f"127.0.0.1:{grpc_port}",
        "--http", f"127.0.0.1:{http_port}",
        "--change-log-keep", str(CHANGE_LOG_KEEP),
        "--inactivity-timeout", "86400",  # no agent speaks for the bench's clusters: keep them active
    ]  # fmt: skip
    if token_file is not None:
        hub_args += ["--admin-token-file", str(token_file)]
    if args.hub_profile:
        hub = procs.spawn("hub", "-m", "cProfile", "-o", str(args.hub_profile.resolve()), "-m", "fleetsync", *hub_args, executable=sys.executable)
    else:
        hub = procs.spawn("hub", *hub_args)
    url = f"http://127.0.0.1:{http_port}"
    started = time.monotonic()
    while True:
        if not hub.alive():
            log = tail(hub.log)
            if "unrecognized arguments" in log and "--admin-token-file" in log:
                raise BenchError("this hub has no --admin-token-file (API access control is not in it yet): run the bench with --no-auth")
            raise BenchError(f"the hub exited with status {hub.process.returncode} before it was ready (its log is below)")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return hub, url
        if time.monotonic() - started > args.startup_timeout:
            raise BenchError(f"the hub was not ready within {args.startup_timeout:.0f} s (its log is below)")
        await asyncio.sleep(0.1)


async def auth_check(url: str, headers: dict[str, str]) -> dict[str, Any]:
    """Whether the hub answers with the token, and whether it refuses a request without it."""
    async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{url}/api/v1/pods?limit=1") as resp:
        without = resp.status
    async with aiohttp.ClientSession(headers=headers) as authorized, authorized.get(f"{url}/api/v1/pods?limit=1") as resp:
        with_token = resp.status
        body = await resp.read()
    if with_token != 200:
        raise BenchError(f"GET /api/v1/pods?limit=1 with the admin token answered HTTP {with_token}: {body[:300]!r}")
    return {"status_with_token": with_token, "status_without_token": without, "enforced": without in (401, 403)}


def postgres_cpu(pg: PostgresServer | None) -> float:
    """CPU seconds of the PostgreSQL server's processes now alive (approximate: backends that ended are not counted)."""
    if pg is None or pg.process is None:
        return 0.0
    try:
        root = psutil.Process(pg.process.pid)
        return cpu_seconds(root) + sum(cpu_seconds(p) for p in root.children(recursive=True))
    except psutil.Error:
        return 0.0


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores; not idle, I/O wait or stolen by the hypervisor)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


class CpuMeter:
    """Mean CPU (cores) of named processes between ``start()`` and ``stop()``, and of everything else on the machine."""

    def __init__(self, **sources: Callable[[], float]) -> None:
        self.sources = sources
        self.t0 = 0.0
        self.c0: dict[str, float] = {}

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = {name: f() for name, f in self.sources.items()} | {"_busy": machine_busy()}

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        used = {name: (f() - self.c0[name]) / wall for name, f in self.sources.items()}
        used["others"] = max(0.0, (machine_busy() - self.c0["_busy"]) / wall - sum(used.values()))
        return used


# ---- (a) list latency -------------------------------------------------------------------------


@dataclass
class ListKind:
    name: str
    path: str
    params: dict[str, str]
    expected: int  # items the response must hold
    selector: tuple[str, str] | None  # (label, value) every item must carry


def list_requests(fleet: Fleet, kind: str, n: int) -> list[ListKind]:
    total = fleet.pods
    out = []
    for i in range(n):
        app = APPS[i % len(APPS)][0]
        if kind == "fleet":
            out.append(ListKind(kind, "/api/v1/pods", {"labelSelector": f"app={app}"}, fleet.app_total(app), ("app", app)))
        elif kind == "cluster":
            cluster = fleet.clusters[(i * 7) % len(fleet.clusters)]  # 7: so that clusters and apps do not advance in step
            out.append(ListKind(kind, f"/clusters/{cluster}/api/v1/pods", {"labelSelector": f"app={app}"}, fleet.by_app[cluster][app], ("app", app)))
        else:
            out.append(ListKind(kind, "/api/v1/pods", {"limit": "500"}, min(500, total), None))
    return out


LIST_TITLES = {
    "fleet": "fleet-wide  GET /api/v1/pods?labelSelector=app=X",
    "cluster": "one cluster GET /clusters/cK/api/v1/pods?labelSelector=app=X",
    "page": "fleet-wide  GET /api/v1/pods?limit=500 (first page, no selector)",
}


async def timed_list(session: aiohttp.ClientSession, base: str, req: ListKind) -> tuple[float, bytes]:
    started = time.perf_counter()
    async with session.get(base + req.path, params=req.params, timeout=aiohttp.ClientTimeout(total=300)) as resp:
        body = await resp.read()
        took = time.perf_counter() - started
        if resp.status != 200:
            raise BenchError(f"GET {req.path}?{req.params} answered HTTP {resp.status}: {body[:300]!r}")
    return took, body


def check_list(req: ListKind, body: bytes, *, deep: bool) -> int:
    doc = orjson.loads(body)
    items = doc["items"]
    if len(items) != req.expected:
        raise BenchError(f"GET {req.path}?{req.params}: {len(items)} items, but the bench stored {req.expected} that match")
    if deep:
        for item in items:
            labels = item["metadata"].get("labels") or {}
            if req.selector and labels.get(req.selector[0]) != req.selector[1]:
                raise BenchError(f"GET {req.path}?{req.params}: an item does not match: {item['metadata'].get('name')} labels {labels}")
            if req.path.startswith("/api/") and "fleetsync.io/cluster" not in labels:
                raise BenchError(f"GET {req.path}: a fleet-wide item lacks its fleetsync.io/cluster label: {item['metadata'].get('name')}")
    return len(items)


async def list_phase(args: argparse.Namespace, fleet: Fleet, base: str, headers: dict[str, str], hub: Child, pg: PostgresServer | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=1), read_bufsize=1 << 20) as session:
        for kind in ("fleet", "cluster", "page"):
            for j, req in enumerate(list_requests(fleet, kind, args.warmup)):
                _, body = await timed_list(session, base, req)
                check_list(req, body, deep=j < len(APPS))
            requests = list_requests(fleet, kind, args.requests)
            latencies: list[float] = []
            items: list[int] = []
            sizes: list[int] = []
            meter = cpu_meter(hub, pg)
            meter.start()
            t0 = time.perf_counter()
            for req in requests:
                took, body = await timed_list(session, base, req)
                latencies.append(took)
                sizes.append(len(body))
                items.append(check_list(req, body, deep=False))
            wall = time.perf_counter() - t0
            cpu = meter.stop()
            out[kind] = {
                "requests": len(latencies),
                "p50": percentile(latencies, 0.5),
                "p99": percentile(latencies, 0.99),
                "max": max(latencies),
                "mean": statistics.mean(latencies),
                "items_min": min(items),
                "items_median": statistics.median(items),
                "items_max": max(items),
                "bytes_mean": statistics.mean(sizes),
                "cpu": cpu,
                "hub_cpu_per_request": cpu["hub"] * wall / len(latencies),
            }
            r = out[kind]
            print(
                f"  {LIST_TITLES[kind]}: p50 {ms(r['p50'])}, p99 {ms(r['p99'])}, max {ms(r['max'])}; "
                f"{r['items_median']:,.0f} items, {r['bytes_mean'] / 1e6:.2f} MB per response",
                flush=True,
            )
    return out


# ---- (b) watch fan-out: the watchers' process ------------------------------------------------

# The hub writes each event as orjson.dumps({"type": ..., "object": ...}): the line starts with
# its type, and the first "resourceVersion" in it is the object's metadata.resourceVersion, the
# hub revision of the change (the Pods have no other field of that name; the cluster's own
# version is in an annotation). A regex is far cheaper than parsing 3.5 KB per event; every
# 500th event of each watcher is parsed in full and must agree.
_TYPE = re.compile(rb'^\{"type":"([A-Z]+)"')
_RV = re.compile(rb'"resourceVersion":"(\d+)"')
CHECK_EVERY = 500


@dataclass
class WatchLog:
    revs: array.array[int] = field(default_factory=lambda: array.array("q"))
    times: array.array[float] = field(default_factory=lambda: array.array("d"))
    types: Counter[str] = field(default_factory=Counter)
    other: list[str] = field(default_factory=list)  # ERROR events, unparsable lines
    error: str = ""
    ended: str = ""


def _line(log: WatchLog, line: bytes, now: float) -> None:
    t = _TYPE.match(line)
    r = _RV.search(line)
    kind = t.group(1).decode() if t else "?"
    if kind not in ("ADDED", "MODIFIED", "DELETED") or r is None:
        if len(log.other) < 5:
            log.other.append(line[:400].decode(errors="replace"))
        log.types[kind] += 1
        return
    rev = int(r.group(1))
    if len(log.revs) % CHECK_EVERY == 0:
        event = orjson.loads(line)
        if event["type"] != kind or int(event["object"]["metadata"]["resourceVersion"]) != rev:
            raise RuntimeError(f"fast event parsing disagrees with the JSON: {kind} {rev} vs {event['type']} {event['object']['metadata']['resourceVersion']}")
    log.types[kind] += 1
    log.revs.append(rev)
    log.times.append(now)


async def _watch(session: aiohttp.ClientSession, url: str, rv: int, log: WatchLog, opened: asyncio.Event, j: int, last: Any, counts: Any) -> None:
    try:
        async with session.get(url, params={"watch": "1", "resourceVersion": str(rv)}, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            if resp.status != 200:
                log.error = f"HTTP {resp.status}: {(await resp.read())[:300]!r}"
                return
            opened.set()
            rest = b""
            async for chunk in resp.content.iter_any():
                now = time.monotonic()
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if line:
                        _line(log, line, now)
                if log.revs:
                    last[j] = log.revs[-1]
                counts[j] = len(log.revs)
            log.ended = "the hub ended the watch"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error = f"{type(exc).__name__}: {exc}"
    finally:
        opened.set()


def watcher_process(base: str, headers: dict[str, str], paths: list[str], rv: int, ready: Any, stop: Any, last: Any, counts: Any, out: str) -> None:
    """The watchers, in a process of their own: open every watch, say ready, read until told to stop, write what each got to ``out``."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bench's to handle: it stops us

    async def main() -> list[WatchLog]:
        logs = [WatchLog() for _ in paths]
        opened = [asyncio.Event() for _ in paths]
        async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0), read_bufsize=1 << 20) as session:
            tasks = [
                asyncio.create_task(_watch(session, base + path, rv, log, o, j, last, counts))
                for j, (path, log, o) in enumerate(zip(paths, logs, opened, strict=True))
            ]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await asyncio.gather(*(o.wait() for o in opened))
            for log, o in zip(logs, opened, strict=True):
                if not o.is_set():
                    log.error = "the watch did not open within 60 s"
            ready.set()
            await asyncio.to_thread(stop.wait)  # a multiprocessing.Event: waited for in a thread
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return logs

    ready_set = False
    try:
        logs = asyncio.run(main())
        ready_set = True
    finally:
        if not ready_set:
            ready.set()  # the parent waits for it
    summary = []
    for j, log in enumerate(logs):
        with open(f"{out}/w{j}.rev", "wb") as f:
            log.revs.tofile(f)
        with open(f"{out}/w{j}.t", "wb") as f:
            log.times.tofile(f)
        summary.append({"types": dict(log.types), "other": log.other, "error": log.error, "ended": log.ended})
    Path(out, "summary.json").write_bytes(orjson.dumps(summary))


def read_watch_logs(out: Path, n: int) -> list[WatchLog]:
    summary = orjson.loads((out / "summary.json").read_bytes())
    logs = []
    for j in range(n):
        log = WatchLog(types=Counter(summary[j]["types"]), other=summary[j]["other"], error=summary[j]["error"], ended=summary[j]["ended"])
        log.revs.frombytes((out / f"w{j}.rev").read_bytes())
        log.times.frombytes((out / f"w{j}.t").read_bytes())
        logs.append(log)
    return logs


# ---- (b) watch fan-out: the writer and the figures ----------------------------------------------


@dataclass
class Written:
    commits: dict[int, float] = field(default_factory=dict)  # rev -> monotonic time of its commit
    cluster_of: dict[int, str] = field(default_factory=dict)  # rev -> cluster
    bundle_seconds: list[float] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    @property
    def changes(self) -> int:
        return len(self.commits)


async def write_changes(args: argparse.Namespace, store: Store, fleet: Fleet, written: Written, progress: Any) -> None:
    """Bundles of ``--bundle`` Pod updates of one cluster each, clusters in turn, for ``--duration`` s at ``--rate``."""
    prev = await store.current_rev()
    per_bundle = min(args.bundle, args.pods)
    cursor = dict.fromkeys(fleet.clusters, 0)
    written.started = time.monotonic()
    end = written.started + args.duration
    turn = 0
    while True:
        now = time.monotonic()
        if args.rate > 0:
            due = written.started + written.changes / args.rate
            if due > now:
                await asyncio.sleep(due - now)
                now = time.monotonic()
        if now >= end:
            break
        cluster = fleet.clusters[turn % len(fleet.clusters)]
        turn += 1
        first = cursor[cluster]
        cursor[cluster] = (first + per_bundle) % args.pods
        records = [updated(fleet, cluster, (first + x) % args.pods) for x in range(per_bundle)]
        committed: list[int] = []
        seconds, fleet.seq[cluster] = await apply_all(store, records, per_bundle, fleet.seq[cluster], on_commit=committed.append)
        t = time.monotonic()
        rev = committed[0]
        if rev - prev != per_bundle:
            raise BenchError(f"a bundle of {per_bundle} updates moved the revision from {prev} to {rev}: something else writes to the store")
        for r in range(prev + 1, rev + 1):
            written.commits[r] = t
            written.cluster_of[r] = cluster
        written.bundle_seconds.append(seconds)
        prev = rev
        progress()
    written.ended = time.monotonic()


def watch_figures(paths: list[str], logs: list[WatchLog], written: Written) -> dict[str, Any]:
    all_revs = sorted(written.commits)
    by_cluster: dict[str, list[int]] = defaultdict(list)
    for r in all_revs:
        by_cluster[written.cluster_of[r]].append(r)
    lags: list[float] = []
    last_receipt: dict[int, float] = {}
    per_watcher: list[int] = []
    problems: list[str] = []
    first_receipt = float("inf")
    final_receipt = 0.0
    for j, (path, log) in enumerate(zip(paths, logs, strict=True)):
        cluster = path.split("/")[2] if path.startswith("/clusters/") else None
        expected = by_cluster[cluster] if cluster else all_revs
        got = log.revs.tolist()
        per_watcher.append(len(got))
        if log.error:
            problems.append(f"watcher {j} ({path}): {log.error}")
        if log.other:
            problems.append(f"watcher {j} ({path}): unexpected events {dict(log.types)}: {log.other[0][:200]}")
        if got != expected:
            have = set(got)
            missing = [r for r in expected if r not in have]
            extra = sorted(have - set(expected))
            dups = len(got) - len(have)
            disorder = sum(1 for a, b in itertools.pairwise(got) if b <= a)
            problems.append(
                f"watcher {j} ({path}): got {len(got):,} events for {len(expected):,} changes: {len(missing):,} missing"
                f"{' (first ' + ', '.join(map(str, missing[:5])) + ')' if missing else ''}, {len(extra):,} not written by the bench"
                f"{' (' + ', '.join(map(str, extra[:5])) + ')' if extra else ''}, {dups:,} duplicates, {disorder:,} out of order"
            )
        for r, t in zip(got, log.times.tolist(), strict=True):
            c = written.commits.get(r)
            if c is None:
                continue
            lags.append(t - c)
            if t > last_receipt.get(r, 0.0):
                last_receipt[r] = t
            first_receipt = min(first_receipt, t)
            final_receipt = max(final_receipt, t)
    deliveries = sum(per_watcher)
    first_commit = min(written.commits.values(), default=written.started)
    window = max(final_receipt, written.ended) - first_commit if deliveries else float("nan")
    complete = [last_receipt[r] - written.commits[r] for r in all_revs if r in last_receipt]
    expected_total = sum(len(by_cluster[p.split("/")[2]]) if p.startswith("/clusters/") else len(all_revs) for p in paths)
    writer_seconds = written.ended - written.started
    return {
        "watchers": len(paths),
        "fleet_watchers": sum(not p.startswith("/clusters/") for p in paths),
        "changes": written.changes,
        "bundles": len(written.bundle_seconds),
        "writer_seconds": writer_seconds,
        "changes_per_s": written.changes / writer_seconds if writer_seconds > 0 else float("nan"),
        "commit_ms_p50": percentile(written.bundle_seconds, 0.5) * 1000,
        "commit_ms_p99": percentile(written.bundle_seconds, 0.99) * 1000,
        "commit_ms_max": max(written.bundle_seconds, default=float("nan")) * 1000,
        "deliveries": deliveries,
        "deliveries_expected": expected_total,
        "delivery_seconds": window,
        "events_per_s": deliveries / window if deliveries and window > 0 else 0.0,
        "per_watcher_min": min(per_watcher, default=0),
        "per_watcher_median": statistics.median(per_watcher) if per_watcher else 0,
        "per_watcher_max": max(per_watcher, default=0),
        "per_watcher_per_s_min": min(per_watcher, default=0) / window if deliveries and window > 0 else 0.0,
        "per_watcher_per_s_median": (statistics.median(per_watcher) / window) if deliveries and window > 0 else 0.0,
        "lag_p50": percentile(lags, 0.5),
        "lag_p99": percentile(lags, 0.99),
        "lag_max": max(lags, default=float("nan")),
        "lag_mean": statistics.mean(lags) if lags else float("nan"),
        "complete_p50": percentile(complete, 0.5),
        "complete_p99": percentile(complete, 0.99),
        "complete_max": max(complete, default=float("nan")),
        "last_event_after_last_commit": final_receipt - max(written.commits.values()) if deliveries else float("nan"),
        "lossless": not problems,
        "problems": problems,
        "event_types": dict(sum((log.types for log in logs), Counter())),
    }


async def watch_phase(
    args: argparse.Namespace, fleet: Fleet, store: Store, base: str, headers: dict[str, str], hub: Child, tmp: Path, pg: PostgresServer | None
) -> dict[str, Any]:
    n_cluster = min(args.cluster_watchers, args.watchers)
    paths = [f"/clusters/{fleet.clusters[j % len(fleet.clusters)]}/api/v1/pods" for j in range(n_cluster)]
    paths += ["/api/v1/pods"] * (args.watchers - n_cluster)
    async with aiohttp.ClientSession(headers=headers) as session:
        rv = int((await get_json(session, f"{base}/api/v1/pods?limit=1"))["metadata"]["resourceVersion"])
    out = tmp / "watch"
    out.mkdir()
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    last = ctx.RawArray("q", len(paths))
    counts = ctx.RawArray("q", len(paths))
    proc = ctx.Process(target=watcher_process, args=(base, headers, paths, rv, ready, stop, last, counts, str(out)), name="watchers", daemon=True)
    proc.start()
    try:
        assert proc.pid is not None
        watchers_ps = psutil.Process(proc.pid)
        t0 = time.monotonic()
        while not ready.is_set():
            if not proc.is_alive() or time.monotonic() - t0 > 90:
                raise BenchError(f"the watchers' process did not open its watches (exit status {proc.exitcode})")
            await asyncio.sleep(0.05)
        opened_s = time.monotonic() - t0
        print(f"  {len(paths)} watches open from resourceVersion {rv} after {opened_s:.1f} s ({n_cluster} of one cluster each)", flush=True)
        if not proc.is_alive():
            raise BenchError("the watchers' process died")

        written = Written()
        meter = cpu_meter(hub, pg, watchers=watchers_ps)
        meter.start()
        next_report = [time.monotonic() + 5]

        def progress() -> None:
            now = time.monotonic()
            if now >= next_report[0]:
                next_report[0] = now + 5
                delivered = sum(counts)
                print(
                    f"  {now - written.started:5.1f} s: {written.changes:,} changes written, {delivered:,} events delivered, "
                    f"slowest watcher at rev {min(last):,} of {max(written.commits, default=rv):,}",
                    flush=True,
                )

        rate = f"{args.rate:g} changes/s" if args.rate > 0 else "full speed"
        print(f"  writing for {args.duration:g} s at {rate}, bundles of {min(args.bundle, args.pods)} Pods of one cluster each ...", flush=True)
        await write_changes(args, store, fleet, written, progress)
        if not written.commits:
            raise BenchError("the writer wrote nothing")
        final = max(written.commits)
        last_of: dict[str, int] = {}
        for r, c in written.cluster_of.items():
            last_of[c] = max(last_of.get(c, 0), r)
        expected_last = [last_of.get(p.split("/")[2], 0) if p.startswith("/clusters/") else final for p in paths]
        print(f"  writer done: {written.changes:,} changes in {written.ended - written.started:.1f} s; waiting for every watcher to have them ...", flush=True)
        drained = None
        while True:
            now = time.monotonic()
            behind = [j for j, want in enumerate(expected_last) if last[j] < want]
            if not behind:
                drained = now - written.ended
                break
            if now - written.ended > args.drain_timeout or not proc.is_alive():
                break
            if now >= next_report[0]:
                next_report[0] = now + 5
                print(f"  +{now - written.ended:.1f} s: {len(behind)} watchers still behind (slowest at rev {min(last):,} of {final:,})", flush=True)
            await asyncio.sleep(0.02)
        cpu = meter.stop()
        hub_rss = rss(hub.ps)
    finally:
        stop.set()
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if proc.exitcode != 0 or not (out / "summary.json").exists():
        raise BenchError(f"the watchers' process failed (exit status {proc.exitcode})")
    fig = watch_figures(paths, read_watch_logs(out, len(paths)), written)
    fig.update(
        start_rev=rv,
        rate=args.rate,
        drain_seconds=drained,
        drain_timeout=args.drain_timeout,
        cpu=cpu,
        hub_rss=hub_rss,
    )
    if drained is None:
        fig["lossless"] = False
        fig["problems"].insert(0, f"not every watcher had every change {args.drain_timeout:g} s after the writer stopped")
    return fig


# ---- the run --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path, fig: dict[str, Any], pg: PostgresServer | None) -> None:
    db_url = pg.create_database("fleetsync") if pg else f"sqlite:///{tmp / 'hub.db'}"
    fig["db"] = "postgresql" if pg else "sqlite"
    print(f"building {args.clusters} clusters x {args.pods} Pods ...", flush=True)
    fleet, records = build_fleet(args.clusters, args.pods, args.seed)
    fig["fleet"] = {
        "clusters": len(fleet.clusters),
        "pods": fleet.pods,
        "json_bytes_mean": fleet.json_bytes / max(1, fleet.pods),
        "lz4_bytes_mean": fleet.lz4_bytes / max(1, fleet.pods),
        "apps": {app: fleet.app_total(app) for app, _ in APPS},
    }
    store = open_store(db_url, change_log_keep=CHANGE_LOG_KEEP)
    await store.open()
    try:
        seconds = await populate(store, fleet, records)
        del records
        fig["populate"] = {"seconds": seconds, "objects_per_s": fleet.pods / seconds, "rev": await store.current_rev()}
        print(f"stored {fleet.pods:,} Pods in {seconds:.1f} s ({fleet.pods / seconds:,.0f}/s), revision {fig['populate']['rev']:,}", flush=True)
        if pg is not None:
            fig["populate"]["analyzed"] = not args.no_analyze
            if not args.no_analyze:  # what autovacuum does within a minute or so: without statistics the planner sorts every row for each page
                pg.psql("fleetsync", "ANALYZE")

        token_file = None
        headers: dict[str, str] = {}
        if not args.no_auth:
            token_file, headers = admin_token_file(tmp), HUB_AUTH
        async with aiohttp.ClientSession(headers=headers) as session:
            hub, base = await start_hub(args, procs, session, db_url, token_file)
        fig["auth"] = {"admin_token_file": token_file is not None} | await auth_check(base, headers)
        if token_file is not None and not fig["auth"]["enforced"]:
            print(f"WARNING: the hub answers without the token (HTTP {fig['auth']['status_without_token']}): access control is not enforced", flush=True)
        fig["hub_rss_start"] = rss(hub.ps)
        print(f"hub ready at {base} (pid {hub.pid}; {'token sent' if headers else 'no token: --no-auth'})", flush=True)

        print(f"(a) list latency: {args.warmup} warm-up and {args.requests} measured requests of each kind, one at a time", flush=True)
        fig["list"] = await list_phase(args, fleet, base, headers, hub, pg)

        print(f"(b) watch fan-out: {args.watchers} watchers", flush=True)
        fig["watch"] = await watch_phase(args, fleet, store, base, headers, hub, tmp, pg)
        fig["hub_rss_end"] = rss(hub.ps)
    finally:
        await store.close()


def cpu_meter(hub: Child, pg: PostgresServer | None, **more: psutil.Process) -> CpuMeter:
    sources: dict[str, Callable[[], float]] = {"hub": lambda: cpu_seconds(hub.ps), "bench": lambda: cpu_seconds(psutil.Process())}
    sources |= {name: functools.partial(cpu_seconds, ps) for name, ps in more.items()}
    if pg is not None:
        sources["postgres"] = lambda: postgres_cpu(pg)
    return CpuMeter(**sources)


def cpu_row(cpu: dict[str, float]) -> str:
    return " / ".join(f"{name} {x:.2f}" for name, x in cpu.items())


def report(fig: dict[str, Any]) -> str:
    cfg, mach = fig["config"], fig["machine"]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append((f"-- {title}", ""))

    def row(name: str, value: str) -> None:
        rows.append((f"   {name}", value))

    section("machine")
    row("nproc / CPU", f"{mach['nproc']} ({mach['cpu_model'] or 'unknown model'})")
    row("memory", mib(mach["memory"]))
    row("python / platform", f"{mach['python']} / {mach['platform']}")
    row("load average at start / end", " ".join(f"{x:.2f}" for x in mach["loadavg_start"]) + " / " + " ".join(f"{x:.2f}" for x in fig.get("loadavg_end", ())))
    if "fleet" in fig:
        f = fig["fleet"]
        section(f"fleet: {f['clusters']} clusters x {cfg['pods']} Pods = {f['pods']:,} Pods, store {fig['db']}")
        row("Pod body", f"{f['json_bytes_mean']:,.0f} B JSON, {f['lz4_bytes_mean']:,.0f} B lz4")
        row("Pods per app (fleet-wide)", ", ".join(f"{a} {n:,}" for a, n in f["apps"].items()))
    if "populate" in fig:
        p = fig["populate"]
        analyzed = "" if "analyzed" not in p else "; then ANALYZE" if p["analyzed"] else "; no ANALYZE (--no-analyze)"
        row("populated through the store contract", f"{p['seconds']:.1f} s ({p['objects_per_s']:,.0f} objects/s, bundles of {POPULATE_BUNDLE}){analyzed}")
    if "auth" in fig:
        a = fig["auth"]
        row(
            "API access",
            ("admin token sent; " if a["admin_token_file"] else "--no-auth: no token; ") + f"without a token the hub answers HTTP {a['status_without_token']}",
        )
    if "list" in fig:
        section("(a) list latency, one request at a time over one keep-alive connection")
        for kind, r in fig["list"].items():
            row(LIST_TITLES[kind], "")
            row(
                "  p50 / p99 / max (mean)",
                f"{ms(r['p50'])} / {ms(r['p99'])} / {ms(r['max'])}  ({ms(r['mean'])}; {r['requests']} requests)",
            )
            items = (
                f"{r['items_median']:,.0f}" if r["items_min"] == r["items_max"] else f"{r['items_min']:,}-{r['items_max']:,} (median {r['items_median']:,.0f})"
            )
            row("  items / bytes per response", f"{items} / {r['bytes_mean'] / 1e6:.2f} MB")
            row("  hub CPU per request", ms(r["hub_cpu_per_request"]))
            row("  CPU mean (cores)", cpu_row(r["cpu"]))
    w = fig.get("watch")
    if w:
        rate = f"{w['rate']:g} changes/s" if w["rate"] > 0 else "full speed"
        section(
            f"(b) watch fan-out: {w['watchers']} watchers ({w['fleet_watchers']} fleet-wide, {w['watchers'] - w['fleet_watchers']} of one cluster), "
            f"writer at {rate} for {cfg['duration']:g} s"
        )
        row("change feed wake-up", "1 s poll (SQLite: the writer is another process)" if fig["db"] == "sqlite" else "PostgreSQL NOTIFY with each commit")
        row(
            "changes written",
            f"{w['changes']:,} in {w['bundles']:,} bundles = {w['changes_per_s']:,.0f}/s (commit per bundle p50 {w['commit_ms_p50']:.1f} / p99 {w['commit_ms_p99']:.1f} / max {w['commit_ms_max']:,.0f} ms)",
        )
        row(
            "events delivered, all watchers",
            f"{w['deliveries']:,} of {w['deliveries_expected']:,} = {w['events_per_s']:,.0f}/s over {w['delivery_seconds']:.1f} s",
        )
        row(
            "per watcher: events min / median",
            f"{w['per_watcher_min']:,} / {w['per_watcher_median']:,.0f}  ({w['per_watcher_per_s_min']:,.0f} / {w['per_watcher_per_s_median']:,.0f} per s)",
        )
        row("delivery lag p50 / p99 / max (mean)", f"{ms(w['lag_p50'])} / {ms(w['lag_p99'])} / {ms(w['lag_max'])}  ({ms(w['lag_mean'])})")
        row("  last watcher to get a change: p50 / p99 / max", f"{ms(w['complete_p50'])} / {ms(w['complete_p99'])} / {ms(w['complete_max'])}")
        row(
            "last event received after the last commit",
            f"{w['last_event_after_last_commit']:.2f} s" + ("" if w["drain_seconds"] is not None else f" (NOT DRAINED within {w['drain_timeout']:g} s)"),
        )
        row("CPU mean while writing and draining (cores)", cpu_row(w["cpu"]))
        row("hub RSS start / end", f"{mib(fig.get('hub_rss_start'))} / {mib(fig.get('hub_rss_end', w['hub_rss']))}")
        row("event types", ", ".join(f"{k} {v:,}" for k, v in sorted(w["event_types"].items())))
        row("every watcher got every change, once, in order", "yes" if w["lossless"] else "NO")
        if w["last_event_after_last_commit"] > SATURATED_AFTER:
            row(
                "NOTE",
                f"the hub fell behind the writer (its last event came {w['last_event_after_last_commit']:.1f} s after the last commit): "
                "events/s is its fan-out ceiling here, and the lag is mostly queueing",
            )
    for name, stop in fig.get("stops", {}).items():
        if stop.get("killed") or stop.get("already_exited") or stop.get("status") not in (0, -signal.SIGTERM):
            row(
                f"stop {name}",
                f"exit {stop.get('status')} after {stop.get('seconds', 0):.1f} s"
                + (" (did not exit on SIGTERM: SIGKILL)" if stop.get("killed") else "")
                + (" (had exited before)" if stop.get("already_exited") else ""),
            )
    width = max(len(name) for name, value in rows if value) + 2
    lines = ["", "=" * 110, "fleetsync query: summary", "=" * 110]
    lines += [name if not value else f"{name.ljust(width)}{value}" for name, value in rows]
    if w and w["problems"]:
        lines.append("-- watch problems (first 20):")
        lines += [f"   {p}" for p in w["problems"][:20]]
    lines.append("=" * 110)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clusters", type=int, default=100, help="clusters in the store")
    p.add_argument("--pods", type=int, default=100, help="Pods per cluster")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite", help="the store: SQLite in a temp dir, or a PostgreSQL server the bench starts")
    p.add_argument("--requests", type=int, default=200, help="measured list requests of each kind")
    p.add_argument("--warmup", type=int, default=10, help="warm-up list requests of each kind")
    p.add_argument("--watchers", type=int, default=100, help="concurrent watches")
    p.add_argument("--cluster-watchers", type=int, default=0, help="of the watchers, how many watch one cluster each (the rest: the whole fleet)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds the writer writes")
    p.add_argument("--rate", type=float, default=100.0, help="changes/s the writer writes (0: as fast as the store commits)")
    p.add_argument("--bundle", type=int, default=50, help="Pod updates per bundle (one cluster, one transaction)")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="seconds allowed after the writer stops for every watcher to have every change")
    p.add_argument(
        "--no-analyze",
        action="store_true",
        help="PostgreSQL: no ANALYZE after populating (the state right after a first sync, until autovacuum analyzes the tables)",
    )
    p.add_argument("--no-auth", action="store_true", help="no admin token: for a hub without API access control (--admin-token-file)")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for the hub's /readyz")
    p.add_argument("--stop-grace", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL when stopping the hub")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync executable")
    p.add_argument("--hub-profile", type=Path, help="run the hub under cProfile and write its stats to this file")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.clusters < 1 or args.pods < 1 or args.watchers < 0 or args.duration <= 0 or args.rate < 0 or args.bundle < 1 or args.requests < 1:
        p.error("need --clusters >= 1, --pods >= 1, --watchers >= 0, --duration > 0, --rate >= 0, --bundle >= 1, --requests >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = bench_start("query", args)
    if started is None:
        return 1
    fig: dict[str, Any] = started
    status = 0
    with tempfile.TemporaryDirectory(prefix="fleetsync-query-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(args.fleetsync, tmp)
        print(
            f"query: {args.clusters} clusters x {args.pods} Pods on {args.db}, {args.watchers} watchers for {args.duration:g} s; work dir {tmp}",
            flush=True,
        )
        database = contextlib.ExitStack()  # outlives the hub, which stops before its store
        try:
            pg = None
            if args.db == "postgres":  # a server of the bench's own, with PostgreSQL's durable defaults
                pg = database.enter_context(PostgresServer(settings={}))
                print(f"store: PostgreSQL on port {pg.port} (fsync on)", flush=True)
            asyncio.run(bench(args, procs, tmp, fig, pg))
            if not fig["watch"]["lossless"]:
                status = 1
        except BenchError as exc:
            status = 1
            print(f"\nquery: FAILED: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            status = 130
            print("\nquery: interrupted; stopping the hub", file=sys.stderr)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            # a hub with watches open takes aiohttp's 60 s shutdown timeout to exit; under cProfile it must exit to write its stats
            procs.stop_all(max(args.stop_grace, 75.0) if args.hub_profile else args.stop_grace)
            database.close()
            fig["stops"] = {c.name: c.stopped for c in procs.children}
            fig["loadavg_end"] = os.getloadavg()
        if status == 1:
            for child in procs.children:
                print(f"--- {child.name} log (last 30 lines) ---\n{tail(child.log)}", file=sys.stderr)
    print(report(fig), flush=True)
    if status == 0 and fig.get("watch"):
        print("query: OK: every watcher received every change", flush=True)
    elif fig.get("watch") and not fig["watch"]["lossless"]:
        print("query: FAILED: some watcher missed changes (see 'watch problems' above)", flush=True)
    line = orjson.dumps(fig, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)
    if args.json:
        args.json.write_bytes(line)
        print(f"figures written to {args.json}")
    print(line.decode(), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
