"""How fast one hub ingests a fleet: C clusters x P pods through C agents, first the initial sync, then churn.

The bench starts everything itself, on free loopback ports in a temporary directory:
``fleetsync sim --clusters C --pods P --churn 0``, a hub on SQLite
(``fleetsync hub --db sqlite:///TMP/hub.db``), one agent token per cluster
(``fleetsync token create``) and one ``fleetsync agent`` per cluster syncing ``--types``
(default: the agent's own default, Services, EndpointSlices, Pods and the Istio kinds).
Every process is stopped at the end, also on errors and Ctrl-C (SIGTERM, then SIGKILL
after ``--stop-grace`` seconds; children also get SIGTERM if the bench itself dies).

Measured:

1. **initial sync** (churn 0): seconds from starting the agents until the hub holds
   every object, i.e. until for every cluster and every synced type the hub's
   ``GET /api/v1/clusters`` ``objects`` count equals the sim's ``GET /clusters`` count
   (polled every 0.25 s); then ``fleetsync check`` is run until it exits 0 (no missing,
   extra or stale object), which is reported too. Objects/s = the hub's
   ``fleetsync_objects_applied_total`` (all types) delta over that time.
2. **sustained** (``--churn`` operations/s per cluster for ``--duration`` s, set with
   ``PUT /churn``): objects/s applied by the hub (metrics delta / time), bundles/s, mean
   commit time per bundle (``fleetsync_apply_seconds``), and the sim's writes and churn
   operations for comparison. *Change-to-hub latency* of Pods in the first
   ``--latency-clusters`` clusters:

   - the bench watches those clusters' Pods at the sim (``?watch=1`` from the current
     resourceVersion, with bookmarks) and notes, for each ADDED / MODIFIED event, the
     (key, resourceVersion) and the monotonic time the event line arrived;
   - ``--latency-probe watch`` (the default): a separate process (so that nothing else
     the bench does delays its timestamps) watches the same clusters' Pods at the hub,
     as a client of the hub would (``GET /clusters/NAME/api/v1/pods?watch=1`` from the
     revision of a list, with bookmarks; resumed from the last revision seen if the
     watch breaks), and notes the time each (key, cluster resourceVersion) arrived in an
     ADDED / MODIFIED event (the hub keeps the sim's resourceVersion in an annotation).
     Latency = hub watch event time - sim watch event time: a change in the sim, seen by
     a watch there, to the same change seen by a watch of the hub;
   - ``--latency-probe poll`` (the former probe): a separate process (so parsing
     megabytes of JSON does not delay the timestamps) GETs ``/clusters/NAME/api/v1/pods``
     from the hub for the same clusters every ``--poll-interval`` s (one round = one
     request per cluster, in turn), and notes the first time each (key, resourceVersion)
     is in a response (the time the response was fully read). This latency is an
     **upper bound**: it includes up to one polling interval (plus the time of one round)
     of waiting for the next poll. The polling has a cost the figures include: every
     poll makes the hub read and decompress every Pod of a cluster (about 3 MB of JSON
     per 1,000 pods); the summary shows the requests/s, the bytes and the mean time per
     request.

   Both report p50/p99/max over the versions actually seen at the hub; versions that a
   newer version (or a deletion) replaced before the hub showed them (the agent and the
   hub conflate) are counted separately ("superseded"), as are versions never seen at all.
   Both clocks are ``time.monotonic()``, which is system-wide. The sim writes each event
   to its watchers (the agent's and the bench's) from one task per watch, in turn, on its
   single event loop, so now and then a change reaches the hub watch before the bench's
   own watch of the sim: such samples count as 0 and are reported ("seen at the hub
   before the sim watch delivered them").
3. **resources**: the hub's peak RSS (psutil every second, and the kernel's VmHWM) and
   mean CPU per phase (CPU-time delta / wall time, as a fraction of one core), the
   agents' total RSS (sum over the agents, peak and at the end) and CPU, the sim's and
   the bench's CPU (on a small machine they all share the cores).
4. **convergence after churn**: churn is set to 0 and ``fleetsync check`` is run until it
   exits 0; reported is the time from stopping the churn to the end of the first passing
   check (and when that check started, since one check takes seconds), plus when the
   last Pod version seen at the sim in the probed clusters became visible at the hub.

Finally the hub's and agents' logs are searched for WARNING / ERROR / Traceback, gaps,
resyncs, expired watches and reconnections, and the hub's resync and rejection counters
are read.

Run (from the repository root)::

    .venv/bin/python bench/ingest.py --clusters 2 --pods 200 --duration 10        # quick check
    .venv/bin/python bench/ingest.py --clusters 10 --pods 1000 --churn 5 --duration 60
    .venv/bin/python bench/ingest.py --clusters 10 --pods 1000 --churn 5 --duration 60 --latency-probe poll

``--json FILE`` also writes the figures as JSON; ``--keep-logs DIR`` copies the logs
there. Exit status: 0 when every phase completed (read the "checks" section), 1 when a
process died or a phase timed out (the tails of the logs are printed), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import multiprocessing
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
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
    bench_start,
    core,
    cpu_seconds,
    divergent_rows,
    free_port,
    get_json,
    mib,
    ms,
    parse_metrics,
    percentile,
    put_churn,
    rss,
    run_check,
    start_broker,
    tail,
    vm_hwm,
)
from fleetsync.model.objects import CLUSTER_VERSION_ANNOTATION
from fleetsync.testing.postgres import PostgresServer

LOG_PATTERNS = {
    "ERROR": re.compile(r" ERROR "),
    "WARNING": re.compile(r" WARNING "),
    "Traceback": re.compile(r"^Traceback"),
    "gap": re.compile(r"\bgap\b"),
    "resync": re.compile(r"resync", re.IGNORECASE),
    "watch expired": re.compile(r"watch expired|listing again"),
    "connection lost": re.compile(r"connection to hub .* lost|cannot reach hub|disconnected"),
}


# ---- sampling ------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    phase: str
    rss: dict[str, int]  # group -> bytes (sum over the group's processes)
    cpu: dict[str, float]  # group -> fraction of one core since the previous sample


class Sampler(threading.Thread):
    """Every ``interval`` s: RSS and CPU of each group of processes (hub, agents, sim, bench)."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(name="sampler", daemon=True)
        self.interval = interval
        self.groups: dict[str, list[psutil.Process]] = defaultdict(list)
        self.phase = "setup"
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._last_cpu: dict[int, float] = {}

    def add(self, group: str, ps: psutil.Process) -> None:
        with self._lock:
            self.groups[group].append(ps)
            self._last_cpu[ps.pid] = cpu_seconds(ps)

    def cpu_seconds(self, group: str) -> float:
        with self._lock:
            return sum(cpu_seconds(ps) for ps in self.groups.get(group, []))

    def run(self) -> None:
        last = time.monotonic()
        while not self._halt.wait(self.interval):
            now = time.monotonic()
            rss_by_group: dict[str, int] = {}
            cpu: dict[str, float] = {}
            with self._lock:
                for group, members in self.groups.items():
                    rss_by_group[group] = sum(rss(ps) for ps in members)
                    used = 0.0
                    for ps in members:
                        c = cpu_seconds(ps)
                        if c:  # a process that went away keeps its last figure
                            used += c - self._last_cpu.get(ps.pid, c)
                            self._last_cpu[ps.pid] = c
                    cpu[group] = used / max(now - last, 1e-6)
            self.samples.append(Sample(now, self.phase, rss_by_group, cpu))
            last = now

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def of(self, phase: str) -> list[Sample]:
        return [s for s in self.samples if s.phase == phase]


# ---- the hub poller (a separate process) ---------------------------------------------

# The hub's Pod bodies are the agent's canonical JSON (sorted keys), and the hub keeps their key
# order: in each item's metadata "name" is followed by "namespace", and the cluster's
# resourceVersion annotation occurs once per item. A regex is ~10x cheaper than parsing 3 MB;
# every response is checked for consistent counts, the first one against a full parse, with
# orjson as fallback.
_NAME_NS = re.compile(rb'"name":"([^"\\]*)","namespace":"([^"\\]*)"')
_RV = re.compile(rb'"' + re.escape(CLUSTER_VERSION_ANNOTATION.encode()) + rb'":"(\d+)"')


def _versions_parsed(raw: bytes) -> list[tuple[str, int]]:
    items = orjson.loads(raw)["items"]
    return [(f"{i['metadata'].get('namespace', '')}/{i['metadata']['name']}", int(i["metadata"]["annotations"][CLUSTER_VERSION_ANNOTATION])) for i in items]


def _versions_fast(raw: bytes) -> list[tuple[str, int]] | None:
    names = _NAME_NS.findall(raw)
    rvs = _RV.findall(raw)
    if len(rvs) != len(names) or raw.count(b'"kind":"Pod"') != len(names):
        return None
    return [(f"{ns.decode()}/{name.decode()}", int(rv)) for (name, ns), rv in zip(names, rvs, strict=True)]


def poll_hub(hub: str, clusters: list[str], interval: float, out: str, ready: Any, stop: Any) -> None:
    """Poll the hub's Pod lists of ``clusters`` every ``interval`` s until ``stop`` is set; write what was seen first when to ``out``."""
    parsed = urllib.parse.urlsplit(hub)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=60)
    first: dict[tuple[str, str, int], float] = {}
    rounds: list[tuple[float, float]] = []  # (start, duration)
    requests: list[float] = []
    nbytes = 0
    fallbacks = 0
    errors: list[str] = []
    verified = False
    next_round = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        for cluster in clusters:
            t0 = time.monotonic()
            try:
                conn.request("GET", f"/clusters/{cluster}/api/v1/pods", headers={"Accept": "application/json", **HUB_AUTH})
                response = conn.getresponse()
                raw = response.read()
                seen_at = time.monotonic()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {raw[:200]!r}")
            except Exception as exc:
                if len(errors) < 20:
                    errors.append(f"{cluster}: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=60)
                continue
            requests.append(seen_at - t0)
            nbytes += len(raw)
            versions = _versions_fast(raw)
            if versions is None or not verified:
                full = _versions_parsed(raw)
                if versions is None or sorted(versions) != sorted(full):
                    fallbacks += 1
                else:
                    verified = True
                versions = full
            for key, rv in versions:
                first.setdefault((cluster, key, rv), seen_at)
        rounds.append((started, time.monotonic() - started))
        ready.set()
        next_round += interval
        now = time.monotonic()
        if next_round < now:  # the round took longer than the interval: start the next one now
            next_round = now
        stop.wait(next_round - now)
    conn.close()
    Path(out).write_bytes(
        orjson.dumps(
            {
                "mode": "poll",
                "first": [[c, k, rv, t] for (c, k, rv), t in first.items()],
                "rounds": rounds,
                "requests": requests,
                "bytes": nbytes,
                "fallbacks": fallbacks,
                "errors": errors,
            }
        )
    )


# ---- the hub watcher (a separate process) ----------------------------------------------


def watch_hub(hub: str, clusters: list[str], out: str, ready: Any, stop: Any) -> None:
    """Watch the hub's Pods of ``clusters`` until ``stop`` is set; write when each (key, cluster resourceVersion) arrived to ``out``."""
    Path(out).write_bytes(orjson.dumps(asyncio.run(_watch_hub(hub, clusters, ready, stop))))


async def _watch_hub(hub: str, clusters: list[str], ready: Any, stop: Any) -> dict[str, Any]:
    first: dict[tuple[str, str, int], float] = {}
    counts: Counter[str] = Counter()
    errors: list[str] = []
    opened: set[str] = set()
    reconnects = 0

    async def follow(session: aiohttp.ClientSession, cluster: str) -> None:
        nonlocal reconnects
        url = f"{hub}/clusters/{cluster}/api/v1/pods"
        rv = ""  # the hub revision to resume from
        while True:
            try:
                if not rv:
                    async with session.get(url, params={"limit": "1"}, headers=HUB_AUTH, timeout=aiohttp.ClientTimeout(total=60)) as resp:
                        rv = orjson.loads(await resp.read())["metadata"]["resourceVersion"]
                params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true"}
                timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
                async with session.get(url, params=params, headers=HUB_AUTH, timeout=timeout) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"watch answered HTTP {resp.status}: {(await resp.read())[:200]!r}")
                    opened.add(cluster)
                    if len(opened) == len(clusters):
                        ready.set()
                    async for line in resp.content:
                        seen = time.monotonic()  # before any parsing
                        if not line.strip():
                            continue
                        event = orjson.loads(line)
                        kind = event["type"]
                        counts[kind] += 1
                        meta = event["object"].get("metadata", {})
                        if kind == "ERROR":
                            errors.append(f"{cluster}: ERROR event {event['object'].get('message', '')}")
                            rv = ""  # 410: start again from a list (what changed in between is lost to the sample)
                            break
                        rv = meta.get("resourceVersion", rv)
                        if kind in ("ADDED", "MODIFIED"):
                            version = int(meta.get("annotations", {}).get(CLUSTER_VERSION_ANNOTATION, -1))
                            first.setdefault((cluster, f"{meta.get('namespace', '')}/{meta['name']}", version), seen)
                errors.append(f"{cluster}: watch ended by the hub")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors.append(f"{cluster}: {exc!r}")
                await asyncio.sleep(0.5)
            reconnects += 1

    async with aiohttp.ClientSession(read_bufsize=1 << 22) as session:
        tasks = [asyncio.create_task(follow(session, c), name=f"hub-watch-{c}") for c in clusters]
        started = time.monotonic()
        await asyncio.to_thread(stop.wait)  # a multiprocessing.Event
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "mode": "watch",
        "first": [[c, k, rv, t] for (c, k, rv), t in first.items()],
        "events": dict(counts),
        "seconds": time.monotonic() - started,
        "reconnects": reconnects,
        "errors": errors[:20],
    }


# ---- the bench's own watches of the sim ----------------------------------------------


@dataclass
class WatchLog:
    events: list[tuple[str, str, int, float, str]] = field(default_factory=list)  # (cluster, key, rv, time, type)
    counts: Counter[str] = field(default_factory=Counter)
    drops: list[str] = field(default_factory=list)


async def watch_pods(session: aiohttp.ClientSession, sim: str, cluster: str, log: WatchLog, opened: asyncio.Event) -> None:
    """Watch ``cluster``'s Pods at the sim from its current resourceVersion; log each event's arrival time. Runs until cancelled."""
    url = f"{sim}/clusters/{cluster}/api/v1/pods"
    rv = ""
    while True:
        try:
            if not rv:
                async with session.get(url, params={"limit": "1"}, timeout=aiohttp.ClientTimeout(total=60)) as resp:
                    rv = orjson.loads(await resp.read())["metadata"]["resourceVersion"]
            params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true"}
            async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"watch answered HTTP {resp.status}")
                opened.set()
                async for line in resp.content:
                    seen = time.monotonic()
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    kind = event["type"]
                    log.counts[kind] += 1
                    meta = event["object"].get("metadata", {})
                    if kind == "ERROR":
                        log.drops.append(f"{cluster}: ERROR event {event['object'].get('message', '')}")
                        rv = ""  # 410: restart from the current version (events in between are lost to the sample)
                        break
                    rv = meta.get("resourceVersion", rv)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        log.events.append((cluster, f"{meta.get('namespace', '')}/{meta['name']}", int(rv), seen, kind))
            log.drops.append(f"{cluster}: watch ended by the server")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.drops.append(f"{cluster}: {exc!r}")
            await asyncio.sleep(0.5)


# ---- hub and sim reads ---------------------------------------------------------------


async def get_text(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=60), headers=headers) as resp:
        return await resp.text()


async def metrics(session: aiohttp.ClientSession, hub: str) -> dict[str, float]:
    return parse_metrics(await get_text(session, f"{hub}/metrics", HUB_AUTH))


# ---- the bench -----------------------------------------------------------------------


def _synced_types(requested: str, served: set[str]) -> tuple[list[str], list[str]]:
    """(types to expect at the hub, requested types the sim does not serve)."""
    from fleetsync.cli.agent import DEFAULT_TYPES
    from fleetsync.model.types import TypeRegistry

    registry = TypeRegistry()
    names = [t.strip() for t in (requested or DEFAULT_TYPES).split(",") if t.strip()]
    gvks = [registry.resolve(n).gvk for n in names]
    return [g for g in gvks if g in served], [g for g in gvks if g not in served]


def _counts_match(sim_clusters: list[dict[str, Any]], hub: dict[str, Any], types: list[str]) -> set[str]:
    """The clusters whose hub counts equal the sim's for every synced type."""
    held = {c["name"]: c for c in hub["items"]}
    done = set()
    for c in sim_clusters:
        h = held.get(c["name"])
        if h and set(types) <= set(h["types"]) and all(h["objects"].get(t, 0) == c["objects"].get(t, 0) for t in types):
            done.add(c["name"])
    return done


def latency_figures(log: WatchLog, probe: dict[str, Any], churn_stopped: float) -> dict[str, Any]:
    """Match the sim's events with the hub's first sightings (``probe``: what the hub watcher or poller wrote)."""
    first: dict[tuple[str, str, int], float] = {(c, k, rv): t for c, k, rv, t in probe["first"]}
    later: dict[tuple[str, str], list[int]] = defaultdict(list)  # (cluster, key) -> every rv the sim emitted (incl. deletes)
    for cluster, key, rv, _t, _kind in log.events:
        later[(cluster, key)].append(rv)
    latencies: list[float] = []
    early = superseded = never = 0
    never_examples: list[str] = []
    last_visible = None
    for cluster, key, rv, t_sim, kind in log.events:
        if kind == "DELETED":
            continue
        t_hub = first.get((cluster, key, rv))
        if t_hub is not None:
            if t_hub < t_sim:
                early += 1  # the hub showed it before the bench's watch of the sim delivered it
            latencies.append(max(0.0, t_hub - t_sim))
            if t_sim <= churn_stopped:
                last_visible = t_hub if last_visible is None else max(last_visible, t_hub)
        elif any(other > rv for other in later[(cluster, key)]):
            superseded += 1
        else:
            never += 1
            if len(never_examples) < 10:
                never_examples.append(f"{cluster} {key} rv {rv} ({kind})")
    figures: dict[str, Any] = {
        "probe": probe["mode"],
        "samples": len(latencies),
        "p50": percentile(latencies, 0.5),
        "p90": percentile(latencies, 0.9),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies, default=float("nan")),
        "mean": statistics.mean(latencies) if latencies else float("nan"),
        "hub_before_watch": early,
        "superseded": superseded,
        "never_seen": never,
        "never_examples": never_examples,
        "events": dict(log.counts),
        "drops": log.drops[:20],
        "last_visible_after_churn_stop": None if last_visible is None else last_visible - churn_stopped,
    }
    if probe["mode"] == "watch":
        figures |= {
            "hub_events": probe["events"],
            "hub_watch_seconds": probe["seconds"],
            "hub_watch_reconnects": probe["reconnects"],
            "hub_watch_errors": probe["errors"],
        }
        return figures
    rounds = probe["rounds"]
    starts = [s for s, _ in rounds]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    return figures | {
        "poll_rounds": len(rounds),
        "poll_round_mean": statistics.mean(d for _, d in rounds) if rounds else float("nan"),
        "poll_round_max": max((d for _, d in rounds), default=float("nan")),
        "poll_interval_mean": statistics.mean(gaps) if gaps else float("nan"),
        "poll_requests": len(probe["requests"]),
        "poll_request_mean": statistics.mean(probe["requests"]) if probe["requests"] else float("nan"),
        "poll_bytes": probe["bytes"],
        "poll_seconds": (starts[-1] - starts[0]) if len(starts) > 1 else float("nan"),
        "poll_fallbacks": probe["fallbacks"],
        "poll_errors": probe["errors"],
    }


async def start_transport(transport: str, procs: Processes, tmp: Path, grpc_port: int) -> tuple[str, list[str]]:
    """Start the broker for ``transport`` (none for grpc): the agents' hub URL and the hub's extra flags."""
    if transport == "grpc":
        return f"grpc://127.0.0.1:{grpc_port}", []
    url = await start_broker(transport, procs, tmp)
    return url, ["--broker", url]


async def create_tokens(fleetsync: Path, db: str, clusters: list[str], tmp: Path) -> dict[str, Path]:
    """An agent token of each of ``clusters`` (``fleetsync token create``), each in a file of ``tmp``."""
    token_files = {}
    for name in clusters:
        proc = await asyncio.create_subprocess_exec(
            str(fleetsync), "token", "create", name, "--db", db, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        if proc.returncode != 0 or not out.strip():
            raise BenchError(f"fleetsync token create {name} failed ({proc.returncode}): {err.decode(errors='replace').strip()[-500:]}")
        token_files[name] = tmp / f"{name}.token"
        token_files[name].write_text(out.decode().strip())
    return token_files


class NotConverged(BenchError):
    """``fleetsync check`` still reported divergence at the deadline."""

    def __init__(self, what: str, checks: int, divergent: list[str]) -> None:
        super().__init__(f"{what}: {divergent[:10]}")
        self.checks = checks
        self.divergent = divergent


@dataclass
class CheckRuns:
    """The ``fleetsync check`` runs until one passed: each one's (exit status, seconds)."""

    runs: list[tuple[int, float]]
    #: When (monotonic) the passing check started.
    passing_started: float

    def mean_seconds(self) -> float:
        return statistics.mean(seconds for _, seconds in self.runs)


@dataclass
class Checker:
    """``fleetsync check`` of the sim against the hub, run again until it passes (both the initial
    sync and the convergence after the churn end so)."""

    fleetsync: Path
    sim_url: str
    hub_url: str
    procs: Processes
    check_timeout: float

    async def until_converged(self, *, deadline: float, interval: float, what: str) -> CheckRuns:
        """Check every ``interval`` s until a check passes; :class:`NotConverged` (``what``, with the divergent
        rows) past ``deadline`` (monotonic), BenchError as soon as a process died."""
        runs: list[tuple[int, float]] = []
        while True:
            self.procs.check_alive("sim", "hub", "agent-")
            started = time.monotonic()
            status, seconds, output = await run_check(self.fleetsync, self.sim_url, self.hub_url, self.check_timeout)
            runs.append((status, seconds))
            if status == 0:
                return CheckRuns(runs, started)
            if time.monotonic() > deadline:
                raise NotConverged(what, len(runs), divergent_rows(output))
            await asyncio.sleep(interval)


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path, fig: dict[str, Any]) -> None:
    """Run the phases, filling ``fig`` as they complete (so a failed run still reports its early figures)."""
    fleetsync = args.fleetsync
    sampler = Sampler()
    sampler.add("bench", psutil.Process())
    sampler.start()
    fig["_sampler"] = sampler
    async with aiohttp.ClientSession(read_bufsize=1 << 22) as session:
        # -- sim ---------------------------------------------------------------------------
        sim_port = free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        t0 = time.monotonic()
        sim = procs.spawn(
            "sim",
            "sim",
            "--clusters", str(args.clusters),
            "--pods", str(args.pods),
            "--churn", "0",
            "--port", str(sim_port),
            "--kubeconfig-dir", str(tmp / "kubeconfigs"),
            *args.sim_arg,
        )  # fmt: skip
        sampler.add("sim", sim.ps)
        while True:
            procs.check_alive("sim")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{sim_url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() - t0 > args.startup_timeout:
                raise BenchError(f"the sim did not answer /healthz within {args.startup_timeout:.0f} s")
            await asyncio.sleep(0.1)
        fig["sim_startup_s"] = time.monotonic() - t0
        sim_clusters = (await get_json(session, f"{sim_url}/clusters"))["clusters"]
        names = [c["name"] for c in sim_clusters]
        served = {t for c in sim_clusters for t in c["objects"]}
        types, unserved = _synced_types(args.types, served)
        fig["types"] = types
        fig["types_not_served"] = unserved
        fig["objects_synced_types"] = sum(c["objects"].get(t, 0) for c in sim_clusters for t in types)
        fig["pods_total"] = sum(c["objects"].get("v1/Pod", 0) for c in sim_clusters)
        fig["objects_all_types"] = sum(sum(c["objects"].values()) for c in sim_clusters)
        print(
            f"sim up after {fig['sim_startup_s']:.1f} s: {len(names)} clusters, {fig['objects_synced_types']:,} objects of {len(types)} synced types "
            f"({fig['pods_total']:,} pods)",
            flush=True,
        )

        # -- hub and tokens ---------------------------------------------------------------
        db = args.db_url or f"sqlite:///{tmp / 'hub.db'}"
        fig["db"] = "postgresql" if args.db_url else "sqlite"
        grpc_port, http_port = free_port(), free_port()
        hub_url = f"http://127.0.0.1:{http_port}"
        agent_hub_url, via = await start_transport(args.transport, procs, tmp, grpc_port)
        fig["transport"] = args.transport
        hub = procs.spawn_hub(db, grpc_port, http_port, *via)
        sampler.add("hub", hub.ps)
        t0 = time.monotonic()
        while True:
            procs.check_alive("hub")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{hub_url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() - t0 > 60:
                raise BenchError("the hub was not ready within 60 s")
            await asyncio.sleep(0.1)
        token_files = await create_tokens(fleetsync, db, names, tmp)
        fig["hub_rss_before_agents"] = rss(hub.ps)

        # -- 1. initial sync (churn 0) ------------------------------------------------------
        m0 = await metrics(session, hub_url)
        sampler.phase = "sync"
        cpu0 = {g: sampler.cpu_seconds(g) for g in ("hub", "sim", "bench")}
        cpu0["agents"] = 0.0  # the agents start now
        t_start = time.monotonic()
        for name in names:
            agent_args = [
                "agent",
                "--kubeconfig", str(tmp / "kubeconfigs" / f"{name}.kubeconfig"),
                "--cluster-id", name,
                "--hub", agent_hub_url,
                "--token-file", str(token_files[name]),
            ]  # fmt: skip
            if args.types:
                agent_args += ["--types", args.types]
            agent = procs.spawn(f"agent-{name}", *agent_args)
            sampler.add("agents", agent.ps)
        print(f"{len(names)} agents started; waiting until the hub holds every object (timeout {args.sync_timeout:.0f} s) ...", flush=True)
        done_at: dict[str, float] = {}
        while True:
            procs.check_alive("sim", "hub", "agent-")
            hub_clusters = await get_json(session, f"{hub_url}/api/v1/clusters", headers=HUB_AUTH)
            now = time.monotonic()
            for name in _counts_match(sim_clusters, hub_clusters, types):
                done_at.setdefault(name, now - t_start)
            if len(done_at) == len(names):
                break
            if now - t_start > args.sync_timeout:
                raise BenchError(f"initial sync: after {args.sync_timeout:.0f} s only {len(done_at)} of {len(names)} clusters have every object at the hub")
            await asyncio.sleep(0.25)
        t_synced = time.monotonic()
        m1 = await metrics(session, hub_url)
        sync_s = t_synced - t_start
        applied = m1.get("fleetsync_objects_applied_total", 0) - m0.get("fleetsync_objects_applied_total", 0)
        fig["sync"] = {
            "seconds": sync_s,
            "per_cluster_p50": statistics.median(done_at.values()),
            "per_cluster_first": min(done_at.values()),
            "per_cluster_last": max(done_at.values()),
            "objects_applied": applied,
            "objects_per_s": applied / sync_s,
            "bundles": m1.get("fleetsync_bundles_applied_total", 0) - m0.get("fleetsync_bundles_applied_total", 0),
            "cpu": {g: (sampler.cpu_seconds(g) - cpu0[g]) / sync_s for g in cpu0},
            "hub_rss": rss(hub.ps),
            "agents_rss": sum(rss(a.ps) for a in procs.of("agent-")),
        }
        print(
            f"hub holds every object after {sync_s:.1f} s ({applied:,.0f} objects applied, {applied / sync_s:,.0f}/s); running fleetsync check ...", flush=True
        )
        checker = Checker(fleetsync, sim_url, hub_url, procs, args.check_timeout)
        checks = await checker.until_converged(
            deadline=t_start + args.sync_timeout, interval=0.5, what=f"initial sync: fleetsync check still reports divergence after {args.sync_timeout:.0f} s"
        )
        fig["sync"]["check_converged_s"] = time.monotonic() - t_start
        fig["sync"]["checks"] = len(checks.runs)
        fig["sync"]["check_seconds"] = checks.mean_seconds()
        sampler.phase = "idle"
        print(f"fleetsync check converged {fig['sync']['check_converged_s']:.1f} s after the agents started ({len(checks.runs)} check(s))", flush=True)

        # -- 2. sustained churn, with the latency probes ---------------------------------------
        probe = names[: max(0, args.latency_clusters)]
        log = WatchLog()
        ctx = multiprocessing.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        probe_out = tmp / "probe.json"
        poller = None  # the process that watches (or polls) the hub
        watch_tasks: list[asyncio.Task[None]] = []
        try:
            if probe:
                if args.latency_probe == "watch":
                    poller = ctx.Process(target=watch_hub, args=(hub_url, probe, str(probe_out), ready, stop), name="hub-watcher", daemon=True)
                else:
                    poller = ctx.Process(
                        target=poll_hub, args=(hub_url, probe, args.poll_interval, str(probe_out), ready, stop), name="hub-poller", daemon=True
                    )
                poller.start()
                assert poller.pid is not None
                sampler.add("bench", psutil.Process(poller.pid))
                opened = [asyncio.Event() for _ in probe]
                watch_tasks = [asyncio.create_task(watch_pods(session, sim_url, c, log, o), name=f"watch-{c}") for c, o in zip(probe, opened, strict=True)]
                await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 60)
                t0 = time.monotonic()
                while not ready.is_set():
                    if not poller.is_alive() or time.monotonic() - t0 > 60:
                        raise BenchError(f"the hub {'watches did not open' if args.latency_probe == 'watch' else 'poller did not complete a first round'}")
                    await asyncio.sleep(0.05)
            sim0 = await get_json(session, f"{sim_url}/clusters")
            churn0 = await get_json(session, f"{sim_url}/churn")
            m0 = await metrics(session, hub_url)
            cpu0 = {g: sampler.cpu_seconds(g) for g in ("hub", "agents", "sim", "bench")}
            sampler.phase = "churn"
            await put_churn(session, sim_url, args.churn)
            t0 = time.monotonic()
            print(
                f"churn at {args.churn:g} operations/s per cluster for {args.duration:.0f} s (latency probes on {', '.join(probe) or 'no cluster'}) ...",
                flush=True,
            )
            while time.monotonic() - t0 < args.duration:
                procs.check_alive("sim", "hub", "agent-")
                await asyncio.sleep(min(1.0, args.duration - (time.monotonic() - t0)))
            await put_churn(session, sim_url, 0)
            t_churn_stop = time.monotonic()
            wall = t_churn_stop - t0
            m1 = await metrics(session, hub_url)
            cpu1 = {g: sampler.cpu_seconds(g) for g in cpu0}
            sampler.phase = "converge"
            sim1 = await get_json(session, f"{sim_url}/clusters")
            churn1 = await get_json(session, f"{sim_url}/churn")
            applied = m1.get("fleetsync_objects_applied_total", 0) - m0.get("fleetsync_objects_applied_total", 0)
            bundles = m1.get("fleetsync_bundles_applied_total", 0) - m0.get("fleetsync_bundles_applied_total", 0)
            apply_sum = m1.get("fleetsync_apply_seconds_sum", 0) - m0.get("fleetsync_apply_seconds_sum", 0)
            apply_count = m1.get("fleetsync_apply_seconds_count", 0) - m0.get("fleetsync_apply_seconds_count", 0)
            samples = sampler.of("churn")
            fig["churn"] = {
                "seconds": wall,
                "rate": args.churn,
                "operations": sum(churn1["operations"].values()) - sum(churn0["operations"].values()),
                "writes": sum(int(b["resourceVersion"]) - int(a["resourceVersion"]) for a, b in zip(sim0["clusters"], sim1["clusters"], strict=True)),
                "objects_applied": applied,
                "objects_per_s": applied / wall,
                "bundles_per_s": bundles / wall,
                "apply_ms_mean": 1000 * apply_sum / apply_count if apply_count else float("nan"),
                "cpu": {g: (cpu1[g] - cpu0[g]) / wall for g in cpu0},
                "hub_cpu_sample_max": max((s.cpu.get("hub", 0.0) for s in samples), default=float("nan")),
                "hub_rss_peak": max((s.rss.get("hub", 0) for s in samples), default=0),
                "agents_rss_peak": max((s.rss.get("agents", 0) for s in samples), default=0),
            }

            # -- 4. convergence after the churn ---------------------------------------------
            print(f"churn stopped; {applied:,.0f} objects applied ({applied / wall:,.0f}/s); running fleetsync check until it converges ...", flush=True)
            try:
                checks = await checker.until_converged(
                    deadline=t_churn_stop + args.converge_timeout,
                    interval=0.2,
                    what=f"fleetsync check still reports divergence {args.converge_timeout:.0f} s after the churn stopped",
                )
            except NotConverged as exc:
                fig["converge"] = {"seconds": None, "checks": exc.checks, "divergent": exc.divergent[:20]}
                raise
            t_conv = time.monotonic()
            fig["converge"] = {
                "seconds": t_conv - t_churn_stop,
                "passing_check_started": checks.passing_started - t_churn_stop,
                "checks": len(checks.runs),
                "failed_checks": sum(1 for status, _ in checks.runs if status != 0),
                "check_seconds": checks.mean_seconds(),
            }
            if probe:
                # a moment (the poller: one more full round) so that the probe has seen the converged state
                await asyncio.sleep(1.0 if args.latency_probe == "watch" else 2 * args.poll_interval + 1.0)
        finally:
            for task in watch_tasks:
                task.cancel()
            await asyncio.gather(*watch_tasks, return_exceptions=True)
            if poller is not None:
                stop.set()
                poller.join(30)
                if poller.is_alive():
                    poller.kill()
                    poller.join(5)
        if probe and probe_out.exists():
            fig["latency"] = latency_figures(log, orjson.loads(probe_out.read_bytes()), t_churn_stop)
            fig["latency"]["clusters"] = probe
        elif probe:
            fig["latency"] = {"error": f"the hub {args.latency_probe} probe wrote no results (exit status {poller.exitcode if poller else None})"}
        m2 = await metrics(session, hub_url)
        fig["counters"] = {
            "resync_requests": m2.get("fleetsync_resync_requests_total", 0),
            "agents_rejected": m2.get("fleetsync_agents_rejected_total", 0),
            "connected_agents": m2.get("fleetsync_connected_agents", 0),
            "objects_applied_total": m2.get("fleetsync_objects_applied_total", 0),
        }
        fig["hub_clusters"] = {
            c["name"]: {"status": c["status"], "errors": c["errors"]}
            for c in (await get_json(session, f"{hub_url}/api/v1/clusters", headers=HUB_AUTH))["items"]
        }
        fig["end"] = {"hub_rss": rss(hub.ps), "hub_vmhwm": vm_hwm(hub.pid), "agents_rss": sum(rss(a.ps) for a in procs.of("agent-"))}
        fig["end"]["agents_vmhwm_max"] = max((vm_hwm(a.pid) or 0 for a in procs.of("agent-")), default=0)


# ---- report --------------------------------------------------------------------------


def log_findings(children: list[Child], cutoff: dict[str, int]) -> dict[str, Any]:
    """Per process group (hub, agents, sim): counts of notable log lines before the bench began stopping them, and examples."""
    found: dict[str, Any] = {}
    for group, prefix in (("hub", "hub"), ("agents", "agent-"), ("sim", "sim")):
        counts: Counter[str] = Counter()
        examples: list[str] = []
        for child in children:
            if not child.name.startswith(prefix):
                continue
            try:
                lines = child.log.read_bytes()[: cutoff.get(child.name)].decode(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                hit = [k for k, pattern in LOG_PATTERNS.items() if pattern.search(line)]
                counts.update(hit)
                if hit and len(examples) < 12:
                    examples.append(f"{child.name}: {line[:300]}")
        found[group] = {"counts": dict(counts), "examples": examples}
    return found


def report(fig: dict[str, Any]) -> str:
    cfg = fig["config"]
    mach = fig["machine"]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append((f"-- {title}", ""))

    def row(name: str, value: str) -> None:
        rows.append((f"   {name}", value))

    section("machine")
    row("nproc / CPU", f"{mach['nproc']} ({mach['cpu_model'] or 'unknown model'})")
    row("memory", mib(mach["memory"]))
    row("python / platform", f"{mach['python']} / {mach['platform']}")
    row("fleetsync", str(mach["fleetsync"]))
    row("load average at start", " ".join(f"{x:.2f}" for x in mach["loadavg_start"]))
    section(
        f"scenario: {cfg['clusters']} clusters x {cfg['pods']} pods, churn {cfg['churn']:g} operations/s per cluster for {cfg['duration']:g} s, "
        f"agents over {cfg.get('transport', 'grpc')}"
    )
    if "types" in fig:
        row("synced types", f"{len(fig['types'])} ({'agent default' if not cfg['types'] else cfg['types']})")
        if fig["types_not_served"]:
            row("  requested but not served by the sim", ", ".join(fig["types_not_served"]))
        row("objects of the synced types", f"{fig['objects_synced_types']:,} ({fig['pods_total']:,} pods; {fig['objects_all_types']:,} objects in the sim)")
        row("sim startup (population)", f"{fig['sim_startup_s']:.1f} s")
    if "sync" in fig:
        s = fig["sync"]
        section("1. initial sync (churn 0)")
        row(
            "agents started -> hub holds every object",
            f"{s['seconds']:.2f} s  (counts equal; per cluster first/median/last {s['per_cluster_first']:.1f} / {s['per_cluster_p50']:.1f} / {s['per_cluster_last']:.1f} s)",
        )
        row("agents started -> fleetsync check passes", f"{s['check_converged_s']:.2f} s  ({s['checks']} check(s), {s['check_seconds']:.1f} s each)")
        row("objects applied", f"{s['objects_applied']:,.0f} in {s['bundles']:,.0f} bundles")
        row("objects/s applied", f"{s['objects_per_s']:,.0f}")
        row("CPU mean hub / agents (sum, incl. start-up) / sim / bench", " / ".join(core(s["cpu"][g]) for g in ("hub", "agents", "sim", "bench")))
        row("RSS hub / agents (total) when synced", f"{mib(s['hub_rss'])} / {mib(s['agents_rss'])}")
    if "churn" in fig:
        c = fig["churn"]
        section(f"2. sustained churn ({c['seconds']:.1f} s at {c['rate']:g} operations/s per cluster)")
        row("churn operations done (sim)", f"{c['operations']:,}  ({c['operations'] / c['seconds']:,.1f}/s)")
        row("sim writes, all types (resourceVersion delta)", f"{c['writes']:,}  ({c['writes'] / c['seconds']:,.1f}/s)")
        row("objects/s applied by the hub", f"{c['objects_per_s']:,.1f}  ({c['objects_applied']:,.0f} objects)")
        row("bundles/s applied; mean commit per bundle", f"{c['bundles_per_s']:,.1f}; {c['apply_ms_mean']:.1f} ms")
        row("CPU mean hub / agents (sum) / sim / bench", " / ".join(core(c["cpu"][g]) for g in ("hub", "agents", "sim", "bench")))
        row("hub CPU per-second max", core(c["hub_cpu_sample_max"]))
        row("peak RSS hub / agents (total)", f"{mib(c['hub_rss_peak'])} / {mib(c['agents_rss_peak'])}")
    lat = fig.get("latency")
    if lat and "error" not in lat:
        if lat["probe"] == "watch":
            section(f"   change-to-hub latency, Pods of {', '.join(lat['clusters'])} (sim watch event -> hub watch event)")
        else:
            section(f"   change-to-hub latency, Pods of {', '.join(lat['clusters'])} (polled: an upper bound, includes the poll interval)")
            row(
                "poll interval (set / measured mean)",
                f"{cfg['poll_interval'] * 1000:.0f} ms / {ms(lat['poll_interval_mean'])}  (round of {len(lat['clusters'])} GETs: mean {ms(lat['poll_round_mean'])}, max {ms(lat['poll_round_max'])})",
            )
        row("p50 / p90 / p99 / max", f"{ms(lat['p50'])} / {ms(lat['p90'])} / {ms(lat['p99'])} / {ms(lat['max'])}  (mean {ms(lat['mean'])})")
        row("samples (versions seen at the hub)", f"{lat['samples']:,}")
        row("versions superseded before the hub showed them", f"{lat['superseded']:,}")
        row("versions never seen at the hub (not superseded)", f"{lat['never_seen']:,}")
        row("seen at the hub before the sim watch delivered them (counted as 0)", f"{lat['hub_before_watch']:,}")
        row("sim watch events (probed clusters)", ", ".join(f"{k} {v:,}" for k, v in sorted(lat["events"].items())) or "none")
        if lat["probe"] == "watch":
            row("hub watch events (probed clusters)", ", ".join(f"{k} {v:,}" for k, v in sorted(lat["hub_events"].items())) or "none")
        else:
            secs = lat["poll_seconds"]
            if secs == secs and secs > 0:
                row(
                    "polling load on the hub",
                    f"{lat['poll_requests'] / secs:.1f} req/s, {lat['poll_bytes'] / secs / 1e6:.1f} MB/s, {ms(lat['poll_request_mean'])} per request",
                )
    elif lat:
        row("latency", lat["error"])
    if "converge" in fig:
        v = fig["converge"]
        section("4. after the churn stopped")
        if v.get("seconds") is not None:
            row(
                "churn stopped -> fleetsync check passes",
                f"{v['seconds']:.2f} s  (the passing check started at {v['passing_check_started']:.2f} s; {v['checks']} check(s), {v['check_seconds']:.1f} s each)",
            )
        else:
            row("churn stopped -> fleetsync check passes", f"NOT CONVERGED ({v['checks']} checks)")
        if lat and lat.get("last_visible_after_churn_stop") is not None:
            row("last probed Pod version visible at the hub", f"{lat['last_visible_after_churn_stop']:+.2f} s after the churn stopped (negative: before)")
    if "end" in fig:
        e = fig["end"]
        section("3. memory and CPU")
        row("hub RSS before agents", mib(fig["hub_rss_before_agents"]))
        peak = max((s.rss.get("hub", 0) for s in fig.get("samples_raw", [])), default=0)
        row("hub peak RSS (1 s samples) / VmHWM", f"{mib(peak)} / {mib(e['hub_vmhwm'])}")
        row("hub RSS at the end", mib(e["hub_rss"]))
        apeak = max((s.rss.get("agents", 0) for s in fig.get("samples_raw", [])), default=0)
        row(
            "agents total RSS peak (1 s samples) / at end",
            f"{mib(apeak)} / {mib(e['agents_rss'])}  ({mib(e['agents_rss'] / max(1, cfg['clusters']))} per agent at end, max VmHWM {mib(e['agents_vmhwm_max'])})",
        )
        phases = fig.get("phases", {})
        if phases:
            row("hub CPU mean by phase (1 s samples)", ", ".join(f"{p} {core(x['hub_cpu'])}" for p, x in phases.items()))
    section("checks")
    if "counters" in fig:
        k = fig["counters"]
        row("hub resync requests / agents rejected", f"{k['resync_requests']:.0f} / {k['agents_rejected']:.0f}")
        row("agents connected at the end", f"{k['connected_agents']:.0f} of {cfg['clusters']}")
        errs = {n: c["errors"] for n, c in fig.get("hub_clusters", {}).items() if c["errors"]}
        row("clusters with type errors at the hub", ", ".join(f"{n}: {e}" for n, e in errs.items()) or "none")
    if lat and "error" not in lat and lat["probe"] == "watch":
        row("sim watch drops / hub watch breaks", f"{len(lat['drops'])} / {lat['hub_watch_reconnects']}")
    elif lat and "error" not in lat:
        row("sim watch drops / poller fallbacks / poller errors", f"{len(lat['drops'])} / {lat['poll_fallbacks']} / {len(lat['poll_errors'])}")
    if fig.get("logs"):
        row("log lines until shutdown", " / ".join(LOG_PATTERNS))
    for group, found in fig.get("logs", {}).items():
        counts = found["counts"]
        row(f"  {group}", " / ".join(str(counts.get(k, 0)) for k in LOG_PATTERNS))
    for name, stop in fig.get("stops", {}).items():
        if stop.get("already_exited") or stop.get("killed") or stop.get("status") not in (0, -signal.SIGTERM):
            row(
                f"stop {name}",
                f"exit {stop.get('status')} after {stop.get('seconds', 0):.1f} s{' (SIGKILL)' if stop.get('killed') else ''}{' (had exited before)' if stop.get('already_exited') else ''}",
            )
    width = max(len(name) for name, value in rows if value) + 2
    lines = ["", "=" * 110, "fleetsync ingest: summary", "=" * 110]
    lines += [name if not value else f"{name.ljust(width)}{value}" for name, value in rows]
    extra = [
        ("latency: versions never seen (first 10)", (lat or {}).get("never_examples")),
        ("latency: sim watch drops", (lat or {}).get("drops")),
        ("latency: poller errors", (lat or {}).get("poll_errors")),
        ("latency: hub watch breaks and errors", (lat or {}).get("hub_watch_errors")),
        ("divergent rows of the last check", fig.get("converge", {}).get("divergent")),
    ]
    extra += [(f"notable {group} log lines (first 12)", found["examples"]) for group, found in fig.get("logs", {}).items()]
    for title, items in extra:
        if items:
            lines.append(f"-- {title}:")
            lines += [f"   {x}" for x in items]
    lines.append("=" * 110)
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clusters", type=int, default=10, help="simulated clusters, one agent each")
    p.add_argument("--pods", type=int, default=1000, help="application pods per cluster")
    p.add_argument("--churn", type=float, default=5.0, help="churn operations/s per cluster during the sustained phase")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of sustained churn")
    p.add_argument(
        "--transport", choices=("grpc", "mqtt", "nats"), default="grpc", help="how the agents reach the hub (mqtt/nats: a broker of the bench's own)"
    )
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite", help="the hub's store: SQLite, or a PostgreSQL server the bench starts")
    p.add_argument("--types", default="", help="the agents' --types (comma-separated); empty = the agent's default")
    p.add_argument("--latency-clusters", type=int, default=3, help="clusters whose Pods are probed for change-to-hub latency (0 = none)")
    p.add_argument(
        "--latency-probe",
        choices=("watch", "poll"),
        default="watch",
        help="how the latency probe sees changes at the hub: a watch of the hub's Pods (the time the event arrives), or polling its Pod lists",
    )
    p.add_argument("--poll-interval", type=float, default=0.1, help="--latency-probe poll: seconds between rounds of GETs of the hub's Pod lists")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the sim's /healthz")
    p.add_argument("--sync-timeout", type=float, default=600.0, help="seconds allowed for the initial sync")
    p.add_argument("--converge-timeout", type=float, default=300.0, help="seconds allowed after the churn for fleetsync check to pass")
    p.add_argument("--check-timeout", type=float, default=300.0, help="seconds allowed for one fleetsync check")
    p.add_argument("--stop-grace", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL when stopping the processes")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync executable")
    p.add_argument("--sim-arg", action="append", default=[], help="extra argument for fleetsync sim (repeatable)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--keep-logs", type=Path, help="copy the processes' logs to this directory")
    args = p.parse_args(argv)
    if args.clusters < 1 or args.pods < 0 or args.churn < 0 or args.duration <= 0 or args.poll_interval <= 0:
        p.error("need --clusters >= 1, --pods >= 0, --churn >= 0, --duration > 0, --poll-interval > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = bench_start("ingest", args)
    if started is None:
        return 1
    fig: dict[str, Any] = started
    status = 0
    with tempfile.TemporaryDirectory(prefix="fleetsync-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(args.fleetsync, tmp)
        print(f"ingest: {args.clusters} clusters x {args.pods} pods, churn {args.churn:g}/s per cluster for {args.duration:g} s; work dir {tmp}", flush=True)
        database = contextlib.ExitStack()  # outlives the processes: the hub stops before its store
        try:
            args.db_url = ""
            if args.db == "postgres":  # a server of the bench's own, with PostgreSQL's durable defaults
                pg = database.enter_context(PostgresServer(settings={}))
                args.db_url = pg.create_database("fleetsync")
                print(f"hub store: PostgreSQL on port {pg.port} (fsync on)", flush=True)
            asyncio.run(bench(args, procs, tmp, fig))
        except BenchError as exc:
            status = 1
            print(f"\ningest: FAILED: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            status = 130
            print("\ningest: interrupted; stopping the processes", file=sys.stderr)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            cutoff = {c.name: c.log.stat().st_size for c in procs.children if c.log.exists()}
            procs.stop_all(args.stop_grace)
            database.close()
            sampler: Sampler | None = fig.pop("_sampler", None)
            if sampler is not None:
                sampler.stop()
                fig["samples_raw"] = sampler.samples
                fig["phases"] = {
                    phase: {"hub_cpu": statistics.mean(s.cpu.get("hub", 0.0) for s in ss), "hub_rss_peak": max(s.rss.get("hub", 0) for s in ss)}
                    for phase in ("sync", "idle", "churn", "converge")
                    if (ss := sampler.of(phase))
                }
            fig["stops"] = {c.name: c.stopped for c in procs.children}
            fig["logs"] = log_findings(procs.children, cutoff)
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for child in procs.children:
                    with contextlib.suppress(OSError):
                        shutil.copy(child.log, args.keep_logs / child.log.name)
        if status == 1:
            for child in procs.children:
                if child.name in ("sim", "hub") or child.stopped.get("already_exited"):
                    print(f"--- {child.name} log (last 30 lines) ---\n{tail(child.log)}", file=sys.stderr)
    print(report(fig), flush=True)
    if args.json:
        samples = fig.pop("samples_raw", [])
        fig["samples"] = [{"t": round(s.t, 2), "phase": s.phase, "rss": s.rss, "cpu": {g: round(x, 3) for g, x in s.cpu.items()}} for s in samples]
        args.json.write_bytes(orjson.dumps(fig, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))
        print(f"figures written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
