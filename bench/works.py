"""How long a work takes to be applied on every cluster it targets (the issue asks for 100 clusters).

The bench starts, on free loopback ports in a temporary directory: ``fleetsync sim
--clusters N --pods 1 --churn 0``, a hub on SQLite (agent tokens written to its store
directly, an admin token with ``--admin-token-file``), and one ``fleetsync agent`` per
cluster syncing only Services (to keep them light), each labelled ``env=bench`` by an admin
(``PATCH /api/v1/clusters/NAME/labels``: placement never trusts an agent's own ``--label``).
When every cluster shows connected in ``GET /api/v1/clusters`` it makes ``--rounds`` writes of one
work through the API, one at a time: ``PUT /api/v1/works/bench-web`` with a ConfigMap, a
Deployment of 2 replicas and a Service in namespace default, placed with
``clusterSelector: env=bench``; each round changes a value of the ConfigMap and of the
Deployment's pod template, so each write is a new generation (the first one creates the
work, so its agents also start watching the three kinds). Two latencies per round:

- status: from just before the API call until the work's status (``GET
  /api/v1/works/bench-web``, polled every ``--poll`` s) shows a cluster at that generation
  ``Applied`` (or ``Available``): the first cluster, the median one and the last one;
- agent: from just before the API call to the time each agent logged ``works: bench-web
  generation G applied`` (after its server-side applies, before its status report; the log's
  clock is the same machine's, millisecond resolution): p50 / p99 / max over every (agent, round).

The next round starts once every cluster reports the previous one. Then the work is deleted
(``DELETE``) and timed until every agent logged ``works: bench-web removed from the cluster``
and the hub's store holds no status row of the work any more. Correctness: after the last
round every cluster's objects (the sim's ``/clusters/NAME/truth``) are checked to hold the
three objects with ``fleetsync.io/work=bench-web`` and the last round's value, and after
the delete none of them.

Run (from the repository root)::

    .venv/bin/python bench/works.py                      # 100 agents, 5 rounds
    .venv/bin/python bench/works.py --agents 10 --rounds 3   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
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
    check_alive,
    get_json,
    log_time,
    ms,
    percentile,
    run_bench,
    start_agent_fleet,
    wait_for,
)
from fleetsync.store import open_store

WORK = "bench-web"
WORKS = "/api/v1/works"
WORK_LABEL = "fleetsync.io/work"
KINDS = ("v1/ConfigMap", "apps/v1/Deployment", "v1/Service")
_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ fleetsync\.agent\.works: works: "
_APPLIED = re.compile(_STAMP + re.escape(WORK) + r" generation (\d+) applied \(([^)]*)\)", re.M)
_COMPLAINT = re.compile(r" (WARNING|ERROR|CRITICAL) |^Traceback")
_STAMP_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
_REMOVED = re.compile(_STAMP + re.escape(WORK) + r" removed from the cluster", re.M)


def applied_generations(log: Path) -> dict[int, tuple[float, str]]:
    """generation -> (when the agent logged it applied, what it said in brackets), from its log."""
    return {int(m.group(2)): (log_time(m.group(1)), m.group(3)) for m in _APPLIED.finditer(log.read_text(errors="replace"))}


def removals(log: Path) -> list[float]:
    """When the agent logged that it removed the work from its cluster."""
    return [log_time(m.group(1)) for m in _REMOVED.finditer(log.read_text(errors="replace"))]


def work_doc(k: int) -> dict[str, Any]:
    """The work of round ``k``: a ConfigMap, a Deployment of 2 replicas and a Service; the ConfigMap's data and the
    Deployment's pod template carry ``k``, so every round is a new generation."""
    labels = {"app": WORK}
    manifests = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{WORK}-config", "namespace": "default"}, "data": {"round": str(k), "color": "blue"}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": WORK, "namespace": "default"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "env": [{"name": "ROUND", "value": str(k)}]}]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": WORK, "namespace": "default"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}]},
        },
    ]
    return {
        "apiVersion": "fleetsync.io/v1",
        "kind": "Work",
        "metadata": {"name": WORK},
        "spec": {"placement": {"clusterSelector": "env=bench"}, "manifests": manifests},
    }


async def owned_objects(session: aiohttp.ClientSession, sim: str, cluster: str) -> dict[str, dict[str, Any]]:
    """The cluster's objects of :data:`KINDS` labelled with the work, by ``Kind/name``."""
    query = "&".join(f"type={k}" for k in KINDS)
    truth = await get_json(session, f"{sim}/clusters/{cluster}/truth?{query}")
    found: dict[str, dict[str, Any]] = {}
    for objects in truth["types"].values():
        for obj in objects:
            meta = obj.get("metadata") or {}
            if (meta.get("labels") or {}).get(WORK_LABEL) == WORK:
                found[f"{obj.get('kind')}/{meta.get('name')}"] = obj
    return found


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path, fig: dict[str, Any]) -> None:
    json_headers = HUB_AUTH | {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        fleet = await start_agent_fleet(procs, session, args.agents)
        sim, hub, db, clusters = fleet.sim, fleet.hub, fleet.db, fleet.clusters
        for cluster in clusters:
            await get_json(session, f"{hub}/api/v1/clusters/{cluster}/labels", method="PATCH", headers=json_headers, body={"labels": {"env": "bench"}})
        work_url = f"{hub}{WORKS}/{WORK}"
        fig["agents_connected_seconds"] = fleet.connected_after
        print(f"{args.agents} agents connected after {fleet.connected_after:.1f} s; {args.rounds} rounds of PUT {WORKS}/{WORK} ...", flush=True)

        agents = procs.of("agent-")
        agent_latencies: list[float] = []
        rounds: list[dict[str, Any]] = []
        generation = 0
        for k in range(1, args.rounds + 1):
            called = time.time()
            t0 = time.monotonic()
            answer = await get_json(session, work_url, method="PUT", headers=json_headers, body=work_doc(k))
            api_seconds = time.monotonic() - t0
            if answer["metadata"]["generation"] <= generation:
                raise BenchError(f"round {k}: the PUT did not make a new generation ({answer['metadata']['generation']} after {generation})")
            generation = int(answer["metadata"]["generation"])
            seen: dict[str, float] = {}
            polls = 0
            deadline = t0 + args.timeout
            while len(seen) < len(clusters):
                work = await get_json(session, work_url, headers=HUB_AUTH)
                now = time.monotonic() - t0
                polls += 1
                if work["metadata"]["generation"] != generation:
                    raise BenchError(f"round {k}: the work changed generation under the bench ({work['metadata']['generation']}, expected {generation})")
                for entry in work["status"]["clusters"]:
                    if entry.get("observedGeneration", 0) < generation:
                        continue
                    if entry["state"] == "Failed":
                        raise BenchError(f"round {k}: generation {generation} failed on {entry['cluster']}: {entry.get('manifests')}")
                    if entry["state"] in ("Applied", "Available"):
                        seen.setdefault(entry["cluster"], now)
                if len(seen) < len(clusters):
                    check_alive(procs)
                    if time.monotonic() > deadline:
                        missing = sorted(set(clusters) - set(seen), key=lambda c: int(c[1:]))
                        raise BenchError(
                            f"round {k}: after {args.timeout:.0f} s generation {generation} is applied on {len(seen)} of {len(clusters)} clusters "
                            f"(status targeted {work['status']['targeted']}; missing e.g. {', '.join(missing[:10])})"
                        )
                    await asyncio.sleep(args.poll)
            if set(seen) != set(clusters):
                raise BenchError(f"round {k}: status shows clusters the bench did not start: {sorted(set(seen) - set(clusters))}")

            async def logged(generation: int = generation, agents: list[Child] = agents) -> bool:
                return all(generation in applied_generations(a.log) for a in agents)

            await wait_for(logged, timeout=30, what=f"every agent to log generation {generation} applied", procs=procs, interval=0.1)
            times = []
            for a in agents:
                at, said = applied_generations(a.log)[generation]
                if "failed" in said:
                    raise BenchError(f"round {k}: {a.name} logged generation {generation} applied with {said}")
                times.append(at - called)
            agent_latencies += times
            status_times = sorted(seen.values())
            row = {
                "round": k,
                "generation": generation,
                "api_call": api_seconds,
                "status_first": status_times[0],
                "status_p50": percentile(status_times, 0.5),
                "status_last": status_times[-1],
                "agent_p50": percentile(times, 0.5),
                "agent_max": max(times),
                "polls": polls,
            }
            rounds.append(row)
            print(
                f"  round {k}: generation {generation:>4}: PUT {ms(api_seconds)}; status Applied: first {ms(row['status_first'])}, "
                f"p50 {ms(row['status_p50'])}, last {ms(row['status_last'])}; agent log p50 {ms(row['agent_p50'])}, "
                f"max {ms(row['agent_max'])}  ({polls} polls)",
                flush=True,
            )

        # correctness after the last round: every cluster holds the three objects, at the last round's values
        wrong: list[str] = []
        for cluster in clusters:
            objects = await owned_objects(session, sim, cluster)
            config = objects.get(f"ConfigMap/{WORK}-config", {}).get("data") or {}
            deployment = objects.get(f"Deployment/{WORK}") or {}
            env = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers", [{}])[0].get("env")
            if set(objects) != {f"ConfigMap/{WORK}-config", f"Deployment/{WORK}", f"Service/{WORK}"}:
                wrong.append(f"{cluster}: objects {sorted(objects)}")
            elif config.get("round") != str(args.rounds) or env != [{"name": "ROUND", "value": str(args.rounds)}]:
                wrong.append(f"{cluster}: ConfigMap data {config}, Deployment env {env}")
        if wrong:
            raise BenchError(f"after round {args.rounds}, clusters whose objects are not the work's: {'; '.join(wrong[:10])}")
        print(f"  every cluster holds the work's 3 objects at round {args.rounds}'s values (labelled {WORK_LABEL}={WORK})", flush=True)

        # removal
        before = {a.name: len(removals(a.log)) for a in procs.of("agent-")}
        store = open_store(db)
        await store.open()
        try:
            called = time.time()
            t0 = time.monotonic()
            await get_json(session, work_url, method="DELETE", headers=HUB_AUTH)
            delete_api = time.monotonic() - t0
            rows_gone: float | None = None

            async def removed_everywhere() -> bool:
                nonlocal rows_gone
                if rows_gone is None and not await store.work_statuses(work=WORK):
                    rows_gone = time.monotonic() - t0
                return rows_gone is not None and all(len(removals(a.log)) > before[a.name] for a in agents)

            await wait_for(removed_everywhere, timeout=args.timeout, what=f"every agent to remove {WORK} and the hub to forget its status rows", procs=procs)
        finally:
            await store.close()
        removal_times = [removals(a.log)[before[a.name]] - called for a in agents]
        listed = (await get_json(session, f"{hub}{WORKS}", headers=HUB_AUTH))["items"]
        if listed:
            raise BenchError(f"GET {WORKS} still lists works after the delete: {[w['metadata']['name'] for w in listed]}")
        left = {c: sorted(objects) for c in clusters if (objects := await owned_objects(session, sim, c))}
        if left:
            raise BenchError(f"objects of {WORK} left after the delete: {dict(list(left.items())[:10])}")
        print(
            f"  DELETE {ms(delete_api)}: removed on every cluster (agent log) p50 {ms(percentile(removal_times, 0.5))}, last {ms(max(removal_times))}; "
            f"status rows gone after {ms(rows_gone)}; no object left on any cluster",
            flush=True,
        )

    # anything the processes complained about during the run (not a failure of the bench, but worth a look)
    complaints: dict[str, int] = {}
    for child in procs.children:
        for line in child.log.read_text(errors="replace").splitlines():
            if _COMPLAINT.search(line):
                text = f"{child.name.split('-')[0]}: {_STAMP_PREFIX.sub('', line)[:200]}"
                complaints[text] = complaints.get(text, 0) + 1
    fig["log_complaints"] = sum(complaints.values())
    if complaints:
        print(f"  {fig['log_complaints']} WARNING/ERROR/Traceback lines in the logs, e.g.:")
        for text, count in sorted(complaints.items(), key=lambda kv: -kv[1])[:10]:
            print(f"    {count:>4} x {text}")

    def over(key: str) -> list[float]:
        return [r[key] for r in rounds]

    fig["rounds"] = rounds
    fig["status"] = {
        "first_p50": percentile(over("status_first"), 0.5),
        "median_cluster_p50": percentile(over("status_p50"), 0.5),
        "last_p50": percentile(over("status_last"), 0.5),
        "last_max": max(over("status_last")),
        "updates_last_p50": percentile(over("status_last")[1:], 0.5),
    }
    fig["agent"] = {
        "p50": percentile(agent_latencies, 0.50),
        "p99": percentile(agent_latencies, 0.99),
        "max": max(agent_latencies),
        "deliveries": len(agent_latencies),
    }
    fig["removal"] = {"api_call": delete_api, "agent_p50": percentile(removal_times, 0.5), "agent_max": max(removal_times), "status_rows_gone": rows_gone}
    st, ag, rm = fig["status"], fig["agent"], fig["removal"]
    print("\nfleetsync works: summary")
    m = fig["machine"]
    print(f"  machine                                      {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}")
    print(
        f"  scenario                                     {args.agents} agents over gRPC, hub on SQLite, {args.rounds} generations of a work "
        "(ConfigMap + Deployment + Service) on every cluster"
    )
    print(f"  agents connected after                       {fig['agents_connected_seconds']:.1f} s")
    print(f"  API call -> status Applied, first cluster    p50 {ms(st['first_p50'])} over rounds; median cluster p50 {ms(st['median_cluster_p50'])}")
    print(
        f"  API call -> status Applied, every cluster    p50 {ms(st['last_p50'])} / max {ms(st['last_max'])} over rounds"
        f" (updates only: p50 {ms(st['updates_last_p50'])})"
    )
    print(f"  API call -> an agent's applied log line      p50 {ms(ag['p50'])} / p99 {ms(ag['p99'])} / max {ms(ag['max'])}  ({ag['deliveries']} applies)")
    print(
        f"  DELETE -> an agent's removed log line        p50 {ms(rm['agent_p50'])} / max {ms(rm['agent_max'])}; "
        f"status rows gone after {ms(rm['status_rows_gone'])}"
    )
    print("  objects on every cluster after apply/delete  as the work says / none")
    print(orjson.dumps(fig).decode())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=100, help="clusters, one agent each")
    p.add_argument("--rounds", type=int, default=5, help="generations of the work written through the API, one at a time")
    p.add_argument("--poll", type=float, default=0.02, help="seconds between reads of the work's status")
    p.add_argument("--timeout", type=float, default=120, help="seconds one generation (or the delete) may take to reach every cluster")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync command")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_bench("works", parse_args(argv), bench, show_logs=3)


if __name__ == "__main__":
    sys.exit(main())
