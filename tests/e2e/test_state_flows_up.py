"""End to end: sim + hub (SQLite) + agents over each transport; the hub converges on the clusters' truth."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    Hub,
    Proc,
    Sim,
    Transport,
    check,
    converged,
    create_token,
    fleetsync,
    http,
    hub_events,
    hub_kubectl,
    start_agent,
    start_hub,
    wait_converged,
    wait_until,
)

FAST = ("--types", "v1/Service,discovery.k8s.io/v1/EndpointSlice,v1/Pod,networking.istio.io/v1/VirtualService")


@pytest.fixture
def fleet(quiet_sim: Sim, tmp_path: Path, transport: Transport) -> Iterator[tuple[Sim, Hub, dict[str, Proc], Path]]:
    """Three agents on the module's sim (each test has a hub of its own) over ``transport``."""
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, transport=transport, tls=True)  # gRPC over TLS, and kubectl reads it (tokens go over HTTPS only)
    tokens = {c: create_token(tmp_path, db, c) for c in ("c1", "c2", "c3")}
    agents = {c: start_agent(tmp_path, sim, c, hub.agent_url, tokens[c], "--agent-id", f"agent-{c}", *FAST) for c in tokens}
    try:
        yield sim, hub, agents, tmp_path
    finally:
        for agent in agents.values():
            agent.stop()
        hub.proc.stop()


def test_churn_converges_and_kubectl_reads_the_hub(fleet: tuple[Sim, Hub, dict[str, Proc], Path]) -> None:
    sim, hub, agents, _ = fleet
    wait_converged(sim, hub, timeout=60, what="initial sync")
    sim.set_churn(10)
    wait_until(lambda: sim.churn_operations() > 200, timeout=60, what="churn")
    sim.set_churn(0)
    stopped = time.monotonic()
    while True:  # the promise: 0 divergence within 2 s after churn stops
        started = time.monotonic()
        result = check(sim, hub)
        if result.returncode == 0:
            break
        assert started - stopped < 2.0, f"still divergent {started - stopped:.1f}s after churn stopped:\n{result.stdout}"
    assert "converged" in result.stdout
    clusters = http("GET", f"{hub.url}/api/v1/clusters")[1]["items"]
    assert {c["name"]: c["status"] for c in clusters} == {"c1": "active", "c2": "active", "c3": "active"}
    listed = subprocess.run([*hub_kubectl(f"{hub.url}/clusters/c1"), "get", "pods", "-A", "-o", "json"], capture_output=True, text=True, check=True)
    pods = json.loads(listed.stdout)["items"]
    assert len(pods) == len(sim.truth("c1", "v1/Pod"))
    assert "c2" in fleetsync("get", "pods", "-A", "--hub", hub.url).stdout
    metrics = http("GET", f"{hub.url}/metrics")[1]
    assert "fleetsync_bundles_applied_total" in metrics and "fleetsync_connected_agents 3.0" in metrics
    for name, agent in agents.items():  # nothing went wrong, so no connection was lost or refused
        assert "WARNING" not in agent.output() and "ERROR" not in agent.output(), f"agent {name}:\n{agent.output()[-3000:]}"
        agent.stop()  # SIGTERM; SIGKILL after 10 s
        assert agent.process.returncode == 0, f"agent {name} did not stop cleanly on SIGTERM (exit {agent.process.returncode})"


def test_second_agent_and_wrong_token_are_rejected(fleet: tuple[Sim, Hub, dict[str, Proc], Path]) -> None:
    sim, hub, _, tmp = fleet
    wait_converged(sim, hub, timeout=60, what="initial sync")
    token = create_token(tmp, hub.db, "c1")
    second = start_agent(tmp, sim, "c1", hub.agent_url, token, "--agent-id", "intruder", *FAST)
    wrong = tmp / "wrong.token"
    wrong.write_text("not-a-token")
    forged = start_agent(tmp, sim, "c2", hub.agent_url, wrong, *FAST)
    other = start_agent(tmp, sim, "c2", hub.agent_url, token, "--agent-id", "c1-token-for-c2", *FAST)
    try:
        wait_until(lambda: "ALREADY_CONNECTED" in second.output() and "agent-c1" in second.output(), timeout=30, what="ALREADY_CONNECTED naming the holder")
        wait_until(lambda: "UNAUTHENTICATED" in forged.output(), timeout=30, what="wrong token rejected")
        wait_until(lambda: "PERMISSION_DENIED" in other.output(), timeout=30, what="a c1 token cannot write c2")
    finally:
        for p in (second, forged, other):
            p.stop()
    assert converged(sim, hub)


def test_kill_9_of_agent_and_hub_converges_without_losing_acknowledged_data(fleet: tuple[Sim, Hub, dict[str, Proc], Path]) -> None:
    sim, hub, agents, tmp = fleet
    wait_converged(sim, hub, timeout=60, what="initial sync")
    sim.set_churn(10)
    agents["c1"].stop(signal.SIGKILL)
    agents["c1"] = start_agent(tmp, sim, "c1", hub.agent_url, tmp / "c1-agent.token", "--agent-id", "agent-c1", *FAST)
    hub.proc.stop(signal.SIGKILL)
    restarted = start_hub(tmp, hub.db, grpc_port=hub.grpc_port, http_port=hub.http_port, transport=hub.transport, tls=hub.tls)
    hub.proc = restarted.proc
    wait_until(lambda: sim.churn_operations() > 300, timeout=60, what="churn across the restarts")
    sim.set_churn(0)
    wait_converged(sim, hub, timeout=30, what="convergence after kill -9 of agent and hub")
    # the restarted hub asked every cluster for a digest of every type it holds (its startup broadcast)
    started = [e for e in hub_events(hub, reason="ResyncStarted") if "hub startup" in e["message"]]
    assert {e["cluster"] for e in started} == {"c1", "c2", "c3"}, started


def test_demo_runs_everything_and_shuts_down_cleanly(tmp_path: Path, transport: Transport) -> None:
    from tests.harness import free_port, spawn

    sim_port, http_port, grpc_port = free_port(), free_port(), free_port()
    via = ("--broker", transport.broker.url) if transport.broker else ()
    ports = ("--sim-port", str(sim_port), "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--prometheus-port", str(free_port()))
    demo = spawn(tmp_path, "demo", "demo", "--clusters", "2", "--pods", "40", *ports, *via)
    try:
        wait_until(lambda: "Ctrl-C stops everything" in demo.output(), timeout=30, what="the demo's instructions")
        assert not transport.broker or f"agents -> {transport.broker.url} -> hub" in demo.output()
        # the printed commands work as pasted into a shell, after the printed export
        printed = [line for line in demo.output().splitlines() if line.startswith(("  first:", "  try:", "     "))]
        lines = [re.sub(r"^  (?:first:|try:)?\s*", "", line).split("   (")[0] for line in printed]
        export = lines[0]
        assert export.startswith("export KUBECONFIG=") and f"FLEETSYNC_HUB=https://127.0.0.1:{http_port} " in export, lines
        shell = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETSYNC_", "KUBECONFIG"))}

        def run(command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["bash", "-c", f"{export} && {command}"], capture_output=True, text=True, env=shell, timeout=60)

        check = next(line for line in lines if " check --sim " in line)
        result = wait_until(lambda: (r := run(check)).returncode == 0 and r, timeout=60, interval=0.5, what="demo converged (its printed check command)")
        assert "converged" in result.stdout
        listings = [line for line in lines if "kubectl " in line and not line.startswith("(") and " -w" not in line]
        assert len(listings) == 3, lines  # the fleet, one cluster of it, and one cluster's own context
        for command in listings:
            listed = run(f"{command} -o name")
            assert listed.returncode == 0 and listed.stdout.count("pod/") >= 40, (command, listed.stderr)
        # without the token: refused, with a message that says what to do
        refused = run(f"FLEETSYNC_TOKEN= {check}")
        assert refused.returncode == 1 and "needs an API token" in refused.stderr, refused.stderr
        # a read token cannot act; the printed resync carries the admin token
        admin = next(line.removeprefix("  as admin:").strip() for line in demo.output().splitlines() if line.startswith("  as admin:"))
        assert run(admin).returncode == 0, run(admin).stderr
        as_reader = run(admin.rsplit(" --token ", 1)[0])
        assert "403" in as_reader.stderr and "needs role admin" in as_reader.stderr, as_reader.stderr
        # the printed gate command: the gate reaches a cluster's local config
        gate_line = next(line.strip().split("   (then: cat ") for line in demo.output().splitlines() if " gates set " in line)
        assert run(gate_line[0]).returncode == 0
        config = Path(gate_line[1].rstrip(")"))
        wait_until(
            lambda: config.exists() and json.loads(config.read_text()).get("feature.multi-region") is True, timeout=15, what="the gate in c2's local config"
        )
        # the printed work: applied on both clusters
        work_line = next(line.strip().split("   (then: ")[0] for line in demo.output().splitlines() if " works apply " in line)
        applied = run(work_line)
        assert applied.returncode == 0 and "work.fleetsync.io/web applied on 2 clusters" in applied.stdout, applied.stdout + applied.stderr
        if not transport.broker:  # the printed service graph fills once the demo's Prometheus has scraped a while
            graph = next(line.strip().split("   (")[0] for line in demo.output().splitlines() if line.strip().endswith("to fill its window)"))
            wait_until(lambda: run(graph).stdout.count("\n") > 3, timeout=90, interval=2, what="the demo's service graph")
        wait_until(lambda: "clusters 2/2 active" in demo.output() and " ms   hub rev" in demo.output(), timeout=10, what="the live summary with the sync lag")
    finally:
        # the demo stops its components in turn (agents, broker sessions, API, gRPC, hub, sim, its
        # Prometheus): on a loaded CI machine that took more than the default 10 s once
        demo.stop(signal.SIGINT, grace=30)
    assert demo.process.returncode == 0 and "shutting down" in demo.output()
