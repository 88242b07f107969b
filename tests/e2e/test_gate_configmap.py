"""Feature gates with a ConfigMap as the agents' local config target (``--local-config
configmap:NAMESPACE/NAME``), against the simulator's clusters and a real hub: the hub's gates
arrive in each cluster's ConfigMap, ``kubectl patch``/``kubectl edit`` of a ``feature.*`` key
reaches the hub and the fleet, unsets go both ways, nothing echoes, a restart keeps the
agreement, and ``fleetsync agent config`` works on the ConfigMap."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetsync.agent.localconfig import SYNCED_ANNOTATION
from tests.harness import AgentFleet, Hub, Sim, fleetsync, http, start_hub, wait_until

FAST = ("--types", "v1/Service")
CLUSTERS = ("c1", "c2", "c3")
NAMESPACE = "kube-system"


def gate(hub: Hub, key: str) -> dict[str, Any] | None:
    status, body = http("GET", f"{hub.url}/1.0/feature-gates/{key}")
    return body["metadata"] if status == 200 else None


def hub_gates(hub: Hub) -> list[dict[str, Any]]:
    return list(http("GET", f"{hub.url}/1.0/feature-gates")[1]["metadata"])


class Fleet(AgentFleet):
    grants = ("gates",)  # their local gate changes reach the fleet
    """Agents of the sim's clusters, each with a ConfigMap of its own cluster as its local config target."""

    def __init__(self, sim: Sim, hub: Hub, tmp: Path) -> None:
        super().__init__(sim, hub, tmp, CLUSTERS)
        # the module's sim is shared by its tests: each test has ConfigMaps of its own
        self.name = f"gates-{uuid.uuid4().hex[:8]}"
        self.target = f"configmap:{NAMESPACE}/{self.name}"

    def agent_args(self, cluster: str) -> tuple[str, ...]:
        return (*FAST, "--local-config", self.target)

    def configmap(self, cluster: str) -> dict[str, Any] | None:
        """The ConfigMap as the cluster's API server has it (None if it does not exist)."""
        status, body = http("GET", f"{self.sim.cluster_url(cluster)}/api/v1/namespaces/{NAMESPACE}/configmaps/{self.name}")
        return body if status == 200 else None

    def data(self, cluster: str) -> dict[str, str]:
        return dict((self.configmap(cluster) or {}).get("data") or {})

    def agreed(self, cluster: str) -> dict[str, bool]:
        annotations = ((self.configmap(cluster) or {}).get("metadata") or {}).get("annotations") or {}
        return dict(json.loads(annotations.get(SYNCED_ANNOTATION, "{}")))

    def everywhere(self, key: str, value: str | None, clusters: tuple[str, ...] = CLUSTERS) -> bool:
        return all(self.data(c).get(key) == value for c in clusters)

    def kubectl_patch(self, cluster: str, patch: Any, kind: str = "merge") -> None:
        self.sim.kubectl(cluster, "patch", "configmap", self.name, "-n", NAMESPACE, "--type", kind, "-p", json.dumps(patch))

    def config(self, cluster: str, *args: str) -> Any:
        """``fleetsync agent config ARGS`` against the cluster's ConfigMap."""
        return fleetsync("agent", "config", *args, "--local-config", self.target, "--kubeconfig", str(self.sim.kubeconfig(cluster)))

    def connected(self, *clusters: str) -> None:
        wait_until(lambda: all("connected to hub" in self.agents[c].output() for c in clusters), timeout=30, what=f"{', '.join(clusters)} connected")


@pytest.fixture
def fleet(quiet_sim: Sim, tmp_path: Path) -> Iterator[Fleet]:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    fleet = Fleet(quiet_sim, hub, tmp_path)
    try:
        yield fleet
    finally:
        fleet.stop()


def test_gates_flow_between_the_hub_and_configmaps_both_ways_without_echo(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = fleet.hub
    for cluster in CLUSTERS:
        fleet.start(cluster)
    fleet.connected(*CLUSTERS)
    assert all(fleet.configmap(c) is None for c in CLUSTERS), "nothing to write yet: no ConfigMap is created"

    # a hub write reaches every cluster's ConfigMap (created on the first write), as "true"/"false" strings
    assert http("POST", f"{hub.url}/1.0/feature-gates", {"gate-key": "feature.multi-region", "enabled": True})[0] == 201
    wait_until(lambda: fleet.everywhere("feature.multi-region", "true"), timeout=15, what="the gate in every ConfigMap")
    assert all(fleet.agreed(c) == {"feature.multi-region": True} for c in CLUSTERS), "the agreed state travels with the data"

    # the hook: kubectl patch of c1's ConfigMap goes to the hub (as c1's write) at once, then to c2 and c3;
    # other keys, and values that are not gates, are the user's and left alone
    revision = max(g["revision"] for g in hub_gates(hub))
    fleet.kubectl_patch("c1", {"data": {"feature.storage.ceph": "true", "colour": "blue", "feature.not-a-gate": "maybe"}})
    wait_until(lambda: (gate(hub, "feature.storage.ceph") or {}).get("updated-by") == "agent c1", timeout=5, what="the patch on the hub (watched, not polled)")
    wait_until(lambda: fleet.everywhere("feature.storage.ceph", "true"), timeout=15, what="c1's change in every ConfigMap")
    assert gate(hub, "feature.not-a-gate") is None and fleet.data("c1")["colour"] == "blue"
    assert "colour" not in fleet.data("c2")

    # kubectl edit works as well (an editor that rewrites the value)
    monkeypatch.setenv("KUBE_EDITOR", 'sed -i -e \'s/feature.storage.ceph: "true"/feature.storage.ceph: "false"/\'')
    fleet.sim.kubectl("c2", "edit", "configmap", fleet.name, "-n", NAMESPACE)
    wait_until(lambda: (gate(hub, "feature.storage.ceph") or {}).get("enabled") is False, timeout=5, what="the edit on the hub")
    wait_until(lambda: fleet.everywhere("feature.storage.ceph", "false"), timeout=15, what="c2's edit in every ConfigMap")

    # no echo: each intended write is exactly one hub revision. A marker written through the API
    # afterwards (and seen everywhere) comes after any echo the agents' own writes could have caused.
    assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.marker", {"enabled": True})[0] == 200
    wait_until(lambda: fleet.everywhere("feature.marker", "true"), timeout=15, what="the marker everywhere")
    gates = {g["gate-key"]: g for g in hub_gates(hub)}
    assert max(g["revision"] for g in gates.values()) == revision + 3, "the patch, the edit and the marker, nothing else"
    assert {k: g["updated-by"] for k, g in gates.items()} == {
        "feature.multi-region": "admin (--admin-token-file)",
        "feature.storage.ceph": "agent c2",
        "feature.marker": "admin (--admin-token-file)",
    }

    # unset in a ConfigMap (the key removed) is unset on the hub and in every ConfigMap
    fleet.kubectl_patch("c3", [{"op": "remove", "path": "/data/feature.multi-region"}], kind="json")
    wait_until(lambda: gate(hub, "feature.multi-region") is None, timeout=5, what="c3's unset on the hub")
    wait_until(lambda: fleet.everywhere("feature.multi-region", None), timeout=15, what="the unset everywhere")
    # unset on the hub is removed from every ConfigMap
    assert http("DELETE", f"{hub.url}/1.0/feature-gates/feature.storage.ceph")[0] == 200
    wait_until(lambda: fleet.everywhere("feature.storage.ceph", None), timeout=15, what="the hub's unset everywhere")
    wait_until(lambda: all(fleet.agreed(c) == {"feature.marker": True} for c in CLUSTERS), timeout=15, what="the agreed states")
    assert fleet.data("c1") == {"feature.marker": "true", "colour": "blue", "feature.not-a-gate": "maybe"}


def test_an_agent_restart_keeps_the_agreement_and_reconciles_what_changed_meanwhile(fleet: Fleet) -> None:
    hub = fleet.hub
    for cluster in ("c1", "c2"):
        fleet.start(cluster)
    for key in ("feature.a", "feature.b"):
        assert http("PUT", f"{hub.url}/1.0/feature-gates/{key}", {"enabled": True})[0] == 200
    wait_until(lambda: fleet.everywhere("feature.a", "true", ("c1", "c2")) and fleet.everywhere("feature.b", "true", ("c1", "c2")), timeout=20, what="a and b")

    # a restart with nothing changed pushes nothing: the agreed state was kept in the ConfigMap
    revision = max(g["revision"] for g in hub_gates(hub))
    fleet.agents["c1"].stop()
    fleet.start("c1")
    fleet.connected("c1")
    assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.marker", {"enabled": True})[0] == 200
    wait_until(lambda: fleet.everywhere("feature.marker", "true", ("c1", "c2")), timeout=20, what="the marker after the restart")
    assert max(g["revision"] for g in hub_gates(hub)) == revision + 1, "the restarted agent pushed nothing back"

    # down (a crash) while the hub and the ConfigMap both change: both reach the other side after the restart
    fleet.agents["c1"].stop(signal.SIGKILL)
    assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.a", {"enabled": False})[0] == 200
    assert http("DELETE", f"{hub.url}/1.0/feature-gates/feature.b")[0] == 200
    fleet.kubectl_patch("c1", {"data": {"feature.offline": "true"}})
    wait_until(lambda: fleet.everywhere("feature.a", "false", ("c2",)) and fleet.everywhere("feature.b", None, ("c2",)), timeout=20, what="c2 up to date")
    assert fleet.data("c1")["feature.a"] == "true" and gate(hub, "feature.offline") is None
    fleet.start("c1")
    wait_until(lambda: fleet.everywhere("feature.a", "false", ("c1",)) and fleet.everywhere("feature.b", None, ("c1",)), timeout=20, what="c1 caught up")
    wait_until(lambda: fleet.everywhere("feature.offline", "true", ("c2",)), timeout=20, what="c1's offline change on c2")
    gates = {g["gate-key"]: g for g in hub_gates(hub)}
    assert gates["feature.offline"]["updated-by"] == "agent c1"
    assert gates["feature.a"]["updated-by"] == "admin (--admin-token-file)" and gates["feature.a"]["enabled"] is False, (
        "the hub's newer value was not overwritten"
    )
    assert fleet.agreed("c1") == {"feature.a": False, "feature.marker": True, "feature.offline": True}


def test_fleetsync_agent_config_reads_and_changes_the_configmap(fleet: Fleet) -> None:
    hub = fleet.hub
    # no agent yet: the command creates the ConfigMap and keeps keys that are not gates
    result = fleet.config("c1", "set", "feature.cli=true", "colour=blue")
    assert result.returncode == 0, result.stderr
    assert fleet.data("c1") == {"feature.cli": "true", "colour": "blue"}
    assert fleet.config("c1", "get", "feature.cli").stdout.strip() == '"true"'
    assert json.loads(fleet.config("c1", "get").stdout) == {"feature.cli": "true", "colour": "blue"}
    missing = fleet.config("c1", "get", "feature.nope")
    assert missing.returncode != 0 and f"feature.nope is not set in {fleet.target}" in missing.stderr
    bad = fleet.config("c1", "set", "feature.cli=yes")
    assert bad.returncode != 0 and "a gate is true or false" in bad.stderr
    assert fleet.config("c1", "unset", "colour").returncode == 0
    assert fleet.data("c1") == {"feature.cli": "true"}
    malformed = fleetsync("agent", "config", "get", "--local-config", "configmap:no-name-here")
    assert malformed.returncode != 0 and "configmap:NAMESPACE/NAME" in malformed.stderr

    # an agent started on it as the fleet's bootstrap: what the ConfigMap held (never agreed) goes up, as a
    # file's would (a cluster new to the fleet that is not the bootstrap joins: it would take the fleet's gates)
    fleet.start("c1", "--bootstrap")
    fleet.start("c2")
    wait_until(lambda: (gate(hub, "feature.cli") or {}).get("updated-by") == "agent c1", timeout=20, what="the ConfigMap's gate on the hub")
    wait_until(lambda: fleet.everywhere("feature.cli", "true", ("c2",)), timeout=20, what="the gate on c2")

    # with the agent running, set and unset through the command reach the hub and the fleet
    assert fleet.config("c1", "set", "feature.cli=false").returncode == 0
    wait_until(lambda: (gate(hub, "feature.cli") or {}).get("enabled") is False, timeout=5, what="the set on the hub")
    wait_until(lambda: fleet.everywhere("feature.cli", "false", ("c2",)), timeout=20, what="the set on c2")
    assert fleet.config("c2", "unset", "feature.cli").returncode == 0
    wait_until(lambda: gate(hub, "feature.cli") is None, timeout=5, what="the unset on the hub")
    wait_until(lambda: fleet.everywhere("feature.cli", None, ("c1", "c2")), timeout=20, what="the unset everywhere")
