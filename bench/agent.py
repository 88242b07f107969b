"""The agent's footprint against ``fleetsync sim``: memory, CPU, initial sync rate; today's agent beside a baseline.

For each ``--pods`` size the bench starts, on free loopback ports in a temporary
directory: ``fleetsync sim --clusters 1 --pods N`` and a hub on SQLite (agent tokens
written to its store directly). It first measures the physical limit: a plain aiohttp
paged LIST (``limit=500``, nothing kept) of every type the agent syncs by default
(``--types default``), in objects/s, with each page only read (its continue token
taken, the items skipped: the sim's serving rate over HTTP, which no agent can beat),
and again with each page parsed whole with orjson (what a client that makes every
object into Python values gets at best; the agent does not). Then, one agent at a
time, for this tree's agent (``new``) and, with ``--baseline-src``, the agent of another
source tree run by the same Python (``old``; e.g. ``git archive 119cccc src | tar -x -C
/tmp/agent-baseline``), each as its own process with default flags and ``--metrics``:

- **initial sync**: from the agent's metrics endpoint first answering (its imports
  done) until its metrics count every object of the sim's default types, in objects/s
  (and beside the raw LIST rate); then until nothing is pending or unacknowledged (the
  hub holds everything), in objects/s from the metrics endpoint answering and from the
  process's start;
- **RSS** (psutil, sampled every 0.1 s, and the kernel's VmHWM): the peak over the run
  so far, and the steady figure (mean over 5 s) once synced and idle;
- **CPU at ``--churn``** changes/s (the sim's churn): the agent's CPU seconds over
  ``--cpu-seconds``, as a share of one core;
- **soak** (first size only): ``--soak-rate`` changes/s for ``--soak-seconds``; RSS
  sampled each second after the first 10 %; drift = mean of the last 10 % of samples
  over the mean of the first 10 %, minus one.

Figures are printed as a table per size and, with ``--json``, written there.

Run (from the repository root)::

    .venv/bin/python bench/agent.py --baseline-src /tmp/agent-baseline/src
    .venv/bin/python bench/agent.py --pods 5000 --soak-seconds 1800   # the issue's 30-minute soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import psutil

from benchlib import (
    DEFAULT_FLEETSYNC,
    MIB,
    BenchError,
    Child,
    Processes,
    answers,
    check_alive,
    cpu_seconds,
    free_port,
    parse_metrics_by,
    put_churn,
    rss,
    run_bench,
    vm_hwm,
    wait_for,
)
from fleetsync.hub.auth import hash_token, new_token
from fleetsync.model.types import ResourceType, TypeRegistry
from fleetsync.model.typeselect import TypeSelection
from fleetsync.store import open_store


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pods", default="5000,50000", help="sim sizes (application pods), comma-separated; churn and soak run on the first")
    p.add_argument("--baseline-src", default="", help="a fleetsync source tree's src/ whose agent runs as 'old' (PYTHONPATH); none: only 'new'")
    p.add_argument("--churn", type=float, default=10.0, help="changes/s while the agent's CPU is measured")
    p.add_argument("--cpu-seconds", type=float, default=30.0, help="seconds the CPU at --churn is measured over")
    p.add_argument("--soak-rate", type=float, default=50.0, help="changes/s during the soak")
    p.add_argument("--soak-seconds", type=float, default=120.0, help="soak length (the issue asks for 1800; 0: no soak)")
    p.add_argument(
        "--settle", type=float, default=5.0, help="seconds the agent settles after its sync before its steady RSS is measured, over as many seconds more"
    )
    p.add_argument("--churn-warmup", type=float, default=3.0, help="seconds at --churn before its CPU is measured")
    p.add_argument("--sync-timeout", type=float, default=600.0, help="seconds an agent may take to list and sync everything")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync executable (sim, hub, new agent)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p.parse_args(argv)


def default_types() -> list[ResourceType]:
    """What an agent syncs with no --types, as it resolves them."""
    from fleetsync.cli.agent import DEFAULT_TYPES

    return TypeSelection.parse(DEFAULT_TYPES).choose(TypeRegistry())


class RssSampler:
    """RSS of one process every 0.1 s, in the background: the peak, and samples since a mark."""

    def __init__(self, ps: psutil.Process) -> None:
        self.ps = ps
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            value = rss(self.ps)
            self.peak = max(self.peak, value)
            self.samples.append((time.monotonic(), value))
            await asyncio.sleep(0.1)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def since(self, t: float) -> list[int]:
        return [v for when, v in self.samples if when >= t]

    def peak_rss(self) -> int:
        return max(self.peak, vm_hwm(self.ps.pid) or 0)


class _ListMeta(msgspec.Struct):
    continue_: str = msgspec.field(default="", name="continue")


class _Counted(msgspec.Struct):
    """A LIST page's continue token and item count; the items are skipped, never made into objects."""

    items: list[msgspec.Raw] = []
    metadata: _ListMeta = msgspec.field(default_factory=_ListMeta)


_counted = msgspec.json.Decoder(_Counted)


async def raw_list_rate(session: aiohttp.ClientSession, server: str, types: list[ResourceType], *, parse: bool) -> tuple[int, float]:
    """(objects, seconds) of a plain paged LIST of ``types`` (``limit=500``), each page dropped once read.
    ``parse``: each page parsed whole with orjson (what a client that makes every object into Python
    values can do at best); else only its continue token and item count are read (msgspec skips
    the items): the sim's serving rate and the HTTP transport, the limit of any agent."""
    objects = 0
    started = time.monotonic()
    for rtype in types:
        token = ""
        while True:
            params = {"limit": "500", **({"continue": token} if token else {})}
            async with session.get(server + rtype.collection_path(), params=params) as resp:
                if resp.status == 404:
                    break  # a custom type the cluster does not serve
                if resp.status != 200:
                    raise BenchError(f"LIST {rtype}: HTTP {resp.status}")
                data = await resp.read()
            if parse:
                page = orjson.loads(data)
                objects += len(page.get("items") or [])
                token = (page.get("metadata") or {}).get("continue") or ""
            else:
                counted = _counted.decode(data)
                objects += len(counted.items)
                token = counted.metadata.continue_
            if not token:
                break
    return objects, time.monotonic() - started


async def agent_metrics(session: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.text() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


def spawn_agent(procs: Processes, variant: str, baseline: str, tmp: Path, grpc_port: int, metrics_port: int) -> Child:
    args = [
        "agent",
        "--kubeconfig", str(tmp / "kc" / "c1.kubeconfig"),
        "--cluster-id", variant,
        "--hub", f"grpc://127.0.0.1:{grpc_port}",
        "--token-file", str(tmp / f"{variant}.token"),
        "--metrics", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    if variant == "old":
        assert baseline
        python = procs.fleetsync.parent / "python"
        # env execs the Python in place (same pid): psutil measures the agent itself
        return procs.spawn(f"agent-{variant}", f"PYTHONPATH={baseline}", str(python), "-m", "fleetsync", *args, executable="/usr/bin/env")
    return procs.spawn(f"agent-{variant}", *args)


async def measure_agent(
    args: argparse.Namespace,
    procs: Processes,
    session: aiohttp.ClientSession,
    *,
    variant: str,
    tmp: Path,
    grpc_port: int,
    sim: str,
    expected: dict[str, int],
    churn: bool,
) -> dict[str, Any]:
    """One agent's figures: sync, peak/steady RSS, CPU at --churn, soak drift."""
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    started = time.monotonic()
    agent = spawn_agent(procs, variant, args.baseline_src, tmp, grpc_port, metrics_port)
    sampler = RssSampler(agent.ps)
    sampler.start()
    fig: dict[str, Any] = {}
    total = sum(expected.values())
    try:
        up_at: float | None = None
        listed_at: float | None = None

        async def listed() -> bool:
            nonlocal up_at, listed_at
            text = await agent_metrics(session, metrics_url)
            if text is None:
                return False
            up_at = up_at or time.monotonic()
            objects = parse_metrics_by(text, "fleetsync_agent_objects", "type")
            if all(objects.get(t, 0) >= n for t, n in expected.items()):
                listed_at = time.monotonic()
                return True
            return False

        await wait_for(listed, timeout=args.sync_timeout, what=f"agent {variant} to list {total:,} objects", procs=procs, interval=0.05)
        assert up_at is not None and listed_at is not None
        fig["listed_s"] = listed_at - up_at
        fig["listed_from_start_s"] = listed_at - started
        fig["list_rate"] = total / max(listed_at - up_at, 1e-3)

        async def synced() -> bool:
            text = await agent_metrics(session, metrics_url) or ""
            pending = parse_metrics_by(text, "fleetsync_agent_pending_changes", "type")
            unacked = parse_metrics_by(text, "fleetsync_agent_unacked_messages", "type")
            return bool(text) and sum(pending.values()) == 0 and sum(unacked.values()) == 0

        await wait_for(synced, timeout=args.sync_timeout, what=f"agent {variant}: everything acknowledged by the hub", procs=procs, interval=0.1)
        synced_at = time.monotonic()
        fig["synced_from_start_s"] = synced_at - started
        fig["sync_rate"] = total / fig["synced_from_start_s"]
        fig["sync_rate_from_up"] = total / max(synced_at - up_at, 1e-3)
        fig["peak_rss_sync"] = sampler.peak_rss()
        await asyncio.sleep(args.settle)
        mark = time.monotonic()
        await asyncio.sleep(args.settle)
        fig["steady_rss"] = statistics.mean(sampler.since(mark))
        if churn:
            await put_churn(session, sim, args.churn)
            await asyncio.sleep(args.churn_warmup)
            cpu0, t0 = cpu_seconds(agent.ps), time.monotonic()
            await asyncio.sleep(args.cpu_seconds)
            fig["cpu_at_churn"] = (cpu_seconds(agent.ps) - cpu0) / (time.monotonic() - t0)
            fig["rss_at_churn"] = rss(agent.ps)
            if args.soak_seconds > 0:
                await put_churn(session, sim, args.soak_rate)
                warm = args.soak_seconds * 0.1
                await asyncio.sleep(warm)
                samples: list[int] = []
                cpu0, t0 = cpu_seconds(agent.ps), time.monotonic()
                while time.monotonic() - t0 < args.soak_seconds - warm:
                    check_alive(procs)
                    samples.append(rss(agent.ps))
                    await asyncio.sleep(1.0)
                fig["soak_cpu"] = (cpu_seconds(agent.ps) - cpu0) / (time.monotonic() - t0)
                tenth = max(1, len(samples) // 10)
                first, last = statistics.mean(samples[:tenth]), statistics.mean(samples[-tenth:])
                fig["soak_rss_first"], fig["soak_rss_last"], fig["soak_rss_max"] = first, last, max(samples)
                fig["soak_drift"] = last / first - 1
            await put_churn(session, sim, 0)
        fig["peak_rss"] = sampler.peak_rss()
    finally:
        await sampler.stop()
        procs.stop([agent], 10)
        procs.children.remove(agent)  # stopped on purpose: the next agent's liveness checks must not see it
    return fig


async def sim_counts(session: aiohttp.ClientSession, sim: str, types: list[ResourceType]) -> dict[str, int]:
    """How many objects of each of ``types`` the sim's cluster holds now."""
    async with session.get(f"{sim}/clusters") as resp:
        counts = (await resp.json())["clusters"][0]["objects"]
    return {t.gvk: counts[t.gvk] for t in types if counts.get(t.gvk)}


async def add_tokens(db: str, tmp: Path, names: list[str]) -> None:
    store = open_store(db)
    await store.open()
    try:
        for name in names:
            token = new_token()
            await store.add_token(name=name, role="agent", token_hash=hash_token(token))
            (tmp / f"{name}.token").write_text(token)
    finally:
        await store.close()


async def bench_size(args: argparse.Namespace, procs: Processes, tmp: Path, session: aiohttp.ClientSession, pods: int, *, first: bool) -> dict[str, Any]:
    sim_port, grpc_port, http_port = free_port(), free_port(), free_port()
    sim = f"http://127.0.0.1:{sim_port}"
    run_dir = tmp / f"pods-{pods}"
    run_dir.mkdir()
    started = time.monotonic()
    sim_proc = procs.spawn(
        f"sim-{pods}", "sim", "--clusters", "1", "--pods", str(pods), "--churn", "0", "--port", str(sim_port), "--kubeconfig-dir", str(run_dir / "kc")
    )

    await wait_for(lambda: answers(session, f"{sim}/clusters"), timeout=600, what="the sim", procs=procs, interval=0.5)
    print(f"\n== {pods:,} pods: sim up after {time.monotonic() - started:.0f} s", flush=True)
    types = default_types()
    expected = await sim_counts(session, sim, types)
    fig: dict[str, Any] = {"pods": pods, "objects": sum(expected.values()), "types": expected}
    objects, seconds = await raw_list_rate(session, f"{sim}/clusters/c1", types, parse=False)
    fig["raw_list"] = {"objects": objects, "seconds": seconds, "rate": objects / seconds}
    print(f"raw paged LIST of the default types, pages read: {objects:,} objects in {seconds:.2f} s = {objects / seconds:,.0f} objects/s", flush=True)
    objects, seconds = await raw_list_rate(session, f"{sim}/clusters/c1", types, parse=True)
    fig["parsed_list"] = {"objects": objects, "seconds": seconds, "rate": objects / seconds}
    print(f"raw paged LIST, each page parsed with orjson: {objects:,} objects in {seconds:.2f} s = {objects / seconds:,.0f} objects/s", flush=True)

    db = f"sqlite:///{run_dir / 'hub.db'}"
    variants = ["old", "new"] if args.baseline_src else ["new"]
    await add_tokens(db, run_dir, variants)
    hub = procs.spawn_hub(db, grpc_port, http_port, name=f"hub-{pods}")
    await wait_for(lambda: answers(session, f"http://127.0.0.1:{http_port}/readyz"), timeout=60, what="the hub", procs=procs)
    for variant in variants:
        print(f"agent {variant}: measuring ...", flush=True)
        expected = await sim_counts(session, sim, types)  # (the churn of the agent before changed them)
        fig[variant] = await measure_agent(args, procs, session, variant=variant, tmp=run_dir, grpc_port=grpc_port, sim=sim, expected=expected, churn=first)
    procs.stop([hub, sim_proc], 20)
    for child in (hub, sim_proc):
        procs.children.remove(child)
    report(fig, variants)
    return fig


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if "rss" in key:
        return f"{value / MIB:,.0f} MiB"
    if "cpu" in key:
        return f"{value * 100:.1f} % core"
    if "drift" in key:
        return f"{value * 100:+.1f} %"
    if "rate" in key:
        return f"{value:,.0f} obj/s"
    return f"{value:.1f} s"


ROWS = [
    ("list_rate", "initial LIST taken in (from metrics up)"),
    ("listed_from_start_s", "listed, from process start"),
    ("sync_rate_from_up", "synced to the hub, from metrics up"),
    ("sync_rate", "synced to the hub, from start"),
    ("peak_rss_sync", "peak RSS during sync"),
    ("steady_rss", "steady RSS (idle, synced)"),
    ("cpu_at_churn", "CPU at --churn"),
    ("rss_at_churn", "RSS at --churn"),
    ("soak_cpu", "CPU during the soak"),
    ("soak_rss_first", "soak RSS, first 10 %"),
    ("soak_rss_last", "soak RSS, last 10 %"),
    ("soak_rss_max", "soak RSS, max"),
    ("soak_drift", "soak RSS drift"),
    ("peak_rss", "peak RSS over the run"),
]


def report(fig: dict[str, Any], variants: list[str]) -> None:
    raw = fig["raw_list"]["rate"]
    print(
        f"\n{fig['pods']:,} pods, {fig['objects']:,} objects of {len(fig['types'])} default types; "
        f"raw LIST {raw:,.0f} objects/s (pages read), {fig['parsed_list']['rate']:,.0f} objects/s (pages parsed with orjson)"
    )
    print(f"{'':42}" + "".join(f"{v:>18}" for v in variants))
    for key, label in ROWS:
        if all(key not in fig[v] for v in variants):
            continue
        print(f"{label:42}" + "".join(f"{_fmt(key, fig[v].get(key)):>18}" for v in variants))
    for v in variants:
        print(f"  {v}: initial LIST at {fig[v]['list_rate'] / raw:.2f} x the raw LIST rate (pages read)")


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path, fig: dict[str, Any]) -> None:
    if args.baseline_src and not (Path(args.baseline_src) / "fleetsync" / "__init__.py").is_file():
        raise BenchError(f"--baseline-src {args.baseline_src}: no fleetsync package there")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    sizes = [int(p) for p in args.pods.split(",") if p.strip()]
    async with aiohttp.ClientSession(read_bufsize=1 << 22) as session:
        fig["sizes"] = []
        for i, pods in enumerate(sizes):
            fig["sizes"].append(await bench_size(args, procs, tmp, session, pods, first=i == 0))


def main(argv: list[str] | None = None) -> int:
    return run_bench("agent", parse_args(argv), bench, show_logs=4)


if __name__ == "__main__":
    sys.exit(main())
