"""What the hub and agents agree on about works: placement, drift, availability, the per-cluster
snapshot (inventory, removal, chunking) and the checks on an agent's status."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fleetsync.hub.works import SpecCache, cluster_works, snapshot_messages, status_records
from fleetsync.model.works import Placement, WorkError, WorkSpec, drifted, is_available, manifest_id, parse_work, split_manifest_id
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.contract import WorkRecord, WorkStatusRecord


def cm(name: str, namespace: str = "default", **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": data}


def record(name: str, generation: int, spec: WorkSpec) -> WorkRecord:
    return WorkRecord(name, spec.to_json(), generation, generation, 1.0, 1.0, "admin")


def test_placement_targets_named_clusters_and_clusters_whose_labels_match() -> None:
    placement = Placement(("c9",), "env=prod,region in (eu,us)")
    assert placement.targets("c9", {})
    assert placement.targets("c1", {"env": "prod", "region": "eu"})
    assert not placement.targets("c2", {"env": "prod", "region": "ap"})
    assert Placement((), "fleetsync.io/cluster").targets("any", {}), "every cluster has its name as a label"
    assert Placement((), "fleetsync.io/cluster=c3").targets("c3", {}) and not Placement((), "fleetsync.io/cluster=c3").targets("c4", {})
    assert not Placement().targets("c1", {"env": "prod"}), "no names and no selector: a parked work"


def test_a_stored_spec_is_canonical_so_an_identical_apply_compares_equal() -> None:
    a = parse_work({"metadata": {"name": "w"}, "spec": {"manifests": [cm("x", b="2", a="1")], "placement": {"clusters": ["c1", "c1"]}}})[1]
    b = parse_work({"spec": {"placement": {"clusters": ["c1"]}, "manifests": [cm("x", a="1", b="2")]}, "metadata": {"name": "w"}})[1]
    assert a.to_json() == b.to_json() and WorkSpec.from_json(a.to_json()) == a


def test_parse_work_names_every_problem() -> None:
    with pytest.raises(WorkError) as caught:
        parse_work({"metadata": {"name": "x"}, "spec": {"manifests": [cm("a"), {"kind": "Secret"}, cm("a")], "placement": {"clusters": "c1", "zone": 1}}})
    fields = [field for field, _ in caught.value.causes]
    assert fields == ["spec.placement", "spec.placement.clusters", "spec.manifests[1].apiVersion", "spec.manifests[1].metadata.name", "spec.manifests[2]"]


def test_manifest_ids_round_trip_with_group_versions_and_without_namespaces() -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}}
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    assert manifest_id(deployment) == "apps/v1/Deployment/shop/web" and split_manifest_id("apps/v1/Deployment/shop/web") == (
        "apps/v1",
        "Deployment",
        "shop",
        "web",
    )
    assert manifest_id(namespace) == "v1/Namespace//shop" and split_manifest_id("v1/Namespace//shop") == ("v1", "Namespace", "", "shop")


def test_drift_is_a_manifest_field_missing_or_different_not_extra_fields() -> None:
    desired = {"metadata": {"name": "a", "labels": {"app": "a"}}, "spec": {"replicas": 2, "ports": [{"port": 80}]}}
    live = {
        "metadata": {"name": "a", "uid": "u", "labels": {"app": "a", "x": "y"}},
        "spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}]},
        "status": {},
    }
    assert not drifted(desired, live)
    assert drifted(desired, {**live, "spec": {"replicas": 3, "ports": [{"port": 80}]}})
    assert drifted(desired, {**live, "metadata": {"name": "a"}}), "a label of the manifest removed"
    assert drifted(desired, {**live, "spec": {"replicas": 2, "ports": []}})


def test_availability_of_workloads_pods_jobs_and_plain_objects() -> None:
    deployment = {"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 3}}
    assert not is_available({**deployment, "status": {"availableReplicas": 3, "observedGeneration": 1}}), "an old generation's replicas"
    assert not is_available({**deployment, "status": {"availableReplicas": 2, "observedGeneration": 2}})
    assert is_available({**deployment, "status": {"availableReplicas": 3, "observedGeneration": 2}})
    assert is_available({"kind": "StatefulSet", "spec": {}, "status": {"readyReplicas": 1}})
    assert not is_available({"kind": "Pod", "status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert is_available({"kind": "Pod", "status": {"phase": "Succeeded"}})
    assert not is_available({"kind": "Job", "status": {}}) and is_available({"kind": "Job", "status": {"succeeded": 1}})
    assert is_available({"kind": "ConfigMap"})


def test_a_clusters_snapshot_has_its_works_with_their_inventory_and_what_to_remove() -> None:
    web = parse_work({"metadata": {"name": "web"}, "spec": {"placement": {"clusterSelector": "env=prod"}, "manifests": [cm("web")]}})[1]
    db = parse_work({"metadata": {"name": "db"}, "spec": {"placement": {"clusters": ["c2"]}, "manifests": [cm("db")]}})[1]
    works = [record("db", 3, db), record("web", 4, web)]
    statuses = [
        WorkStatusRecord("web", "c1", 2, orjson.dumps([{"manifest": "v1/ConfigMap/default/old", "condition": "Applied", "message": ""}]), 1.0),
        WorkStatusRecord("db", "c1", 3, orjson.dumps([{"manifest": "v1/ConfigMap/default/db", "condition": "Available", "message": ""}]), 1.0),
        WorkStatusRecord("gone", "c1", 1, orjson.dumps([{"manifest": "v1/ConfigMap/default/g", "condition": "Available", "message": ""}]), 1.0),
        WorkStatusRecord("gone", "c2", 1, orjson.dumps([]), 1.0),
    ]
    doc = cluster_works("c1", {"env": "prod"}, works, statuses, SpecCache())
    assert doc["works"] == [{"name": "web", "generation": 4, "manifests": [cm("web")], "inventory": ["v1/ConfigMap/default/old"]}]
    assert doc["remove"] == [{"name": "db", "inventory": ["v1/ConfigMap/default/db"]}, {"name": "gone", "inventory": ["v1/ConfigMap/default/g"]}]

    (single,) = snapshot_messages(doc, max_bytes=1 << 20)
    assert single.full and single.last and single.chunk == 0 and orjson.loads(single.works_json) == doc
    chunks = snapshot_messages(doc, max_bytes=10)
    assert [(c.chunk, c.last) for c in chunks] == [(0, False), (1, False), (2, True)], "one entry per chunk when each is over the size"
    rebuilt = {
        "works": [w for c in chunks for w in orjson.loads(c.works_json)["works"]],
        "remove": [r for c in chunks for r in orjson.loads(c.works_json)["remove"]],
    }
    assert rebuilt == doc


def test_an_agents_status_is_checked_before_the_hub_writes_it() -> None:
    def status(*manifests: tuple[str, int, str], removed: tuple[str, ...] = ()) -> pb.Status:
        return pb.Status(
            manifests=[pb.ManifestStatus(work=w, generation=g, manifest="v1/ConfigMap/default/x", condition=c) for w, g, c in manifests], removed=removed
        )

    records, problem = status_records("c1", status(("web", 3, "Applied"), ("db", 1, "Failed")), now=5.0)
    assert problem == "" and [(r.work, r.cluster, r.generation) for r in records] == [("web", "c1", 3), ("db", "c1", 1)]
    assert "unknown condition 'Done'" in status_records("c1", status(("web", 3, "Done")), now=5.0)[1]
    assert "not a valid work name" in status_records("c1", status(("Web!", 3, "Applied")), now=5.0)[1]
    assert "several generations" in status_records("c1", status(("web", 3, "Applied"), ("web", 4, "Applied")), now=5.0)[1]


def test_adopt_is_a_boolean_of_the_spec_stored_only_when_true_and_sent_to_the_agents() -> None:
    plain = parse_work({"metadata": {"name": "w"}, "spec": {"manifests": [cm("x")], "placement": {"clusters": ["c1"]}}})[1]
    same = parse_work({"metadata": {"name": "w"}, "spec": {"manifests": [cm("x")], "placement": {"clusters": ["c1"]}, "adopt": False}})[1]
    assert plain.to_json() == same.to_json() and b"adopt" not in plain.to_json(), "specs stored before adopt existed keep their bytes"
    adopting = parse_work({"metadata": {"name": "w"}, "spec": {"manifests": [cm("x")], "placement": {"clusters": ["c1"]}, "adopt": True}})[1]
    assert adopting.adopt and WorkSpec.from_json(adopting.to_json()) == adopting
    assert cluster_works("c1", {}, [record("w", 2, adopting)], [], SpecCache())["works"][0]["adopt"] is True
    assert "adopt" not in cluster_works("c1", {}, [record("w", 1, plain)], [], SpecCache())["works"][0]
    annotated = {**cm("y"), "metadata": {"name": "y", "annotations": {"fleetsync.io/adopted": "w"}}}
    with pytest.raises(WorkError) as caught:
        parse_work({"metadata": {"name": "w"}, "spec": {"manifests": [annotated], "adopt": "yes"}})
    assert {f for f, _ in caught.value.causes} == {"spec.adopt", "spec.manifests[0].metadata.annotations"}, caught.value.causes
