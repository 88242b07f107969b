"""The max message size on the agent: objects too large are left out and named, and come back
when the hub's limit goes up again (a raised limit must not need an agent restart)."""

from __future__ import annotations

import random
import string

from fleetsync.agent.typesync import TypeSync
from fleetsync.model.types import CONFIG_MAP


def config_map(name: str, size: int) -> dict[str, object]:
    noise = "".join(random.Random(name).choices(string.ascii_letters + string.digits, k=size))  # lz4 cannot shrink it
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"}, "data": {"blob": noise}}


def test_objects_left_out_under_a_small_hub_limit_are_synced_again_when_it_goes_up() -> None:
    sync = TypeSync(CONFIG_MAP, "inc", max_message_bytes=512 * 1024)
    sync.on_list([config_map("small", 100), config_map("big", 100_000)])
    assert set(sync.cache) == {"ns/small", "ns/big"} and sync.error == ""

    sync.limit_to(64 * 1024)  # a hub that takes less
    assert set(sync.cache) == {"ns/small"} and sync.pending["ns/big"] is None, "left out: deleted on the hub"
    assert "1 object(s) larger than the max message size (65536 bytes)" in sync.error and "ns/big" in sync.error

    sync.pending.clear()
    sync.limit_to(512 * 1024)  # the hub's limit is raised: the object is synced again, without a relist
    assert set(sync.cache) == {"ns/small", "ns/big"} and sync.pending["ns/big"] is not None and sync.error == ""

    sync.on_list([config_map("small", 100), config_map("huge", 600_000)])
    assert "ns/huge" in sync.error and "ns/big" not in sync.cache
    sync.on_event("DELETED", config_map("huge", 10))
    assert sync.error == "", "a deleted object is no longer reported"


def test_a_full_is_cut_at_the_hubs_chunk_size_and_an_object_larger_goes_alone() -> None:
    # The hub's memory for an agent it holds back follows the size of the chunks in flight
    # to it, so it asks for small ones (Welcome.chunk_bytes); an object larger than that
    # still syncs, alone in its chunk, up to the max message size.
    sync = TypeSync(CONFIG_MAP, "inc", max_message_bytes=512 * 1024)
    sync.on_list([config_map(f"small-{i:02}", 3_000) for i in range(40)] + [config_map("big", 100_000)])
    sync.limit_to(512 * 1024, 16 * 1024)
    sync.start_full()
    chunks = [sync.next_full_chunk()]
    while not chunks[-1].last:
        chunks.append(sync.next_full_chunk())
    sizes = {tuple(o.name for o in c.upserts): c.ByteSize() for c in chunks}
    assert [names for names in sizes if "big" in names] == [("big",)], "the large object goes alone"
    assert all(size <= 16 * 1024 for names, size in sizes.items() if names != ("big",)), sizes
    assert sum(len(c.upserts) for c in chunks) == 41 and len(chunks) >= 8, "every object, in chunks of ~5 small ones"
    assert sync.error == "", "nothing is left out"
