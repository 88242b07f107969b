"""A session's end always hands the lease back and records the disconnect, however the transport ends it."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from fleetsync.hub import events
from fleetsync.hub.auth import hash_token
from fleetsync.hub.core import HubCore, HubSettings
from fleetsync.hub.session import Session
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.sqlite import SQLiteStore
from tests.harness import eventually

TOKEN = "test-token"


async def connected_session(core: HubCore) -> Session:
    sent: list[pb.HubMessage] = []

    async def send(message: object) -> None:
        assert isinstance(message, pb.HubMessage)
        sent.append(message)

    session = Session(core, send, peer="test")
    hello = pb.Hello(cluster_id="c1", agent_id="agent-a", incarnation="inc-1", token=TOKEN, protocol_version=1)
    await session.handle(pb.AgentMessage(hello=hello))
    assert sent and sent[0].WhichOneof("message") == "welcome", sent
    return session


async def test_a_close_interrupted_by_cancellation_still_releases_the_lease(tmp_path: Path) -> None:
    # gRPC cancels the handler of a peer that vanished, possibly while the handler is
    # already closing the session. The cleanup must finish anyway: a session cut off
    # half-way would keep renewing the dead agent's lease and lock its cluster for good.
    store = SQLiteStore(tmp_path / "hub.db")
    await store.open()
    await store.add_token(name="c1", role="agent", token_hash=hash_token(TOKEN))
    core = HubCore(store, HubSettings(lease_ttl=0.3, grace_period=0.5))
    await core.start()  # its timer renews the leases of the sessions it holds
    try:
        session = await connected_session(core)
        closing = asyncio.create_task(session.close())
        while not closing.done():  # the transport cancels its caller at every step of the close
            await asyncio.sleep(0)
            closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        await eventually(lambda: store.events(reason=events.DISCONNECTED), timeout=5, what="the Disconnected event")
        assert "c1" not in core.sessions
        # Past the grace period nobody renews the lease: another agent may take the cluster.

        async def taken_over() -> bool:
            result = await store.acquire_lease("c1", holder="agent-b", incarnation="inc-1", hub_id="hub-1", now=core.clock(), ttl=30)
            return result.granted

        await eventually(taken_over, timeout=5, what="the lease free for another agent")
    finally:
        await core.stop()
        await store.close()


async def test_nothing_but_the_welcome_goes_to_an_agent_first_even_while_gates_and_works_fan_out(tmp_path: Path) -> None:
    # The session joins the hub's sessions a few awaits before its Welcome goes out; a gate or
    # work written meanwhile (by an admin, another cluster, another replica) fans out to every
    # session. An agent answered by a spec update before its Welcome drops the connection and
    # moves to another hub, so the fan-out must wait for the Welcome.
    store = SQLiteStore(tmp_path / "hub.db")
    await store.open()
    await store.add_token(name="c1", role="agent", token_hash=hash_token(TOKEN))
    core = HubCore(store, HubSettings())
    await core.start()
    sent: list[pb.HubMessage] = []

    async def send(message: object) -> None:
        assert isinstance(message, pb.HubMessage)
        sent.append(message)

    async def fan_out_until_welcomed() -> int:
        pushes = 0
        while not sent:
            core.downstream.push_gates()
            core.downstream.push_works()
            pushes += 1
            await asyncio.sleep(0)
        return pushes

    try:
        session = Session(core, send, peer="test")
        hello = pb.Hello(cluster_id="c1", agent_id="agent-a", incarnation="inc-1", token=TOKEN, protocol_version=1, capabilities=["works"])
        pushes = asyncio.create_task(fan_out_until_welcomed())
        await session.handle(pb.AgentMessage(hello=hello))
        assert await pushes > 10, "the fan-out ran while the Hello was handled"
        assert sent[0].WhichOneof("message") == "welcome", [m.WhichOneof("message") for m in sent[:3]]

        async def snapshot_sent() -> bool:
            return any(m.WhichOneof("message") == "spec_update" for m in sent)

        await eventually(snapshot_sent, timeout=5, what="the snapshots after the Welcome")
        await session.close()
    finally:
        await core.stop()
        await store.close()
