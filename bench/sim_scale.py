"""What one ``fleetsync sim`` process costs when it holds C clusters x P pods and serves their watches.

The bench starts the simulator itself (``fleetsync sim --clusters C --pods P --churn 0``
on a free port), then plays a fleet of agents against it from this process: for every
cluster and every type in ``--watch-types`` it LISTs the type across all namespaces
and watches it from the list's resourceVersion with ``allowWatchBookmarks=true``, one
watch per type per cluster, all concurrently (asyncio tasks sharing one aiohttp
session). A watch that gets an ERROR event or loses its connection re-lists and
re-watches; one the server ends cleanly re-watches from the last resourceVersion seen
(as client-go does). Each watch keeps the keys and resourceVersions of what it has
seen, so the bench can tell afterwards whether the watches missed anything.

Measured, on the sim process (psutil on its pid):

- startup: seconds from spawning the sim until ``GET /healthz`` answers (the sim
  builds every cluster before it listens, so this is the population time), and its
  RSS right then ("RSS after population");
- objects: the sum of the ``objects`` counts of ``GET /clusters``;
- initial LISTs: wall time until the first LIST of every (cluster, type) returned,
  all issued at once, with per-request latencies and bytes; then the latency of a
  LIST issued alone;
- idle (``--idle`` seconds, churn 0, watches open): CPU, to separate the cost of
  holding watches (bookmarks) from the cost of churn;
- churn (``--duration`` seconds at ``--churn`` operations/s per cluster, set with
  ``PUT /churn``): the operations done (``GET /churn`` delta), writes (resourceVersion
  delta), watch events received per second and bytes, the sim's CPU (mean and peak
  of per-second samples, as a fraction of one core) and its RSS every second (peak);
- afterwards, with churn back at 0: whether every watch caught up with its cluster's
  resourceVersion (via bookmarks), and whether each watch's view (keys) has as many
  objects as ``GET /clusters`` reports; plus watch drops, re-lists and odd events
  (ADDED for a known key, MODIFIED/DELETED for an unknown one, resourceVersions going
  backwards).

The bench process's own CPU is reported too: on a small machine the bench competes
with the sim for cores, so a bench near 100% of a core means the figures are bounded
by the client, not the sim.

Run (from the repository root)::

    .venv/bin/python bench/sim_scale.py --clusters 5 --pods 200 --duration 10      # quick check
    .venv/bin/python bench/sim_scale.py --clusters 100 --pods 1000 --churn 1 --duration 60

``--json FILE`` also writes the figures as JSON. Exit status: 0 when the run completed
(look at the "checks" section for problems), 1 when the sim exited early, did not
become healthy, or a phase timed out (the sim's stderr tail is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from benchlib import DEFAULT_FLEETSYNC, MIB, BenchError, cpu_seconds, free_port, get_json, mib, percentile, put_churn, tail, vm_hwm

#: Watchable types: name -> (collection path across all namespaces, gvk as in GET /clusters "objects").
WATCH_TYPES: dict[str, tuple[str, str]] = {
    "pods": ("/api/v1/pods", "v1/Pod"),
    "services": ("/api/v1/services", "v1/Service"),
    "endpointslices": ("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1/EndpointSlice"),
    "configmaps": ("/api/v1/configmaps", "v1/ConfigMap"),
    "namespaces": ("/api/v1/namespaces", "v1/Namespace"),
    "nodes": ("/api/v1/nodes", "v1/Node"),
    "deployments": ("/apis/apps/v1/deployments", "apps/v1/Deployment"),
    "replicasets": ("/apis/apps/v1/replicasets", "apps/v1/ReplicaSet"),
    "virtualservices": ("/apis/networking.istio.io/v1/virtualservices", "networking.istio.io/v1/VirtualService"),
    "destinationrules": ("/apis/networking.istio.io/v1/destinationrules", "networking.istio.io/v1/DestinationRule"),
    "authorizationpolicies": ("/apis/security.istio.io/v1/authorizationpolicies", "security.istio.io/v1/AuthorizationPolicy"),
}
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")


class SimDied(BenchError):
    pass


# ---- the simulated agents ------------------------------------------------------------


@dataclass
class Stats:
    """Counters shared by all watches (one event loop, no locking needed)."""

    events: Counter[str] = field(default_factory=Counter)
    event_bytes: int = 0
    lists: int = 0
    list_bytes: int = 0
    relists: int = 0
    rewatches: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    drop_log: list[str] = field(default_factory=list)
    anomalies: Counter[str] = field(default_factory=Counter)
    anomaly_log: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def drop(self, watch: str, reason: str) -> None:
        self.drops[reason.split(":", 1)[0]] += 1
        if len(self.drop_log) < 20:
            self.drop_log.append(f"t={time.monotonic() - self.t0:7.1f}s {watch}: {reason}")

    def anomaly(self, watch: str, kind: str, detail: str) -> None:
        self.anomalies[kind] += 1
        if len(self.anomaly_log) < 20:
            self.anomaly_log.append(f"t={time.monotonic() - self.t0:7.1f}s {watch}: {kind}: {detail}")

    def snapshot(self) -> dict[str, Any]:
        return {"events": Counter(self.events), "bytes": self.event_bytes, "drops": sum(self.drops.values()), "relists": self.relists}


class Watch:
    """An informer for one type in one cluster: LIST, then WATCH from the list's resourceVersion."""

    def __init__(self, base: str, cluster: str, wtype: str, *, page_size: int, stats: Stats) -> None:
        path, gvk = WATCH_TYPES[wtype]
        self.name = f"{cluster}/{wtype}"
        self.cluster = cluster
        self.wtype = wtype
        self.gvk = gvk
        self.url = f"{base}/clusters/{cluster}{path}"
        self.page_size = page_size
        self.stats = stats
        self.keys: dict[str, int] = {}  # namespace/name -> resourceVersion
        self.rv = 0  # newest resourceVersion seen (events and bookmarks)
        self.listed = asyncio.Event()
        self.watching = asyncio.Event()
        self.first_list_seconds: float | None = None
        self.first_list_bytes = 0

    async def run(self, session: aiohttp.ClientSession, list_timeout: aiohttp.ClientTimeout, watch_timeout: aiohttp.ClientTimeout) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list(session, list_timeout)
                    need_list = False
                need_list = await self._watch(session, watch_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of a LIST or WATCH: count it, back off, re-list
                self.stats.drop(self.name, f"{type(exc).__name__}: {exc}")
                need_list = True
                await asyncio.sleep(1.0)

    async def _list(self, session: aiohttp.ClientSession, client_timeout: aiohttp.ClientTimeout) -> None:
        started = time.perf_counter()
        keys: dict[str, int] = {}
        params: dict[str, str] = {"limit": str(self.page_size)} if self.page_size else {}
        size = 0
        while True:
            async with session.get(self.url, params=params, timeout=client_timeout) as resp:
                body = await resp.read()
            size += len(body)
            if resp.status != 200:
                raise BenchError(f"LIST answered HTTP {resp.status}: {body[:300]!r}")
            doc = orjson.loads(body)
            del body
            for item in doc["items"]:
                meta = item["metadata"]
                keys[f"{meta.get('namespace', '')}/{meta['name']}"] = int(meta["resourceVersion"])
            token = doc["metadata"].get("continue")
            rv = int(doc["metadata"]["resourceVersion"])
            del doc
            if not token:
                break
            params = {"limit": str(self.page_size), "continue": token}
        self.keys, self.rv = keys, rv
        self.stats.lists += 1
        self.stats.list_bytes += size
        if self.listed.is_set():
            self.stats.relists += 1
        else:
            self.first_list_seconds = time.perf_counter() - started
            self.first_list_bytes = size
            self.listed.set()

    async def _watch(self, session: aiohttp.ClientSession, client_timeout: aiohttp.ClientTimeout) -> bool:
        """Watch until the stream ends; True when the next step must be a re-list."""
        params = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": str(self.rv)}
        stats = self.stats
        async with session.get(self.url, params=params, timeout=client_timeout) as resp:
            if resp.status != 200:
                body = await resp.read()
                raise BenchError(f"WATCH answered HTTP {resp.status}: {body[:300]!r}")
            self.watching.set()
            async for line in resp.content:
                if not line.strip():
                    continue
                stats.event_bytes += len(line)
                event = orjson.loads(line)
                etype = event.get("type")
                stats.events[etype] += 1
                obj = event.get("object") or {}
                if etype == "ERROR":
                    stats.drop(self.name, f"ERROR event: {obj.get('code')} {obj.get('reason')} {obj.get('message')}")
                    return True
                meta = obj.get("metadata") or {}
                rv = int(meta.get("resourceVersion", 0))
                if etype == "BOOKMARK":
                    if rv < self.rv:
                        stats.anomaly(self.name, "BOOKMARK resourceVersion went backwards", f"{rv} < {self.rv}")
                    self.rv = max(self.rv, rv)
                    continue
                if rv <= self.rv:
                    stats.anomaly(self.name, "event resourceVersion not increasing", f"{etype} {rv} after {self.rv}")
                self.rv = max(self.rv, rv)
                key = f"{meta.get('namespace', '')}/{meta.get('name')}"
                known = key in self.keys
                if etype == "ADDED":
                    if known:
                        stats.anomaly(self.name, "ADDED for a known key", key)
                    self.keys[key] = rv
                elif etype == "MODIFIED":
                    if not known:
                        stats.anomaly(self.name, "MODIFIED for an unknown key", key)
                    self.keys[key] = rv
                elif etype == "DELETED":
                    if not known:
                        stats.anomaly(self.name, "DELETED for an unknown key", key)
                    self.keys.pop(key, None)
                else:
                    stats.anomaly(self.name, "unknown event type", repr(etype))
        stats.rewatches += 1
        stats.drop(self.name, "stream ended by server: re-watching from the last resourceVersion")
        return False


# ---- the sim process -----------------------------------------------------------------


class Sim:
    """The ``fleetsync sim`` subprocess: its pid, logs and a watchdog for early exit."""

    def __init__(self, proc: subprocess.Popen[bytes], base: str, stderr_path: Path, spawned: float) -> None:
        self.proc = proc
        self.ps = psutil.Process(proc.pid)
        self.base = base
        self.stderr_path = stderr_path
        self.spawned = spawned
        self.death: asyncio.Task[int] | None = None

    async def _watchdog(self) -> int:
        while True:
            rc = self.proc.poll()
            if rc is not None:
                return rc
            await asyncio.sleep(0.2)

    def start_watchdog(self) -> None:
        self.death = asyncio.create_task(self._watchdog(), name="sim-watchdog")

    async def guard(self, aw: Any, what: str, limit_s: float | None = None) -> Any:
        """Await ``aw`` unless the sim exits first (SimDied) or ``limit_s`` passes (BenchError)."""
        assert self.death is not None
        task = asyncio.ensure_future(aw)
        done, _ = await asyncio.wait({task, self.death}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if self.death in done:
            raise SimDied(f"the sim exited with status {self.death.result()} during {what}")
        raise BenchError(f"{what} did not finish within {limit_s:.0f} s")

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def peak_rss(self) -> int | None:
        """The kernel's high-water mark of the sim's RSS (VmHWM), Linux only."""
        return vm_hwm(self.proc.pid)


def _log_findings(path: Path) -> dict[str, Any]:
    """Counts of notable lines in the sim's log: errors, warnings, tracebacks, closed watches."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    found: dict[str, Any] = {
        "lines": len(lines),
        "ERROR": sum(" ERROR " in x for x in lines),
        "WARNING": sum(" WARNING " in x for x in lines),
        "Traceback": sum(x.startswith("Traceback") for x in lines),
        "closing watch": sum("closing watch" in x for x in lines),
    }
    found["examples"] = [x for x in lines if " ERROR " in x or " WARNING " in x or "closing watch" in x][:8]
    return found


def stop_sim(proc: subprocess.Popen[bytes], grace: float = 20.0) -> tuple[int | None, float, bool]:
    """SIGTERM, wait ``grace`` s, then SIGKILL. Returns (exit status, seconds taken, killed)."""
    if proc.poll() is not None:
        return proc.returncode, 0.0, False
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace), time.monotonic() - started, False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(), time.monotonic() - started, True


# ---- sampling ------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    phase: str
    cpu: float  # sim, fraction of one core over the last interval
    rss: int
    bench_cpu: float


class Sampler:
    """Every ``interval`` s: the sim's CPU% and RSS, and this process's CPU%."""

    def __init__(self, sim: Sim, interval: float = 1.0) -> None:
        self.sim = sim
        self.interval = interval
        self.me = psutil.Process()
        self.phase = "setup"
        self.samples: list[Sample] = []

    async def run(self) -> None:
        self.sim.ps.cpu_percent(None)
        self.me.cpu_percent(None)
        while True:
            await asyncio.sleep(self.interval)
            try:
                cpu = self.sim.ps.cpu_percent(None) / 100
                rss = self.sim.rss()
            except psutil.Error:
                return
            self.samples.append(Sample(time.monotonic(), self.phase, cpu, rss, self.me.cpu_percent(None) / 100))

    def of(self, phase: str) -> list[Sample]:
        return [s for s in self.samples if s.phase == phase]


# ---- the run -------------------------------------------------------------------------


async def _wait_healthy(session: aiohttp.ClientSession, sim: Sim, deadline_s: float) -> float:
    deadline = sim.spawned + deadline_s
    while True:
        if (rc := sim.proc.poll()) is not None:
            raise SimDied(f"the sim exited with status {rc} before answering /healthz")
        try:
            async with session.get(f"{sim.base}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return time.monotonic() - sim.spawned
        except (aiohttp.ClientError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"the sim did not answer /healthz within {deadline_s:.0f} s")
        await asyncio.sleep(0.1)


def _total_objects(clusters: list[dict[str, Any]], gvks: set[str] | None = None) -> int:
    return sum(n for c in clusters for gvk, n in c["objects"].items() if gvks is None or gvk in gvks)


async def bench(args: argparse.Namespace, sim: Sim, fig: dict[str, Any]) -> None:
    """Run the phases, filling ``fig`` as they complete (so a failed run still has its early figures)."""
    sim.start_watchdog()
    stats = Stats()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20) as session:
        # -- startup ---------------------------------------------------------------
        fig["startup_s"] = await _wait_healthy(session, sim, args.startup_timeout)
        fig["rss_after_population"] = sim.rss()
        fig["sim_cpu_s_population"] = sim.cpu_seconds()
        clusters = (await get_json(session, f"{sim.base}/clusters"))["clusters"]
        names = [c["name"] for c in clusters]
        gvks = {WATCH_TYPES[w][1] for w in args.watch_types}
        fig["clusters"] = len(names)
        fig["objects"] = _total_objects(clusters)
        fig["objects_watched_types"] = _total_objects(clusters, gvks)
        by_type: Counter[str] = Counter()
        for c in clusters:
            by_type.update(c["objects"])
        fig["objects_by_type"] = dict(sorted(by_type.items()))
        rv_start = {c["name"]: int(c["resourceVersion"]) for c in clusters}
        print(
            f"sim healthy after {fig['startup_s']:.1f} s: {len(names)} clusters, {fig['objects']} objects, RSS {fig['rss_after_population'] / MIB:.0f} MiB",
            flush=True,
        )

        sampler = Sampler(sim)
        sampler_task = asyncio.create_task(sampler.run(), name="sampler")
        me = psutil.Process()

        # -- initial lists and watches ---------------------------------------------
        sampler.phase = "lists"
        list_timeout = aiohttp.ClientTimeout(total=args.list_timeout, sock_connect=30)
        watch_timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=args.watch_read_timeout)
        watches = [Watch(sim.base, name, w, page_size=args.page_size, stats=stats) for name in names for w in args.watch_types]
        cpu0, my0, t0 = sim.cpu_seconds(), cpu_seconds(me), time.monotonic()
        tasks = [asyncio.create_task(w.run(session, list_timeout, watch_timeout), name=w.name) for w in watches]
        try:
            await sim.guard(asyncio.gather(*(w.listed.wait() for w in watches)), "the initial LISTs", args.list_timeout)
            fig["lists_s"] = time.monotonic() - t0
            fig["lists_sim_cpu"] = (sim.cpu_seconds() - cpu0) / fig["lists_s"]
            fig["lists_bench_cpu"] = (cpu_seconds(me) - my0) / fig["lists_s"]
            await sim.guard(asyncio.gather(*(w.watching.wait() for w in watches)), "opening the watches", args.list_timeout)
            fig["watches_open_s"] = time.monotonic() - t0
            fig["lists"] = len(watches)
            fig["list_bytes"] = sum(w.first_list_bytes for w in watches)
            fig["list_latency"] = {}
            for wtype in args.watch_types:
                lat = [w.first_list_seconds or 0.0 for w in watches if w.wtype == wtype]
                size = [w.first_list_bytes for w in watches if w.wtype == wtype]
                fig["list_latency"][wtype] = {"p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95), "max": max(lat), "bytes_mean": statistics.mean(size)}
            print(
                f"initial LISTs of {len(watches)} (cluster, type) pairs done in {fig['lists_s']:.1f} s; all watches open after {fig['watches_open_s']:.1f} s",
                flush=True,
            )
            # One LIST of each type of the first cluster, alone (nothing else is requested now).
            fig["single_list_s"] = {}
            for wtype in args.watch_types:
                started = time.perf_counter()
                async with session.get(f"{sim.base}/clusters/{names[0]}{WATCH_TYPES[wtype][0]}", timeout=list_timeout) as resp:
                    await resp.read()
                fig["single_list_s"][wtype] = time.perf_counter() - started
            listing = (await get_json(session, f"{sim.base}/clusters"))["clusters"]
            fig["sim_watchers"] = sum(c["watchers"] for c in listing)
            fig["expected_watchers"] = len(watches)
            fig["rss_with_watches"] = sim.rss()

            # -- idle: watches open, no churn --------------------------------------------
            if args.idle > 0:
                sampler.phase = "idle"
                before, cpu0, my0, t0 = stats.snapshot(), sim.cpu_seconds(), cpu_seconds(me), time.monotonic()
                await sim.guard(asyncio.sleep(args.idle), "the idle phase")
                wall = time.monotonic() - t0
                after = stats.snapshot()
                fig["idle"] = {
                    "seconds": wall,
                    "sim_cpu": (sim.cpu_seconds() - cpu0) / wall,
                    "bench_cpu": (cpu_seconds(me) - my0) / wall,
                    "events_per_s": sum((after["events"] - before["events"]).values()) / wall,
                }

            # -- churn -----------------------------------------------------------------
            churn0 = await get_json(session, f"{sim.base}/churn")
            rv0 = {c["name"]: int(c["resourceVersion"]) for c in (await get_json(session, f"{sim.base}/clusters"))["clusters"]}
            sampler.phase = "churn"
            before, cpu0, my0 = stats.snapshot(), sim.cpu_seconds(), cpu_seconds(me)
            await put_churn(session, sim.base, args.churn)
            t0 = time.monotonic()
            print(f"churn at {args.churn} operations/s per cluster for {args.duration:.0f} s ...", flush=True)
            await sim.guard(asyncio.sleep(args.duration), "the churn phase")
            await put_churn(session, sim.base, 0)
            wall = time.monotonic() - t0
            cpu1, my1 = sim.cpu_seconds(), cpu_seconds(me)
            sampler.phase = "after"
            after = stats.snapshot()
            churn1 = await get_json(session, f"{sim.base}/churn")
            clusters_after = (await get_json(session, f"{sim.base}/clusters"))["clusters"]
            rv1 = {c["name"]: int(c["resourceVersion"]) for c in clusters_after}
            events = after["events"] - before["events"]
            ops = sum(churn1["operations"].values()) - sum(churn0["operations"].values())
            samples = sampler.of("churn")
            changes = sum(events[k] for k in ("ADDED", "MODIFIED", "DELETED"))
            fig["churn"] = {
                "seconds": wall,
                "rate": args.churn,
                "operations": ops,
                "operations_expected": args.churn * len(names) * wall,
                "operations_by_kind": dict(Counter(churn1["operations"]) - Counter(churn0["operations"])),
                "writes": sum(rv1[n] - rv0[n] for n in names),
                "events": dict(events),
                "events_per_s": sum(events.values()) / wall,
                "change_events_per_s": changes / wall,
                "event_mb_per_s": (after["bytes"] - before["bytes"]) / wall / 1e6,
                "sim_cpu_mean": (cpu1 - cpu0) / wall,
                "sim_cpu_sample_p95": percentile([s.cpu for s in samples], 0.95),
                "sim_cpu_sample_max": max((s.cpu for s in samples), default=float("nan")),
                "bench_cpu_mean": (my1 - my0) / wall,
                "rss_peak": max((s.rss for s in samples), default=0),
                "rss_end": samples[-1].rss if samples else 0,
                "drops": after["drops"] - before["drops"],
                "relists": after["relists"] - before["relists"],
            }
            fig["history_entries_end"] = {
                "max_per_cluster": args.watch_history,
                "total_writes_since_start": sum(rv1.values()),
                "clusters_at_limit": sum(rv >= args.watch_history for rv in rv1.values()),
            }
            fig["rv_population"] = sum(rv_start.values())

            # -- checks: watches caught up, views complete ------------------------------
            t0 = time.monotonic()
            lagging = [w for w in watches if w.rv < rv1[w.cluster]]
            while lagging and time.monotonic() - t0 < args.catchup_timeout:
                await sim.guard(asyncio.sleep(0.25), "the catch-up check")
                lagging = [w for w in lagging if w.rv < rv1[w.cluster]]
            fig["catchup_s"] = time.monotonic() - t0
            fig["lagging_watches"] = [f"{w.name} at {w.rv} < {rv1[w.cluster]}" for w in lagging]
            counts = {(c["name"], gvk): n for c in clusters_after for gvk, n in c["objects"].items()}
            fig["view_mismatches"] = [
                f"{w.name}: watch sees {len(w.keys)}, sim has {counts.get((w.cluster, w.gvk))}"
                for w in watches
                if len(w.keys) != counts.get((w.cluster, w.gvk))
            ]
            fig["rss_end"] = sim.rss()
            fig["rss_hwm"] = sim.peak_rss()
            fig["rss_peak_sampled"] = max((s.rss for s in sampler.samples), default=0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sampler_task.cancel()
            await asyncio.gather(sampler_task, return_exceptions=True)
            fig["phases"] = {
                phase: {
                    "samples": len(ss),
                    "sim_cpu_mean": statistics.mean(s.cpu for s in ss),
                    "rss_peak": max(s.rss for s in ss),
                    "bench_cpu_mean": statistics.mean(s.bench_cpu for s in ss),
                }
                for phase in ("lists", "idle", "churn", "after")
                if (ss := sampler.of(phase))
            }
            fig["samples"] = [
                {
                    "t": round(x.t - sampler.samples[0].t, 2),
                    "phase": x.phase,
                    "sim_cpu": round(x.cpu, 3),
                    "rss_mib": round(x.rss / MIB, 1),
                    "bench_cpu": round(x.bench_cpu, 3),
                }
                for x in sampler.samples
            ]
            fig["watch"] = {
                "events_total": dict(stats.events),
                "lists_total": stats.lists,
                "relists": stats.relists,
                "rewatches": stats.rewatches,
                "drops": dict(stats.drops),
                "drop_log": stats.drop_log,
                "anomalies": dict(stats.anomalies),
                "anomaly_log": stats.anomaly_log,
            }


# ---- report --------------------------------------------------------------------------


def _core(x: float) -> str:
    return f"{x:.2f} core ({x * 100:.0f}%)"


def report(fig: dict[str, Any]) -> str:
    cfg = fig["config"]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append((f"-- {title}", ""))

    def row(name: str, value: str) -> None:
        rows.append((f"   {name}", value))

    section(f"sim: {cfg['clusters']} clusters x {cfg['pods']} pods, watching {','.join(cfg['watch_types'])} in every cluster")
    if "startup_s" in fig:
        row("startup until /healthz (population)", f"{fig['startup_s']:.1f} s  (sim CPU {fig['sim_cpu_s_population']:.1f} s)")
        row("RSS after population", mib(fig["rss_after_population"]))
    if "objects" in fig:
        row("objects (GET /clusters)", f"{fig['objects']:,}  ({fig['objects_watched_types']:,} of the watched types)")
    if "rv_population" in fig:
        row("writes during population (sum of RVs)", f"{fig['rv_population']:,}")
    if "lists_s" in fig:
        section("initial LISTs (all at once) and watches")
        row("LISTs", f"{fig['lists']}  ({fig['list_bytes'] / 1e6:,.0f} MB)")
        row("time until every LIST returned", f"{fig['lists_s']:.2f} s  (sim {_core(fig['lists_sim_cpu'])}, bench {_core(fig['lists_bench_cpu'])})")
        for wtype, lat in fig["list_latency"].items():
            row(f"  {wtype} LIST latency p50/p95/max", f"{lat['p50']:.2f} / {lat['p95']:.2f} / {lat['max']:.2f} s  ({lat['bytes_mean'] / 1e6:.2f} MB each)")
        row("time until every watch was open", f"{fig['watches_open_s']:.2f} s")
        row("one LIST alone (first cluster)", ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in fig["single_list_s"].items()))
        row("watchers the sim reports / expected", f"{fig['sim_watchers']} / {fig['expected_watchers']}")
        row("RSS with watches open", mib(fig["rss_with_watches"]))
        if "lists" in fig.get("phases", {}):
            row("peak RSS during LISTs (1 s samples)", mib(fig["phases"]["lists"]["rss_peak"]))
    if "idle" in fig:
        idle = fig["idle"]
        section(f"idle ({idle['seconds']:.0f} s, churn 0, watches open)")
        row("sim CPU", _core(idle["sim_cpu"]))
        row("events/s (bookmarks)", f"{idle['events_per_s']:.1f}")
    if "churn" in fig:
        ch = fig["churn"]
        section(f"churn ({ch['seconds']:.1f} s at {ch['rate']} operations/s per cluster)")
        row("churn operations done (GET /churn delta)", f"{ch['operations']:,}  (expected {ch['operations_expected']:,.0f})")
        row("  by kind", ", ".join(f"{k} {v}" for k, v in sorted(ch["operations_by_kind"].items())))
        row("writes (resourceVersion delta)", f"{ch['writes']:,}  ({ch['writes'] / ch['seconds']:,.0f}/s)")
        row("watch events received/s (all)", f"{ch['events_per_s']:,.1f}  ({ch['event_mb_per_s']:.2f} MB/s)")
        row("  change events/s (ADDED+MODIFIED+DELETED)", f"{ch['change_events_per_s']:,.1f}")
        row("  by type", ", ".join(f"{k} {ch['events'].get(k, 0):,}" for k in EVENT_TYPES))
        row("sim CPU mean (fraction of one core)", _core(ch["sim_cpu_mean"]))
        row("sim CPU per-second p95 / max", f"{ch['sim_cpu_sample_p95']:.2f} / {ch['sim_cpu_sample_max']:.2f} core")
        row("bench CPU mean (the client)", _core(ch["bench_cpu_mean"]))
        row("peak RSS during churn (1 s samples)", mib(ch["rss_peak"]))
        row("RSS at end of churn", mib(ch["rss_end"]))
    if "rss_hwm" in fig:
        section("memory overall")
        row("RSS after population", mib(fig["rss_after_population"]))
        row("peak RSS sampled (after startup)", mib(fig["rss_peak_sampled"]))
        row("peak RSS since start (VmHWM)", mib(fig["rss_hwm"]))
        hist = fig["history_entries_end"]
        row(
            "watch history",
            f"{hist['clusters_at_limit']} of {cfg['clusters']} clusters at the {hist['max_per_cluster']:,}-change limit (total RVs {hist['total_writes_since_start']:,})",
        )
    section("checks")
    w = fig.get("watch", {})
    if "catchup_s" in fig:
        row("watches caught up after churn", f"{len(fig['lagging_watches']) == 0} ({fig['catchup_s']:.1f} s; {len(fig['lagging_watches'])} lagging)")
        row("watch views == sim object counts", f"{not fig['view_mismatches']} ({len(fig['view_mismatches'])} mismatches)")
    row("watch drops by reason", ", ".join(f"{k}: {v}" for k, v in w.get("drops", {}).items()) or "none")
    row("re-lists / re-watches", f"{w.get('relists', 0)} / {w.get('rewatches', 0)}")
    row("odd events", ", ".join(f"{k}: {v}" for k, v in w.get("anomalies", {}).items()) or "none")
    logs = fig.get("sim_log", {})
    row(
        "sim log: ERROR / WARNING / Traceback / closed watches",
        f"{logs.get('ERROR', '?')} / {logs.get('WARNING', '?')} / {logs.get('Traceback', '?')} / {logs.get('closing watch', '?')}",
    )
    stop = fig.get("stop")
    if stop:
        row("sim stop (SIGTERM)", f"exit {stop['status']} after {stop['seconds']:.1f} s{' (had to SIGKILL)' if stop['killed'] else ''}")
    width = max(len(name) for name, value in rows if value) + 2
    lines = ["", "=" * 100, "fleetsync sim scale: summary", "=" * 100]
    lines += [name if not value else f"{name.ljust(width)}{value}" for name, value in rows]
    for title, items in (
        ("watch drops (first 20)", w.get("drop_log")),
        ("odd events (first 20)", w.get("anomaly_log")),
        ("lagging watches", fig.get("lagging_watches")),
        ("view mismatches", fig.get("view_mismatches")),
        ("notable sim log lines", logs.get("examples")),
    ):
        if items:
            lines.append(f"-- {title}:")
            lines += [f"   {x}" for x in items[:20]]
    lines.append("=" * 100)
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clusters", type=int, default=100, help="simulated clusters")
    p.add_argument("--pods", type=int, default=1000, help="application pods per cluster")
    p.add_argument("--churn", type=float, default=1.0, help="churn operations/s per cluster during the measured phase")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of measured churn")
    p.add_argument(
        "--watch-types", default="pods,services,endpointslices", help=f"comma-separated types to LIST+WATCH in every cluster (known: {', '.join(WATCH_TYPES)})"
    )
    p.add_argument("--idle", type=float, default=5.0, help="seconds with watches open and churn 0 before the churn (0 = skip)")
    p.add_argument("--page-size", type=int, default=0, help="LIST page size (limit=); 0 = one request per LIST")
    p.add_argument("--watch-history", type=int, default=5_000, help="the sim's --watch-history")
    p.add_argument("--startup-timeout", type=float, default=1800.0, help="seconds to wait for the sim's /healthz")
    p.add_argument("--list-timeout", type=float, default=900.0, help="seconds allowed for the initial LISTs (and each LIST request)")
    p.add_argument("--watch-read-timeout", type=float, default=120.0, help="a watch silent this long (no event, no bookmark) counts as dropped")
    p.add_argument("--catchup-timeout", type=float, default=30.0, help="seconds to wait after the churn for every watch to reach its cluster's resourceVersion")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync executable")
    p.add_argument("--sim-arg", action="append", default=[], help="extra argument for fleetsync sim (repeatable)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    args.watch_types = [w.strip() for w in args.watch_types.split(",") if w.strip()]
    unknown = [w for w in args.watch_types if w not in WATCH_TYPES]
    if unknown or not args.watch_types:
        p.error(f"unknown --watch-types {unknown}; known: {', '.join(WATCH_TYPES)}")
    if args.clusters < 1 or args.pods < 0 or args.churn < 0 or args.duration <= 0:
        p.error("need --clusters >= 1, --pods >= 0, --churn >= 0, --duration > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.fleetsync.exists():
        print(f"sim_scale: {args.fleetsync} not found (use --fleetsync)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="sim-scale-") as tmp:
        port = free_port()
        stdout_path, stderr_path = Path(tmp, "sim.stdout"), Path(tmp, "sim.stderr")
        cmd = [
            str(args.fleetsync),
            "sim",
            "--clusters", str(args.clusters),
            "--pods", str(args.pods),
            "--churn", "0",
            "--port", str(port),
            "--kubeconfig-dir", str(Path(tmp, "kubeconfigs")),
            "--watch-history", str(args.watch_history),
            *args.sim_arg,
        ]  # fmt: skip
        print("$ " + " ".join(cmd), flush=True)
        fig: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
        status = 0
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            spawned = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        sim = Sim(proc, f"http://127.0.0.1:{port}", stderr_path, spawned)
        try:
            asyncio.run(bench(args, sim, fig))
        except BenchError as exc:
            status = 1
            print(f"\nsim_scale: FAILED: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            status = 130
            print("\nsim_scale: interrupted", file=sys.stderr)
        finally:
            rc, seconds, killed = stop_sim(proc)
        fig["stop"] = {"status": rc, "seconds": seconds, "killed": killed}
        fig["sim_log"] = _log_findings(stderr_path)
        if status:
            if fig.get("startup_s") is not None:
                print("figures so far:" + report(fig), file=sys.stderr)
            if rc is not None and rc not in (0, -signal.SIGTERM):
                print(f"sim exit status: {rc}", file=sys.stderr)
            print(f"--- sim stderr (last 40 lines of {stderr_path.name}) ---\n{tail(stderr_path, 40)}", file=sys.stderr)
            print(f"--- sim stdout (last 10 lines) ---\n{tail(stdout_path, 10)}", file=sys.stderr)
            return status
        print(report(fig), flush=True)
        if args.json:
            args.json.write_bytes(orjson.dumps(fig, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
            print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
