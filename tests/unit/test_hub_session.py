"""The hub's session rules, with no I/O (``protocol/hubsession.py``): whatever an agent sends,
in whatever order, the decisions keep the protocol's promises."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.hubsession import (
    Admit,
    AnswerHeartbeat,
    Apply,
    Decision,
    EndSession,
    HubSession,
    Ignore,
    RefuseStatus,
    RefuseType,
    TakeLocalChange,
    TakeStatus,
    TakeTypes,
    bundle_problem,
    digest_problem,
    lease_refusal,
    screen_types,
    token_refusal,
)
from fleetsync.protocol.rules import MAX_COUNTER

INCARNATION = "inc-1"
KNOWN = ("v1/Pod", "v1/Service", "apps/v1/Deployment")
TYPES = (*KNOWN, "example.com/v1/Widget", "not a type")
MAX_BYTES = 4096


def hello(cluster: str = "c1", incarnation: str = INCARNATION) -> pb.Hello:
    return pb.Hello(cluster_id=cluster, agent_id="host/c1", incarnation=incarnation, token="t", protocol_version=1)


objects = st.builds(pb.Object, namespace=st.sampled_from(["", "ns"]), name=st.sampled_from(["", "a", "b"]), body=st.binary(max_size=8))
bundles = st.builds(
    pb.Bundle,
    type=st.sampled_from(TYPES),
    incarnation=st.sampled_from([INCARNATION, INCARNATION, "", "inc-0"]),
    seq=st.one_of(st.integers(0, 5), st.just(MAX_COUNTER + 1)),
    base_seq=st.integers(0, 5),
    kind=st.sampled_from([pb.FULL, pb.DELTA, pb.BUNDLE_KIND_UNSPECIFIED, 7]),
    compression=st.sampled_from([pb.COMPRESSION_NONE, pb.COMPRESSION_LZ4, 9]),
    upserts=st.lists(objects, max_size=3),
    deletes=st.lists(st.sampled_from(["ns/a", "a", "/b"]), max_size=2),
)
digests = st.builds(
    pb.Digest,
    type=st.sampled_from(TYPES),
    incarnation=st.sampled_from([INCARNATION, "", "inc-0"]),
    seq=st.one_of(st.integers(0, 5), st.just(MAX_COUNTER + 1)),
)
messages = st.one_of(
    st.builds(lambda b: pb.AgentMessage(bundle=b), bundles),
    st.builds(lambda d: pb.AgentMessage(digest=d), digests),
    st.just(pb.AgentMessage(heartbeat=pb.Heartbeat(sent_at_ms=1))),
    st.just(pb.AgentMessage(hello=hello())),
    st.just(pb.AgentMessage(hello=hello(cluster="-bad-"))),
    st.just(pb.AgentMessage(local_change=pb.LocalChange(key="feature.x", value="true"))),
    st.builds(lambda r: pb.AgentMessage(status=pb.Status(gates_revision=r)), st.sampled_from([0, 3, MAX_COUNTER + 1])),
    st.just(pb.AgentMessage(types=pb.Types())),
    st.just(pb.AgentMessage()),  # a newer agent's message kind: protobuf reads an empty oneof
    st.just(pb.AgentMessage(bundle=pb.Bundle(type="v1/Pod", incarnation=INCARNATION, seq=2, base_seq=1, kind=pb.DELTA, deletes=["ns/" + "x" * MAX_BYTES]))),
)


@dataclass
class Run:
    first: pb.AgentMessage
    rest: list[pb.AgentMessage]
    token_types: tuple[str, ...]


runs = st.builds(
    Run,
    first=st.one_of(st.just(pb.AgentMessage(hello=hello())), messages),
    rest=st.lists(messages, max_size=25),
    token_types=st.sampled_from([(), ("v1/Pod",), ("v1/Pod", "apps/v1/Deployment")]),
)


def play(run: Run) -> list[tuple[pb.AgentMessage, Decision | None]]:
    session = HubSession(max_message_bytes=MAX_BYTES, knows=KNOWN.__contains__)
    out = []
    for message in [run.first, *run.rest]:
        decision = session.receive(message)
        if isinstance(decision, Admit):
            session.admitted(token_types=run.token_types)
        out.append((message, decision))
    return out


@settings(max_examples=400, deadline=None)
@given(runs)
def test_nothing_is_acted_on_after_the_session_ends(run: Run) -> None:
    decisions = [d for _, d in play(run)]
    ended = [i for i, d in enumerate(decisions) if isinstance(d, EndSession)]
    if ended:
        assert all(d is None for d in decisions[ended[0] + 1 :])
    assert sum(isinstance(d, EndSession) for d in decisions) <= 1


@settings(max_examples=400, deadline=None)
@given(runs)
def test_only_a_well_formed_hello_opens_a_session_and_only_as_the_first_message(run: Run) -> None:
    played = play(run)
    first_message, first = played[0]
    if first_message.WhichOneof("message") == "hello" and first_message.hello.cluster_id == "c1":
        assert isinstance(first, Admit)
    else:
        # a peer that never said who it is: refused, and nothing of it becomes an event
        assert isinstance(first, EndSession) and first.reason == pb.PROTOCOL and not first.event
    assert not any(isinstance(d, Admit) for _, d in played[1:])
    for message, decision in played[1:]:
        if message.WhichOneof("message") == "hello" and decision is not None:
            assert isinstance(decision, EndSession), "a second Hello ends the session"


@settings(max_examples=600, deadline=None)
@given(runs)
def test_the_engine_gets_only_checked_messages_of_this_incarnation_and_of_types_the_token_may_write(run: Run) -> None:
    for message, decision in play(run):
        if not isinstance(decision, Apply):
            continue
        body = message.bundle if message.WhichOneof("message") == "bundle" else message.digest
        assert message.ByteSize() <= MAX_BYTES
        assert body.incarnation in (INCARNATION, "")
        assert decision.type in KNOWN
        assert not run.token_types or decision.type in run.token_types
        problem = bundle_problem(body) if isinstance(body, pb.Bundle) else digest_problem(body)
        assert problem == ""


@settings(max_examples=400, deadline=None)
@given(runs)
def test_each_message_gets_the_decision_of_its_kind(run: Run) -> None:
    expected = {
        "heartbeat": (AnswerHeartbeat,),
        "local_change": (TakeLocalChange,),
        "status": (TakeStatus, RefuseStatus),
        "types": (TakeTypes,),
        "bundle": (Apply, RefuseType, EndSession),
        "digest": (Apply, RefuseType, EndSession),
        None: (Ignore,),
    }
    for message, decision in play(run)[1:]:
        if decision is None or (isinstance(decision, EndSession) and decision.counted == "oversized"):
            continue
        kind = message.WhichOneof("message")
        if kind != "hello":
            assert isinstance(decision, expected[kind]), (kind, decision)
        if isinstance(decision, RefuseStatus):
            assert message.status.gates_revision > MAX_COUNTER
        if isinstance(decision, EndSession) and kind in ("bundle", "digest"):
            assert getattr(message, kind).incarnation not in ("", INCARNATION), "only a stale incarnation ends a session"


@settings(max_examples=400, deadline=None)
@given(runs)
def test_a_type_refusal_is_an_event_once_per_type_and_unknown_kinds_are_logged_once(run: Run) -> None:
    seen: set[str] = set()
    ignored = 0
    for _, decision in play(run):
        if isinstance(decision, RefuseType):
            assert decision.first == (decision.type not in seen)
            seen.add(decision.type)
        if isinstance(decision, Ignore):
            assert decision.first == (ignored == 0)
            ignored += 1


def test_a_message_over_the_size_limit_ends_the_session_naming_both_sizes() -> None:
    session = HubSession(max_message_bytes=MAX_BYTES, knows=KNOWN.__contains__)
    assert isinstance(session.receive(pb.AgentMessage(hello=hello())), Admit)
    session.admitted(token_types=())
    big = pb.AgentMessage(bundle=pb.Bundle(type="v1/Pod", incarnation=INCARNATION, seq=2, base_seq=1, kind=pb.DELTA, deletes=["ns/" + "x" * MAX_BYTES]))
    decision = session.receive(big)
    assert isinstance(decision, EndSession) and decision.counted == "oversized"
    assert str(MAX_BYTES) in decision.message and str(big.ByteSize()) in decision.message
    assert session.receive(pb.AgentMessage(heartbeat=pb.Heartbeat())) is None


def test_a_session_closed_outside_the_protocol_acts_on_nothing_more() -> None:
    session = HubSession(max_message_bytes=MAX_BYTES, knows=KNOWN.__contains__)
    session.receive(pb.AgentMessage(hello=hello()))
    session.admitted(token_types=())
    session.close()
    assert session.receive(pb.AgentMessage(heartbeat=pb.Heartbeat())) is None


@dataclass
class Token:
    name: str
    role: str


@dataclass
class LeaseHeld:
    holder: str
    incarnation: str
    hub_id: str
    expires_at: float
    connected: bool


def test_a_token_writes_only_its_own_cluster_and_a_certificate_narrows_it_further() -> None:
    h = hello()
    assert token_refusal(h, Token("c1", "agent"), certified_cluster=None) is None
    assert token_refusal(h, None, certified_cluster=None) == (pb.UNAUTHENTICATED, "invalid token for cluster 'c1': create one with `fleetsync token create c1`")
    reason, text = token_refusal(h, Token("c2", "agent"), certified_cluster=None) or (0, "")
    assert reason == pb.PERMISSION_DENIED and "'c2'" in text and "'c1'" in text
    assert (token_refusal(h, Token("c1", "admin"), certified_cluster=None) or (0,))[0] == pb.PERMISSION_DENIED
    reason, text = token_refusal(h, Token("c1", "agent"), certified_cluster="c9") or (0, "")
    assert reason == pb.PERMISSION_DENIED and "certificate" in text and "'c9'" in text


def test_a_refused_lease_says_who_holds_it_and_when_to_come_back() -> None:
    h = hello()
    same = lease_refusal(h, LeaseHeld("host/c1", "inc-0", "hub-a", 100.0, True), now=90.0, silent_after=15.0)
    assert same.reason == pb.ALREADY_CONNECTED and "--agent-id" in same.message and same.retry_after == 15.0 and same.once_per_newcomer
    other = lease_refusal(h, LeaseHeld("host2/c1", "inc-9", "hub-b", 100.0, True), now=90.0, silent_after=15.0)
    assert other.reason == pb.ALREADY_CONNECTED and "'host2/c1'" in other.message and "hub-b" in other.message
    grace = lease_refusal(h, LeaseHeld("host2/c1", "inc-9", "hub-b", 100.0, False), now=90.0, silent_after=15.0)
    assert grace.reason == pb.GRACE_PERIOD and grace.retry_after == 10.0 and "10.0s" in grace.message and not grace.once_per_newcomer


def test_reported_types_past_the_limit_or_malformed_are_refused_by_name() -> None:
    good = [pb.TypeInfo(group="example.com", version="v1", kind=f"W{i}", plural=f"w{i}s", namespaced=True) for i in range(3)]
    bad = pb.TypeInfo(group="example.com", version="v1", kind="", plural="x")
    accepted, refused = screen_types([*good, bad], limit=2)
    assert [t.kind for t in accepted] == ["W0", "W1"]
    assert [t for t, _ in refused] == ["example.com/v1/W2", "example.com/v1/"]
    assert "--max-reported-types" in refused[0][1]
