"""Random interleavings of churn, message faults and crashes, over the real agent and hub code.

A hypothesis state machine drives one agent (the real ``TypeSync`` and ``Uplink``) and
one hub (the real ``Session``, ``ClusterEngine``, ``Inbox`` and a SQLite store in a
temporary file) through a channel that loses, duplicates and reorders messages in
both directions, with a virtual clock, while the cluster changes and either side
crashes (the agent restarts with a new incarnation and an empty cache; the hub
restarts from its store, having lost everything in memory).

After every step: **no acknowledged data is lost** -- the stream position in the store
is never behind what the agent was told is committed. At the end the faults stop and
time passes (no forced reconnect: acks, retransmissions, gap detection, digests and
the timers must heal everything by themselves); then the hub must hold exactly the
cluster's objects and the agent must have nothing left to send.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fleetsync.agent.typesync import TypeSync
from fleetsync.agent.uplink import HubRejected, HubSilent, Uplink, UplinkSettings
from fleetsync.hub.auth import hash_token
from fleetsync.hub.core import DigestSchedule, HubCore, HubSettings
from fleetsync.hub.session import Session, SessionClosed
from fleetsync.model.types import POD, SERVICE
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.sqlite import SQLiteStore

TOKEN = "test-token"
FATES = st.lists(st.sampled_from(["deliver", "deliver", "deliver", "lose", "duplicate", "delay"]), min_size=1, max_size=8)
TYPES = (POD, SERVICE)
ACK_TIMEOUT = 5.0
#: Small messages, so that FULLs, digests and repairs come in several chunks.
MAX_MESSAGE_BYTES = 4096 + 1024


def k8s_object(kind: str, name: str, value: int) -> dict[str, Any]:
    # a body of a few hundred bytes: a handful of objects fill a message
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "default", "labels": {"v": str(value)}},
        "spec": {"data": "x" * 300, "v": value},
    }


def _diff(want: dict[str, int], have: dict[str, int]) -> str:
    return f"missing {sorted(want.keys() - have.keys())}, extra {sorted(have.keys() - want.keys())}, stale {sorted(k for k in want.keys() & have.keys() if want[k] != have[k])}"


class SteppedSession(Session):
    """A session whose engine applies only when the test says (so the hub can fall behind and conflate)."""

    def start_engine(self) -> None:
        pass


class SyncUnderFaults(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="fleetsync-faults-"))
        self.now = 1_000_000.0
        # the cluster's truth: type -> key -> object
        self.cluster: dict[str, dict[str, dict[str, Any]]] = {t.gvk: {} for t in TYPES}
        self.generation = 0
        self.store = self._new_store()
        self.run(self.store.open())
        self.run(self.store.add_token(name="c1", role="agent", token_hash=hash_token(TOKEN)))
        self.core = self._new_core()
        self.syncs = self._new_syncs()
        self.session: Session | None = None
        self.uplink: Uplink | None = None
        self.up: list[pb.AgentMessage] = []
        self.down: list[pb.HubMessage] = []
        self.connect()

    # ---- plumbing -----------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def clock(self) -> float:
        return self.now

    def _new_store(self) -> SQLiteStore:
        return SQLiteStore(self.tmp / "hub.db", synchronous="OFF")

    def _new_core(self) -> HubCore:
        settings = HubSettings(
            hub_id="hub",
            heartbeat_interval=10,
            inactivity_timeout=30,
            max_message_bytes=MAX_MESSAGE_BYTES,
            digest_schedule=DigestSchedule(default=120),
        )
        return HubCore(self.store, settings, clock=self.clock)

    def _new_syncs(self) -> dict[str, TypeSync]:
        incarnation = f"inc-{self.generation}"
        syncs = {t.gvk: TypeSync(t, incarnation, max_message_bytes=MAX_MESSAGE_BYTES) for t in TYPES}
        for t in TYPES:
            syncs[t.gvk].on_list([orjson.loads(orjson.dumps(o)) for o in self.cluster[t.gvk].values()])
        return syncs

    async def _send_down(self, message: pb.HubMessage) -> None:
        self.down.append(message)

    def connect(self) -> None:
        """A new connection: what was in flight on the old one is gone."""
        if self.session is not None:
            self.run(self.session.close())
        self.up.clear()
        self.down.clear()
        self.uplink = None
        self.session = SteppedSession(self.core, self._send_down, peer="test")
        hello = pb.Hello(cluster_id="c1", agent_id="agent-c1", incarnation=f"inc-{self.generation}", token=TOKEN, protocol_version=1)
        self.hub_receive(pb.AgentMessage(hello=hello))
        welcome = self.down.pop(0)
        assert welcome.WhichOneof("message") == "welcome", welcome
        self.uplink = Uplink(self.syncs, welcome.welcome, settings=UplinkSettings(window=4, ack_timeout=ACK_TIMEOUT), now=self.now)

    def hub_receive(self, message: pb.AgentMessage) -> None:
        """The hub reads a message; bundles and digests queue up until :meth:`hub_applies`."""
        assert self.session is not None
        try:
            self.run(self.session.handle(message))
        except SessionClosed:
            self.session = None

    def hub_applies(self, count: int) -> None:
        engine = self.session.engine if self.session else None
        while engine is not None and count > 0 and len(engine.inbox):
            self.run(engine.step())
            count -= 1

    def agent_receive(self, message: pb.HubMessage) -> None:
        if self.uplink is None:
            return
        try:
            self.uplink.receive(message, self.now)
        except HubRejected as exc:
            raise AssertionError(f"the hub rejected the agent: {exc.reason} {exc}") from None

    def poll(self) -> None:
        if self.uplink is not None and self.session is not None:
            try:
                self.up += [out.message for out in self.uplink.poll(self.now)]
            except HubSilent:  # no word from the hub for too long: the agent reconnects, as it does
                self.connect()
                assert self.uplink is not None
                self.up += [out.message for out in self.uplink.poll(self.now)]

    def stored(self) -> dict[str, dict[str, int]]:
        """What the hub holds: type -> key -> hash."""
        return {t.gvk: self.run(self.store.object_hashes("c1", t.gvk)) for t in TYPES}

    def truth(self) -> dict[str, dict[str, int]]:
        return {gvk: {k: codec.make_object(orjson.loads(orjson.dumps(o))).hash for k, o in objs.items()} for gvk, objs in self.cluster.items()}

    # ---- the cluster changes ----------------------------------------------------------------

    @rule(type_=st.sampled_from(TYPES), name=st.integers(0, 11), value=st.integers(0, 3))
    def change(self, type_: Any, name: int, value: int) -> None:
        key = f"default/o{name}"
        if value == 0:
            if self.cluster[type_.gvk].pop(key, None) is not None:
                self.syncs[type_.gvk].on_event("DELETED", {"metadata": {"name": f"o{name}", "namespace": "default"}})
        else:
            obj = k8s_object(type_.kind, f"o{name}", value)
            event = "MODIFIED" if key in self.cluster[type_.gvk] else "ADDED"
            self.cluster[type_.gvk][key] = obj
            self.syncs[type_.gvk].on_event(event, orjson.loads(orjson.dumps(obj)))

    @rule(type_=st.sampled_from(TYPES), names=st.lists(st.integers(0, 11), min_size=2, max_size=6), value=st.integers(1, 3))
    def churn_burst(self, type_: Any, names: list[int], value: int) -> None:
        """Several changes, each sent on its own: a run of deltas for the faults and the conflation to work on."""
        for name in names:
            self.change(type_, name, value)
            self.poll()

    # ---- the channel ------------------------------------------------------------------------

    @rule()
    def agent_polls(self) -> None:
        self.poll()

    @precondition(lambda self: self.up)
    @rule(fates=FATES)
    def transmit_up(self, fates: list[str]) -> None:
        """The network carries what the agent sent, each message meeting its fate."""
        for message in self._transmit(self.up, fates):
            self.hub_receive(message)

    @rule(count=st.sampled_from([1, 1, 3, 100]))
    def hub_catches_up(self, count: int) -> None:
        """The hub applies what it queued (whatever arrived meanwhile was conflated)."""
        self.hub_applies(count)

    @precondition(lambda self: self.down)
    @rule(fates=FATES)
    def transmit_down(self, fates: list[str]) -> None:
        for message in self._transmit(self.down, fates):
            self.agent_receive(message)

    @rule(up=FATES, down=FATES)
    def round_trip(self, up: list[str], down: list[str]) -> None:
        """One exchange: the agent sends, the network does its worst, the hub applies all, the answers return."""
        self.poll()
        for message in self._transmit(self.up, up):
            self.hub_receive(message)
        self.hub_applies(10_000)
        for message in self._transmit(self.down, down):
            self.agent_receive(message)

    def _transmit(self, queue: list[Any], fates: list[str]) -> list[Any]:
        """Take the first len(fates) messages off ``queue``; return those that arrive, in arrival order.
        A delayed message goes back to the end of the queue (later ones overtake it)."""
        taken, queue[:] = queue[: len(fates)], queue[len(fates) :]
        arriving = []
        for message, fate in zip(taken, fates, strict=False):
            if fate == "deliver":
                arriving.append(message)
            elif fate == "duplicate":
                arriving += [message, message]
            elif fate == "delay":
                queue.append(message)
        return arriving

    @rule(seconds=st.sampled_from([1.0, ACK_TIMEOUT, 40.0]))
    def time_passes(self, seconds: float) -> None:
        """Timers fire: the agent's retransmissions, the hub's liveness and periodic digests."""
        self.now += seconds
        self.run(self.core.tick())
        self.poll()

    # ---- crashes and reconnects -----------------------------------------------------------

    @rule()
    def reconnect(self) -> None:
        self.connect()

    @rule()
    def agent_restarts(self) -> None:
        """kill -9 of the agent: a new incarnation lists the cluster again."""
        self.generation += 1
        self.syncs = self._new_syncs()
        self.connect()

    @rule()
    def hub_restarts(self) -> None:
        """kill -9 of the hub: only what it committed survives."""
        if self.session is not None:
            self.run(self.session._stop_tasks())  # no orderly close: the process is gone
            self.session = None
        self.run(self.store.close())
        self.store = self._new_store()
        self.run(self.store.open())
        self.core = self._new_core()
        self.connect()

    # ---- what must always hold ----------------------------------------------------------------

    @invariant()
    def acknowledged_data_is_never_lost(self) -> None:
        streams = {s.type: s for s in self.run(self.store.streams("c1"))}
        for type_, sync in self.syncs.items():
            if sync.stream.acked:
                stored = streams.get(type_)
                assert stored is not None and stored.incarnation == sync.stream.incarnation and stored.seq >= sync.stream.acked, (
                    f"{type_}: the agent was told seq {sync.stream.acked} is committed, the store has {stored}"
                )

    @invariant()
    def when_the_agent_has_nothing_unacknowledged_the_hub_holds_its_cache(self) -> None:
        """The ack means "committed": once a type is fully acked, the hub must hold exactly what the agent holds."""
        stored = None
        for type_, sync in self.syncs.items():
            stream = sync.stream
            if stream.established and not sync.pending and not stream.in_flight() and stream.awaiting_digest is None and stream.full is None:
                stored = stored or self.stored()
                cache = {k: o.hash for k, o in sync.cache.items()}
                assert stored[type_] == cache, f"{type_}: everything is acked, but the hub differs from the agent: {_diff(cache, stored[type_])}"

    def teardown(self) -> None:
        try:
            self._heal_and_check()
        finally:
            if self.session is not None:
                self.run(self.session.close())
            self.run(self.store.close())
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _heal_and_check(self) -> None:
        if self.session is None:
            self.connect()  # the hub ended the session (a protocol reject): the agent reconnects, as it does
        for _ in range(60):
            self.poll()
            while self.up or self.down:
                while self.up:
                    self.hub_receive(self.up.pop(0))
                self.hub_applies(10_000)
                while self.down:
                    self.agent_receive(self.down.pop(0))
                self.poll()
            idle = all(not s.pending and not s.stream.in_flight() and s.stream.awaiting_digest is None for s in self.syncs.values())
            if idle and self.stored() == self.truth():
                return
            self.now += ACK_TIMEOUT
            self.run(self.core.tick())
        assert self.stored() == self.truth(), "the hub never converged on the cluster"
        raise AssertionError("the hub holds the truth but the agent still has unacknowledged messages")


SyncUnderFaults.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
test_sync_under_faults = SyncUnderFaults.TestCase
