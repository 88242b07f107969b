"""OpenTelemetry tracing of a change, in process: the real agent code (TypeSync, Uplink, the
runner's send hook) and the real hub (Session, ClusterEngine, SQLite store, ChangeFeed), with
the SDK's in-memory exporter instead of a collector."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fleetsync import tracing
from fleetsync.agent.typesync import TypeSync
from fleetsync.agent.uplink import Uplink, UplinkSettings
from fleetsync.hub.auth import hash_token
from fleetsync.hub.core import HubCore, HubSettings
from fleetsync.hub.session import Session
from fleetsync.model.types import SERVICE
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.sqlite import SQLiteStore

TOKEN = "test-token"


def service(name: str, version: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default", "labels": {"v": str(version)}}, "spec": {"v": version}}


class SteppedSession(Session):
    """A session whose engine applies only when the test steps it (so that DELTAs queue and merge)."""

    def start_engine(self) -> None:
        pass


class Link:
    """One agent (its TypeSync and Uplink, sending as the runner does) and one hub session over a lossless channel."""

    def __init__(self, core: HubCore, session: Session) -> None:
        self.core = core
        self.session = session
        self.sync = TypeSync(SERVICE, "inc-1", max_message_bytes=512 * 1024)
        self.down: list[pb.HubMessage] = []
        self.uplink: Uplink | None = None
        self.now = 1000.0
        self.sent: list[pb.Bundle] = []

    async def receive(self, message: pb.HubMessage) -> None:
        self.down.append(message)

    async def connect(self) -> None:
        hello = pb.Hello(cluster_id="c1", agent_id="agent-c1", incarnation="inc-1", token=TOKEN, protocol_version=1)
        await self.session.handle(pb.AgentMessage(hello=hello))
        welcome = self.down.pop(0)
        assert welcome.WhichOneof("message") == "welcome", welcome
        self.uplink = Uplink({SERVICE.gvk: self.sync}, welcome.welcome, settings=UplinkSettings(), now=self.now)

    async def send(self) -> list[pb.Bundle]:
        """What the agent has to send, sent (through the runner's tracing hook) and handed to the hub."""
        assert self.uplink is not None
        sent = []
        for out in self.uplink.poll(self.now):
            if out.message.HasField("bundle"):  # as Agent._send does
                tracing.bundle_sent("c1", out.kind, out.message.bundle)
                sent.append(out.message.bundle)
            await self.session.handle(out.message)
            await self.session.room()
        self.sent += sent
        return sent

    async def acks(self) -> None:
        """The hub's answers to what it applied (all of it: a stepped session's engine was stepped)."""
        assert self.uplink is not None and self.session.engine is not None
        if not isinstance(self.session, SteppedSession):
            await self.session.engine.drained()
        for message in self.down:
            self.uplink.receive(message, self.now)
        self.down.clear()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(service="fleetsync-test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[HubCore]:
    store = SQLiteStore(tmp_path / "hub.db")
    await store.open()
    await store.add_token(name="c1", role="agent", token_hash=hash_token(TOKEN))
    core = HubCore(store, HubSettings(grace_period=0))
    await core.feed.start()
    try:
        yield core
    finally:
        await core.stop()
        await store.close()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_a_change_is_traced_from_the_agent_through_the_hubs_apply_to_the_watch_that_delivers_it(spans: InMemorySpanExporter, core: HubCore) -> None:
    link = Link(core, Session(core, lambda m: asyncio.sleep(0)))
    link.session.send = link.receive
    await link.connect()
    link.sync.on_list([service("web", 1)])
    (full,) = [b for b in await link.send() if b.kind == pb.FULL]
    await link.acks()
    watch = core.feed.follow(await core.store.current_rev())

    link.sync.on_event("MODIFIED", service("web", 2))
    (delta,) = await link.send()
    await link.acks()
    batch = await asyncio.wait_for(anext(watch), timeout=10)
    await watch.aclose()
    assert [c.obj.name for c in batch] == ["web"]

    assert full.traceparent and delta.traceparent and full.traceparent != delta.traceparent, "every bundle carries its own trace context"
    (sent,) = [s for s in named(spans, "fleetsync.agent.send") if s.attributes and s.attributes["fleetsync.seq"] == delta.seq]
    (applied,) = [s for s in named(spans, "fleetsync.hub.apply") if s.attributes and s.attributes["fleetsync.seq"] == delta.seq]
    (delivered,) = named(spans, "fleetsync.watch.deliver")
    assert sent.context is not None and applied.context is not None and delivered.context is not None
    assert applied.parent is not None and applied.parent.span_id == sent.context.span_id
    assert delivered.parent is not None and delivered.parent.span_id == applied.context.span_id
    assert sent.context.trace_id == applied.context.trace_id == delivered.context.trace_id, "one trace from the cluster to the watch"
    assert sent.attributes is not None and sent.attributes["fleetsync.cluster"] == "c1" and sent.attributes["fleetsync.type"] == SERVICE.gvk
    assert delivered.attributes is not None and delivered.attributes["fleetsync.object"] == "default/web"
    assert [e.name for e in applied.events] == ["apply started"]


async def test_deltas_merged_while_the_hub_is_behind_apply_once_as_the_child_of_the_first_linked_to_the_others(
    spans: InMemorySpanExporter, core: HubCore
) -> None:
    link = Link(core, SteppedSession(core, lambda m: asyncio.sleep(0)))
    link.session.send = link.receive
    await link.connect()
    engine = link.session.engine
    assert engine is not None
    link.sync.on_list([service("web", 1)])
    await link.send()
    while len(engine.inbox):
        await engine.step()
    await link.acks()

    deltas = []
    for version in (2, 3, 4):  # three DELTAs queue up, and merge
        link.sync.on_event("MODIFIED", service("web", version))
        deltas += await link.send()
    assert len(deltas) == 3 and len(engine.inbox) == 1, "the hub is behind: the DELTAs merged into one"
    await engine.step()

    merged = [s for s in named(spans, "fleetsync.hub.apply") if s.attributes and s.attributes["fleetsync.seq"] == deltas[-1].seq]
    assert len(merged) == 1
    senders = {s.attributes["fleetsync.seq"]: s.context for s in named(spans, "fleetsync.agent.send") if s.attributes}
    (apply,) = merged
    assert apply.parent is not None and apply.parent.span_id == senders[deltas[0].seq].span_id  # type: ignore[union-attr]
    assert sorted(link.context.span_id for link in apply.links) == sorted(senders[d.seq].span_id for d in deltas[1:])  # type: ignore[union-attr]
    assert apply.attributes is not None and apply.attributes["fleetsync.bundles"] == 3


async def test_with_tracing_off_nothing_is_traced_or_added_to_bundles(core: HubCore) -> None:
    assert not tracing.enabled()
    link = Link(core, Session(core, lambda m: asyncio.sleep(0)))
    link.session.send = link.receive
    await link.connect()
    link.sync.on_list([service("web", 1)])
    sent = await link.send()
    await link.acks()
    assert sent and all(b.traceparent == "" for b in sent)
    assert not tracing._received and not tracing._applied


def test_a_malformed_trace_context_from_an_agent_is_ignored(spans: InMemorySpanExporter) -> None:
    from fleetsync.protocol.rules import BundleHeader

    header = BundleHeader("inc-1", 2, 1, full=False)
    for bad in ("", "garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "00-" + "g" * 32 + "-" + "1" * 16 + "-01", "00-abc-def-01"):
        assert tracing.apply_started("c1", SERVICE.gvk, header, traceparent=bad, upserts=[], deletes=[]) is None
    assert not spans.get_finished_spans()


def test_what_the_hub_remembers_for_traces_is_bounded(spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "REMEMBERED_BUNDLES", 50)
    for seq in range(1, 201):
        bundle = pb.Bundle(type=SERVICE.gvk, incarnation="inc-1", seq=seq, base_seq=seq - 1, kind=pb.DELTA, collected_at_ms=1)
        tracing.bundle_sent("c1", "delta", bundle)
        tracing.bundle_received("c1", bundle)
    assert len(tracing._received) == 50
    assert min(key[3] for key in tracing._received) == 151, "the oldest are forgotten first"


def test_tracing_is_on_with_the_flag_or_the_sdks_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (*tracing.OTEL_ENDPOINT_VARIABLES, "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(variable, raising=False)
    assert tracing.wanted("") == ""
    assert tracing.wanted("http://collector:4317") == "http://collector:4317"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317")
    assert tracing.wanted("") == "http://otel:4317"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.wanted("http://collector:4317") == ""
