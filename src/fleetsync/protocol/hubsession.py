"""The hub's side of one agent session, with no I/O: fed the agent's messages, it answers
with decisions.

Like h11's ``Connection`` (and the agent's :mod:`fleetsync.agent.uplink`), this is where
the rules live that the hub applies to what one agent sends, so that each is stated
once and tested in microseconds with hypothesis (``tests/unit/test_hub_session.py``):

- the first message is a ``Hello``, whose identity is checked before any of it reaches a
  log line, an event or the store (:func:`~fleetsync.protocol.hello.hello_problem`); a
  second ``Hello`` on the same connection or a message over the size limit ends the
  session; a message of a kind this hub does not know (a newer agent's: protobuf reads it
  as an empty oneof) is ignored, counted and logged once, so agents can be upgraded first;
- a bundle or digest speaks for the session's own incarnation only (another one is a
  stale message of an earlier run, and applying it would roll the stream back);
- a bundle's shape (kind, counters, compression, object names, delete keys) and a
  digest's counter are checked before the engine sees them; a type the hub does not know
  or the token may not write is refused by name, the session goes on, and the refusal is
  recorded once per type;
- who is admitted: the token's cluster, the client certificate's, the cluster's lease
  (:func:`token_refusal`, :func:`lease_refusal`), and the reported types
  (:func:`screen_types`).

What the decisions mean is carried out by :mod:`fleetsync.hub.session` (the store, the
lease, the engine, the transport); nothing here waits, reads a clock or writes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol import typeinfo
from fleetsync.protocol.hello import hello_problem
from fleetsync.protocol.rules import MAX_COUNTER

#: The messages an agent may send (``AgentMessage``'s oneof); anything else ends the session.
AGENT_MESSAGES = frozenset({"hello", "bundle", "digest", "heartbeat", "local_change", "status", "types"})


# ---- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndSession:
    """Refuse the agent and end the session (a ``Reject`` without a type).

    ``event``: worth a ``Rejected`` event (not for peers that never said who they are);
    ``counted``: the refused-message counter's label, when it is one of those."""

    reason: int
    message: str
    retry_after: float = 0.0
    event: bool = True
    counted: str = ""


@dataclass(frozen=True)
class RefuseType:
    """Refuse one type (a ``Reject`` naming it): the agent stops sending it, the session goes on.
    ``first``: the first refusal of this type in the session (one event, not one per message)."""

    type: str
    reason: int
    message: str
    first: bool


@dataclass(frozen=True)
class Admit:
    """A well-formed Hello: authenticate it, take the cluster's lease, welcome the agent."""

    hello: pb.Hello


@dataclass(frozen=True)
class Apply:
    """A bundle or digest that passed every check: the cluster's engine takes it."""

    type: str
    message: pb.Bundle | pb.Digest


@dataclass(frozen=True)
class Ignore:
    """A message of a kind this hub does not know: nothing to do but say so.
    ``first``: the first such message of the session (logged once, counted always)."""

    note: str
    first: bool


@dataclass(frozen=True)
class AnswerHeartbeat:
    """A heartbeat: answer it (the agent's liveness check of the hub)."""


@dataclass(frozen=True)
class TakeLocalChange:
    """The agent's local config changed a gate."""

    change: pb.LocalChange


@dataclass(frozen=True)
class TakeStatus:
    """The agent reports what it applied of its works and which gates it holds."""

    status: pb.Status


@dataclass(frozen=True)
class RefuseStatus:
    """A status report the hub cannot take as a whole (its counters are out of range)."""

    message: str


@dataclass(frozen=True)
class TakeTypes:
    """The agent's set of types changed (a CRD came or went)."""

    types: Sequence[pb.TypeInfo]


Decision = EndSession | RefuseType | Admit | Apply | Ignore | AnswerHeartbeat | TakeLocalChange | TakeStatus | RefuseStatus | TakeTypes


class Phase(enum.Enum):
    AWAITING_HELLO = "awaiting hello"
    ADMITTING = "admitting"
    OPEN = "open"
    ENDED = "ended"


# ---- the session ----------------------------------------------------------------------------------


@dataclass
class HubSession:
    """One agent session's protocol state.

    ``knows(type)``: whether the hub serves that type (its registry, which agents' reports
    grow while the session runs). The caller tells the session the outcome of an
    :class:`Admit` with :meth:`admitted` or :meth:`refused`."""

    max_message_bytes: int
    knows: Callable[[str], bool]
    phase: Phase = Phase.AWAITING_HELLO
    hello: pb.Hello | None = None
    #: Types an agent token may write (empty: every type the hub knows), once admitted.
    token_types: tuple[str, ...] = ()
    refused_types: set[str] = field(default_factory=set)
    ignored: int = 0

    @property
    def open(self) -> bool:
        return self.phase is Phase.OPEN

    @property
    def cluster(self) -> str:
        return self.hello.cluster_id if self.hello is not None else ""

    def receive(self, message: pb.AgentMessage) -> Decision | None:
        """The decision for one message of the agent (None: nothing to do, the session ended)."""
        if self.phase in (Phase.ENDED, Phase.ADMITTING):
            return None  # after an end nothing more is read; while admitting, the caller is busy with the Hello
        kind = message.WhichOneof("message") or ""
        size = message.ByteSize()
        if size > self.max_message_bytes:
            return self._end(
                pb.PROTOCOL,
                f"{kind or 'empty'} message of {size} bytes exceeds the hub's max message size of {self.max_message_bytes} bytes",
                event=self.hello is not None,  # an event only for a peer that said who it is
                counted="oversized",
            )
        if self.phase is Phase.AWAITING_HELLO:
            return self._first(message, kind)
        if kind not in AGENT_MESSAGES:
            self.ignored += 1
            return Ignore(f"a message of a kind this hub does not know ({kind or 'none set'}; a newer agent's?) ignored", self.ignored == 1)
        if kind == "hello":
            return self._end(pb.PROTOCOL, "Hello sent twice on one connection")
        if kind == "bundle":
            return self._bundle_or_digest(message.bundle, bundle_problem(message.bundle))
        if kind == "digest":
            return self._bundle_or_digest(message.digest, digest_problem(message.digest))
        if kind == "heartbeat":
            return AnswerHeartbeat()
        if kind == "local_change":
            return TakeLocalChange(message.local_change)
        if kind == "status":
            if message.status.gates_revision > MAX_COUNTER:
                return RefuseStatus(f"status: gates revision {message.status.gates_revision} is over the largest the hub keeps ({MAX_COUNTER})")
            return TakeStatus(message.status)
        return TakeTypes(message.types.types)

    def admitted(self, *, token_types: Sequence[str]) -> None:
        """The Hello was authenticated and the lease taken: the session is open."""
        assert self.phase is Phase.ADMITTING
        self.token_types = tuple(token_types)
        self.phase = Phase.OPEN

    def close(self) -> None:
        """The session ended outside the protocol (the connection closed, a newer session took
        over): nothing more it receives is acted on."""
        self.phase = Phase.ENDED

    def refuse_type(self, type_: str, reason: int, message: str) -> RefuseType:
        """Refuse one type (for a reason found outside, e.g. a body the codec cannot read)."""
        first = type_ not in self.refused_types
        self.refused_types.add(type_)
        return RefuseType(type_, reason, message, first)

    # ---- the rules ---------------------------------------------------------------------------

    def _first(self, message: pb.AgentMessage, kind: str) -> Decision:
        if kind != "hello":
            return self._end(pb.PROTOCOL, f"the first message must be Hello, got {kind or '(none)'}", event=False)
        if problem := hello_problem(message.hello):  # before any of it reaches a log line, an event or the store
            return self._end(pb.PROTOCOL, problem, event=False)
        self.hello = message.hello
        self.phase = Phase.ADMITTING
        return Admit(message.hello)

    def _bundle_or_digest(self, message: pb.Bundle | pb.Digest, problem: str) -> Decision:
        assert self.hello is not None
        kind = type(message).__name__
        if message.incarnation and message.incarnation != self.hello.incarnation:
            return self._end(pb.PROTOCOL, f"{kind.lower()} of incarnation {message.incarnation} on a session of incarnation {self.hello.incarnation}")
        type_ = message.type
        if not self.knows(type_):
            return self.refuse_type(type_, pb.PROTOCOL, f"type {type_!r} is not a resource type this hub knows (group/version/Kind, e.g. v1/Pod)")
        if self.token_types and type_ not in self.token_types:
            return self.refuse_type(
                type_, pb.PERMISSION_DENIED, f"the token of cluster {self.cluster!r} may write only {', '.join(self.token_types)}; not {type_}"
            )
        if problem:
            return self.refuse_type(type_, pb.PROTOCOL, f"malformed {kind} of {type_}: {problem}")
        return Apply(type_, message)

    def _end(self, reason: int, message: str, retry_after: float = 0.0, *, event: bool = True, counted: str = "") -> EndSession:
        self.phase = Phase.ENDED
        return EndSession(reason, message, retry_after, event=event, counted=counted)


# ---- message shapes ----------------------------------------------------------------------------


def bundle_problem(bundle: pb.Bundle) -> str:
    """What is wrong with a bundle's structure ("" if nothing)."""
    if bundle.kind not in (pb.FULL, pb.DELTA, pb.BUNDLE_KIND_UNSPECIFIED):
        return f"unknown bundle kind {bundle.kind}"
    if bundle.kind == pb.BUNDLE_KIND_UNSPECIFIED:
        return "" if not (bundle.upserts or bundle.deletes) else "an error report carries no objects"
    if bundle.seq > MAX_COUNTER:
        return f"seq {bundle.seq} is over the largest the hub keeps ({MAX_COUNTER})"
    if not bundle.incarnation or bundle.seq < 1 or bundle.base_seq >= bundle.seq:
        return f"needs an incarnation and base_seq < seq (got incarnation {bundle.incarnation!r}, seq {bundle.seq}, base_seq {bundle.base_seq})"
    if bundle.compression not in (pb.COMPRESSION_NONE, pb.COMPRESSION_LZ4):
        return f"unknown compression {bundle.compression}"
    for i, obj in enumerate(bundle.upserts):
        if not obj.name:
            return f"object #{i} has no name"
    for key in bundle.deletes:
        if "/" not in key:
            return f"delete key {key!r} is not namespace/name"
    return ""


def digest_problem(digest: pb.Digest) -> str:
    """What is wrong with a digest's header ("" if nothing; its entries are checked as they are read)."""
    return f"seq {digest.seq} is over the largest the hub keeps ({MAX_COUNTER})" if digest.seq > MAX_COUNTER else ""


# ---- admission -----------------------------------------------------------------------------------


class TokenView(Protocol):
    """What admission reads of a token (the store's ``TokenRecord``)."""

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...


class LeaseView(Protocol):
    """What admission reads of the lease in force (the store's ``Lease``)."""

    @property
    def holder(self) -> str: ...
    @property
    def incarnation(self) -> str: ...
    @property
    def hub_id(self) -> str: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def connected(self) -> bool: ...


def token_refusal(hello: pb.Hello, token: TokenView | None, *, certified_cluster: str | None) -> tuple[int, str] | None:
    """Why this Hello may not write its cluster with this token (None: it may).

    The cluster a session writes is the one its token was issued for (and, with mutual TLS,
    the one its client certificate names), never one a message names."""
    cluster = hello.cluster_id
    if token is None:
        return pb.UNAUTHENTICATED, f"invalid token for cluster {cluster!r}: create one with `fleetsync token create {cluster}`"
    if token.role != "agent" or token.name != cluster:
        return pb.PERMISSION_DENIED, f"this token is for {token.role} {token.name!r}; it cannot write cluster {cluster!r}"
    if certified_cluster is not None and certified_cluster != cluster:
        return (
            pb.PERMISSION_DENIED,
            f"the agent's client certificate is for cluster {certified_cluster!r} (its common name); it cannot write cluster {cluster!r}",
        )
    return None


@dataclass(frozen=True)
class LeaseRefusal:
    reason: int
    message: str
    retry_after: float
    #: Refusals of a live holder are one event per newcomer (a retry of it is only logged).
    once_per_newcomer: bool


def lease_refusal(hello: pb.Hello, lease: LeaseView, *, now: float, silent_after: float) -> LeaseRefusal:
    """Why the lease was not granted to this Hello, and when to try again.

    One live agent per identity: a second incarnation of the same agent id takes over only
    when the holder disconnected, its lease lapsed or it was silent ``silent_after`` seconds
    (the store decided that); otherwise it is told who holds the cluster and how to run two."""
    cluster = hello.cluster_id
    if lease.connected and lease.holder == hello.agent_id:
        return LeaseRefusal(
            pb.ALREADY_CONNECTED,
            f"another live agent with the same agent id {lease.holder!r} (incarnation {lease.incarnation}, on hub {lease.hub_id!r}) holds"
            f" cluster {cluster!r}; this one (incarnation {hello.incarnation}) takes over only if that one is silent for"
            f" {silent_after:.0f}s or disconnects. If both should run, start them with distinct --agent-id values",
            silent_after,
            True,
        )
    if lease.connected:
        return LeaseRefusal(
            pb.ALREADY_CONNECTED,
            f"cluster {cluster!r} is already connected: agent {lease.holder!r} (incarnation {lease.incarnation}) on hub {lease.hub_id!r} holds it",
            silent_after,
            True,
        )
    remaining = max(0.0, lease.expires_at - now)
    return LeaseRefusal(
        pb.GRACE_PERIOD,
        f"cluster {cluster!r} is held for agent {lease.holder!r} for {remaining:.1f}s more (grace period after its disconnect)",
        remaining,
        False,
    )


def pull_cluster_refusal(cluster: str) -> tuple[int, str]:
    """A pull cluster's state is fetched by the hub: an agent may not push it too."""
    return (
        pb.PERMISSION_DENIED,
        f"cluster {cluster!r} is a pull cluster (the hub fetches its state); `fleetsync pull remove {cluster}` before an agent pushes it",
    )


def screen_types(infos: Sequence[pb.TypeInfo], *, limit: int) -> tuple[list[pb.TypeInfo], list[tuple[str, str]]]:
    """The agent's reported types the hub takes (valid, at most ``limit``), and the others as
    (type, why) to refuse by name, as a bundle of them would be."""
    accepted: list[pb.TypeInfo] = []
    refused: list[tuple[str, str]] = []
    for info in infos:
        problem = typeinfo.type_info_problem(info)
        if not problem and len(accepted) >= limit:
            problem = f"the agent reported more than {limit} types (the hub's --max-reported-types)"
        if problem:
            refused.append((typeinfo.gvk_of(info), f"reported type {typeinfo.gvk_of(info)[:100]!r} refused: {problem}"))
        else:
            accepted.append(info)
    return accepted, refused
