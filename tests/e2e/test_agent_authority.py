"""An agent token is trusted for its own cluster only (issue 18, items 2-4, and seed 004's join):
placement uses the labels an admin set, gate writes need a grant and cannot undo a later write,
status rows are written only for the cluster's own works, and a new cluster takes the fleet's gates."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fleetsync.protocol import fleetsync_pb2 as pb
from tests.harness import AgentFleet, Hub, Sim, create_token, fleetsync, http, hub_events, start_hub, wait_until

FAST = ("--types", "v1/Service")
WORKS = "/api/v1/works"


def local(path: Path) -> dict[str, object]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def set_locally(path: Path, *assignments: str) -> None:
    result = fleetsync("agent", "config", "set", *assignments, "--local-config", str(path))
    assert result.returncode == 0, result.stderr


def gate(hub: Hub, key: str) -> dict[str, Any] | None:
    status, body = http("GET", f"{hub.url}/1.0/feature-gates/{key}")
    return dict(body["metadata"]) if status == 200 else None


def config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"k": name}}


def work(name: str, *, selector: str = "", clusters: tuple[str, ...] = ()) -> dict[str, Any]:
    placement: dict[str, Any] = {"clusterSelector": selector} if selector else {}
    if clusters:
        placement["clusters"] = list(clusters)
    return {"apiVersion": "fleetsync.io/v1", "kind": "Work", "metadata": {"name": name}, "spec": {"placement": placement, "manifests": [config_map(name)]}}


class RawAgent:
    """Speaks the protocol by hand over gRPC: what a hostile agent (or a real one, at a chosen moment) sends."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        connect = self.channel.stream_stream("/fleetsync.v1.FleetSync/Connect", request_serializer=None, response_deserializer=pb.HubMessage.FromString)
        self.call = connect()

    async def hello(self, cluster: str, token: str) -> None:
        hello = pb.Hello(cluster_id=cluster, agent_id=f"raw-{cluster}", incarnation="raw-1", token=token, protocol_version=1, capabilities=["works"])
        await self.send(pb.AgentMessage(hello=hello))
        assert (await self.receive()).HasField("welcome")

    async def send(self, message: pb.AgentMessage) -> None:
        await self.call.write(message.SerializeToString())

    async def receive(self) -> pb.HubMessage:
        message = await asyncio.wait_for(self.call.read(), 10)
        assert isinstance(message, pb.HubMessage), message
        return message

    async def gates(self) -> dict[str, Any]:
        """The next gate snapshot (works snapshots and the rest skipped)."""
        while True:
            message = await self.receive()
            if message.WhichOneof("message") == "spec_update" and message.spec_update.gates_json:
                return dict(json.loads(message.spec_update.gates_json))

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


class Fleet(AgentFleet):
    """Agents that claim ``env=prod`` in their Hello, whatever an admin says of their clusters."""

    def agent_args(self, cluster: str) -> tuple[str, ...]:
        return (*FAST, "--label", "env=prod")

    def configmaps(self, cluster: str) -> set[str]:
        listed = json.loads(self.sim.kubectl(cluster, "get", "configmaps", "-n", "default", "-l", "fleetsync.io/work", "-o", "json").stdout)
        return {o["metadata"]["name"] for o in listed["items"]}


@pytest.fixture
def fleet(quiet_sim: Sim, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(quiet_sim, start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}"), tmp_path, ("c1", "c2"))
    try:
        yield fleet
    finally:
        fleet.stop()


def test_placement_uses_the_labels_an_admin_set_never_what_an_agent_claims(fleet: Fleet) -> None:
    hub = fleet.hub
    label = lambda *changes: fleetsync("clusters", "label", *changes, "--hub", hub.url)  # noqa: E731
    assert label("c1", "env=dev", "team=a").stdout.strip() == "c1: env=dev,team=a"
    assert label("c2", "env=prod").returncode == 0
    for bad, snippet in ((("c1", "env"), "expected KEY=VALUE"), (("c1", "fleetsync.io/cluster=c2"), "cannot be set"), (("c1", "env=a b"), "value")):
        refused = label(*bad)
        assert refused.returncode == 2 and snippet in refused.stderr, refused.stderr
    for body in ({"labels": {"env": 1}}, {"labels": []}, {"colour": "red"}):
        assert http("PATCH", f"{hub.url}/api/v1/clusters/c1/labels", body)[0] == 422
    reader = create_token(fleet.tmp, hub.db, "viewer", "read").read_text().strip()
    assert http("PATCH", f"{hub.url}/api/v1/clusters/c1/labels", {"labels": {"env": "prod"}}, headers={"Authorization": f"Bearer {reader}"})[0] == 403

    # every agent claims env=prod in its Hello: only c2, which an admin labelled prod, gets the prod work
    assert http("POST", f"{hub.url}{WORKS}", work("prod-secret", selector="env=prod"))[0] == 201
    assert http("POST", f"{hub.url}{WORKS}", work("dev-config", selector="env=dev"))[0] == 201
    fleet.start_all()
    wait_until(lambda: fleet.configmaps("c1") == {"dev-config"} and fleet.configmaps("c2") == {"prod-secret"}, timeout=30, what="each cluster's works")
    clusters = {c["name"]: c for c in http("GET", f"{hub.url}/api/v1/clusters")[1]["items"]}
    assert clusters["c1"]["labels"] == {"env": "dev", "team": "a"} and clusters["c1"]["metadata"]["env"] == "prod", "what it claims is shown as reported"
    shown = fleetsync("clusters", "labels", "c1", "--hub", hub.url).stdout
    assert "env=dev,team=a" in shown and "env=prod" in shown, shown
    listed = http("GET", f"{hub.url}/api/v1/services?clusterSelector=env%3Dprod")[1]["items"]
    assert {s["metadata"]["labels"]["fleetsync.io/cluster"] for s in listed} == {"c2"}, "clusterSelector matches the admin's labels too"

    # an admin relabels c1: its connected agent gets the prod work at once and removes the dev one
    assert label("c1", "env=prod").returncode == 0
    wait_until(lambda: fleet.configmaps("c1") == {"prod-secret"}, timeout=20, what="c1 relabelled prod: the prod work, not the dev one")
    assert label("c1", "env-", "team-").stdout.strip() == "c1: -"
    wait_until(lambda: fleet.configmaps("c1") == set(), timeout=20, what="c1 unlabelled: no work")
    assert fleet.configmaps("c2") == {"prod-secret"}


def test_a_status_for_works_that_are_not_the_clusters_writes_nothing_and_makes_one_event(fleet: Fleet) -> None:
    hub = fleet.hub
    fleet.start("c2")
    assert http("POST", f"{hub.url}{WORKS}", work("mine", clusters=("c9",)))[0] == 201
    assert http("POST", f"{hub.url}{WORKS}", work("theirs", clusters=("c2",)))[0] == 201
    wait_until(lambda: http("GET", f"{hub.url}{WORKS}/theirs")[1]["status"]["applied"] == 1, timeout=20, what="c2 to apply its work")
    token = create_token(fleet.tmp, hub.db, "c9").read_text().strip()

    def manifest(name: str) -> pb.ManifestStatus:
        return pb.ManifestStatus(work=name, generation=1, manifest=f"v1/ConfigMap/default/{name}", condition="Available", message="forged")

    async def scenario() -> None:
        raw = RawAgent(hub.grpc_port)
        await raw.hello("c9", token)
        foreign = [manifest("theirs"), *(manifest(f"made-up-{i}") for i in range(300))]
        await raw.send(pb.AgentMessage(status=pb.Status(manifests=[manifest("mine"), *foreign], removed=["theirs"])))
        await raw.send(pb.AgentMessage(heartbeat=pb.Heartbeat()))  # answered once the status before it is handled
        while not (await raw.receive()).HasField("heartbeat"):
            pass
        await raw.close()

    asyncio.run(scenario())
    refused = hub_events(hub, cluster="c9", reason="WorkStatusRefused")
    assert len(refused) == 1, refused
    assert "301 works" in refused[0]["message"] and "and 296 more" in refused[0]["message"] and len(refused[0]["message"]) < 1000, refused
    theirs = http("GET", f"{hub.url}{WORKS}/theirs")[1]["status"]
    assert [c["cluster"] for c in theirs["clusters"]] == ["c2"] and theirs["applied"] == 1, "c9 wrote nothing of c2's work, nor removed it"
    mine = http("GET", f"{hub.url}{WORKS}/mine")[1]["status"]
    assert [c["cluster"] for c in mine["clusters"]] == ["c9"], "the rest of the message is taken: c9's own work"


class GateFleet(AgentFleet):
    def __init__(self, sim: Sim, hub: Hub, tmp: Path, grants: tuple[str, ...]) -> None:
        self.grants = grants
        super().__init__(sim, hub, tmp, ("c1", "c2"))
        self.files = {c: tmp / f"{c}-local.json" for c in self.clusters}

    def agent_args(self, cluster: str) -> tuple[str, ...]:
        return (*FAST, "--local-config", str(self.files[cluster]))


def test_a_local_gate_change_without_the_gates_grant_changes_no_gate(quiet_sim: Sim, tmp_path: Path) -> None:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    fleet = GateFleet(quiet_sim, hub, tmp_path, grants=())
    try:
        assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.fleet", {"enabled": False})[0] == 200
        fleet.start("c1")
        wait_until(lambda: local(fleet.files["c1"]).get("feature.fleet") is False, timeout=20, what="the fleet's gate in c1's local config")
        revision = max(g["revision"] for g in http("GET", f"{hub.url}/1.0/feature-gates")[1]["metadata"])
        set_locally(fleet.files["c1"], "feature.fleet=true", "feature.mine=true")
        wait_until(lambda: hub_events(hub, cluster="c1", reason="GateRefused"), timeout=20, what="the refusal")
        wait_until(lambda: local(fleet.files["c1"]).get("feature.fleet") is False, timeout=20, what="the fleet's value back in c1's local config")
        assert gate(hub, "feature.fleet") == {**(gate(hub, "feature.fleet") or {}), "enabled": False, "revision": revision}
        assert gate(hub, "feature.mine") is None
        assert max(g["revision"] for g in http("GET", f"{hub.url}/1.0/feature-gates")[1]["metadata"]) == revision, "nothing written"
        refused = hub_events(hub, cluster="c1", reason="GateRefused")
        assert len(refused) == 1 and "--grant gates" in refused[0]["message"], refused
        wait_until(lambda: "the hub refused this cluster's gate change" in fleet.agents["c1"].output(), timeout=10, what="the agent saying so")
        listed = fleetsync("token", "list", "--db", hub.db).stdout
        assert any(line.split()[:2] == ["c1", "agent"] and line.split()[-1] == "-" for line in listed.splitlines()), listed
    finally:
        fleet.stop()
        hub.proc.stop()


def test_a_stale_resend_of_a_gate_change_does_not_undo_an_admins_later_write(quiet_sim: Sim, tmp_path: Path) -> None:
    """The issue's scenario: an agent's change commits on the hub, the connection drops before the
    confirming snapshot arrives, an admin writes the same gate, the agent reconnects and resends."""
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    token = create_token(tmp_path, hub.db, "c1", grants=("gates",)).read_text().strip()
    try:
        assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.x", {"enabled": False})[0] == 200

        async def scenario() -> None:
            raw = RawAgent(hub.grpc_port)
            await raw.hello("c1", token)
            synced_at = max(g["revision"] for g in (await raw.gates())["gates"])
            change = pb.LocalChange(key="feature.x", value="true", changed_at_ms=1_000, base_revision=synced_at)
            await raw.send(pb.AgentMessage(local_change=change))
            wait_until(lambda: (gate(hub, "feature.x") or {}).get("updated-by") == "agent c1", timeout=10, what="the agent's change committed")
            await raw.close()  # before the confirming snapshot is read
            wait_until(lambda: not any(c["connected"] for c in http("GET", f"{hub.url}/api/v1/clusters")[1]["items"]), timeout=10, what="c1 gone")
            assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.x", {"enabled": False})[0] == 200  # the admin's later write
            raw = RawAgent(hub.grpc_port)
            await raw.hello("c1", token)
            await raw.gates()
            await raw.send(pb.AgentMessage(local_change=change))  # the resend, as an agent does after a reconnect
            answer = await raw.gates()
            assert answer["applied_local_ms"] >= 1_000, "the agent is told its change is reflected: it stops resending and takes the snapshot"
            assert {g["gate-key"]: g["enabled"] for g in answer["gates"]} == {"feature.x": False}
            # a later change of its own, based on what it now has, is taken
            now_at = max(g["revision"] for g in answer["gates"])
            await raw.send(pb.AgentMessage(local_change=pb.LocalChange(key="feature.x", value="true", changed_at_ms=2_000, base_revision=now_at)))
            wait_until(lambda: (gate(hub, "feature.x") or {}).get("enabled") is True, timeout=10, what="a change based on the current revision")
            await raw.close()

        asyncio.run(scenario())
    finally:
        hub.proc.stop()


def test_a_cluster_connecting_for_the_first_time_takes_the_fleets_gates_unless_it_bootstraps(quiet_sim: Sim, tmp_path: Path) -> None:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    fleet = GateFleet(quiet_sim, hub, tmp_path, grants=("gates",))
    try:
        assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.shared", {"enabled": True})[0] == 200
        set_locally(fleet.files["c1"], "feature.shared=false", "feature.mine=true")  # a new cluster's own defaults
        fleet.start("c1")  # no --join: the hub knows c1 never had the fleet's gates
        wait_until(lambda: local(fleet.files["c1"]).get("feature.shared") is True, timeout=20, what="the fleet's value in the new cluster")
        wait_until(lambda: "join phase over" in fleet.agents["c1"].output(), timeout=20, what="the join phase over")
        assert (gate(hub, "feature.shared") or {}).get("enabled") is True and gate(hub, "feature.mine") is None, "nothing pushed while joining"
        # joined: its later changes go up, and a restart is no new join (a change made while down goes up)
        set_locally(fleet.files["c1"], "feature.after=true")
        wait_until(lambda: (gate(hub, "feature.after") or {}).get("updated-by") == "agent c1", timeout=20, what="a change after joining")
        fleet.agents["c1"].stop()
        set_locally(fleet.files["c1"], "feature.while-down=true")
        fleet.start("c1")
        wait_until(lambda: (gate(hub, "feature.while-down") or {}).get("updated-by") == "agent c1", timeout=20, what="the change made while down")

        # the bootstrap cluster's local gates go up the first time too
        set_locally(fleet.files["c2"], "feature.boot=true")
        fleet.start("c2", "--bootstrap")
        wait_until(lambda: (gate(hub, "feature.boot") or {}).get("updated-by") == "agent c2", timeout=20, what="the bootstrap's gate on the hub")
        both = fleetsync("agent", "--join", "--bootstrap", "--cluster-id", "c3", "--hub", hub.grpc_url, "--token-file", str(fleet.tokens["c1"]))
        assert both.returncode != 0 and "exclude each other" in both.stderr, both.stderr
    finally:
        fleet.stop()
        hub.proc.stop()
