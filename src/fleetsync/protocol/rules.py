"""Every rule of the sync protocol, as pure state machines (no I/O, no clocks).

Hub side, per (cluster, type) stream, :class:`HubStream` decides what an incoming
bundle means (duplicate, apply, gap, new incarnation) and what to answer; the caller
applies the objects to its store in one transaction and sends the ack only after
the commit (:meth:`HubStream.committed`). Agent side, :class:`AgentStream` numbers
bundles, keeps what is unacked plus a bounded window of recent deltas, and decides
on (re)connect whether to resume, send a digest or send a FULL.

The rules (ARCHITECTURE.md, "The sync protocol"):

- ``seq <= applied`` in the same incarnation: duplicate -- ack, ignore;
- ``DELTA`` with ``base_seq <= applied < seq``: apply (a delta carries the final
  state of every key it touches, so an older base is still exact);
- ``DELTA`` with ``base_seq > applied``: gap -- ask ``ResyncRequest(type)``;
- a new incarnation starts a new stream; its first message must be a ``FULL`` (or
  a digest); old objects are kept (stale) until that FULL or the digest repair
  replaces them;
- a ``FULL`` may come in chunks (same seq, ``chunk`` 0, 1, ..., ``last``); the
  stream moves to its seq, and objects not in it are deleted, at the last chunk;
- a repair ``DELTA`` answering a ``DigestDiff`` has ``base_seq`` = the digest's seq
  and adopts the digest's incarnation.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Position:
    """Where a stream stands: (incarnation, seq)."""

    incarnation: str
    seq: int


class Verdict(enum.Enum):
    DUPLICATE = "duplicate"  # ack again, change nothing
    APPLY_DELTA = "apply_delta"  # upsert + delete, then move to seq
    FULL_CHUNK = "full_chunk"  # upsert this chunk (remember its keys); not yet complete
    FULL_LAST = "full_last"  # upsert the last chunk, delete what the FULL lacked, move to seq
    GAP = "gap"  # cannot apply: ask the agent to resync this type


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    #: The FULL is starting afresh (chunk 0): keys remembered from an earlier, abandoned FULL are void.
    full_restart: bool = False

    @property
    def acks(self) -> bool:
        """Whether an ack follows (after commit, for the applying verdicts)."""
        return self.verdict in (Verdict.DUPLICATE, Verdict.APPLY_DELTA, Verdict.FULL_LAST)


@dataclass(frozen=True, slots=True)
class BundleHeader:
    """What the rules need of a bundle (transport-independent)."""

    incarnation: str
    seq: int
    base_seq: int
    full: bool
    chunk: int = 0
    last: bool = True


@dataclass
class HubStream:
    """The hub's view of one (cluster, type) stream."""

    applied: Position | None = None
    #: FULL in progress: (incarnation, seq, next chunk expected).
    full_progress: tuple[str, int, int] | None = None
    #: Digest the hub answered and awaits a repair for: (incarnation, seq).
    pending_digest: Position | None = None

    def decide(self, b: BundleHeader) -> Decision:
        applied = self.applied
        same = applied is not None and applied.incarnation == b.incarnation
        if same and applied is not None and b.seq <= applied.seq:
            return Decision(Verdict.DUPLICATE, f"seq {b.seq} <= applied {applied.seq}")
        if b.full:
            progress = self.full_progress
            if b.chunk == 0:
                return Decision(Verdict.FULL_LAST if b.last else Verdict.FULL_CHUNK, "full", full_restart=True)
            if progress == (b.incarnation, b.seq, b.chunk):
                return Decision(Verdict.FULL_LAST if b.last else Verdict.FULL_CHUNK, "full continues")
            if progress is not None and progress[:2] == (b.incarnation, b.seq) and b.chunk < progress[2]:
                return Decision(Verdict.DUPLICATE, f"chunk {b.chunk} of seq {b.seq} already applied")
            return Decision(Verdict.GAP, f"chunk {b.chunk} of FULL seq {b.seq} without its predecessors")
        if self.pending_digest == Position(b.incarnation, b.base_seq):
            return Decision(Verdict.APPLY_DELTA, "digest repair")
        if not same or applied is None:
            return Decision(Verdict.GAP, f"DELTA of incarnation {b.incarnation} but the hub holds {applied.incarnation if applied else 'nothing'}")
        if b.base_seq <= applied.seq:
            return Decision(Verdict.APPLY_DELTA)
        return Decision(Verdict.GAP, f"base_seq {b.base_seq} > applied {applied.seq}")

    def committed(self, b: BundleHeader, decision: Decision) -> Position | None:
        """Record that ``decision`` for ``b`` committed; returns the position to ack (None: no ack)."""
        if decision.verdict is Verdict.DUPLICATE:
            return self.applied if self.applied and self.applied.incarnation == b.incarnation else Position(b.incarnation, b.seq)
        if decision.verdict is Verdict.FULL_CHUNK:
            self.full_progress = (b.incarnation, b.seq, b.chunk + 1)
            return None
        if decision.verdict in (Verdict.APPLY_DELTA, Verdict.FULL_LAST):
            self.full_progress = None
            if decision.verdict is Verdict.FULL_LAST or self.pending_digest == Position(b.incarnation, b.base_seq):
                self.pending_digest = None
            self.applied = Position(b.incarnation, b.seq)
            return self.applied
        return None

    def digest_answered(self, incarnation: str, seq: int) -> None:
        """The hub sent a DigestDiff for (incarnation, seq); the repair DELTA will build on it."""
        self.pending_digest = Position(incarnation, seq)


@dataclass(frozen=True, slots=True)
class DigestComparison:
    missing: list[str]
    stale: list[str]
    extra: list[str]

    @property
    def empty(self) -> bool:
        return not (self.missing or self.stale or self.extra)


def compare_digest(agent: Mapping[str, int], hub: Mapping[str, int], *, hub_stale: Iterable[str] = ()) -> DigestComparison:
    """Keys the hub lacks, holds with another hash (or marked stale), or holds in excess."""
    stale_marked = set(hub_stale)
    missing, stale = [], []
    for key, digest in agent.items():
        held = hub.get(key)
        if held is None:
            missing.append(key)
        elif held != digest or key in stale_marked:
            stale.append(key)
    extra = [key for key in hub if key not in agent]
    return DigestComparison(sorted(missing), sorted(stale), sorted(extra))


class Plan(enum.Enum):
    RESUME = "resume"  # resend the held bundles after the hub's position
    DIGEST = "digest"  # send a digest; the hub's diff drives one repair delta
    FULL = "full"  # send everything


@dataclass
class AgentStream:
    """The agent's bookkeeping for one type: seq numbering, unacked bundles, resumable window."""

    incarnation: str
    #: How many already-acked bundles to keep for resuming after a reconnect.
    window: int = 256
    seq: int = 0
    acked: int = 0
    #: seq -> (base_seq, payload) of every bundle sent and not yet dropped (unacked + window).
    held: OrderedDict[int, tuple[int, object]] = field(default_factory=OrderedDict)
    #: Whether the hub has this incarnation's stream started (a FULL or digest repair was acked).
    established: bool = False
    #: The seq of the digest sent and not yet answered; deltas wait while it is set.
    awaiting_digest: int | None = None

    @property
    def can_send_delta(self) -> bool:
        return self.established and self.awaiting_digest is None

    def start_digest(self) -> Position:
        """A digest describes the stream as of now; hold deltas until its diff arrives."""
        self.awaiting_digest = self.seq
        return Position(self.incarnation, self.seq)

    def accept_diff(self, incarnation: str, seq: int) -> bool:
        """Whether a DigestDiff answers the digest we wait for (not an older one); if so, the
        repair DELTA gets the next seq with base = that digest's seq."""
        if incarnation != self.incarnation or seq != self.awaiting_digest or seq != self.seq:
            return False
        self.awaiting_digest = None
        self.established = True
        return True

    def next_seq(self) -> tuple[int, int]:
        """(seq, base_seq) for the next DELTA."""
        self.seq += 1
        return self.seq, self.seq - 1

    def sent(self, seq: int, base_seq: int, payload: object) -> None:
        """Keep a sent bundle until it is acked and then out of the window."""
        self.held[seq] = (base_seq, payload)

    def on_ack(self, incarnation: str, seq: int) -> None:
        if incarnation != self.incarnation or seq <= self.acked:
            return
        self.acked = seq
        self.established = True
        acked = [s for s in self.held if s <= seq]
        for s in acked[: max(0, len(acked) - self.window)]:
            del self.held[s]

    def unacked(self) -> list[tuple[int, int, object]]:
        return [(s, base, payload) for s, (base, payload) in self.held.items() if s > self.acked]

    def plan(self, hub: Position | None) -> tuple[Plan, list[tuple[int, int, object]]]:
        """On Welcome: resume from the hub's position if the held bundles cover it, else digest or FULL.

        A new connection voids a digest still awaiting its answer.
        """
        self.awaiting_digest = None
        if hub is not None and hub.incarnation == self.incarnation:
            self.established = True  # the hub has this incarnation's stream
            if hub.seq == self.seq:
                self.acked = max(self.acked, hub.seq)
                return Plan.RESUME, []
            after = [(s, base, payload) for s, (base, payload) in self.held.items() if s > hub.seq]
            covered = bool(after) and after[0][1] <= hub.seq and all(after[i + 1][1] <= after[i][0] for i in range(len(after) - 1))
            if hub.seq < self.seq and covered:
                self.acked = max(self.acked, hub.seq)
                return Plan.RESUME, after
            return Plan.DIGEST, []
        if hub is not None:
            return Plan.DIGEST, []  # the hub holds an older incarnation's objects: repair by digest
        return Plan.FULL, []
