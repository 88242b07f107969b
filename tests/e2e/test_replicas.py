"""Several hub replicas on one PostgreSQL: agents spread over them fail over when one dies,
one agent per cluster holds across replicas, and watches see every replica's writes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from kubernetes_asyncio import client, watch

from tests.harness import (
    API_TOKEN,
    Hub,
    Transport,
    converged,
    create_token,
    fleetsync,
    free_port,
    http,
    hub_events,
    label_cluster,
    run_sim,
    start_agent,
    start_broker,
    start_hub,
    wait_converged,
    wait_until,
)

FAST = ("--types", "v1/Service,v1/Pod")


def holder_hub(hub: Hub, cluster: str) -> str:
    """The replica a cluster's agent is connected to, as the clusters API reports it (any replica answers)."""
    (found,) = [c for c in http("GET", f"{hub.url}/api/v1/clusters")[1]["items"] if c["name"] == cluster]
    return str(found["hub"]) if found["connected"] else ""


def test_two_replicas_one_killed_mid_churn_its_agents_fail_over(tmp_path: Path, pg_url: str) -> None:
    with run_sim(tmp_path, "--clusters", "4", "--pods", "100", "--churn", "0") as sim:
        a = start_hub(tmp_path, pg_url)
        b = start_hub(tmp_path, pg_url)
        home = {"c1": a, "c2": a, "c3": b, "c4": b}
        agents = [
            start_agent(tmp_path, sim, c, f"{hub.grpc_url},{(b if hub is a else a).grpc_url}", create_token(tmp_path, pg_url, c), *FAST)
            for c, hub in home.items()
        ]
        try:
            wait_until(lambda: all(holder_hub(b, c) == hub.hub_id for c, hub in home.items()), timeout=60, what="each agent on its first replica")
            wait_converged(sim, a, timeout=60, what="initial sync, read through replica A")
            assert converged(sim, b), "both replicas serve the same state"
            sim.set_churn(20)
            wait_until(lambda: http("GET", f"{b.url}/api/v1/clusters")[0] == 200 and sim.truth("c1", "v1/Pod"), timeout=10, what="churn")
            a.proc.stop(signal.SIGKILL)  # mid-churn; its leases stay behind until they expire or their agents reclaim them
            wait_until(lambda: all(holder_hub(b, c) == b.hub_id for c in home), timeout=60, what="c1 and c2 reconnected to replica B")
            sim.set_churn(0)
            wait_converged(sim, b, timeout=90, what="convergence through the surviving replica")
            moved = [e for e in hub_events(b, reason="Connected") if e["cluster"] in ("c1", "c2") and e["hub"] == b.hub_id]
            assert {e["cluster"] for e in moved} == {"c1", "c2"}
        finally:
            for agent in agents:
                agent.stop()
            b.proc.stop()
            a.proc.stop()


def test_one_agent_per_cluster_holds_across_replicas(tmp_path: Path, pg_url: str) -> None:
    with run_sim(tmp_path, "--clusters", "1", "--pods", "20", "--churn", "0") as sim:
        a = start_hub(tmp_path, pg_url)
        b = start_hub(tmp_path, pg_url)
        token = create_token(tmp_path, pg_url, "c1")
        first = start_agent(tmp_path, sim, "c1", a.grpc_url, token, *FAST, "--agent-id", "first")
        try:
            wait_until(lambda: holder_hub(b, "c1") == a.hub_id, timeout=60, what="the first agent on replica A")
            second = start_agent(tmp_path, sim, "c1", b.grpc_url, token, *FAST, "--agent-id", "second")
            try:
                wait_until(lambda: hub_events(b, reason="Rejected", cluster="c1"), timeout=30, what="the second agent rejected by replica B")
                rejected = hub_events(b, reason="Rejected", cluster="c1")[0]
                assert "already connected" in rejected["message"] and "first" in rejected["message"], rejected
                assert holder_hub(a, "c1") == a.hub_id
                # a resync asked of replica B reaches the agent through replica A
                status, body = http("POST", f"{b.url}/api/v1/clusters/c1/resync")
                assert status == 202 and a.hub_id in body["message"], body
                wait_until(
                    lambda: [e for e in hub_events(b, reason="ResyncRequested", cluster="c1") if e["hub"] == a.hub_id],
                    timeout=15,
                    what="the resync requested by replica A",
                )
            finally:
                second.stop()
        finally:
            first.stop()
            a.proc.stop()
            b.proc.stop()


async def test_a_watch_on_one_replica_sees_changes_applied_through_another_in_revision_order(tmp_path: Path, pg_url: str) -> None:
    """kubernetes_asyncio (the agent's own client) watches replica A; the agent writes through B."""
    with run_sim(tmp_path, "--clusters", "1", "--pods", "50", "--churn", "0") as sim:
        a = start_hub(tmp_path, pg_url)
        b = start_hub(tmp_path, pg_url)
        agent = start_agent(tmp_path, sim, "c1", b.grpc_url, create_token(tmp_path, pg_url, "c1"), *FAST)
        try:
            wait_converged(sim, a, timeout=60, what="initial sync through B, read from A")
            configuration = client.Configuration(host=f"{a.url}/clusters/c1", api_key={"BearerToken": API_TOKEN}, api_key_prefix={"BearerToken": "Bearer"})
            async with client.ApiClient(configuration) as api:
                core = client.CoreV1Api(api)
                listed = await core.list_pod_for_all_namespaces()
                start = int(listed.metadata.resource_version)
                sim.set_churn(20)
                seen: list[tuple[str, int]] = []
                stream = watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=str(start), timeout_seconds=60)
                async with stream:
                    async for event in stream:
                        seen.append((event["type"], int(event["raw_object"]["metadata"]["resourceVersion"])))
                        if len(seen) >= 40:
                            break
                sim.set_churn(0)
            versions = [rv for _, rv in seen]
            assert versions == sorted(set(versions)) and versions[0] > start, versions
            assert {kind for kind, _ in seen} & {"MODIFIED", "ADDED", "DELETED"}
        finally:
            agent.stop()
            a.proc.stop()
            b.proc.stop()


@pytest.mark.parametrize("kind", ["mqtt", "nats"])
def test_replicas_on_one_broker_answer_each_agent_once_and_take_over_a_dead_ones_clusters(tmp_path: Path, pg_url: str, kind: str) -> None:
    broker = start_broker(tmp_path, kind)
    quick = ("--heartbeat-interval", "1", "--inactivity-timeout", "5", "--lease-ttl", "5")
    try:
        with run_sim(tmp_path, "--clusters", "4", "--pods", "60", "--churn", "0") as sim:
            transport = Transport(kind, broker)
            a = start_hub(tmp_path, pg_url, *quick, transport=transport)
            b = start_hub(tmp_path, pg_url, *quick, transport=transport)
            agents = [start_agent(tmp_path, sim, c, a.agent_url, create_token(tmp_path, pg_url, c), *FAST) for c in ("c1", "c2", "c3", "c4")]
            try:
                wait_converged(sim, a, timeout=60, what="initial sync through two replicas on one broker")
                connected = hub_events(a, reason="Connected")
                assert sorted(e["cluster"] for e in connected) == ["c1", "c2", "c3", "c4"], "one replica answered each agent, once"
                assert not hub_events(a, reason="Rejected")
                serving = {c: holder_hub(a, c) for c in ("c1", "c2", "c3", "c4")}
                victim = a if list(serving.values()).count(a.hub_id) else b
                survivor = b if victim is a else a
                sim.set_churn(10)
                victim.proc.stop(signal.SIGKILL)
                # silence (4 heartbeats) + a lease TTL, then the survivor tells the agents whose Hello
                # the dead replica had taken to connect again: well before their 30 s Hello timeout
                wait_until(lambda: all(holder_hub(survivor, c) == survivor.hub_id for c in serving), timeout=25, what="the dead replica's clusters taken over")
                sim.set_churn(0)
                wait_converged(sim, survivor, timeout=60, what="convergence through the surviving replica")
            finally:
                for agent in agents:
                    agent.stop()
                a.proc.stop()
                b.proc.stop()
    finally:
        broker.stop()


def test_a_work_written_through_one_replica_reaches_an_agent_on_another_and_its_status_is_read_from_both(tmp_path: Path, pg_url: str) -> None:
    with run_sim(tmp_path, "--clusters", "2", "--pods", "5", "--churn", "0") as sim:
        a = start_hub(tmp_path, pg_url)
        b = start_hub(tmp_path, pg_url)
        agents = [start_agent(tmp_path, sim, c, b.grpc_url, create_token(tmp_path, pg_url, c), "--types", "v1/Service") for c in ("c1", "c2")]
        try:
            wait_until(lambda: holder_hub(a, "c1") == b.hub_id and holder_hub(a, "c2") == b.hub_id, timeout=30, what="both agents on B")
            manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "via-a", "namespace": "default"}, "data": {"k": "v"}}
            work = {"metadata": {"name": "via-a"}, "spec": {"placement": {"clusters": ["c2"]}, "manifests": [manifest]}}
            assert http("PUT", f"{a.url}/api/v1/works/via-a", work)[0] == 201
            wait_until(lambda: http("GET", f"{b.url}/api/v1/works/via-a")[1]["status"]["available"] == 1, timeout=20, what="c2 to apply A's work")
            assert http("GET", f"{a.url}/api/v1/works/via-a")[1]["status"]["clusters"][0]["cluster"] == "c2"
            assert sim.truth("c2", "v1/ConfigMap") and any(o["metadata"]["name"] == "via-a" for o in sim.truth("c2", "v1/ConfigMap"))
            assert not any(o["metadata"]["name"] == "via-a" for o in sim.truth("c1", "v1/ConfigMap"))
            assert http("DELETE", f"{a.url}/api/v1/works/via-a")[0] == 200
            wait_until(lambda: not any(o["metadata"]["name"] == "via-a" for o in sim.truth("c2", "v1/ConfigMap")), timeout=20, what="c2 to remove it")

            # a cluster labelled by an admin through A: B's session of it is told at once (no reconnect) and places by it
            gold = {
                "metadata": {"name": "by-label"},
                "spec": {"placement": {"clusterSelector": "tier=gold"}, "manifests": [{**manifest, "metadata": {"name": "by-label", "namespace": "default"}}]},
            }
            assert http("PUT", f"{a.url}/api/v1/works/by-label", gold)[0] == 201
            has = lambda: any(o["metadata"]["name"] == "by-label" for o in sim.truth("c1", "v1/ConfigMap"))  # noqa: E731
            label_cluster(a.url, "c1", tier="gold")
            wait_until(has, timeout=20, what="c1, labelled through A, to apply the work it now selects through B")
            label_cluster(a.url, "c1", tier=None)
            wait_until(lambda: not has(), timeout=20, what="c1, unlabelled, to remove it")
            assert len(hub_events(a, cluster="c1", reason="Connected")) == 1, "relabelling needs no reconnect"
        finally:
            for agent in agents:
                agent.stop()
            a.proc.stop()
            b.proc.stop()


def test_a_second_hub_on_a_taken_port_exits_saying_so_instead_of_sharing_it(tmp_path: Path) -> None:
    """gRPC servers share a port by default (SO_REUSEPORT): two hubs would silently split the agents."""
    first = start_hub(tmp_path, f"sqlite:///{tmp_path / 'a.db'}")
    try:
        for flag, taken, free in (("--grpc", first.grpc_port, "--http"), ("--http", first.http_port, "--grpc")):
            argv = ["hub", "--db", f"sqlite:///{tmp_path / 'b.db'}", flag, f"127.0.0.1:{taken}", free, f"127.0.0.1:{free_port()}"]
            second = fleetsync(*argv, "--admin-token-file", str(tmp_path / "api.token"), timeout=30)
            assert second.returncode == 1 and f"cannot listen on 127.0.0.1:{taken}" in second.stderr, (flag, second.stderr)
    finally:
        first.proc.stop()
