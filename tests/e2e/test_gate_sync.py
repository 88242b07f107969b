"""Feature gates between the hub and agents' local config (seed 004's testing checklist, first part):
pushes to every agent, the hook, unset, no echo loop, concurrent writes, restarts, maas and join."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetsync.testing.proxy import PartitionProxy
from tests.harness import AgentFleet, Hub, Sim, create_token, fleetsync, http, hub_events, start_agent, start_hub, wait_until

FAST = ("--types", "v1/Service")
CLUSTERS = ("c1", "c2", "c3")


def local(path: Path) -> dict[str, object]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def gate(hub: Hub, key: str) -> dict[str, object] | None:
    status, body = http("GET", f"{hub.url}/1.0/feature-gates/{key}")
    return body["metadata"] if status == 200 else None


def set_locally(path: Path, *assignments: str) -> None:
    result = fleetsync("agent", "config", "set", *assignments, "--local-config", str(path))
    assert result.returncode == 0, result.stderr


class Fleet(AgentFleet):
    grants = ("gates",)  # their local gate changes reach the fleet

    def __init__(self, sim: Sim, hub: Hub, tmp: Path) -> None:
        super().__init__(sim, hub, tmp, CLUSTERS)
        self.files = {c: tmp / f"{c}-local.json" for c in CLUSTERS}

    def agent_args(self, cluster: str) -> tuple[str, ...]:
        return (*FAST, "--local-config", str(self.files[cluster]))

    def everywhere(self, key: str, value: object, clusters: tuple[str, ...] = CLUSTERS) -> bool:
        return all(local(self.files[c]).get(key, None) == value for c in clusters)


@pytest.fixture
def fleet(quiet_sim: Sim, tmp_path: Path) -> Iterator[Fleet]:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    fleet = Fleet(quiet_sim, hub, tmp_path)
    try:
        yield fleet
    finally:
        fleet.stop()


def test_gates_reach_every_agent_and_local_changes_reach_the_fleet_without_echo(fleet: Fleet) -> None:
    hub = fleet.hub
    for cluster in CLUSTERS:
        fleet.start(cluster)
    # empty fleet: nothing happens, nothing fails
    wait_until(lambda: all("connected to hub" in a.output() for a in fleet.agents.values()), timeout=30, what="three agents connected")
    assert http("GET", f"{hub.url}/1.0/feature-gates")[1]["metadata"] == []

    # an API write reaches every agent's local config at once (pushed, not polled)
    assert http("POST", f"{hub.url}/1.0/feature-gates", {"gate-key": "feature.multi-region", "enabled": True})[0] == 201
    wait_until(lambda: fleet.everywhere("feature.multi-region", True), timeout=15, what="the gate in every local config")
    # and each agent tells the hub which gate revision it applied: every cluster shows it has the fleet's gates
    wait_until(
        lambda: all(c["gates"]["applied"] == c["gates"]["current"] == 1 for c in http("GET", f"{hub.url}/api/v1/clusters")[1]["items"]),
        timeout=15,
        what="every cluster reporting revision 1 applied",
    )

    # the hook: a local change on c1 goes to the hub (recorded as c1's), then to c2 and c3
    set_locally(fleet.files["c1"], "feature.storage.ceph=true")
    wait_until(lambda: fleet.everywhere("feature.storage.ceph", True), timeout=15, what="c1's change everywhere")
    ceph = gate(hub, "feature.storage.ceph")
    assert ceph is not None and ceph["updated-by"] == "agent c1", ceph

    # unset on c2 is unset on the hub and everywhere (the original never propagated it)
    assert fleetsync("agent", "config", "unset", "feature.multi-region", "--local-config", str(fleet.files["c2"])).returncode == 0
    wait_until(lambda: gate(hub, "feature.multi-region") is None, timeout=15, what="the unset on the hub")
    wait_until(lambda: fleet.everywhere("feature.multi-region", None), timeout=15, what="the unset everywhere")

    # rapid changes and many gates: the last value of each wins everywhere
    for value in ("false", "true", "false"):
        set_locally(fleet.files["c3"], f"feature.storage.ceph={value}")
    set_locally(fleet.files["c3"], *(f"feature.g{i}=true" for i in range(12)))
    wait_until(
        lambda: fleet.everywhere("feature.storage.ceph", False) and all(fleet.everywhere(f"feature.g{i}", True) for i in range(12)),
        timeout=20,
        what="12 gates and the last of the rapid changes everywhere",
    )

    # no echo loop: writing the hub's gates into the local configs produced no writes back. Each
    # gate has exactly the writes made on purpose, and a later change settles the same way.
    revision = max(g["revision"] for g in http("GET", f"{hub.url}/1.0/feature-gates")[1]["metadata"])
    assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.marker", {"enabled": True})[0] == 200
    wait_until(lambda: fleet.everywhere("feature.marker", True), timeout=15, what="the marker everywhere")
    gates = http("GET", f"{hub.url}/1.0/feature-gates")[1]["metadata"]
    assert max(g["revision"] for g in gates) == revision + 1, "the only write since is the marker's: no agent echoed a gate back"
    writers = {g["gate-key"]: g["updated-by"] for g in gates}
    assert writers == {"feature.marker": "admin (--admin-token-file)", "feature.storage.ceph": "agent c3"} | {f"feature.g{i}": "agent c3" for i in range(12)}, (
        writers
    )


def test_concurrent_writes_of_one_gate_converge_everywhere_to_the_hubs_last_write(fleet: Fleet) -> None:
    for cluster in CLUSTERS:
        fleet.start(cluster)
    wait_until(lambda: all("connected to hub" in a.output() for a in fleet.agents.values()), timeout=30, what="three agents connected")
    for round_ in range(3):
        set_locally(fleet.files["c1"], "feature.race=true", f"feature.c1-{round_}=true")
        set_locally(fleet.files["c2"], "feature.race=false", f"feature.c2-{round_}=true")

        def agreed() -> bool:
            hub_value = (gate(fleet.hub, "feature.race") or {}).get("enabled")
            return hub_value is not None and fleet.everywhere("feature.race", hub_value)

        wait_until(agreed, timeout=20, what=f"round {round_}: every local config with the hub's value of the contested gate")
        # concurrent different gates both arrive everywhere
        wait_until(
            lambda r=round_: fleet.everywhere(f"feature.c1-{r}", True) and fleet.everywhere(f"feature.c2-{r}", True),
            timeout=20,
            what="both agents' own gates everywhere",
        )


def test_an_agent_away_during_changes_reconciles_when_it_returns(fleet: Fleet) -> None:
    hub = fleet.hub
    for cluster in CLUSTERS:
        fleet.start(cluster)
    assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.old", {"enabled": True})[0] == 200
    wait_until(lambda: fleet.everywhere("feature.old", True), timeout=20, what="feature.old everywhere")
    # c3 has joined once the hub has heard that it applied the fleet's gates: killed before
    # that, it joins again on its return (the fleet's gates win; docs/gates.md says so)
    wait_until(lambda: _gates_applied(hub, "c3"), timeout=20, what="the hub to hear that c3 applied the fleet's gates")
    fleet.agents["c3"].stop(signal.SIGKILL)  # a crash: the hub changes meanwhile, and so does c3's local config
    assert http("DELETE", f"{hub.url}/1.0/feature-gates/feature.old")[0] == 200
    assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.new", {"enabled": True})[0] == 200
    set_locally(fleet.files["c3"], "feature.offline=true")
    wait_until(lambda: fleet.everywhere("feature.new", True, ("c1", "c2")), timeout=20, what="feature.new on c1 and c2")
    assert local(fleet.files["c3"]).get("feature.old") is True and "feature.new" not in local(fleet.files["c3"])
    fleet.start("c3")
    wait_until(lambda: fleet.everywhere("feature.new", True) and fleet.everywhere("feature.old", None), timeout=20, what="c3 caught up, the unset too")
    wait_until(lambda: fleet.everywhere("feature.offline", True), timeout=20, what="c3's offline change everywhere")


def test_maas_sends_local_changes_up_and_writes_nothing_down(quiet_sim: Sim, tmp_path: Path) -> None:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", "--deployment-type", "maas")
    fleet = Fleet(quiet_sim, hub, tmp_path)
    try:
        fleet.start("c1")
        fleet.start("c2")
        set_locally(fleet.files["c1"], "feature.up=true")
        wait_until(lambda: (gate(hub, "feature.up") or {}).get("enabled") is True, timeout=20, what="c1's change on the hub")
        assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.down", {"enabled": True})[0] == 200
        wait_until(lambda: "deployment type maas" in fleet.agents["c2"].output(), timeout=20, what="c2 told the deployment type")
        # c2 has had the snapshots with both gates (it logged the type from one), and wrote neither
        assert "feature.up" not in local(fleet.files["c2"]) and "feature.down" not in local(fleet.files["c2"])
        assert "feature.down" not in local(fleet.files["c1"])

        # the hub setting overrides the flag, at once, without a restart: now local, so the gates are written down
        settings = f"{hub.url}/api/v1/settings"
        for key, body, code, snippet in (
            ("deployment-type", {"value": "edge"}, 422, "takes local or maas"),
            ("deployment-type", {"value": "local", "extra": 1}, 422, "nothing else"),
            ("colour", {"value": "red"}, 404, "no hub setting 'colour'"),
        ):
            status, answer = http("PUT", f"{settings}/{key}", body)
            assert status == code and snippet in answer["message"], answer
        reader = create_token(tmp_path, hub.db, "viewer", "read").read_text().strip()
        assert http("PUT", f"{settings}/deployment-type", {"value": "local"}, headers={"Authorization": f"Bearer {reader}"})[0] == 403
        switched = fleetsync("settings", "set", "deployment-type=local", "--hub", hub.url)
        assert switched.returncode == 0 and switched.stdout.strip() == "deployment-type=local", switched.stderr
        wait_until(lambda: fleet.everywhere("feature.down", True, ("c1", "c2")), timeout=20, what="the gates written down once the type is local")
        assert "deployment-type   local" in fleetsync("settings", "list", "--hub", hub.url).stdout
    finally:
        fleet.stop()


def test_a_joining_agent_takes_the_fleets_gates_and_pushes_nothing_of_its_own(fleet: Fleet) -> None:
    hub = fleet.hub
    assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.shared", {"enabled": True})[0] == 200
    set_locally(fleet.files["c1"], "feature.shared=false", "feature.mine=true")  # a new cluster's defaults
    fleet.start("c1", "--join")
    wait_until(lambda: local(fleet.files["c1"]).get("feature.shared") is True, timeout=20, what="the fleet's value in the joining cluster")
    wait_until(lambda: "join phase over" in fleet.agents["c1"].output(), timeout=20, what="the join phase over")
    assert gate(hub, "feature.mine") is None and (gate(hub, "feature.shared") or {}).get("enabled") is True, "nothing pushed while joining"
    # after joining, its changes go up as any agent's
    set_locally(fleet.files["c1"], "feature.after-join=true")
    wait_until(lambda: (gate(hub, "feature.after-join") or {}).get("updated-by") == "agent c1", timeout=20, what="a change after joining on the hub")


def test_local_changes_while_the_hub_is_down_are_kept_and_reach_the_fleet_when_it_is_back(fleet: Fleet) -> None:
    hub = fleet.hub
    for cluster in ("c1", "c2"):
        fleet.start(cluster)
    wait_until(lambda: all("connected to hub" in a.output() for a in fleet.agents.values()), timeout=30, what="two agents connected")
    hub.proc.stop()  # the hub (its store) is unavailable: the local set still works
    set_locally(fleet.files["c1"], "feature.while-down=true")
    assert local(fleet.files["c1"])["feature.while-down"] is True
    hub.proc = start_hub(fleet.tmp, hub.db, grpc_port=hub.grpc_port, http_port=hub.http_port).proc
    wait_until(lambda: (gate(hub, "feature.while-down") or {}).get("updated-by") == "agent c1", timeout=40, what="the change on the hub once it is back")
    wait_until(lambda: fleet.everywhere("feature.while-down", True, ("c1", "c2")), timeout=20, what="the change on c2")


def test_a_partition_with_the_agent_running_heals_gates_both_ways_and_the_works_sent_meanwhile(quiet_sim: Sim, tmp_path: Path) -> None:
    """Seed 004's partition case through the fault tooling: c1's connection carries nothing for a
    while (it stays open), the hub and c1 each change gates, a work targets c1; after the heal,
    everything agrees without a restart."""
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", "--heartbeat-interval", "1", "--inactivity-timeout", "4")
    fleet = Fleet(quiet_sim, hub, tmp_path)
    with PartitionProxy(hub.agent_address) as proxy:
        try:
            fleet.agents["c1"] = start_agent(
                tmp_path, quiet_sim, "c1", hub.agent_url_via(proxy.port), fleet.tokens["c1"], *FAST, "--local-config", str(fleet.files["c1"])
            )
            fleet.start("c2")
            assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.before", {"enabled": True})[0] == 200
            wait_until(lambda: fleet.everywhere("feature.before", True, ("c1", "c2")), timeout=20, what="a gate everywhere before the partition")

            proxy.partition()
            assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.during-hub", {"enabled": True})[0] == 200
            assert http("DELETE", f"{hub.url}/1.0/feature-gates/feature.before")[0] == 200
            set_locally(fleet.files["c1"], "feature.during-c1=true")
            manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "partitioned", "namespace": "default"}, "data": {"k": "v"}}
            work = {"metadata": {"name": "partitioned"}, "spec": {"placement": {"clusters": ["c1"]}, "manifests": [manifest]}}
            assert http("PUT", f"{hub.url}/api/v1/works/partitioned", work)[0] == 201
            wait_until(lambda: fleet.everywhere("feature.during-hub", True, ("c2",)), timeout=20, what="c2 to get the hub's change")
            wait_until(lambda: len(hub_events(hub, cluster="c1", reason="Inactive")) == 1, timeout=20, what="c1 inactive behind the partition")
            assert "feature.during-hub" not in local(fleet.files["c1"]) and local(fleet.files["c1"]).get("feature.before") is True
            assert gate(hub, "feature.during-c1") is None

            proxy.heal()
            both = ("c1", "c2")
            wait_until(lambda: fleet.everywhere("feature.during-c1", True, both), timeout=60, what="c1's change on the hub and c2 after the heal")
            wait_until(
                lambda: fleet.everywhere("feature.during-hub", True, both) and fleet.everywhere("feature.before", None, both), timeout=30, what="c1 caught up"
            )
            wait_until(lambda: http("GET", f"{hub.url}/api/v1/works/partitioned")[1]["status"]["available"] == 1, timeout=30, what="the work applied on c1")
            assert any(o["metadata"]["name"] == "partitioned" for o in quiet_sim.truth("c1", "v1/ConfigMap"))
            assert http("DELETE", f"{hub.url}/api/v1/works/partitioned")[0] == 200
            wait_until(lambda: not any(o["metadata"]["name"] == "partitioned" for o in quiet_sim.truth("c1", "v1/ConfigMap")), timeout=20)
        finally:
            fleet.stop()


def _gates_applied(hub: Hub, cluster: str) -> bool:
    """Whether the hub has heard from ``cluster``'s agent which gate snapshot it applied."""
    status, clusters = http("GET", f"{hub.url}/api/v1/clusters")
    return status == 200 and any(c["name"] == cluster and c["gates"]["applied"] for c in clusters["items"])
