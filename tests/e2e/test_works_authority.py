"""Works cannot take over a cluster (issue 18, item 1), and the agent's tasks survive a cluster
API that is down when it starts and a local config directory that is missing (item 13).

Real processes throughout: ``fleetsync sim`` clusters, a hub, agents; what a work did is read
back from the cluster with kubectl.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_works import WORKS, config_map, work
from tests.harness import (
    AgentFleet,
    Sim,
    create_token,
    fleetsync,
    http,
    hub_events,
    restart_sim,
    run_sim,
    start_agent,
    start_hub,
    stop_process,
    wait_converged,
    wait_until,
)

FAST = ("--types", "v1/Service", "--istio-interval", "0")
#: c1's agent also allows every kind of the *.k8s.io groups (a wildcard: never an RBAC or cluster-scoped kind);
#: c2's also Namespaces (named, as cluster-scoped kinds must be).
ARGS = {"c1": ("--works-allow-kinds", "default,*.k8s.io/*"), "c2": ("--works-allow-kinds", "default,core/Namespace")}


class Fleet(AgentFleet):
    def agent_args(self, cluster: str) -> tuple[str, ...]:
        return (*FAST, *ARGS[cluster])

    def apply(self, *works: dict[str, Any], wait: str = "applied") -> Any:
        path = self.tmp / "works.yaml"
        path.write_text(yaml.safe_dump_all(works))
        return fleetsync("works", "apply", "-f", str(path), "--hub", self.hub.url, *(["--wait", wait, "--timeout", "30"] if wait else []))

    def delete(self, name: str) -> None:
        assert fleetsync("works", "delete", name, "--hub", self.hub.url).returncode == 0

    def manifests(self, name: str, cluster: str) -> dict[str, dict[str, Any]]:
        """Each manifest's {condition, message} as ``cluster`` reported them for work ``name``."""
        status, body = http("GET", f"{self.hub.url}{WORKS}/{name}")
        assert status == 200, body
        found = [c for c in body["status"]["clusters"] if c["cluster"] == cluster]
        return {m["manifest"]: m for m in found[0]["manifests"]} if found else {}

    def get(self, cluster: str, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """An object as the cluster has it (None: there is none)."""
        scope = ("-n", namespace) if namespace else ()
        result = self.sim.kubectl(cluster, "get", kind, name, *scope, "-o", "json", check=False)
        if result.returncode != 0:
            assert "NotFound" in result.stderr, result.stderr
            return None
        return dict(json.loads(result.stdout))


def labels(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


def annotations(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


@pytest.fixture
def fleet(quiet_sim: Sim, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(quiet_sim, start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}"), tmp_path, tuple(ARGS))
    try:
        fleet.start_all()
        wait_until(lambda: {e["cluster"] for e in hub_events(fleet.hub, reason="Connected")} == set(ARGS), timeout=20, what="every agent to connect")
        yield fleet
    finally:
        fleet.stop()


def test_a_work_never_adopts_nor_deletes_an_object_fleetsync_did_not_create_unless_it_says_adopt(fleet: Fleet) -> None:
    root_ca = "v1/ConfigMap/default/kube-root-ca.crt"
    before = fleet.get("c1", "configmap", "kube-root-ca.crt", "default")
    assert before is not None and labels(before) == {}, "the simulated cluster has the ConfigMap every namespace has, created by no work"

    # named by a work: refused, left as it is; the work's other manifest applies
    takeover = work("takeover", {**config_map("kube-root-ca.crt", **{"ca.crt": "forged"})}, config_map("mine", a="1"), clusters=("c1",))
    result = fleet.apply(takeover)
    assert result.returncode == 1 and "failed on 1 of 1 clusters" in result.stderr, result.stdout + result.stderr
    manifests = fleet.manifests("takeover", "c1")
    assert manifests[root_ca]["condition"] == "Failed"
    assert "ConfigMap default/kube-root-ca.crt exists and was not created by fleetsync; set adopt: true" in manifests[root_ca]["message"]
    assert manifests["v1/ConfigMap/default/mine"]["condition"] == "Available"
    after = fleet.get("c1", "configmap", "kube-root-ca.crt", "default")
    assert after is not None and after["data"] == before["data"] and labels(after) == {}, "not applied over, not labelled"

    # deleting the work deletes what it created, and not the object it named but never had
    fleet.delete("takeover")
    wait_until(lambda: fleet.get("c1", "configmap", "mine", "default") is None, timeout=20, what="the work's own ConfigMap to be deleted")
    kept = fleet.get("c1", "configmap", "kube-root-ca.crt", "default")
    assert kept is not None and kept["data"] == before["data"]

    # adopt: true takes it over (marked adopted) ...
    adopting = work("adopter", config_map("kube-root-ca.crt", extra="added"), clusters=("c1",))
    adopting["spec"]["adopt"] = True
    result = fleet.apply(adopting)
    assert result.returncode == 0, result.stdout + result.stderr
    adopted = fleet.get("c1", "configmap", "kube-root-ca.crt", "default")
    assert adopted is not None and labels(adopted)["fleetsync.io/work"] == "adopter" and annotations(adopted)["fleetsync.io/adopted"] == "adopter"
    assert adopted["data"] == {**before["data"], "extra": "added"}, "the fields the work sets, over the object's own"

    # ... and removing the work hands it back: kept, unlabelled, not deleted
    fleet.delete("adopter")
    wait_until(lambda: "fleetsync.io/work" not in labels(fleet.get("c1", "configmap", "kube-root-ca.crt", "default")), timeout=20, what="the hand-back")
    returned = fleet.get("c1", "configmap", "kube-root-ca.crt", "default")
    assert returned is not None and "fleetsync.io/adopted" not in annotations(returned) and returned["data"]["ca.crt"] == before["data"]["ca.crt"]


def test_works_apply_only_the_kinds_and_namespaces_the_agent_allows(fleet: Fleet) -> None:
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "own-the-cluster"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}],
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    system = {**config_map("in-system"), "metadata": {"name": "in-system", "namespace": "kube-system"}}
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "names": {"kind": "Widget", "plural": "widgets"}, "scope": "Namespaced", "versions": []},
    }
    everything = work("everything", config_map("allowed", a="1"), binding, namespace, pod, system, crd, clusters=("c1",))
    result = fleet.apply(everything)
    assert result.returncode == 1, result.stdout + result.stderr
    manifests = fleet.manifests("everything", "c1")
    assert manifests["v1/ConfigMap/default/allowed"]["condition"] == "Available", "an allowed manifest applies beside refused ones"
    expected = {
        "rbac.authorization.k8s.io/v1/ClusterRoleBinding//own-the-cluster": "rbac.authorization.k8s.io/ClusterRoleBinding is an RBAC kind, allowed only when --works-allow-kinds names it",
        "apiextensions.k8s.io/v1/CustomResourceDefinition//widgets.example.com": "CustomResourceDefinition is cluster-scoped, allowed only when --works-allow-kinds names it",
        "v1/Namespace//team-a": "kind core/Namespace matches no --works-allow-kinds pattern",
        "v1/Pod/default/p": "kind core/Pod matches no --works-allow-kinds pattern",
        "v1/ConfigMap/kube-system/in-system": "namespace 'kube-system' is in --works-deny-namespaces",
    }
    for ident, message in expected.items():
        assert manifests[ident]["condition"] == "Failed" and "denied by the agent's allow-list" in manifests[ident]["message"], manifests[ident]
        assert message in manifests[ident]["message"], manifests[ident]
    assert fleet.get("c1", "namespace", "team-a") is None and fleet.get("c1", "pod", "p", "default") is None
    assert fleet.get("c1", "configmap", "in-system", "kube-system") is None
    assert fleet.get("c1", "crd", "widgets.example.com") is None
    fleet.delete("everything")
    wait_until(lambda: fleet.get("c1", "configmap", "allowed", "default") is None, timeout=20, what="the allowed ConfigMap to be deleted")

    # c2 allows Namespaces: a new one is created (and deleted with its work); an existing one is
    # neither taken over nor deleted when the work goes
    assert fleet.get("c2", "namespace", "ns-0") is not None
    namespaces = work("namespaces", {**namespace, "metadata": {"name": "team-b"}}, {**namespace, "metadata": {"name": "ns-0"}}, clusters=("c2",))
    result = fleet.apply(namespaces)
    assert result.returncode == 1, result.stdout + result.stderr
    manifests = fleet.manifests("namespaces", "c2")
    assert manifests["v1/Namespace//team-b"]["condition"] == "Available"
    assert "Namespace ns-0 exists and was not created by fleetsync" in manifests["v1/Namespace//ns-0"]["message"]
    assert labels(fleet.get("c2", "namespace", "team-b"))["fleetsync.io/work"] == "namespaces"
    fleet.delete("namespaces")
    wait_until(lambda: fleet.get("c2", "namespace", "team-b") is None, timeout=20, what="the work's own namespace to be deleted")
    assert fleet.get("c2", "namespace", "ns-0") is not None, "the namespace the work did not create is still there"
    assert fleet.get("c2", "configmap", "kube-root-ca.crt", "ns-0") is not None, "and so is what is in it"


def holds(sim: Sim, config_map: str, text: str) -> bool:
    """Whether c1's ConfigMap ``default/config_map`` exists and holds ``text``."""
    return text in sim.kubectl("c1", "get", "configmap", config_map, "-n", "default", "-o", "json", check=False).stdout


def test_an_agent_started_while_its_cluster_api_is_down_applies_works_once_it_is_up(tmp_path: Path) -> None:
    with run_sim(tmp_path, "--clusters", "1", "--pods", "5") as first:
        sim = first
    # the sim is stopped: its port and kubeconfig stay, nothing answers there
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    gates = "configmap:default/fleet-gates"  # the gates task's target is in the cluster too
    token = create_token(tmp_path, hub.db, "c1")
    agent = start_agent(tmp_path, sim, "c1", hub.agent_url, token, *FAST, "--kube-retry-max", "1", "--local-config", gates)
    restarted: Sim | None = None

    def applied(name: str) -> bool:
        return bool(http("GET", f"{hub.url}{WORKS}/{name}")[1]["status"]["available"] == 1)

    def apply(name: str) -> None:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(work(name, config_map(name, a="1"), clusters=("c1",))))
        assert fleetsync("works", "apply", "-f", str(path), "--hub", hub.url).returncode == 0

    try:
        wait_until(lambda: hub_events(hub, cluster="c1", reason="Connected"), timeout=20, what="the agent to connect to the hub")
        wait_until(lambda: "does not answer discovery" in agent.output(), timeout=20, what="the works task to say the API does not answer")
        apply("late")
        assert http("POST", f"{hub.url}/1.0/feature-gates", {"gate-key": "feature.late", "enabled": True})[0] == 201
        restarted = restart_sim(tmp_path, sim, "--clusters", "1", "--pods", "5")
        wait_until(lambda: applied("late"), timeout=30, what="the work applied once the API is up")
        assert restarted.kubectl("c1", "get", "configmap", "late", "-n", "default", "-o", "name").stdout.strip() == "configmap/late"
        assert agent.process.poll() is None and "answers now" in agent.output()
        wait_until(partial(holds, restarted, "fleet-gates", "feature.late"), timeout=30, what="the hub's gate in the cluster's ConfigMap")
        wait_converged(restarted, hub, "c1", types="v1/Service", timeout=30, what="the cluster's Services on the hub")

        # the API goes away under running watches and comes back: every task carries on
        stop_process(restarted.process)
        restarted = restart_sim(tmp_path, sim, "--clusters", "1", "--pods", "5")
        apply("later")
        wait_until(lambda: applied("later"), timeout=30, what="a work applied after the API came back again")
        restarted.kubectl("c1", "delete", "configmap", "later", "-n", "default")  # drift: the works' own watch carries on too
        wait_until(partial(holds, restarted, "later", "later"), timeout=20, what="drift repaired")
        wait_converged(restarted, hub, "c1", types="v1/Service", timeout=30, what="the cluster's Services on the hub again")
    finally:
        agent.stop()
        hub.proc.stop()
        if restarted is not None:
            stop_process(restarted.process)


def test_a_missing_local_config_directory_is_said_once_and_used_when_it_appears(quiet_sim: Sim, tmp_path: Path) -> None:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    target = tmp_path / "not-yet" / "gates.json"
    agent = start_agent(tmp_path, quiet_sim, "c1", hub.agent_url, create_token(tmp_path, hub.db, "c1"), *FAST, "--local-config", str(target))
    try:
        wait_until(lambda: hub_events(hub, cluster="c1", reason="Connected"), timeout=20, what="the agent to connect to the hub")

        def warnings() -> int:
            return sum(1 for line in agent.output().splitlines() if "WARNING" in line and "local config" in line)

        # a few seconds of the agent's life with the directory missing: said once, not five times a second
        watched_until = time.monotonic() + 3
        while time.monotonic() < watched_until:
            assert warnings() <= 1, agent.output()[-3000:]
            time.sleep(0.2)
        assert warnings() == 1 and f"its directory {target.parent} does not exist" in agent.output()

        # once the directory appears, the hub's gates are written there
        assert http("POST", f"{hub.url}/1.0/feature-gates", {"gate-key": "feature.late", "enabled": True})[0] == 201
        target.parent.mkdir()
        wait_until(lambda: target.exists() and json.loads(target.read_text()).get("feature.late") is True, timeout=40, what="the gate in the local config")
        assert agent.process.poll() is None and warnings() <= 2
    finally:
        agent.stop()
        hub.proc.stop()


def test_a_bad_allow_list_stops_the_agent_at_start_naming_the_flag_and_the_problem(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x" * 32)
    common = ("agent", "--cluster-id", "c1", "--hub", "grpc://127.0.0.1:1", "--token-file", str(token))
    result = fleetsync(*common, "--works-allow-kinds", "default,Deployment")
    assert result.returncode != 0 and "--works-allow-kinds" in result.stderr and "'Deployment': name the group too, e.g. core/Deployment" in result.stderr
    result = fleetsync(*common, "--works-deny-namespaces", "Kube_System")
    assert result.returncode != 0 and "'Kube_System' is not a namespace pattern" in result.stderr, result.stderr
