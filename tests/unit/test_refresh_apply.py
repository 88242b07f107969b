"""A pull refresh writes a type's state as a pushed FULL is written (group commit, the store's
plan): only objects that really changed take a revision, vanished ones are deleted, and a type
that failed to list or carries a bad body keeps its last state. Checked against both store
engines, with a real hub core fetching a real HTTP ``GET /v1/state``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import lz4.frame
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fleetsync.hub import events
from fleetsync.hub.core import HubCore, HubSettings
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.codec import make_object
from fleetsync.store.contract import RefreshTarget, Store

POD, NODE = "v1/Pod", "v1/Node"
NEVER = 1e12  # the scheduler's own claims never come: the test refreshes by hand


def pod(name: str, image: str = "web:1") -> pb.Object:
    return make_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "default", "name": name}, "spec": {"image": image}})


def node(name: str) -> pb.Object:
    return make_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})


@dataclass
class PullAgent:
    """What an agent run with ``--serve-state`` answers: a FULL per type, a new seq per answer."""

    pods: list[pb.Object] = field(default_factory=list)
    nodes: list[pb.Object] = field(default_factory=list)
    pod_error: str = ""
    served: int = 0

    def state(self) -> bytes:
        self.served += 1
        hello = pb.Hello(cluster_id="c1", agent_id="agent-a", incarnation="inc-1", protocol_version=1)
        full = {"incarnation": "inc-1", "seq": self.served, "kind": pb.FULL, "last": True, "compression": pb.COMPRESSION_LZ4}
        bundles = [pb.Bundle(type=POD, upserts=self.pods, error=self.pod_error, **full), pb.Bundle(type=NODE, upserts=self.nodes, **full)]
        return pb.State(agent=hello, bundles=bundles).SerializeToString()


@pytest.fixture
async def hub(each_store: Store) -> AsyncIterator[tuple[HubCore, PullAgent, RefreshTarget]]:
    store = each_store
    agent = PullAgent()

    async def serve(_: web.Request) -> web.Response:
        return web.Response(body=agent.state(), content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_get("/v1/state", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    core = HubCore(store, HubSettings())
    await store.set_refresh("c1", mode="pull", url=str(server.make_url("/v1/state")), interval=60, next_refresh_at=NEVER)
    (target,) = await store.refresh_targets("c1")
    await core.refresh.start()
    try:
        yield core, agent, target
    finally:
        await core.stop()
        await server.close()


async def refresh(core: HubCore, target: RefreshTarget) -> str:
    """Refresh ``target`` now; the message of its ``Refreshed`` event (it ends with "N changed")."""
    assert await core.refresh.refresh(target)
    return (await core.store.events(reason=events.REFRESHED))[-1].message


async def pods(store: Store) -> dict[str, int]:
    return {o.name: o.hash for o in await store.list_objects(POD, cluster="c1")}


async def test_a_refresh_writes_only_what_changed_and_deletes_what_vanished(hub: tuple[HubCore, PullAgent, RefreshTarget]) -> None:
    core, agent, target = hub
    store = core.store
    agent.pods, agent.nodes = [pod("a"), pod("b"), pod("c")], [node("n1")]
    rev = await store.current_rev()
    assert (await refresh(core, target)).endswith("; 4 changed")
    assert [(c.type, c.obj.name) for c in await store.changes_since(rev)] == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c"), ("ADDED", "n1")]
    assert set(await pods(store)) == {"a", "b", "c"}

    rev = await store.current_rev()
    assert (await refresh(core, target)).endswith("; 0 changed")
    assert await store.current_rev() == rev and await store.changes_since(rev) == [], "an unchanged state takes no revision"

    agent.pods = [pod("a"), pod("b", image="web:2"), pod("d")]
    assert (await refresh(core, target)).endswith("; 3 changed")
    assert sorted((c.type, c.obj.name) for c in await store.changes_since(rev)) == [("ADDED", "d"), ("DELETED", "c"), ("MODIFIED", "b")]
    assert await pods(store) == {"a": pod("a").hash, "b": pod("b", image="web:2").hash, "d": pod("d").hash}
    assert {(s.type, s.incarnation, s.seq) for s in await store.streams("c1")} == {(POD, "inc-1", 3), (NODE, "inc-1", 3)}, (
        "each stream moved to the state applied"
    )
    bundles = sum(s.value for m in core.metrics.batch_bundles.collect() for s in m.samples if s.name.endswith("_sum"))
    assert bundles == 6, "each type's state of each refresh went through the hub's group commit"
    assert [e.reason for e in await store.events(cluster="c1")] == [events.CLUSTER_NEW, events.REFRESHED, events.REFRESHED, events.REFRESHED]


async def test_a_type_that_failed_to_list_or_carries_a_bad_body_keeps_its_last_state(hub: tuple[HubCore, PullAgent, RefreshTarget]) -> None:
    core, agent, target = hub
    store = core.store
    agent.pods, agent.nodes = [pod("a"), pod("b")], [node("n1")]
    await refresh(core, target)
    held = await pods(store)

    agent.pods, agent.pod_error = [], "pods is forbidden"
    bad = node("n2")
    bad.body = lz4.frame.compress(b"[1, 2]")
    agent.nodes = [node("n1"), bad]
    rev = await store.current_rev()
    assert (await refresh(core, target)).endswith("; 0 changed")
    assert await pods(store) == held and await store.changes_since(rev) == []
    assert {s.type: s.error for s in await store.streams("c1")}[POD] == "pods is forbidden"
    (refused,) = await store.events(reason=events.TYPE_REFUSED)
    assert (
        refused.type == NODE
        and refused.message == "pulled state of v1/Node refused: the body of /n2 is JSON but not an object (a list); it must be one JSON object"
    ), refused
    assert [o.name for o in await store.list_objects(NODE, cluster="c1")] == ["n1"]

    agent.pods, agent.pod_error, agent.nodes = [pod("a")], "", [node("n1")]
    assert (await refresh(core, target)).endswith("; 1 changed")
    assert await pods(store) == {"a": held["a"]}
    assert {s.type: s.error for s in await store.streams("c1")}[POD] == "", "the type lists again"
