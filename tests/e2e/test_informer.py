"""``fleetsync.client.Informer`` against a real hub: it mirrors the hub through churn and a hub crash."""

from __future__ import annotations

import asyncio
import collections
import signal
from pathlib import Path

from fleetsync.client import Informer, object_key
from tests.harness import Sim, create_token, eventually, http, start_agent, start_hub, wait_converged

FAST = ("--types", "v1/Service,v1/Pod")


def hub_keys(hub_url: str, path: str) -> set[str]:
    """The keys of what the hub serves at ``path`` now."""
    return {object_key(item) for item in http("GET", f"{hub_url}{path}")[1]["items"]}


async def test_an_informer_mirrors_the_fleet_through_churn_and_a_hub_crash(tmp_path: Path, quiet_sim: Sim) -> None:
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    agents = [start_agent(tmp_path, sim, c, hub.agent_url, create_token(tmp_path, db, c), *FAST) for c in ("c1", "c2")]
    informer = Informer(hub.url, "/api/v1/pods", label_selector="fleetsync.io/cluster in (c1,c2)", resync_period=1.0)
    informer.add_index("node", lambda pod: [pod["spec"].get("nodeName", "")])
    counts: collections.Counter[str] = collections.Counter()
    informer.on_add(lambda pod: counts.update(["add"]))
    informer.on_update(lambda old, new: counts.update(["resync" if old is new else "update"]))
    informer.on_delete(lambda pod: counts.update(["delete"]))
    task = asyncio.create_task(informer.run())
    try:
        wait_converged(sim, hub, "c1", "c2", timeout=60, what="c1 and c2 synced")
        await asyncio.wait_for(informer.synced.wait(), 30)

        async def mirrored() -> bool:
            return set(informer.cache) == hub_keys(hub.url, "/api/v1/pods?labelSelector=fleetsync.io/cluster+in+(c1,c2)")

        async def changes_seen() -> bool:
            return counts["update"] + counts["delete"] > 10

        await eventually(mirrored, timeout=30, what="the informer holding every pod of c1 and c2")
        node = next(iter(informer.cache.values()))["spec"]["nodeName"]
        assert informer.by_index("node", node) and all(p["spec"]["nodeName"] == node for p in informer.by_index("node", node))
        sim.set_churn(20)
        await eventually(changes_seen, timeout=30, what="changes reaching the informer's handlers")
        hub.proc.stop(signal.SIGKILL)  # the watch breaks; the informer retries with backoff and resumes
        hub.proc = start_hub(tmp_path, db, grpc_port=hub.grpc_port, http_port=hub.http_port).proc
        sim.set_churn(0)
        wait_converged(sim, hub, "c1", "c2", timeout=60, what="convergence after the hub restart")
        await eventually(mirrored, timeout=30, what="the informer mirroring the hub again")
        assert counts["resync"] > 0, "periodic resync hands every object to on_update"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for agent in agents:
            agent.stop()
        hub.proc.stop()
