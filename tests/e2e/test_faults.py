"""Nothing lost, ever: real processes under crashes, partitions, message faults and bad input.

Each test ends with ``fleetsync check`` reporting 0 divergence between the simulated
clusters and the hub.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.testing.proxy import PartitionProxy
from tests.harness import (
    Hub,
    Sim,
    Transport,
    create_token,
    fleetsync,
    free_port,
    http,
    hub_events,
    hub_kubectl,
    hub_objects,
    metric,
    run_sim,
    start_agent,
    start_hub,
    wait_converged,
    wait_until,
)

FAST = ("--types", "v1/Service,discovery.k8s.io/v1/EndpointSlice,v1/Pod,networking.istio.io/v1/VirtualService")


def restart_hub(tmp: Path, hub: Hub, *extra: str) -> None:
    hub.proc.stop(signal.SIGKILL)
    hub.proc = start_hub(tmp, hub.db, *extra, grpc_port=hub.grpc_port, http_port=hub.http_port, transport=hub.transport, tls=hub.tls).proc


def sim_objects(sim: Sim, cluster: str) -> int:
    (found,) = [c for c in http("GET", f"{sim.url}/clusters")[1]["clusters"] if c["name"] == cluster]
    return int(sum(found["objects"].values()))


# ---- crashes in the middle of a large FULL ---------------------------------------------------


@pytest.fixture(scope="module")
def big_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One cluster of just over 50,000 objects (all types)."""
    with run_sim(tmp_path_factory.mktemp("big"), "--clusters", "1", "--pods", "20300", "--churn", "0", startup_timeout=120) as sim:
        yield sim


def test_kill_9_of_agent_then_hub_in_the_middle_of_a_50k_object_full_sync_converges(big_sim: Sim, tmp_path: Path, transport: Transport) -> None:
    sim = big_sim
    total = sim_objects(sim, "c1")
    assert total >= 50_000
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, transport=transport)
    token = create_token(tmp_path, db, "c1")
    agent = start_agent(tmp_path, sim, "c1", hub.agent_url, token, "--types", "all", "--agent-id", "agent-c1")
    try:
        sim.set_churn(2)
        # the agent dies a few thousand objects into its FULL, and comes back as a new incarnation
        wait_until(lambda: 3_000 < hub_objects(hub, "c1") < total // 2, timeout=120, interval=0.1, what="the agent's FULL under way")
        agent.stop(signal.SIGKILL)
        agent = start_agent(tmp_path, sim, "c1", hub.agent_url, token, "--types", "all", "--agent-id", "agent-c1")
        wait_until(lambda: len({e["message"].split()[3] for e in hub_events(hub, reason="Connected")}) == 2, timeout=60, what="the new incarnation")
        # then the hub dies in the middle of that incarnation's FULL
        marked = hub_objects(hub, "c1")
        wait_until(lambda: hub_objects(hub, "c1") > marked + 3_000 or hub_objects(hub, "c1") >= total, timeout=120, interval=0.1, what="progress")
        assert hub_objects(hub, "c1") < total, "the FULL should still be under way when the hub dies"
        restart_hub(tmp_path, hub)
        wait_until(lambda: len(hub_events(hub, reason="Connected")) == 3, timeout=60, what="the agent back on the restarted hub")
        sim.set_churn(0)
        wait_converged(sim, hub, types="all", timeout=240, interval=2, what="convergence after both crashes")
        connected = hub_events(hub, reason="Connected")
        assert connected[1]["message"].split()[3] != connected[0]["message"].split()[3], "the restarted agent is a new incarnation"
        assert connected[2]["message"].split()[3] == connected[1]["message"].split()[3], "after the hub restart the same agent reconnects"
    finally:
        agent.stop()
        hub.proc.stop()


# ---- message faults ---------------------------------------------------------------------------


def test_dropped_duplicated_delayed_and_reordered_messages_heal_to_zero_divergence(tmp_path: Path, transport: Transport) -> None:
    with run_sim(tmp_path, "--clusters", "3", "--pods", "120", "--churn", "0") as sim:
        db = f"sqlite:///{tmp_path / 'hub.db'}"
        hub = start_hub(tmp_path, db, transport=transport)
        agents = [
            start_agent(
                tmp_path,
                sim,
                c,
                hub.agent_url,
                create_token(tmp_path, db, c),
                "--ack-timeout",
                "1",
                "--inject-faults",
                f"drop=0.1,duplicate=0.1,reorder=0.1,delay=0.2,after=3,for=15,seed={i}",
                *FAST,
            )
            for i, c in enumerate(("c1", "c2", "c3"))
        ]
        try:
            sim.set_churn(10)
            time.sleep(3)  # let faults build up under churn; the healing below is awaited with a deadline
            wait_until(lambda: all("injecting faults" in a.output() for a in agents), timeout=30, what="faults injected")
            wait_until(lambda: hub_events(hub, reason="GapDetected"), timeout=30, what="a gap caused by a lost or reordered bundle")
            time.sleep(12)  # the rest of the fault window, with churn going on
            sim.set_churn(0)
            started = time.monotonic()
            wait_converged(sim, hub, timeout=60, what="convergence after the faults stopped")
            print(f"converged {time.monotonic() - started:.1f}s after churn and faults stopped")
            assert metric(f"{hub.url}/metrics", "fleetsync_resync_requests_total", reason="gap") > 0
        finally:
            for a in agents:
                a.stop()
            hub.proc.stop()


# ---- a network partition --------------------------------------------------------------------------


def test_connection_cut_while_churn_continues_resumes_without_a_full(tmp_path: Path, transport: Transport) -> None:
    # A minute over gRPC, as in the correctness issue; the brokers' runs cut for a third of that:
    # past the inactivity timeout and several ack timeouts as well, which is what their sessions
    # see, and the suite must stay within CI's 15 minutes.
    cut_for = 60.0 if transport.name == "grpc" else 20.0
    with run_sim(tmp_path, "--clusters", "3", "--pods", "120", "--churn", "0") as sim:
        db = f"sqlite:///{tmp_path / 'hub.db'}"
        hub = start_hub(tmp_path, db, transport=transport)
        with PartitionProxy(hub.agent_address) as proxy:
            ports = {c: free_port() for c in ("c1", "c2", "c3")}
            agents = {
                c: start_agent(tmp_path, sim, c, hub.agent_url_via(proxy.port), create_token(tmp_path, db, c), "--metrics", f"127.0.0.1:{ports[c]}", *FAST)
                for c in ports
            }

            def sent(kind: str) -> float:
                return sum(metric(f"http://127.0.0.1:{p}/metrics", "fleetsync_agent_bytes_sent_total", kind=kind) for p in ports.values())

            try:
                wait_converged(sim, hub, timeout=60, what="initial sync")
                full_bytes = sent("full")
                sim.set_churn(5)
                proxy.partition()
                cut = time.monotonic()
                wait_until(lambda: len(hub_events(hub, reason="Inactive")) == 3, timeout=60, interval=0.5, what="every cluster inactive after T")
                stale = http("GET", f"{hub.url}/api/v1/clusters")[1]["items"]
                assert all(c["stale"] for c in stale)
                time.sleep(max(0.0, cut_for - (time.monotonic() - cut)))  # the partition lasts, churn going on
                proxy.heal()
                restored = time.monotonic()
                sim.set_churn(0)
                wait_converged(sim, hub, timeout=60, what="convergence after the partition healed")
                took = time.monotonic() - restored
                print(f"0 divergence {took:.1f}s after the partition healed")
                assert sent("full") == full_bytes, "a reconnect must resume or repair, never send a FULL again"
                assert len(hub_events(hub, reason="Active")) == 3
                assert all(c["status"] == "active" for c in http("GET", f"{hub.url}/api/v1/clusters")[1]["items"])
            finally:
                for a in agents.values():
                    a.stop()
                hub.proc.stop()


# ---- two agents, one cluster ---------------------------------------------------------------------


def test_two_agents_race_for_a_cluster_the_loser_backs_off_and_takes_over_after_the_grace_period(sim: Sim, tmp_path: Path, transport: Transport) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    grace = 8  # long enough for a newcomer to start and connect within it on a loaded machine
    hub = start_hub(tmp_path, db, "--grace-period", str(grace), "--heartbeat-interval", "1", "--inactivity-timeout", "5", transport=transport)
    token = create_token(tmp_path, db, "c1")
    racers = {name: start_agent(tmp_path, sim, "c1", hub.agent_url, token, "--agent-id", name, *FAST) for name in ("racer-a", "racer-b")}
    third = None
    try:
        (connected,) = wait_until(lambda: hub_events(hub, reason="Connected"), timeout=30, what="a winner")
        winner = connected["message"].split()[1]
        (loser,) = set(racers) - {winner}
        wait_until(lambda: "ALREADY_CONNECTED" in racers[loser].output() and winner in racers[loser].output(), timeout=30, what="the loser rejected")
        time.sleep(6)  # how politely does the loser retry? (backoff with jitter, not a tight loop)
        attempts = racers[loser].output().count("rejected cluster c1")
        assert 1 <= attempts <= 8, f"the loser retried {attempts} times in ~6s"
        racers[winner].stop(signal.SIGKILL)
        (gone,) = wait_until(lambda: hub_events(hub, reason="Disconnected"), timeout=30, what="the winner's disconnect")
        third = start_agent(tmp_path, sim, "c1", hub.agent_url, token, "--agent-id", "latecomer", *FAST)
        wait_until(lambda: "GRACE_PERIOD" in third.output() and "s more" in third.output(), timeout=30, what="a newcomer told the remaining grace")
        third.stop()
        taken = wait_until(lambda: [e for e in hub_events(hub, reason="Connected") if loser in e["message"]], timeout=30, what="the loser takes over")
        assert taken[0]["time"] >= gone["time"] + grace - 0.1, "the cluster was taken before the grace period ended"
        wait_converged(sim, hub, "c1", timeout=30, what="convergence under the new agent")
    finally:
        for racer in racers.values():
            racer.stop()
        if third:
            third.stop()
        hub.proc.stop()


# ---- bad input -----------------------------------------------------------------------------------


class RawAgent:
    """Speaks the protocol by hand over gRPC (to send what a well-behaved agent never would)."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
        connect = self.channel.stream_stream("/fleetsync.v1.FleetSync/Connect", request_serializer=None, response_deserializer=pb.HubMessage.FromString)
        self.call = connect()

    async def send(self, message: pb.AgentMessage | bytes) -> None:
        await self.call.write(message if isinstance(message, bytes) else message.SerializeToString())

    async def receive(self) -> Any:
        """The hub's next message, past gate snapshots (which every session gets; not what these tests look at)."""
        while True:
            message = await asyncio.wait_for(self.call.read(), 10)
            if not isinstance(message, pb.HubMessage) or message.WhichOneof("message") != "spec_update":
                return message

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


def pods(*names: str) -> list[pb.Object]:
    return [codec.make_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n, "namespace": "default"}}) for n in names]


def test_bad_messages_get_clear_errors_and_nothing_else_is_lost(sim: Sim, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, "--max-message-bytes", "65536")
    agents = [start_agent(tmp_path, sim, c, hub.agent_url, create_token(tmp_path, db, c), *FAST) for c in ("c1", "c2", "c3")]
    token = create_token(tmp_path, db, "c9", "agent")
    scoped_token = fleetsync("token", "create", "c8", "--types", "pods", "--db", db).stdout.strip()  # kubectl names resolve
    sim.set_churn(5)

    def hello(cluster: str, secret: str) -> pb.AgentMessage:
        return pb.AgentMessage(hello=pb.Hello(cluster_id=cluster, agent_id=f"raw-{cluster}", incarnation="raw-1", token=secret, protocol_version=1))

    def full(type_: str, objects: list[pb.Object], seq: int = 1) -> pb.AgentMessage:
        return pb.AgentMessage(
            bundle=pb.Bundle(
                type=type_, incarnation="raw-1", seq=seq, base_seq=seq - 1, kind=pb.FULL, last=True, upserts=objects, compression=pb.COMPRESSION_LZ4
            )
        )

    async def scenario() -> None:
        # bytes that are no protocol message: a clear PROTOCOL rejection, then the stream ends
        raw = RawAgent(hub.grpc_port)
        await raw.send(b"\xff\xfe this is not protobuf")
        answer = await raw.receive()
        assert answer.reject.reason == pb.PROTOCOL and "not a valid AgentMessage" in answer.reject.message, answer
        assert await raw.receive() is grpc.aio.EOF
        await raw.close()

        # a token scoped to pods: another type is refused, the session goes on
        raw = RawAgent(hub.grpc_port)
        await raw.send(hello("c8", scoped_token))
        assert (await raw.receive()).HasField("welcome")
        await raw.send(full("v1/Service", []))
        answer = await raw.receive()
        assert (answer.reject.reason, answer.reject.type) == (pb.PERMISSION_DENIED, "v1/Service") and "may write only v1/Pod" in answer.reject.message
        await raw.send(full("v1/Pod", pods("p1", "p2")))
        answer = await raw.receive()
        assert (answer.ack.type, answer.ack.seq, answer.ack.partial) == ("v1/Pod", 1, False), answer
        # a type the hub does not know (or a name crafted to look like a path)
        await raw.send(full("v1/Pod/../../c1", pods("evil")))
        answer = await raw.receive()
        assert answer.reject.reason == pb.PROTOCOL and answer.reject.type == "v1/Pod/../../c1" and "not a resource type" in answer.reject.message
        # a malformed bundle
        bad = full("v1/Pod", [pb.Object(namespace="default", name="")], seq=2)
        await raw.send(bad)
        answer = await raw.receive()
        assert answer.reject.reason == pb.PROTOCOL and "has no name" in answer.reject.message
        # a future seq: a gap, answered with a resync request for that type
        future = pb.AgentMessage(bundle=pb.Bundle(type="v1/Pod", incarnation="raw-1", seq=1000, base_seq=999, kind=pb.DELTA, upserts=pods("p3")))
        await raw.send(future)
        answer = await raw.receive()
        assert answer.resync.type == "v1/Pod" and "gap" in answer.resync.reason
        # over the hub's max message size (but under what gRPC itself refuses): the session ends, clearly
        await raw.send(full("v1/Pod", [pb.Object(namespace="default", name="big", body=b"x" * 100_000)], seq=3))
        answer = await raw.receive()
        assert answer.reject.reason == pb.PROTOCOL and "exceeds the hub's max message size of 65536 bytes" in answer.reject.message
        await raw.close()

        # far over the limit: gRPC refuses it before the hub reads it
        raw = RawAgent(hub.grpc_port)
        await raw.send(hello("c9", token.read_text().strip()))
        assert (await raw.receive()).HasField("welcome")
        await raw.send(full("v1/Pod", [pb.Object(namespace="default", name="huge", body=b"x" * 200_000)]))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw.receive()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await raw.close()

    try:
        asyncio.run(scenario())
        # only what was acked is held for c8: the two pods, nothing from the refused or malformed bundles
        listed = http("GET", f"{hub.url}/clusters/c8/api/v1/pods")[1]["items"]
        assert [pod["metadata"]["name"] for pod in listed] == ["p1", "p2"]
        assert http("GET", f"{hub.url}/clusters/c8/api/v1/services")[1]["items"] == []
        reasons = {e["reason"] for e in hub_events(hub, cluster="c8")}
        assert {"Connected", "TypeRefused", "GapDetected", "Rejected"} <= reasons, reasons
        # and the real agents never noticed
        sim.set_churn(0)
        wait_converged(sim, hub, timeout=30, what="the well-behaved clusters converged")
        assert "Traceback" not in hub.proc.output()
    finally:
        for a in agents:
            a.stop()
        hub.proc.stop()


# ---- anti-entropy, liveness, chunking -----------------------------------------------------------------


def test_digests_repair_what_the_hub_lost_and_a_silent_cluster_goes_stale_then_resyncs(sim: Sim, tmp_path: Path, transport: Transport) -> None:
    db_path = tmp_path / "hub.db"
    db = f"sqlite:///{db_path}"
    # small messages (every FULL is chunked; the hub refuses anything larger), fast liveness,
    # and periodic digests for Services only
    hub = start_hub(
        tmp_path,
        db,
        "--max-message-bytes",
        "16384",
        "--inactivity-timeout",
        "3",
        "--heartbeat-interval",
        "1",
        "--digest-interval",
        "0,v1/Service=1",
        transport=transport,
        tls=True,  # kubectl reads it below (kubectl sends its token over HTTPS only)
    )
    agent = start_agent(tmp_path, sim, "c1", hub.agent_url, create_token(tmp_path, db, "c1"), "--types", "v1/Service,v1/Pod")
    try:
        wait_until(lambda: hub_objects(hub, "c1") == len(sim.truth("c1", "v1/Pod")) + len(sim.truth("c1", "v1/Service")), timeout=30, what="initial sync")
        assert metric(f"{hub.url}/metrics", "fleetsync_agents_rejected_total") == 0
        # the hub loses a pod and a service behind its back (think: restored from an old backup)
        with sqlite3.connect(db_path, timeout=10) as raw:
            raw.execute("DELETE FROM objects WHERE rowid IN (SELECT rowid FROM objects WHERE cluster = 'c1' AND type = 'v1/Pod' LIMIT 1)")
            raw.execute("DELETE FROM objects WHERE rowid IN (SELECT rowid FROM objects WHERE cluster = 'c1' AND type = 'v1/Service' LIMIT 1)")
        # the periodic digest (Services, every second) repairs the service by itself
        wait_until(
            lambda: hub_objects(hub, "c1") == len(sim.truth("c1", "v1/Pod")) + len(sim.truth("c1", "v1/Service")) - 1, timeout=30, what="service repaired"
        )
        assert "1 missing" in " ".join(e["message"] for e in hub_events(hub, cluster="c1", reason="ResyncStarted"))
        # the pod only on demand
        result = fleetsync("resync", "c1", "--type", "pods", "--hub", hub.url)
        assert result.returncode == 0 and "digest resync of v1/Pod requested" in result.stdout, result.stderr
        wait_converged(sim, hub, "c1", timeout=30, what="the pod repaired on demand")
        assert [e["reason"] for e in hub_events(hub, cluster="c1", reason="ResyncRequested")] == ["ResyncRequested"]
        assert any(e["type"] == "v1/Pod" for e in hub_events(hub, cluster="c1", reason="ResyncFinished"))
        # bad requests are refused clearly
        assert 'cluster "nope" is not known to this hub' in fleetsync("resync", "nope", "--hub", hub.url).stderr
        assert "doesn't have a resource type" in fleetsync("resync", "c1", "--type", "gizmos", "--hub", hub.url).stderr

        # the agent hangs (its connection stays open): after T the cluster is inactive and reads say so
        agent.process.send_signal(signal.SIGSTOP)
        wait_until(lambda: hub_events(hub, cluster="c1", reason="Inactive"), timeout=30, what="the cluster inactive")
        assert "inactive (stale)" in fleetsync("clusters", "--hub", hub.url).stdout
        read = subprocess.run([*hub_kubectl(f"{hub.url}/clusters/c1"), "get", "pods", "-A"], capture_output=True, text=True, check=True)
        assert "cluster c1 is inactive" in read.stderr and read.stdout.count("\n") > 1, read.stderr
        # it wakes up: active again, and every type is checked by digest
        agent.process.send_signal(signal.SIGCONT)
        wait_until(lambda: hub_events(hub, cluster="c1", reason="Active"), timeout=30, what="the cluster active again")
        wait_until(
            lambda: "reactivated" in " ".join(e["message"] for e in hub_events(hub, cluster="c1", reason="ResyncStarted")),
            timeout=30,
            what="reactivation digest",
        )
        wait_converged(sim, hub, "c1", timeout=30, what="convergence after reactivation")
        assert metric(f"{hub.url}/metrics", "fleetsync_messages_refused_total") == 0, "no message exceeded the 16 KiB limit"
        shown = fleetsync("events", "--cluster", "c1", "--hub", hub.url).stdout
        for reason in ("Connected", "ResyncStarted", "ResyncFinished", "ResyncRequested", "Inactive", "Active"):
            assert reason in shown, (reason, shown)
    finally:
        agent.process.send_signal(signal.SIGCONT)
        agent.stop()
        hub.proc.stop()


# ---- the store fails under a running hub ------------------------------------------------------


def test_a_store_locked_past_its_busy_timeout_under_churn_loses_nothing(quiet_sim: Sim, tmp_path: Path) -> None:
    """Another process holds SQLite's write lock for longer than the hub's busy timeout and its
    store retry: the batches fail as unavailable and are retried, the sessions end, the agents
    reconnect and resend, and once the lock is gone every cluster converges."""
    db_path = tmp_path / "hub.db"
    db = f"sqlite:///{db_path}"
    hub = start_hub(tmp_path, db, "--db-busy-timeout", "0.5", "--store-retry", "2", "--heartbeat-interval", "1")
    clusters = ("c1", "c2")
    agents = [start_agent(tmp_path, quiet_sim, c, hub.agent_url, create_token(tmp_path, db, c), *FAST) for c in clusters]
    try:
        wait_converged(quiet_sim, hub, *clusters, timeout=60, what="initial sync")
        quiet_sim.set_churn(20)
        with sqlite3.connect(db_path, timeout=10, isolation_level=None) as raw:
            raw.execute("BEGIN IMMEDIATE")  # the write lock, as a backup tool or a second writer would hold it
            # the batches fail, are retried, and the sessions end (the engine gives up after
            # --store-retry, or the agent, unanswered, reconnects first)
            wait_until(lambda: metric(f"{hub.url}/metrics", "fleetsync_store_errors_total", kind="unavailable") >= 3, timeout=30, what="writes failing")
            wait_until(lambda: metric(f"{hub.url}/metrics", "fleetsync_connected_agents") < len(clusters), timeout=30, what="a session ended")
            raw.execute("ROLLBACK")
        wait_until(lambda: metric(f"{hub.url}/metrics", "fleetsync_connected_agents") == len(clusters), timeout=60, what="the agents back")
        quiet_sim.set_churn(0)
        wait_converged(quiet_sim, hub, *clusters, timeout=60, what="convergence after the lock")
        assert hub.proc.process.poll() is None
    finally:
        for agent in agents:
            agent.stop()
        hub.proc.stop()
