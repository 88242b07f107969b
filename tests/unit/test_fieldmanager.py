"""Server-side apply semantics of the simulator (the parts users rely on)."""

from __future__ import annotations

import pytest

from fleetsync.model.status import ApiError
from fleetsync.sim import fieldmanager, patching

NOW = "2026-11-22T00:00:00Z"


def deployment(replicas: int, **extra_labels: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", **extra_labels}},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": "nginx:1"}]}}},
    }


def test_first_apply_records_ownership_of_every_applied_field() -> None:
    obj = fieldmanager.apply(None, deployment(2), manager="kubectl", force=False, now=NOW)
    (entry,) = obj["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"], entry["fieldsType"]) == ("kubectl", "Apply", "FieldsV1")
    fields = entry["fieldsV1"]
    assert fields["f:spec"]["f:replicas"] == {}
    assert fields["f:metadata"]["f:labels"]["f:app"] == {}
    assert "." in fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"app"}']


def test_reapplying_the_same_config_changes_nothing() -> None:
    obj = fieldmanager.apply(None, deployment(2), manager="kubectl", force=False, now=NOW)
    again = fieldmanager.apply(obj, deployment(2), manager="kubectl", force=False, now="2030-01-01T00:00:00Z")
    assert again == obj


def test_fields_dropped_from_the_config_are_removed_unless_someone_else_owns_them() -> None:
    obj = fieldmanager.apply(None, deployment(2, tier="web"), manager="kubectl", force=False, now=NOW)
    obj = fieldmanager.apply(obj, deployment(2), manager="kubectl", force=False, now=NOW)
    assert obj["metadata"]["labels"] == {"app": "web"}


def test_changing_a_field_another_manager_owns_conflicts_unless_forced() -> None:
    obj = fieldmanager.apply(None, deployment(2), manager="kubectl", force=False, now=NOW)
    scaled = {**obj, "spec": {**obj["spec"], "replicas": 5}}
    fieldmanager.record_update(obj, scaled, manager="hpa", now=NOW)
    with pytest.raises(ApiError) as conflict:
        fieldmanager.apply(scaled, deployment(3), manager="kubectl", force=False, now=NOW)
    assert conflict.value.code == 409 and 'conflict with "hpa"' in conflict.value.message and ".spec.replicas" in conflict.value.message
    forced = fieldmanager.apply(scaled, deployment(3), manager="kubectl", force=True, now=NOW)
    assert forced["spec"]["replicas"] == 3
    assert {e["manager"] for e in forced["metadata"]["managedFields"]} == {"kubectl"}


def test_applying_the_value_another_manager_set_shares_the_field_without_conflict() -> None:
    obj = fieldmanager.apply(None, deployment(2), manager="kubectl", force=False, now=NOW)
    scaled = {**obj, "spec": {**obj["spec"], "replicas": 5}}
    fieldmanager.record_update(obj, scaled, manager="hpa", now=NOW)
    assert fieldmanager.apply(scaled, deployment(5), manager="kubectl", force=False, now=NOW)["spec"]["replicas"] == 5


def test_strategic_merge_patch_merges_containers_by_name() -> None:
    target = deployment(1)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "envoy"}, {"name": "app", "image": "nginx:2"}]}}}}
    result = patching.apply_patch(patching.STRATEGIC_MERGE_PATCH, target, patch, custom_resource=False)
    assert result["spec"]["template"]["spec"]["containers"] == [{"name": "app", "image": "nginx:2"}, {"name": "sidecar", "image": "envoy"}]
    merged = patching.apply_patch(patching.MERGE_PATCH, target, patch, custom_resource=False)
    assert len(merged["spec"]["template"]["spec"]["containers"]) == 2 and merged["spec"]["template"]["spec"]["containers"][0]["name"] == "sidecar"
    with pytest.raises(ApiError) as refused:
        patching.apply_patch(patching.STRATEGIC_MERGE_PATCH, target, patch, custom_resource=True)
    assert refused.value.code == 415
    with pytest.raises(ApiError) as bad:
        patching.apply_patch(patching.JSON_PATCH, target, [{"op": "remove", "path": "/nope"}], custom_resource=False)
    assert bad.value.code == 422
