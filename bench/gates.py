"""How fast a feature gate reaches every agent's local config (seed 004 promises 5-10 s).

The bench starts, on free loopback ports in a temporary directory: ``fleetsync sim
--clusters N --pods 1``, a hub on SQLite (agent tokens written to its store directly, an
admin token with ``--admin-token-file``), and one ``fleetsync agent`` per cluster
syncing only Services (the gates are what is measured) with ``--local-config``. When
every agent is connected it makes ``--changes`` gate writes through the API, one at a
time: ``PUT /1.0/feature-gates/feature.bench-K`` flipping one of five gates. For each,
the latency to an agent is from just before the API call to the time the agent logged
that it wrote that gate revision into its local config (the log line follows the file
write; the log's clock is the same machine's, millisecond resolution). The next write
starts once every agent has the previous one. Reported: p50 / p99 / max over every
(agent, write), and over the last agent of each write (when the whole fleet has it);
finally every local config is checked against the hub's gates.

Run (from the repository root)::

    .venv/bin/python bench/gates.py                       # 100 agents, 20 writes
    .venv/bin/python bench/gates.py --agents 20 --changes 5   # quick look
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchlib import (
    DEFAULT_FLEETSYNC,
    HUB_AUTH,
    BenchError,
    Child,
    Processes,
    get_json,
    log_time,
    ms,
    percentile,
    run_bench,
    start_agent_fleet,
    wait_for,
)

_WROTE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO fleetsync\.agent\.gatesync: gates from the hub \(revision (\d+)\)", re.M)


def written_revisions(log: Path) -> dict[int, float]:
    """revision -> when the agent wrote it into its local config, from its log."""
    return {int(m.group(2)): log_time(m.group(1)) for m in _WROTE.finditer(log.read_text(errors="replace"))}


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path, fig: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        fleet = await start_agent_fleet(procs, session, args.agents, "--local-config", str(tmp / "{cluster}-local.json"))
        hub, clusters = fleet.hub, fleet.clusters
        fig["agents_connected_seconds"] = fleet.connected_after
        print(f"{args.agents} agents connected after {fleet.connected_after:.1f} s; {args.changes} gate writes ...", flush=True)

        latencies: list[float] = []
        last_agent: list[float] = []
        for k in range(args.changes):
            key, enabled = f"feature.bench-{k % 5}", k // 5 % 2 == 0
            called = time.time()
            answer = await get_json(
                session, f"{hub}/1.0/feature-gates/{key}", method="PUT", headers=HUB_AUTH | {"Content-Type": "application/json"}, body={"enabled": enabled}
            )
            revision = int(answer["metadata"]["revision"])
            agents = procs.of("agent-")

            async def everywhere(revision: int = revision, agents: list[Child] = agents) -> bool:
                return all(revision in written_revisions(a.log) for a in agents)

            await wait_for(everywhere, timeout=args.timeout, what=f"revision {revision} in every local config", procs=procs, interval=0.1)
            times = [written_revisions(a.log)[revision] - called for a in agents]
            latencies += times
            last_agent.append(max(times))
            print(f"  write {k + 1:>3}: {key}={str(enabled).lower()} revision {revision}: every agent after {ms(max(times))}", flush=True)

        gates = {g["gate-key"]: g["enabled"] for g in (await get_json(session, f"{hub}/1.0/feature-gates", headers=HUB_AUTH))["metadata"]}
        wrong = [c for c in clusters if {k: v for k, v in json.loads((tmp / f"{c}-local.json").read_text()).items() if k.startswith("feature.")} != gates]
        if wrong:
            raise BenchError(f"local configs that differ from the hub's gates: {', '.join(wrong[:10])}")
    fig["latency"] = {
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
        "last_agent_p50": percentile(last_agent, 0.50),
        "last_agent_p99": percentile(last_agent, 0.99),
        "deliveries": len(latencies),
    }
    lat = fig["latency"]
    print("\nfleetsync gates: summary")
    m = fig["machine"]
    print(f"  machine                                   {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}")
    print(f"  scenario                                  {args.agents} agents over gRPC, hub on SQLite, {args.changes} gate writes through the API")
    print(f"  API call -> an agent's local config       p50 {ms(lat['p50'])} / p99 {ms(lat['p99'])} / max {ms(lat['max'])}  ({lat['deliveries']} deliveries)")
    print(f"  API call -> every agent's local config    p50 {ms(lat['last_agent_p50'])} / p99 {ms(lat['last_agent_p99'])}")
    print("  every local config equals the hub's gates  yes")
    print(orjson.dumps(fig).decode())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=100, help="clusters, one agent each")
    p.add_argument("--changes", type=int, default=20, help="gate writes through the API")
    p.add_argument("--timeout", type=float, default=60, help="seconds one write may take to reach every agent")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync command")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_bench("gates", parse_args(argv), bench, show_logs=3)


if __name__ == "__main__":
    sys.exit(main())
