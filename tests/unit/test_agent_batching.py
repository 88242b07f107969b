"""The agent sends a change at once when nothing is in flight, and batches changes while the hub is busy.

The pure policy (:class:`ChangeBatcher`) on a virtual clock, then the real runner loop
(``Agent._session``) against an in-memory hub that acks only when the test says: an idle
agent's change must go without waiting the batching window (the window is 30 s, the tests
wait at most 10 s for it); changes made while a bundle is unacknowledged must wait, and go
together in one bundle when the ack comes, or once the window has passed without it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fleetsync.agent.batching import ChangeBatcher
from fleetsync.agent.runner import Agent, AgentConfig
from fleetsync.aio import cancel_and_wait
from fleetsync.backoff import Backoff
from fleetsync.model.types import POD, SERVICE
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.wireobject import fields_of_dict
from fleetsync.transport.base import parse_hub_url
from tests.harness import eventually

# ---- the policy -------------------------------------------------------------------------


def test_idle_changes_go_at_once() -> None:
    batcher = ChangeBatcher(0.05)
    assert batcher.send_at(10.0, waiting=False, busy=False) is None
    assert batcher.send_at(10.0, waiting=True, busy=False) == 10.0
    batcher.sent(10.0)
    assert batcher.send_at(10.001, waiting=True, busy=False) == 10.001  # acked meanwhile: at once again


def test_busy_changes_wait_for_the_window_after_the_last_send() -> None:
    batcher = ChangeBatcher(0.05)
    batcher.sent(10.0)
    assert batcher.send_at(10.01, waiting=True, busy=True) == pytest.approx(10.05)
    assert batcher.send_at(10.03, waiting=True, busy=True) == pytest.approx(10.05)  # later changes join the batch
    assert batcher.send_at(10.04, waiting=True, busy=False) == 10.04  # the ack came: at once
    batcher.sent(10.04)
    # the last send long ago: a change that finds the connection busy goes at once all the same
    assert batcher.send_at(11.0, waiting=True, busy=True) == 11.0


def test_a_change_never_waits_longer_than_the_window() -> None:
    batcher = ChangeBatcher(0.05)
    batcher.sent(10.0)
    assert batcher.send_at(10.02, waiting=False, busy=True) is None
    first = batcher.send_at(10.07, waiting=True, busy=True)  # first seen waiting at 10.07
    assert first == 10.07
    assert ChangeBatcher(0).send_at(5.0, waiting=True, busy=True) == 5.0  # 0: never waits


# ---- the runner, against an in-memory hub ----------------------------------------------------


class FakeHub:
    """The agent's connection; the test plays the hub (nothing is acked unless it says so)."""

    lossless = False

    def __init__(self) -> None:
        self.sent: list[tuple[float, pb.AgentMessage]] = []  # (monotonic time, message)
        self.down: asyncio.Queue[pb.HubMessage | None] = asyncio.Queue()

    async def send(self, message: pb.AgentMessage) -> None:
        self.sent.append((time.monotonic(), message))

    async def receive(self) -> pb.HubMessage | None:
        return await self.down.get()

    async def close(self) -> None:
        pass

    def deltas(self, type_: str = POD.gvk) -> list[tuple[float, pb.Bundle]]:
        return [(t, m.bundle) for t, m in self.sent if m.WhichOneof("message") == "bundle" and m.bundle.type == type_ and m.bundle.kind == pb.DELTA]

    def digests(self) -> list[pb.Digest]:
        return [m.digest for _, m in self.sent if m.WhichOneof("message") == "digest"]


def pod(name: str, version: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": str(version)},
        "spec": {"nodeName": "node-1", "v": version},
    }


def names(bundle: pb.Bundle) -> list[str]:
    return sorted(o.name for o in bundle.upserts)


async def until(predicate: Callable[[], Any], what: str) -> Any:
    """``predicate()`` once it is truthy; a failure after 10 s."""

    async def check() -> Any:
        return predicate()

    return await eventually(check, timeout=10, what=what)


@pytest.fixture
async def session(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Agent, FakeHub]]:
    """An agent of Pods and Services (both listed, empty) in a session whose hub already has its
    streams (so it resumes, with nothing to send); its ``flush_interval`` is 30 s unless the test
    parametrizes the fixture."""
    config = AgentConfig(
        cluster_id="c1",
        hubs=[parse_hub_url("grpc://127.0.0.1:1")],
        token="t",
        types=[POD, SERVICE],
        istio_interval=0,
        flush_interval=getattr(request, "param", 30.0),
    )
    agent = Agent(config)
    for sync in agent.syncs.values():
        sync.on_list([])
    hub = FakeHub()
    applied = [pb.StreamPosition(type=t, incarnation=agent.incarnation, seq=0) for t in agent.syncs]
    hub.down.put_nowait(pb.HubMessage(welcome=pb.Welcome(hub_id="test", applied=applied, heartbeat_interval_ms=600_000, max_message_bytes=1 << 20)))
    task = asyncio.create_task(agent._session(hub, config.hubs[0], Backoff(initial=1, maximum=1)))
    await eventually(agent.connected.wait, timeout=10, what="the session")
    yield agent, hub
    assert not task.done(), task  # the session did not fail
    await cancel_and_wait([task])


async def change(agent: Agent, name: str, version: int = 1) -> None:
    await agent._on_event(POD, "MODIFIED", fields_of_dict(pod(name, version)))


def ack(agent: Agent, seq: int) -> pb.HubMessage:
    return pb.HubMessage(ack=pb.Ack(type=POD.gvk, incarnation=agent.incarnation, seq=seq))


async def test_an_idle_agent_sends_a_change_without_waiting_the_window(session: tuple[Agent, FakeHub]) -> None:
    agent, hub = session
    await change(agent, "a")
    [(_, bundle)] = await until(hub.deltas, "the change sent at once (the window is 30 s)")
    assert names(bundle) == ["a"]
    hub.down.put_nowait(ack(agent, bundle.seq))
    await until(lambda: agent.syncs[POD.gvk].stream.acked == bundle.seq, "the ack taken")
    await change(agent, "b")  # idle again: at once again
    deltas = await until(lambda: hub.deltas()[1:], "the second change sent at once")
    assert [names(b) for _, b in deltas] == [["b"]]


async def test_a_busy_agent_batches_changes_until_the_ack(session: tuple[Agent, FakeHub]) -> None:
    agent, hub = session
    await change(agent, "a")
    [(_, first)] = await until(hub.deltas, "the first change sent at once")
    # Busy now (the first bundle is not acked). A change; then something the agent answers
    # in its next turn (a digest of the other type), which shows that the turn came and
    # held the change back.
    await change(agent, "b")
    hub.down.put_nowait(pb.HubMessage(resync=pb.ResyncRequest(type=SERVICE.gvk, reason="test")))
    await until(hub.digests, "the Service digest")
    assert [names(b) for _, b in hub.deltas()] == [["a"]], "a change made while a bundle is in flight went at once"
    await change(agent, "c")
    await change(agent, "b", 2)
    hub.down.put_nowait(ack(agent, first.seq))
    deltas = await until(lambda: hub.deltas()[1:], "the batch sent on the ack (the window is 30 s)")
    assert [names(b) for _, b in deltas] == [["b", "c"]]  # one bundle, the latest state of b
    assert [o.resource_version for o in deltas[0][1].upserts if o.name == "b"] == ["2"]


@pytest.mark.parametrize("session", [0.5], indirect=True)
async def test_a_busy_agent_sends_its_batch_after_the_window_without_an_ack(session: tuple[Agent, FakeHub]) -> None:
    agent, hub = session
    await change(agent, "a")
    [(t_first, _)] = await until(hub.deltas, "the first change sent at once")
    await change(agent, "b")
    await change(agent, "c")
    deltas = await until(lambda: hub.deltas()[1:], "the batch sent after the window, no ack")
    [(t_batch, batch)] = deltas
    assert names(batch) == ["b", "c"]
    assert t_batch - t_first >= 0.4, f"sent {t_batch - t_first:.3f} s after the first bundle: not batched for the 0.5 s window"
