"""One live agent per identity: two processes started with the same agent id (the default is
the host's name) do not take the cluster from each other; the second is told why and backs
off, and takes over only once the first is gone."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.harness import Sim, create_token, hub_events, start_agent, start_hub, wait_converged, wait_until

FAST = ("--types", "v1/Service,v1/Pod")
TWIN_SAYS = "another live agent with the same agent id"


def test_two_agents_with_one_agent_id_do_not_flap_and_the_survivor_takes_over_within_the_grace_period(sim: Sim, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    grace = 15
    # heartbeats every 2 s: a live agent is never silent for the 3 s (1.5 intervals) a takeover needs
    hub = start_hub(tmp_path, db, "--heartbeat-interval", "2", "--grace-period", str(grace))
    token = create_token(tmp_path, db, "c1")
    first = start_agent(tmp_path, sim, "c1", hub.agent_url, token, "--agent-id", "twin", *FAST)
    second = None
    try:
        wait_until(lambda: hub_events(hub, reason="Connected", cluster="c1"), timeout=30, what="the first agent connected")
        second = start_agent(tmp_path, sim, "c1", hub.agent_url, token, "--agent-id", "twin", *FAST)
        wait_until(lambda: TWIN_SAYS in second.output(), timeout=30, what="the second agent told why it is refused")
        sim.set_churn(5)
        watched_from = time.monotonic()
        wait_until(lambda: time.monotonic() - watched_from > 10, timeout=15, interval=0.5, what="ten seconds of both agents running")
        sim.set_churn(0)
        connected = hub_events(hub, reason="Connected", cluster="c1")
        assert len(connected) == 1, f"the cluster changed hands while both agents lived: {[e['message'] for e in connected]}"
        refused = hub_events(hub, reason="Rejected", cluster="c1")
        assert len(refused) == 1 and "distinct --agent-id" in refused[0]["message"], [e["message"] for e in refused]
        assert second.output().count(TWIN_SAYS) == 1, "the refused agent says so once, not on every retry"
        assert first.process.poll() is None and second.process.poll() is None
        wait_converged(sim, hub, "c1", timeout=60, what="the winner's state correct")

        first.stop(signal.SIGKILL)  # the winner is gone: the survivor takes over within the grace period
        killed = time.time()
        taken = wait_until(lambda: hub_events(hub, reason="Connected", cluster="c1")[1:], timeout=grace + 10, what="the survivor connected")
        assert taken[0]["time"] - killed < grace, f"took {taken[0]['time'] - killed:.1f}s"
        sim.set_churn(5)
        wait_until(lambda: sim.churn_operations() > 20, timeout=30, what="churn under the survivor")
        sim.set_churn(0)
        wait_converged(sim, hub, "c1", timeout=60, what="convergence under the survivor")
    finally:
        sim.set_churn(0)
        first.stop()
        if second is not None:
            second.stop()
        hub.proc.stop()
