"""An object from the cluster's JSON bytes to its wire form (protocol/wireobject.py) and the raw
reading of LIST pages and watch lines (agent/apijson.py): what the agent ships is the object, stripped."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetsync.agent.apijson import DICTS, RAW
from fleetsync.model.watchevents import Expired, WatchError
from fleetsync.protocol import codec
from fleetsync.protocol.wireobject import LAST_APPLIED, ObjectJsonError, body_of, fields_of, fields_of_dict, wire_object


def pod(name: str = "p1", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": f"uid-{name}",
            "resourceVersion": "42",
            "labels": {"app": "web"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "uid": "u", "controller": True}],
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {"f:phase": {}}}}],
            "annotations": {LAST_APPLIED: '{"kind":"Pod"}', "team": "a"},
            **meta,
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx:1"}]},
        "status": {"phase": "Running"},
    }


def test_the_wire_form_is_the_object_stripped_with_its_metadata_beside_it() -> None:
    obj = wire_object(fields_of(orjson.dumps(pod())))
    body = orjson.loads(codec.body_json(obj.body, 1))
    expected = pod()
    del expected["metadata"]["managedFields"]
    del expected["metadata"]["annotations"][LAST_APPLIED]
    assert body == expected
    assert (obj.namespace, obj.name, obj.uid, obj.resource_version, obj.owner, dict(obj.labels)) == (
        "shop",
        "p1",
        "uid-p1",
        "42",
        "ReplicaSet/web-1",
        {"app": "web"},
    )
    assert obj.hash == codec.object_hash(codec.body_json(obj.body, 1))


def test_an_annotation_map_of_only_last_applied_goes_with_it() -> None:
    body = orjson.loads(body_of(fields_of_dict(pod(annotations={LAST_APPLIED: "{}"}))))
    assert "annotations" not in body["metadata"]


def test_top_level_and_metadata_key_order_do_not_change_the_hash() -> None:
    """What a server may reorder as it rebuilds an object: the body is the same bytes."""
    original = pod()
    reordered = dict(reversed(list(original.items())))
    reordered["metadata"] = dict(reversed(list(original["metadata"].items())))
    assert wire_object(fields_of_dict(reordered)).hash == wire_object(fields_of_dict(original)).hash
    assert wire_object(fields_of_dict(pod(labels={"app": "db"}))).hash != wire_object(fields_of_dict(original)).hash


def test_nested_values_stay_the_servers_bytes() -> None:
    """Below the top level and metadata nothing is parsed: the server's bytes are shipped as they came."""
    served = b'{"kind":"Pod","metadata":{"name":"p","namespace":"n"},"spec":{"z":1,"a":"caf\\u00e9 \\u003c"}}'
    assert body_of(fields_of(served)) == served


def test_keys_that_need_escaping_stay_valid_json() -> None:
    obj = {"kind": "Thing", 'we"ird\\key': {"x": 1}, "metadata": {"name": "t", "ünï": "v"}}
    assert orjson.loads(body_of(fields_of_dict(obj))) == obj


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@given(
    extra=st.dictionaries(st.text(max_size=6).filter(lambda k: k != "metadata"), json_values, max_size=4),
    meta=st.dictionaries(st.sampled_from(["generation", "finalizers", "annotations", "x"]), json_values, max_size=3),
)
def test_the_body_is_the_object_as_codec_strip_leaves_it(extra: dict[str, Any], meta: dict[str, Any]) -> None:
    """For any object: what the agent ships parses to exactly what stripping it in Python gives."""
    obj = {**extra, "metadata": {"name": "o", "namespace": "ns", **meta, "managedFields": [{"manager": "m"}]}}
    if isinstance(meta.get("annotations"), dict):
        obj["metadata"]["annotations"] = {k: str(v) for k, v in meta["annotations"].items()} | {LAST_APPLIED: "{}"}
    elif "annotations" in meta:
        obj["metadata"].pop("annotations")  # (annotations are a map of strings in every object an API server serves)
    assert orjson.loads(body_of(fields_of_dict(obj))) == codec.strip(copy.deepcopy(obj))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"[1, 2]", "not a Kubernetes object"),
        (b'{"kind": "Pod", "metadata": ', "not a Kubernetes object"),
        (b'{"kind": "Pod", "metadata": [1]}', "object metadata"),
        (b'{"kind": "Pod", "metadata": {"labels": {"a": 1}}}', "object metadata"),
    ],
)
def test_what_is_not_an_object_is_a_clear_error(data: bytes, says: str) -> None:
    with pytest.raises(ObjectJsonError, match=says):
        wire_object(fields_of(data))


def test_a_raw_page_gives_each_objects_fields_and_the_lists_position() -> None:
    page = {"kind": "PodList", "metadata": {"resourceVersion": "9", "continue": "abc"}, "items": [pod("a"), pod("b")]}
    items, token, version = RAW.page(orjson.dumps(page))
    assert (token, version) == ("abc", "9")
    assert [orjson.loads(body_of(i))["metadata"]["name"] for i in items] == ["a", "b"]
    assert DICTS.page(orjson.dumps(page))[1:] == ("abc", "9")
    with pytest.raises(ValueError, match="not a Kubernetes list"):
        RAW.page(b'{"items": 3}')


def test_a_raw_watch_line_gives_the_event_its_object_and_version() -> None:
    decoded = RAW.event(orjson.dumps({"type": "MODIFIED", "object": pod("a")}))
    assert decoded is not None
    kind, fields, version = decoded
    assert (kind, version, wire_object(fields).name) == ("MODIFIED", "42", "a")
    bookmark = RAW.event(b'{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"77"}}}')
    assert bookmark is not None and bookmark[2] == "77"
    assert RAW.event(b"  \n") is None
    with pytest.raises(Expired):
        RAW.event(b'{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old"}}')
    with pytest.raises(WatchError, match="boom"):
        RAW.event(b'{"type":"ERROR","object":{"kind":"Status","code":500,"message":"boom"}}')
    with pytest.raises(ValueError, match="not a Kubernetes WatchEvent"):
        RAW.event(b"{not json")
