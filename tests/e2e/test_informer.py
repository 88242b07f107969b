"""``fleetsync.client.Informer`` against a real hub: it mirrors the hub through churn and a hub crash."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fleetsync.client import Informer, object_key
from tests.harness import API_TOKEN, PKI, Proc, Sim, create_token, eventually, http, label_cluster, start_agent, start_hub, wait_converged, wait_until

FAST = ("--types", "v1/Service,v1/Pod")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def hub_keys(hub_url: str, path: str) -> set[str]:
    """The keys of what the hub serves at ``path`` now."""
    return {object_key(item) for item in http("GET", f"{hub_url}{path}")[1]["items"]}


async def test_an_informer_mirrors_the_fleet_through_churn_and_a_hub_crash(tmp_path: Path, quiet_sim: Sim) -> None:
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    agents = [start_agent(tmp_path, sim, c, hub.agent_url, create_token(tmp_path, db, c), *FAST) for c in ("c1", "c2")]
    informer = Informer(hub.url, "/api/v1/pods", label_selector="fleetsync.io/cluster in (c1,c2)", resync_period=1.0, token=API_TOKEN)
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


async def test_an_informer_away_longer_than_the_change_log_relists_on_410(tmp_path: Path, quiet_sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, "--change-log-keep", "50")
    agent = start_agent(tmp_path, sim, "c1", hub.agent_url, create_token(tmp_path, db, "c1"), *FAST)
    informer = Informer(hub.url, "/clusters/c1/api/v1/pods", token=API_TOKEN)
    deleted: list[str] = []
    informer.on_delete(lambda pod: deleted.append(object_key(pod)))

    async def mirrored() -> bool:
        return set(informer.cache) == hub_keys(hub.url, "/clusters/c1/api/v1/pods")

    try:
        wait_converged(sim, hub, "c1", types="v1/Service,v1/Pod", timeout=60, what="c1 synced")
        task = asyncio.create_task(informer.run())
        await eventually(mirrored, timeout=30, what="the informer synced")
        task.cancel()  # the informer goes away, keeping its cache and revision
        await asyncio.gather(task, return_exceptions=True)
        away_at = int(informer.resource_version)
        before = set(informer.cache)
        sim.set_churn(30)  # far more than the 50 changes the hub keeps
        await eventually(
            lambda: asyncio.to_thread(lambda: int(http("GET", f"{hub.url}/api/v1/pods?limit=1")[1]["metadata"]["resourceVersion"]) > away_at + 200), timeout=60
        )
        sim.set_churn(0)
        wait_converged(sim, hub, "c1", types="v1/Service,v1/Pod", timeout=60, what="c1 synced after the churn")
        caplog.set_level(logging.INFO, logger="fleetsync.client.informer")
        task = asyncio.create_task(informer.run())  # resumes from its old revision: 410, then a relist
        await eventually(mirrored, timeout=30, what="the informer mirroring the hub after relisting")
        assert any("expired; listing again" in r.getMessage() for r in caplog.records), caplog.text
        assert int(informer.resource_version) > away_at + 200
        gone = before - set(informer.cache)
        assert gone and gone <= set(deleted), "what vanished while it was away is reported as deleted"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        agent.stop()
        hub.proc.stop()


async def test_a_cluster_selector_takes_in_clusters_that_join_later_and_relists_when_one_is_relabelled(
    tmp_path: Path, quiet_sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    """A controller watching ``env=prod`` clusters from before any agent connects gets each prod
    cluster as it joins; a cluster an admin relabels into or out of prod makes it list again
    (what an agent says of itself counts for nothing: c2's agent claims prod throughout)."""
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    tokens = {c: create_token(tmp_path, db, c) for c in ("c1", "c2")}
    prod = "/api/v1/pods?clusterSelector=env%3Dprod"
    informer = Informer(hub.url, "/api/v1/pods", cluster_selector="env=prod", token=API_TOKEN)
    deleted: list[str] = []
    informer.on_delete(lambda pod: deleted.append(object_key(pod)))
    caplog.set_level(logging.INFO, logger="fleetsync.client.informer")
    task = asyncio.create_task(informer.run())

    def relabel(cluster: str, env: str) -> None:
        assert label_cluster(hub.url, cluster, env=env) == {"env": env}

    async def mirrored(*clusters: str) -> bool:
        keys = hub_keys(hub.url, prod)
        return set(informer.cache) == keys and {k.split("/")[0] for k in keys} == set(clusters)

    agents: dict[str, Proc] = {}
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)  # an empty fleet
        relabel("c1", "prod")
        relabel("c2", "dev")
        agents = {c: start_agent(tmp_path, sim, c, hub.agent_url, tokens[c], *FAST, "--label", "env=prod") for c in ("c1", "c2")}
        wait_converged(sim, hub, "c1", "c2", types="v1/Service,v1/Pod", timeout=60, what="c1 and c2 synced")
        await eventually(lambda: mirrored("c1"), timeout=30, what="the informer holding c1's pods, which joined after it started")
        assert not any("listing again" in r.getMessage() for r in caplog.records), "a cluster joining needs no relist"
        relabel("c2", "prod")
        await eventually(lambda: mirrored("c1", "c2"), timeout=30, what="the informer holding c2's pods after c2 became prod")
        assert any("listing again" in r.getMessage() for r in caplog.records), caplog.text
        c1_pods = {k for k in informer.cache if k.startswith("c1/")}
        relabel("c1", "dev")
        await eventually(lambda: mirrored("c2"), timeout=30, what="the informer dropping c1's pods after c1 left prod")
        assert c1_pods <= set(deleted), "the pods of a cluster that left the selection are reported as deleted"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for agent in agents.values():
            agent.stop()
        hub.proc.stop()


def test_the_example_controller_reports_unready_pods_across_the_fleet(tmp_path: Path, quiet_sim: Sim) -> None:
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, tls=True)
    tokens = {c: create_token(tmp_path, db, c) for c in ("c1", "c2", "c3")}
    envs = {"c1": "prod", "c2": "prod", "c3": "dev"}
    for cluster, env in envs.items():
        label_cluster(hub.url, cluster, env=env)
    agents = [start_agent(tmp_path, sim, c, hub.agent_url, tokens[c], *FAST) for c in envs]
    reader = create_token(tmp_path, db, "controller", "read").read_text().strip()
    env = {**os.environ, "FLEETSYNC_HUB": hub.url, "FLEETSYNC_TOKEN": reader, "FLEETSYNC_CERTIFICATE_AUTHORITY": str(PKI.ca_file)}
    log = tmp_path / "controller.log"
    with log.open("w") as out:
        controller = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "unready_pods.py"), "--cluster-selector", "env=prod", "--report", "0.5"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_converged(sim, hub, types="v1/Service,v1/Pod", timeout=60, what="c1, c2 and c3 synced")
        pods = {c: sim.truth(c, "v1/Pod") for c in ("c1", "c2")}
        expected = f"report   {len(pods['c1']) + len(pods['c2'])} pods in 2 clusters"
        wait_until(lambda: expected in log.read_text(), timeout=30, what=f"{expected!r} in the controller's output")

        def unready(cluster: str) -> int:
            """The unready count of ``cluster`` in the controller's latest report."""
            reports = [line for line in log.read_text().splitlines() if line.startswith("report")]
            return int(re.findall(rf"\b{cluster} (\d+)/\d+", reports[-1])[0])

        before = unready("c2")
        # a ready pod stops being ready in c2, then goes away
        pod = next(p for p in pods["c2"] if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])))["metadata"]
        status = json.dumps({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
        sim.kubectl("c2", "patch", "pod", pod["name"], "-n", pod["namespace"], "--subresource", "status", "--type", "merge", "-p", status)
        wait_until(lambda: f"unready  c2/{pod['namespace']}/{pod['name']}\n" in log.read_text(), timeout=30, what="the unready pod reported")
        wait_until(lambda: unready("c2") == before + 1, timeout=30, what="the report counting it")
        sim.kubectl("c2", "delete", "pod", pod["name"], "-n", pod["namespace"], "--wait=false")
        wait_until(lambda: f"deleted  c2/{pod['namespace']}/{pod['name']} (was unready)" in log.read_text(), timeout=30, what="its deletion reported")
        assert "c3/" not in log.read_text(), "c3 is not a prod cluster"
        # with an agent's token it stops at once, saying why
        refused = subprocess.run(
            [sys.executable, str(EXAMPLES / "unready_pods.py")],
            capture_output=True,
            text=True,
            env={**env, "FLEETSYNC_TOKEN": tokens["c1"].read_text()},
            timeout=30,
        )
        assert refused.returncode == 2 and "is an agent token" in refused.stderr, refused.stderr
    finally:
        controller.terminate()
        controller.wait(10)
        for agent in agents:
            agent.stop()
        hub.proc.stop()
