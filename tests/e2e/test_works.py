"""Works (hub -> cluster workloads): the API, ``fleetsync works``, and agents applying them to
simulated clusters through server-side apply, with status, drift repair and removal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetsync.model.works import MAX_MANIFEST_BYTES, MAX_MANIFESTS
from tests.harness import AgentFleet, Sim, create_token, fleetsync, http, hub_events, label_cluster, start_hub, wait_until

WORKS = "/api/v1/works"
FAST = ("--types", "v1/Service")
LABELS = {"c1": "env=prod", "c2": "env=prod", "c3": "env=dev"}


def config_map(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": data}


def deployment(name: str, replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name, "image": "nginx:1.27"}]}},
        },
    }


def work(name: str, *manifests: dict[str, Any], selector: str = "", clusters: tuple[str, ...] = ()) -> dict[str, Any]:
    placement: dict[str, Any] = {}
    if selector:
        placement["clusterSelector"] = selector
    if clusters:
        placement["clusters"] = list(clusters)
    return {"apiVersion": "fleetsync.io/v1", "kind": "Work", "metadata": {"name": name}, "spec": {"placement": placement, "manifests": list(manifests)}}


def test_the_works_api_validates_works_and_answers_like_a_kubernetes_api(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    reader = f"Bearer {create_token(tmp_path, db, 'dashboards', 'read').read_text().strip()}"
    url = f"{hub.url}{WORKS}"
    try:
        status, body = http("POST", url, work("web", config_map("web", color="blue"), selector="env=prod"))
        assert status == 201, body
        assert body["kind"] == "Work" and body["metadata"]["name"] == "web" and body["metadata"]["generation"] >= 1
        assert body["status"] == {"targeted": 0, "applied": 0, "available": 0, "failed": 0, "pending": 0, "clusters": []}
        first = body["metadata"]["generation"]

        status, body = http("POST", url, work("web", config_map("web")))
        assert status == 409 and body["kind"] == "Status" and body["reason"] == "AlreadyExists" and "fleetsync works apply" in body["message"], body
        status, body = http("PUT", f"{url}/web", work("web", config_map("web", color="blue"), selector="env=prod"))
        assert status == 200 and body["metadata"]["generation"] == first, "an identical apply changes nothing"
        status, body = http("PUT", f"{url}/web", work("web", config_map("web", color="green"), selector="env=prod"))
        assert status == 200 and body["metadata"]["generation"] > first
        status, body = http("PUT", f"{url}/api", work("api", deployment("api")))
        assert status == 201, body
        yaml_body = yaml.safe_dump(work("docs", config_map("docs"), clusters=("c1",))).encode()
        status, body = http("PUT", f"{url}/docs", yaml_body, headers={"Content-Type": "application/yaml"})
        assert status == 201 and body["spec"]["placement"] == {"clusters": ["c1"]}, body
        bomb = b"a: &a [x, x]\nb: &b [*a, *a]\nmetadata: {name: bomb}\n"  # aliases nest to any size: refused, not expanded
        status, body = http("PUT", f"{url}/bomb", bomb, headers={"Content-Type": "application/yaml"})
        assert status == 400 and "aliases" in body["message"], body
        assert [w["metadata"]["name"] for w in http("GET", url)[1]["items"]] == ["api", "docs", "web"]
        status, body = http("GET", f"{url}/nope")
        assert status == 404 and body["reason"] == "NotFound" and '"nope" not found' in body["message"], body

        # bad input: 400 for a body that does not parse, 422 naming every problem of a work that is not valid
        big = config_map("big", blob="x" * MAX_MANIFEST_BYTES)
        for sent, code, snippet in (
            (b"{not json", 400, "not valid JSON"),
            ([1, 2], 422, "must be an object"),
            (work("Bad_Name", config_map("a")), 422, "not a valid work name"),
            (work("empty"), 422, "at least one manifest"),
            (work("many", *(config_map(f"m{i}") for i in range(MAX_MANIFESTS + 1))), 422, f"at most {MAX_MANIFESTS}"),
            (work("big", big), 422, f"at most {MAX_MANIFEST_BYTES}"),
            (work("twice", config_map("a"), config_map("a")), 422, "appears twice"),
            (work("nameless", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}), 422, "spec.manifests[0].metadata.name: required"),
            (work("selector", config_map("a"), selector="env in prod"), 422, "spec.placement.clusterSelector"),
            (work("owned", {**config_map("a"), "metadata": {"name": "a", "labels": {"fleetsync.io/work": "x"}}}), 422, "set by fleetsync"),
            ({**work("extra", config_map("a")), "colour": "red"}, 422, "unknown fields ['colour']"),
            ({**work("kind", config_map("a")), "kind": "ManifestWork"}, 422, "kind: must be Work"),
        ):
            status, body = http("POST", url, sent)
            assert status == code and body["kind"] == "Status" and snippet in body["message"], (sent if not isinstance(sent, dict) else sent["metadata"], body)
        status, body = http("PUT", f"{url}/web", work("other", config_map("a")))
        assert status == 422 and "does not match the name in the URL" in body["message"], body
        assert len(http("GET", url)[1]["items"]) == 3, "refused writes changed nothing"

        # a read token reads and may not write; no token: 401
        assert http("GET", url, headers={"Authorization": reader})[0] == 200
        status, body = http("DELETE", f"{url}/web", headers={"Authorization": reader})
        assert status == 403 and "needs role admin" in body["message"], body
        assert http("GET", url, headers={"Authorization": ""})[0] == 401

        status, body = http("DELETE", f"{url}/web")
        assert status == 200 and body["metadata"]["name"] == "web"
        assert http("DELETE", f"{url}/web")[0] == 404
        assert http("GET", f"{url}/web")[0] == 404
    finally:
        hub.proc.stop()


class Fleet(AgentFleet):
    """A hub with an agent per simulated cluster, labelled per :data:`LABELS` by an admin."""

    def agent_args(self, cluster: str) -> tuple[str, ...]:
        return (*FAST, "--works-allow-kinds", "default,example.com/*")  # (a kind the clusters do not serve, below)

    def works(self, *args: str) -> Any:
        return fleetsync("works", *args, "--hub", self.hub.url)

    def apply(self, *works: dict[str, Any], wait: str = "applied") -> Any:
        path = self.tmp / "works.yaml"
        path.write_text(yaml.safe_dump_all(works))
        return self.works("apply", "-f", str(path), *(["--wait", wait, "--timeout", "30"] if wait else []))

    def status(self, name: str) -> dict[str, Any]:
        status, body = http("GET", f"{self.hub.url}{WORKS}/{name}")
        assert status == 200, body
        return dict(body["status"])

    def objects(self, cluster: str, kind: str) -> dict[str, dict[str, Any]]:
        """The objects of ``kind`` in the cluster's default namespace that a work owns."""
        listed = json.loads(self.sim.kubectl(cluster, "get", kind, "-n", "default", "-l", "fleetsync.io/work", "-o", "json").stdout)
        return {o["metadata"]["name"]: o for o in listed["items"]}


@pytest.fixture
def fleet(quiet_sim: Sim, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(quiet_sim, start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}"), tmp_path, tuple(LABELS))
    try:
        for cluster, pair in LABELS.items():
            key, _, value = pair.partition("=")
            label_cluster(fleet.hub.url, cluster, **{key: value})
        fleet.start_all()
        wait_until(lambda: {e["cluster"] for e in hub_events(fleet.hub, reason="Connected")} == set(LABELS), timeout=20, what="every agent to connect")
        yield fleet
    finally:
        fleet.stop()


def test_a_work_is_applied_kept_as_given_and_removed_when_it_no_longer_targets_a_cluster(fleet: Fleet) -> None:
    sim = fleet.sim
    result = fleet.apply(work("web", config_map("web-config", color="blue"), deployment("web"), selector="env=prod"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "work.fleetsync.io/web created" in result.stdout and "applied on 2 clusters" in result.stdout
    for cluster in ("c1", "c2"):
        maps = fleet.objects(cluster, "configmaps")
        assert maps["web-config"]["data"] == {"color": "blue"} and maps["web-config"]["metadata"]["labels"]["fleetsync.io/work"] == "web"
        assert "web" in fleet.objects(cluster, "deployments")
    assert fleet.objects("c3", "configmaps") == {}, "c3 is not env=prod"
    status = fleet.status("web")
    assert status["targeted"] == 2 and status["applied"] == 2 and status["available"] == 0, "no controller makes the simulated Deployments ready"
    conditions = {m["manifest"]: m["condition"] for m in status["clusters"][0]["manifests"]}
    assert conditions == {"v1/ConfigMap/default/web-config": "Available", "apps/v1/Deployment/default/web": "Applied"}

    # Available once the Deployments' replicas are (as a controller would report them)
    for cluster in ("c1", "c2"):
        ready = '{"status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "observedGeneration": 1}}'
        sim.kubectl(cluster, "patch", "deployment", "web", "-n", "default", "--subresource", "status", "--type", "merge", "-p", ready)
    wait_until(lambda: fleet.status("web")["available"] == 2, timeout=15, what="the work to be Available on c1 and c2")
    listed = fleet.works("get").stdout.splitlines()
    assert listed[0].split() == ["NAME", "GENERATION", "TARGETED", "APPLIED", "AVAILABLE", "FAILED", "PENDING", "AGE"]
    assert listed[1].split()[2:7] == ["2", "2", "2", "0", "0"], listed

    # drift: an owned object deleted or changed out of band is restored
    sim.kubectl("c1", "delete", "configmap", "web-config", "-n", "default")
    sim.kubectl("c2", "patch", "configmap", "web-config", "-n", "default", "-p", '{"data": {"color": "red"}}')
    wait_until(
        lambda: (
            fleet.objects("c1", "configmaps").get("web-config", {}).get("data") == {"color": "blue"}
            and fleet.objects("c2", "configmaps")["web-config"]["data"] == {"color": "blue"}
        ),
        timeout=15,
        what="drift on c1 and c2 to be repaired",
    )

    # a manifest the cluster refuses, and a kind it does not serve: Failed, with the cluster's words
    bad_label = {**config_map("broken"), "metadata": {"name": "broken", "namespace": "default", "labels": {"tier": "-front-"}}}
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "default"}}
    failed = fleet.apply(work("broken", config_map("fine"), bad_label, widget, clusters=("c1",)))
    assert failed.returncode == 1 and "work broken failed on 1 of 1 clusters" in failed.stderr, failed.stdout + failed.stderr
    manifests = {m["manifest"]: m for m in fleet.status("broken")["clusters"][0]["manifests"]}
    assert manifests["v1/ConfigMap/default/fine"]["condition"] == "Available"
    assert manifests["v1/ConfigMap/default/broken"]["condition"] == "Failed"
    assert "422" in manifests["v1/ConfigMap/default/broken"]["message"] and "-front-" in manifests["v1/ConfigMap/default/broken"]["message"]
    assert "does not serve kind 'Widget' in 'example.com/v1'" in manifests["example.com/v1/Widget/default/w"]["message"]
    assert "Failed" in failed.stdout and "-front-" in failed.stdout, "the CLI shows what failed and why"
    assert any(e["reason"] == "WorkFailed" and "-front-" in e["message"] for e in hub_events(fleet.hub, cluster="c1"))
    assert fleet.works("delete", "broken").returncode == 0
    wait_until(lambda: "fine" not in fleet.objects("c1", "configmaps"), timeout=15, what="the broken work's objects to be removed")

    # a new generation without the ConfigMap: the ConfigMap goes, the Deployment stays
    assert fleet.apply(work("web", deployment("web"), selector="env=prod")).returncode == 0
    wait_until(lambda: all("web-config" not in fleet.objects(c, "configmaps") for c in ("c1", "c2")), timeout=15, what="the dropped manifest to be deleted")
    assert all("web" in fleet.objects(c, "deployments") for c in ("c1", "c2"))

    # retargeted to env=dev: gone from c1 and c2, applied on c3
    assert fleet.apply(work("web", deployment("web"), selector="env=dev")).returncode == 0
    wait_until(lambda: all(fleet.objects(c, "deployments") == {} for c in ("c1", "c2")), timeout=15, what="the work to leave c1 and c2")
    assert "web" in fleet.objects("c3", "deployments")
    assert [c["cluster"] for c in fleet.status("web")["clusters"]] == ["c3"], "c1 and c2 reported their removal: the hub forgot them"

    # deleted while c3's agent is away: the agent removes the objects when it is back (the hub keeps the inventory)
    fleet.agents["c3"].stop()
    assert fleet.works("delete", "web").returncode == 0
    assert "web" in fleet.objects("c3", "deployments")
    fleet.start("c3")
    wait_until(lambda: fleet.objects("c3", "deployments") == {}, timeout=20, what="c3's agent to remove the deleted work's Deployment")
    assert "No works." in fleet.works("get").stderr


def test_a_work_never_takes_over_another_works_object_and_read_only_agents_apply_nothing(fleet: Fleet) -> None:
    assert fleet.apply(work("first", config_map("shared", owner="first"), clusters=("c1",))).returncode == 0
    second = fleet.apply(work("second", config_map("shared", owner="second"), clusters=("c1",)))
    assert second.returncode == 1 and "belongs to work 'first'" in second.stdout, second.stdout + second.stderr
    assert fleet.objects("c1", "configmaps")["shared"]["data"] == {"owner": "first"}

    # once the first work lets the object go, the second one gets it
    assert fleet.works("delete", "first").returncode == 0
    wait_until(lambda: fleet.status("second")["available"] == 1, timeout=20, what="the second work to apply once the first is gone")
    assert fleet.objects("c1", "configmaps")["shared"]["metadata"]["labels"]["fleetsync.io/work"] == "second"
    assert fleet.works("delete", "second").returncode == 0

    # an agent run with --no-works gets no works: its cluster stays Pending
    fleet.agents["c2"].stop()
    fleet.start("c2", "--no-works")
    wait_until(lambda: len(hub_events(fleet.hub, cluster="c2", reason="Connected")) == 2, timeout=15, what="c2's read-only agent to connect")
    assert fleet.apply(work("everywhere", config_map("everywhere"), selector="fleetsync.io/cluster"), wait="").returncode == 0
    wait_until(lambda: fleet.status("everywhere")["applied"] == 2, timeout=15, what="c1 and c3 to apply the work")
    status = fleet.status("everywhere")
    assert status["targeted"] == 3 and status["pending"] == 1 and {c["cluster"]: c["state"] for c in status["clusters"]}["c2"] == "Pending"
    assert fleet.objects("c2", "configmaps") == {}
    wait_until(lambda: fleet.works("delete", "everywhere").returncode == 0 and fleet.objects("c1", "configmaps") == {}, timeout=15)
