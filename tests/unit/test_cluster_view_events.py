"""Seed 003's cluster view for push clusters: an agent that comes back with other metadata makes a
``ClusterChanged`` event naming what changed (pull clusters get it from their refreshes)."""

from __future__ import annotations

from pathlib import Path

from fleetsync.hub import events
from fleetsync.hub.auth import hash_token
from fleetsync.hub.clusterlabels import changed_keys
from fleetsync.hub.core import HubCore, HubSettings
from fleetsync.hub.session import Session
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.sqlite import SQLiteStore

TOKEN = "test-token"


async def connect(core: HubCore, incarnation: str, metadata: dict[str, str]) -> Session:
    sent: list[pb.HubMessage] = []

    async def send(message: object) -> None:
        assert isinstance(message, pb.HubMessage)
        sent.append(message)

    session = Session(core, send, peer="test")
    hello = pb.Hello(cluster_id="c1", agent_id="agent-a", incarnation=incarnation, token=TOKEN, protocol_version=1, metadata=metadata)
    await session.handle(pb.AgentMessage(hello=hello))
    assert sent and sent[0].WhichOneof("message") == "welcome", sent
    return session


def test_changed_keys_names_what_was_added_removed_or_changed() -> None:
    assert changed_keys({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9", "d": "4"}) == ["b", "c", "d"]
    assert changed_keys({"a": "1"}, {"a": "1"}) == []


async def test_a_push_cluster_whose_agent_returns_with_other_metadata_makes_one_cluster_changed_event(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hub.db")
    await store.open()
    await store.add_token(name="c1", role="agent", token_hash=hash_token(TOKEN))
    core = HubCore(store, HubSettings(grace_period=0))
    try:
        first = await connect(core, "inc-1", {"fleetsync.io/kubernetes-version": "v1.30.0", "region": "eu"})
        await first.close()
        assert not await store.events(reason=events.CLUSTER_CHANGED), "a first connection is not a change"
        again = await connect(core, "inc-2", {"fleetsync.io/kubernetes-version": "v1.31.2", "region": "eu"})  # upgraded while its agent was away
        await again.close()
        (changed,) = await store.events(reason=events.CLUSTER_CHANGED)
        assert changed.cluster == "c1" and changed.message == "metadata changed: fleetsync.io/kubernetes-version", changed
        same = await connect(core, "inc-3", {"fleetsync.io/kubernetes-version": "v1.31.2", "region": "eu"})
        await same.close()
        assert len(await store.events(reason=events.CLUSTER_CHANGED)) == 1, "the same metadata again is no change"
    finally:
        await core.stop()
        await store.close()
