"""What reconnecting and resyncing cost: a FULL, a digest resync of an unchanged cluster, and a long outage.

The bench starts everything itself, on free loopback ports in a temporary directory:
``fleetsync sim --clusters 1 --pods P --churn 0``, a hub on SQLite, and one agent
syncing every type (``--types all``) to the hub through a
:class:`~fleetsync.testing.proxy.PartitionProxy` (which can cut the network), with
its metrics endpoint on. Bytes are the protocol messages' serialized size as the
agent counts them (``fleetsync_agent_bytes_sent_total`` / ``..._received_total``, by
kind); the proxy's counts of what crossed the "network" (HTTP/2 framing included) are
shown beside them. The agent is *caught up* when it is connected and has nothing
pending, unacknowledged, queued or awaiting a digest's answer (its metrics).

1. **FULL**: from starting the agent until it is caught up and the hub holds every
   object; the largest message sent, against the hub's max message size.
2. **digest resync of the unchanged cluster**: ``POST /api/v1/clusters/c1/resync``
   (every type) until the agent is caught up again: bytes up (digests + repair
   deltas) and down (diffs), as a fraction of the FULL.
3. **outage**: churn at ``--churn`` operations/s while the network is partitioned for
   ``--outage`` seconds (the connection dies by its keepalive after ~30 s, the hub
   marks the cluster inactive after its timeout), then churn stops and the network
   heals. Reported: the fraction of objects that changed meanwhile (resourceVersions
   in the sim's truth before and after), the bytes sent from the heal until caught up
   (by kind: resumed deltas, new deltas, the reactivation digests and their repairs)
   as a fraction of the FULL, and the time from the heal to caught up -- then a full
   ``fleetsync check`` confirms 0 divergence (its own duration is shown separately).

Run (from the repository root)::

    .venv/bin/python bench/resync.py --pods 2000 --outage 40                 # quick look
    .venv/bin/python bench/resync.py --pods 40500 --outage 60 --churn 5      # 100k objects, 60 s outage, ~1% changed
    .venv/bin/python bench/resync.py --pods 81000 --only-full                # a 200k-object FULL

Exit status: 0 when every phase completed and the final check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchlib import (
    DEFAULT_FLEETSYNC,
    HUB_AUTH,
    BenchError,
    Processes,
    answers,
    divergent_rows,
    free_port,
    get_json,
    parse_metrics,
    parse_metrics_by,
    put_churn,
    run_bench,
    run_check,
)
from fleetsync.testing.proxy import PartitionProxy

KIB = 1024


class Agent:
    """Reads the agent's metrics."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def text(self) -> str:
        async with self.session.get(self.url) as response:
            return await response.text()

    async def bytes_by_kind(self) -> tuple[dict[str, float], dict[str, float]]:
        """(sent, received) bytes by message kind."""
        text = await self.text()
        return parse_metrics_by(text, "fleetsync_agent_bytes_sent_total", "kind"), parse_metrics_by(text, "fleetsync_agent_bytes_received_total", "kind")

    async def caught_up(self) -> bool:
        m = parse_metrics(await self.text())
        busy = m.get("fleetsync_agent_pending_changes", 1) + m.get("fleetsync_agent_unacked_messages", 1) + m.get("fleetsync_agent_resyncs_outstanding", 1)
        return m.get("fleetsync_agent_connected", 0) == 1 and busy == 0

    async def largest_message(self) -> float:
        return parse_metrics(await self.text()).get("fleetsync_agent_largest_message_bytes", 0.0)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


async def wait_for(predicate: Any, *, timeout: float, what: str, procs: Processes, interval: float = 0.2) -> float:
    """Seconds until ``await predicate()`` is true (BenchError after ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        procs.check_alive("sim", "hub", "agent-")
        if await predicate():
            return time.monotonic() - started
        await asyncio.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


async def versions(session: aiohttp.ClientSession, sim: str) -> dict[tuple[str, str], str]:
    """(type, namespace/name) -> resourceVersion of every object in the sim's cluster c1."""
    truth = await get_json(session, f"{sim}/clusters/c1/truth", timeout=600)
    return {
        (t, f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"): o["metadata"]["resourceVersion"]
        for t, objs in truth["types"].items()
        for o in objs
    }


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path, fig: dict[str, Any]) -> None:
    sim_port, hub_http, hub_grpc, agent_metrics = free_port(), free_port(), free_port(), free_port()
    sim, hub = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{hub_http}"
    procs.spawn("sim", "sim", "--clusters", "1", "--pods", str(args.pods), "--churn", "0", "--port", str(sim_port), "--kubeconfig-dir", str(tmp / "kc"))
    db = f"sqlite:///{tmp / 'hub.db'}"
    token = (await asyncio.to_thread(_token, procs.fleetsync, db)).strip()
    (tmp / "c1.token").write_text(token)
    procs.spawn_hub(db, hub_grpc, hub_http, "--max-message-bytes", str(args.max_message_bytes))
    async with aiohttp.ClientSession() as session:
        fig["sim_build_s"] = await wait_for(lambda: answers(session, f"{sim}/readyz"), timeout=900, what="the sim", procs=procs, interval=0.5)
        await wait_for(lambda: answers(session, f"{hub}/readyz"), timeout=60, what="the hub", procs=procs)
        (cluster,) = (await get_json(session, f"{sim}/clusters"))["clusters"]
        total = int(sum(cluster["objects"].values()))
        fig["objects"] = total
        print(f"sim: 1 cluster, {total:,} objects of {len(cluster['objects'])} types, built in {fig['sim_build_s']:.1f}s", flush=True)

        with PartitionProxy(("127.0.0.1", hub_grpc)) as proxy:
            procs.spawn(
                "agent-c1",
                "agent",
                "--kubeconfig",
                str(tmp / "kc" / "c1.kubeconfig"),
                "--cluster-id",
                "c1",
                "--hub",
                f"grpc://127.0.0.1:{proxy.port}",
                "--token-file",
                str(tmp / "c1.token"),
                "--types",
                "all",
                "--metrics",
                f"127.0.0.1:{agent_metrics}",
            )
            agent = Agent(session, f"http://127.0.0.1:{agent_metrics}/metrics")

            async def hub_holds_all() -> bool:
                clusters = (await get_json(session, f"{hub}/api/v1/clusters", headers=HUB_AUTH))["items"]
                # the sim's types only: the agent also collects an IstioMesh, which the sim does not serve
                held = sum(n for t, n in clusters[0]["objects"].items() if t in cluster["objects"]) if clusters else -1
                return held == total and await agent.caught_up()

            # 1. FULL
            await wait_for(lambda: answers(session, f"http://127.0.0.1:{agent_metrics}/metrics"), timeout=60, what="the agent's metrics", procs=procs)
            fig["full_s"] = await wait_for(hub_holds_all, timeout=3600, what="the FULL", procs=procs, interval=0.5)
            sent, received = await agent.bytes_by_kind()
            fig["full"] = {"bytes": sent.get("full", 0.0), "wire_up": proxy.bytes["up"], "largest_message": await agent.largest_message(), "sent": sent}
            full_bytes = fig["full"]["bytes"]
            print(
                f"FULL: {total:,} objects in {fig['full_s']:.1f}s ({total / fig['full_s']:,.0f} objects/s), {full_bytes / 1e6:,.1f} MB "
                f"({full_bytes / total:,.0f} B/object); largest message {fig['full']['largest_message'] / KIB:,.0f} KiB "
                f"of {args.max_message_bytes / KIB:,.0f} KiB allowed",
                flush=True,
            )
            hub_metrics = parse_metrics(await _text(session, f"{hub}/metrics", HUB_AUTH))
            fig["full"]["hub_refused"] = hub_metrics.get("fleetsync_messages_refused_total", 0.0)
            if args.only_full:
                return

            # 2. a digest resync of the unchanged cluster
            before, before_down, wire = *(await agent.bytes_by_kind()), dict(proxy.bytes)
            await get_json(session, f"{hub}/api/v1/clusters/c1/resync", method="POST", headers=HUB_AUTH)
            await asyncio.sleep(0.5)  # the request reaches the agent
            took = await wait_for(agent.caught_up, timeout=600, what="the digest resync", procs=procs)
            sent, received = await agent.bytes_by_kind()
            up_bytes, down_bytes = delta(sent, before), delta(received, before_down)
            digest_total = sum(up_bytes.values()) + sum(down_bytes.values())
            fig["digest"] = {"seconds": took, "up": up_bytes, "down": down_bytes, "fraction": digest_total / full_bytes, "per_object": digest_total / total}
            fig["digest"]["wire"] = {k: proxy.bytes[k] - wire[k] for k in wire}
            print(
                f"digest resync of the unchanged cluster: {digest_total / 1e6:,.2f} MB up+down = {fig['digest']['fraction']:.2%} of the FULL "
                f"({fig['digest']['per_object']:.1f} B/object) in {took:.1f}s; up {up_bytes}, down {down_bytes}",
                flush=True,
            )

            # 3. an outage with churn
            rv_before = await versions(session, sim)
            await put_churn(session, sim, args.churn)
            proxy.partition()
            cut = time.monotonic()
            await asyncio.sleep(max(0.0, args.outage - 1))
            await put_churn(session, sim, 0)
            await asyncio.sleep(max(0.0, args.outage - (time.monotonic() - cut)))  # the churn's last writes reach the agent's watches
            before, before_down, wire = *(await agent.bytes_by_kind()), dict(proxy.bytes)
            proxy.heal()
            healed = time.monotonic()
            took = await wait_for(agent.caught_up, timeout=900, what="catching up after the outage", procs=procs, interval=0.1)
            sent, received = await agent.bytes_by_kind()
            rv_after = await versions(session, sim)  # churn stopped before the heal: the state the agent caught up with
            changed = sum(1 for k, v in rv_after.items() if rv_before.get(k) != v) + len(rv_before.keys() - rv_after.keys())
            print(f"outage: {healed - cut:.0f}s partitioned with churn, {changed:,} objects changed ({changed / total:.2%}); healed", flush=True)
            up_bytes, down_bytes = delta(sent, before), delta(received, before_down)
            reconnect_total = sum(up_bytes.values()) + sum(down_bytes.values())
            status, check_s, output = await run_check(procs.fleetsync, sim, hub, 900, "--types", "all")
            fig["outage"] = {
                "partitioned_s": healed - cut,
                "changed": changed,
                "changed_fraction": changed / total,
                "to_caught_up_s": took,
                "up": up_bytes,
                "down": down_bytes,
                "bytes": reconnect_total,
                "fraction": reconnect_total / full_bytes,
                "wire": {k: proxy.bytes[k] - wire[k] for k in wire},
                "check_status": status,
                "check_s": check_s,
                "divergent": divergent_rows(output),
            }
            print(
                f"after the heal: caught up in {took:.1f}s; {reconnect_total / 1e6:,.2f} MB up+down = {fig['outage']['fraction']:.2%} of the FULL; "
                f"up {up_bytes}, down {down_bytes}; check: {'0 divergence' if status == 0 else 'DIVERGENT'} (the check took {check_s:.1f}s)",
                flush=True,
            )
            if status != 0:
                raise BenchError("divergent after the outage:\n" + "\n".join(fig["outage"]["divergent"][:20]))


def _token(fleetsync: Path, db: str) -> str:
    import subprocess

    return subprocess.run([str(fleetsync), "token", "create", "c1", "--db", db], capture_output=True, text=True, check=True).stdout


async def _text(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> str:
    async with session.get(url, headers=headers) as response:
        return await response.text()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=40500, help="pods in the cluster (objects are ~2.5x this; default: ~100k objects)")
    p.add_argument("--outage", type=float, default=60.0, help="seconds the network is partitioned")
    p.add_argument("--churn", type=float, default=5.0, help="churn operations/s during the outage (~3.5 object writes each)")
    p.add_argument("--max-message-bytes", type=int, default=512 * 1024, help="the hub's max message size")
    p.add_argument("--only-full", action="store_true", help="measure the FULL only")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync executable")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_bench("resync", parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())
