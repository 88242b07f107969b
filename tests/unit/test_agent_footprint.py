"""What keeps the agent light: its cache holds each object serialized (not as a protobuf message),
every bundle built from it carries the objects exactly as made for the wire, and the Kubernetes
client's generated classes are not loaded by the agent (but still work if some code asks)."""

from __future__ import annotations

import random
import string
import subprocess
import sys
from typing import Any

from fleetsync.agent.typesync import Cached, TypeSync
from fleetsync.agent.uplink import Uplink, UplinkSettings
from fleetsync.heap import release_free_memory
from fleetsync.model.types import CONFIG_MAP, POD
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import Position


def pod(name: str, version: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "resourceVersion": str(version),
            "labels": {"app": name},
            "managedFields": [{"manager": "kubectl"}],
            "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "controller": True}],
        },
        "spec": {"containers": [{"name": "c", "image": f"img:{version}"}]},
    }


def test_the_cache_holds_the_hash_and_the_serialized_object() -> None:
    sync = TypeSync(POD, "inc", max_message_bytes=512 * 1024)
    sync.on_list([pod("a"), pod("b")])
    cached = sync.cache["ns/a"]
    assert isinstance(cached, Cached) and isinstance(cached.wire, bytes)
    assert cached == Cached(codec.make_object(pod("a")).hash, codec.make_object(pod("a")).SerializeToString())
    assert cached.size == codec.make_object(pod("a")).ByteSize() + 8, "a message's budget counts the same bytes as before"


def test_full_and_delta_carry_the_objects_as_made_for_the_wire() -> None:
    sync = TypeSync(POD, "inc", max_message_bytes=512 * 1024)
    sync.on_list([pod("a"), pod("b")])
    sync.stream.plan(None)
    sync.start_full()
    full = sync.next_full_chunk()
    assert full.last and [o.name for o in full.upserts] == ["a", "b"]
    assert list(full.upserts) == [codec.make_object(pod("a")), codec.make_object(pod("b"))]
    sync.stream.on_ack("inc", full.seq, chunk=full.chunk)
    sync.on_event("MODIFIED", pod("a", 2))
    sync.on_event("DELETED", pod("b"))
    (delta,) = sync.deltas(8)
    assert list(delta.upserts) == [codec.make_object(pod("a", 2))] and list(delta.deletes) == ["ns/b"]
    assert sync.stream.plan(Position("inc", full.seq))[1][0][2] is delta, "the held bundle resumes as it was sent"


def test_pull_mode_snapshot_has_every_object() -> None:
    sync = TypeSync(POD, "inc", max_message_bytes=512 * 1024)
    sync.on_list([pod("a"), pod("b")])
    bundle = pb.Bundle()
    sync.add_snapshot(bundle.upserts)
    assert sorted(bundle.upserts, key=lambda o: o.name) == [codec.make_object(pod("a")), codec.make_object(pod("b"))]
    assert all(isinstance(o, pb.Object) for o in bundle.upserts)


def test_the_agent_does_not_load_the_clients_generated_classes_unless_asked() -> None:
    script = (
        "import sys\n"
        "import fleetsync.agent.runner\n"
        "from kubernetes_asyncio import client, config\n"
        "loaded = [m for m in sys.modules if m.startswith('kubernetes_asyncio.client.models.')]\n"
        "assert not loaded, loaded[:5]\n"
        "assert client.ApiClient and client.Configuration and config.load_kube_config\n"
        "from kubernetes_asyncio.client import V1Pod, CoreV1Api\n"  # code that wants them still gets them
        "assert V1Pod(metadata=client.V1ObjectMeta(name='p')).metadata.name == 'p' and CoreV1Api\n"
        "from kubernetes_asyncio.dynamic import DynamicClient\n"
        "import kubernetes_asyncio; assert kubernetes_asyncio.__version__\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_free_memory_is_released_on_glibc() -> None:
    assert release_free_memory() is (sys.platform == "linux")


def test_a_full_keeps_at_most_its_bytes_in_flight_and_streams_on_each_ack() -> None:
    sync = TypeSync(POD, "inc", max_message_bytes=4096)
    sync.on_list([pod(f"p{i:03}") for i in range(60)])  # ~10 per 4 KiB chunk: six chunks or more
    uplink = Uplink({POD.gvk: sync}, pb.Welcome(), settings=UplinkSettings(full_bytes_in_flight=4 * 4096), now=0.0)
    first = [out.message.bundle for out in uplink.poll(0.0) if out.kind == "full"]
    assert [b.chunk for b in first] == [0, 1, 2, 3], "four chunks of 4 KiB, though the window allows 32 messages"
    assert [out.kind for out in uplink.poll(0.1)] == [], "no more until one is acked"
    uplink.receive(pb.HubMessage(ack=pb.Ack(type=POD.gvk, incarnation="inc", seq=first[0].seq, chunk=1, partial=True)), 0.2)
    assert [out.message.bundle.chunk for out in uplink.poll(0.2) if out.kind == "full"] == [4, 5]


def test_full_chunks_in_flight_are_counted_by_their_size_not_their_number() -> None:
    # At the hub's 128 KiB chunks 2 MiB are 16 chunks; objects larger than a chunk go alone,
    # each chunk its own size, and count as such: still 2 MiB in flight, not 16 x 400 KiB.
    def config_map(name: str, size: int) -> dict[str, object]:
        noise = "".join(random.Random(name).choices(string.ascii_letters + string.digits, k=size))  # lz4 cannot shrink it
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"}, "data": {"blob": noise}}

    def in_flight(objects: list[dict[str, object]]) -> list[pb.Bundle]:
        sync = TypeSync(CONFIG_MAP, "inc", max_message_bytes=512 * 1024)
        sync.on_list(objects)
        uplink = Uplink({CONFIG_MAP.gvk: sync}, pb.Welcome(max_message_bytes=512 * 1024, chunk_bytes=128 * 1024), settings=UplinkSettings(), now=0.0)
        return [out.message.bundle for out in uplink.poll(0.0) if out.kind == "full"]

    small = in_flight([config_map(f"s{i:04}", 2_000) for i in range(2_000)])  # ~4 MB: more than 2 MiB
    assert len(small) == 16 and sum(b.ByteSize() for b in small) <= 2 * 1024 * 1024
    large = in_flight([config_map(f"b{i:02}", 400_000) for i in range(20)])
    assert all(len(b.upserts) == 1 for b in large), "each larger than a chunk: alone"
    assert len(large) == 5 and sum(b.ByteSize() for b in large) <= 2 * 1024 * 1024 + 400 * 1024, [b.ByteSize() for b in large]
