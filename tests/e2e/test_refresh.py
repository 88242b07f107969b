"""The refresh scheduler (seed 003) with pull clusters: agents run with ``--serve-state`` and
connect to no hub; hub replicas on one PostgreSQL fetch their state on schedule."""

from __future__ import annotations

import collections
import itertools
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.harness import (
    Hub,
    Proc,
    Sim,
    fleetsync,
    free_port,
    http,
    hub_events,
    kubectl_binary,
    metric,
    run_sim,
    spawn,
    start_hub,
    wait_converged,
    wait_until,
)

TYPES = "v1/Node,v1/Pod"


def start_pull_agent(tmp: Path, sim: Sim, cluster: str, port: int, *extra: str) -> Proc:
    return spawn(
        tmp,
        f"pull-{cluster}",
        "agent",
        "--kubeconfig",
        str(sim.kubeconfig(cluster)),
        "--cluster-id",
        cluster,
        "--serve-state",
        f"127.0.0.1:{port}",
        "--types",
        TYPES,
        *extra,
    )


def wait_serving(*ports: int) -> None:
    """Until the pull agents on ``ports`` answer: a hub's first refresh must not find one still starting."""
    wait_until(lambda: all(http("GET", f"http://127.0.0.1:{p}/healthz", timeout=1)[0] == 200 for p in ports), timeout=60, what="the pull agents serving")


def add_pull(db: str, cluster: str, port: int, interval: float) -> None:
    result = fleetsync("pull", "add", cluster, f"http://127.0.0.1:{port}", "--interval", str(interval), "--db", db)
    assert result.returncode == 0, result.stderr


def test_three_replicas_refresh_15_pull_clusters_once_per_interval_never_twice_at_once(tmp_path: Path, pg_url: str) -> None:
    interval, clusters = 3.0, [f"c{i}" for i in range(1, 16)]
    with run_sim(tmp_path, "--clusters", "15", "--pods", "5", "--namespaces", "1", "--no-istio", "--churn", "0") as sim:
        free: set[int] = set()
        while len(free) < len(clusters):  # free_port() may hand out a port twice before anyone binds it
            free.add(free_port())
        ports = dict(zip(clusters, sorted(free), strict=True))
        agents = [start_pull_agent(tmp_path, sim, c, ports[c]) for c in clusters]
        wait_serving(*ports.values())
        hubs: list[Hub] = []
        try:
            for c in clusters:
                add_pull(pg_url, c, ports[c], interval)
            hubs = [start_hub(tmp_path, pg_url) for _ in range(3)]
            wait_until(
                lambda: len({e["cluster"] for e in hub_events(hubs[0], reason="ClusterNew")}) == len(clusters),
                timeout=120,
                what="every pull cluster's first state",
            )
            wait_converged(sim, hubs[1], timeout=60, what="every pull cluster converged")
            sim.set_churn(2)
            first = max(e["time"] for e in hub_events(hubs[0], reason="ClusterNew"))
            window = 3 * interval
            wait_until(
                lambda: hubs[0] and max(e["time"] for e in hub_events(hubs[2], reason="Refreshed")) > first + window + interval,
                timeout=60,
                what="three intervals of refreshes",
            )
            sim.set_churn(0)
            refreshed = [e for e in hub_events(hubs[0], reason="Refreshed") if first < e["time"] <= first + window]
            per_cluster = collections.defaultdict(list)
            for e in refreshed:  # when each refresh started: the event says how long it took
                took = re.search(r" in ([0-9.]+) s;", e["message"])
                assert took, e["message"]
                per_cluster[e["cluster"]].append(e["time"] - float(took[1]))
            for c in clusters:
                starts = sorted(per_cluster[c])
                assert 2 <= len(starts) <= 4, (c, starts)  # a 3-interval window holds 3 refreshes, give or take one at its edges
                gaps = [b - a for a, b in itertools.pairwise(starts)]
                # never twice within an interval, however late a claim ran (the clock of events has ms steps)
                assert all(gap > 0.95 * interval for gap in gaps), (c, gaps)
            assert len({e["hub"] for e in refreshed}) >= 2, "the replicas share the work"
            # never twice at once, as the agents themselves saw it
            for c in clusters:
                assert metric(f"http://127.0.0.1:{ports[c]}/metrics", "fleetsync_agent_state_requests_in_flight_max") == 1.0, c
            assert sum(metric(f"{h.url}/metrics", "fleetsync_refreshes_total", result="failed") for h in hubs) == 0
            wait_converged(sim, hubs[2], timeout=60, what="convergence after the churn")
        finally:
            for agent in agents:
                agent.stop()
            for hub in hubs:
                hub.proc.stop()


def test_a_refresh_while_another_runs_is_discarded_and_counted(tmp_path: Path, pg_url: str) -> None:
    with run_sim(tmp_path, "--clusters", "1", "--pods", "5", "--no-istio", "--churn", "0") as sim:
        port = free_port()
        agent = start_pull_agent(tmp_path, sim, "c1", port)
        hub = start_hub(tmp_path, pg_url)
        try:
            add_pull(pg_url, "c1", port, 3600)
            wait_until(lambda: hub_events(hub, reason="Refreshed"), timeout=60, what="the first refresh")
            # another replica's refresh of c1 under way: its lock row, as that replica would hold it
            held = "INSERT INTO locks (name, holder, expires_at) VALUES ('refresh/c1', 'hub-elsewhere/1', extract(epoch from now()) + 600)"
            subprocess.run([*_psql(pg_url), "-c", held], check=True, capture_output=True)
            status, body = http("POST", f"{hub.url}/api/v1/clusters/c1/resync")
            assert status == 409 and "running already" in body["message"], body
            assert metric(f"{hub.url}/metrics", "fleetsync_refreshes_total", result="discarded") == 1
            subprocess.run([*_psql(pg_url), "-c", "DELETE FROM locks"], check=True, capture_output=True)
            status, body = http("POST", f"{hub.url}/api/v1/clusters/c1/resync")
            assert status == 200 and "pulled" in body["message"], body
            assert len(hub_events(hub, reason="Refreshed")) == 2
        finally:
            agent.stop()
            hub.proc.stop()


def _psql(url: str) -> list[str]:
    from fleetsync.testing.postgres import postgres_bindir

    return [str(postgres_bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", url]


def test_pull_cluster_view_events_and_agent_down_keeps_the_last_state(tmp_path: Path) -> None:
    """On SQLite (one hub): events from the cluster view's difference; a dead agent's state is kept, flagged stale."""
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    with run_sim(tmp_path, "--clusters", "1", "--pods", "5", "--no-istio", "--churn", "0") as sim:
        port = free_port()
        agent = start_pull_agent(tmp_path, sim, "c1", port)
        wait_serving(port)
        add_pull(db, "c1", port, 1)
        hub = start_hub(tmp_path, db)
        try:
            wait_converged(sim, hub, timeout=60, what="the first pulls")
            node = sim.truth("c1", "v1/Node")[0]["metadata"]["name"]
            patch = '{"status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady"}]}}'
            kubectl = subprocess.run(
                [kubectl_binary(), "--kubeconfig", str(sim.kubeconfig("c1")), "patch", "node", node, "--subresource=status", "--type=merge", "-p", patch],
                capture_output=True,
                text=True,
            )
            assert kubectl.returncode == 0, kubectl.stderr
            wait_until(lambda: hub_events(hub, reason="NodeDown"), timeout=30, what="NodeDown")
            assert node in hub_events(hub, reason="NodeDown")[0]["message"]
            agent.stop(signal.SIGKILL)
            wait_until(lambda: hub_events(hub, reason="AgentDown"), timeout=30, what="AgentDown")
            (c1,) = http("GET", f"{hub.url}/api/v1/clusters")[1]["items"]
            assert c1["stale"] and sum(c1["objects"].values()) > 0, c1
            agent = start_pull_agent(tmp_path, sim, "c1", port)
            wait_until(lambda: hub_events(hub, reason="AgentUp"), timeout=30, what="AgentUp after the agent restarted")
            assert "restarted" in hub_events(hub, reason="AgentUp")[0]["message"]
            assert len(hub_events(hub, reason="RefreshFailed")) == 1, "one event per outage"
            wait_converged(sim, hub, timeout=30, what="convergence after the restart")
        finally:
            agent.stop()
            hub.proc.stop()


def test_a_pull_agent_with_a_token_serves_its_state_only_to_hubs_that_send_it(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    secret = tmp_path / "pull.token"
    secret.write_text("pull-token-0123456789abcdef\n")
    with run_sim(tmp_path, "--clusters", "1", "--pods", "5", "--no-istio", "--churn", "0") as sim:
        port = free_port()
        agent = start_pull_agent(tmp_path, sim, "c1", port, "--serve-state-token-file", str(secret))
        wait_serving(port)
        add_pull(db, "c1", port, 1)
        hub = start_hub(tmp_path, db)  # without --pull-token-file
        try:
            wait_until(lambda: hub_events(hub, reason="RefreshFailed"), timeout=30, what="the refused refresh reported")
            assert "HTTP 401: it wants a token: give the hub --pull-token-file" in hub_events(hub, reason="RefreshFailed")[0]["message"]
            assert http("GET", f"{hub.url}/api/v1/clusters")[1]["items"] == [], "nothing of the cluster applied"
            refused = urllib.request.Request(f"http://127.0.0.1:{port}/v1/state", headers={"Authorization": "Bearer not-the-token"})
            with pytest.raises(urllib.error.HTTPError) as wrong:
                urllib.request.urlopen(refused, timeout=10)
            assert wrong.value.code == 401 and "a wrong token" in wrong.value.read().decode()
            hub.proc.stop()
            hub = start_hub(tmp_path, db, "--pull-token-file", str(secret))
            wait_converged(sim, hub, timeout=60, what="the pulls with the token")
        finally:
            agent.stop()
            hub.proc.stop()
    bad = fleetsync("agent", "--cluster-id", "c1", "--serve-state", "127.0.0.1:1", "--serve-state-token-file", str(tmp_path / "missing"))
    assert bad.returncode != 0 and "--serve-state-token-file" in bad.stderr and "No such file" in bad.stderr, bad.stderr
