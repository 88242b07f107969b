from __future__ import annotations

import orjson
import pytest

from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb


def pod(**meta: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p1",
            "namespace": "default",
            "labels": {"app": "web"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "controller": True}],
            "managedFields": [{"manager": "kubelet"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
            **meta,
        },
        "spec": {"nodeName": "n1"},
    }


def test_bundle_round_trips_through_the_codec() -> None:
    obj = codec.make_object(pod())
    message = pb.AgentMessage(
        bundle=pb.Bundle(
            type="v1/Pod", incarnation="i1", seq=7, base_seq=6, kind=pb.DELTA, upserts=[obj], deletes=["default/gone"], compression=pb.COMPRESSION_LZ4
        )
    )
    decoded = codec.decode_agent_message(codec.encode(message))
    assert decoded == message
    assert decoded.WhichOneof("message") == "bundle"


def test_object_is_stripped_hashed_and_compressed_once() -> None:
    obj = codec.make_object(pod())
    body = orjson.loads(codec.body_json(obj.body, pb.COMPRESSION_LZ4))
    assert "managedFields" not in body["metadata"] and "annotations" not in body["metadata"]
    assert (obj.namespace, obj.name, obj.owner, dict(obj.labels)) == ("default", "p1", "ReplicaSet/web-1", {"app": "web"})
    reordered = pod()
    reordered["metadata"] = dict(reversed(list(reordered["metadata"].items())))
    assert codec.make_object(reordered).hash == obj.hash  # canonical JSON: key order does not matter
    assert codec.make_object(pod(labels={"app": "db"})).hash != obj.hash


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b""])
def test_garbage_is_a_clear_codec_error(data: bytes) -> None:
    with pytest.raises(codec.CodecError, match="AgentMessage"):
        codec.decode_agent_message(data)
    with pytest.raises(codec.CodecError):
        codec.body_json(b"not lz4", pb.COMPRESSION_LZ4)
