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
  while it is under way, anything older of the same incarnation is a stale resend
  and is ignored;
- a repair ``DELTA`` answering a ``DigestDiff`` has ``base_seq`` = the digest's seq
  and adopts the digest's incarnation; once the hub has answered a digest, DELTAs of
  that incarnation up to the digest's seq are covered by the repair and ignored (a
  late one could otherwise undo what the repair relies on).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The largest sequence number, revision or generation a peer may send: the protocol's
#: counters are uint64 on the wire, but the stores keep them as signed 64-bit integers.
MAX_COUNTER = 2**63 - 1


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
    #: A DUPLICATE that is a chunk of the FULL in progress (acked as such, not as a complete FULL).
    chunk_duplicate: bool = False
    #: A DUPLICATE because the repair of an answered digest covers it (the stream may be another incarnation's yet).
    covered: bool = False


@dataclass(frozen=True, slots=True)
class AckPosition:
    """What an Ack says: everything up to ``seq`` committed, or (``partial``) chunks 0..``chunk`` of FULL ``seq``."""

    incarnation: str
    seq: int
    chunk: int = 0
    partial: bool = False


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
    """The hub's view of one (cluster, type) stream, for one session.

    Only ``applied`` is stored (with the objects); ``full_progress`` and ``pending_digest``
    live as long as the connection: the hub builds a new HubStream from the store on every
    Hello. :meth:`AgentStream.plan` relies on it, forgetting the same two on a connection --
    a hub that kept an answered digest across a reconnect would ignore the held deltas the
    agent resumes with as covered by a repair that never comes.
    """

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
        digest = self.pending_digest
        if digest is not None and digest.incarnation == b.incarnation and b.seq <= digest.seq:
            # Sent before a digest the hub has answered, arriving late: the repair carries the
            # final state of everything the digest found different. Applied now, this could set
            # a key to a state that a later delta (also late) reverted -- invisible to the
            # digest, so absent from the repair, and then ignored as a duplicate of it. A FULL
            # chunk alike: it could bring back a key deleted since, which the digest did not see
            # on the hub, and the FULL that would have removed it again never completes.
            return Decision(Verdict.DUPLICATE, f"seq {b.seq} is covered by the repair of the digest at seq {digest.seq}", covered=True)
        progress = self.full_progress
        if progress is not None and progress[0] == b.incarnation and b.seq < progress[1]:
            # A stale resend: the FULL under way is newer and carries everything this would. Applied
            # mid-FULL it could even delete an object the FULL already carried.
            return Decision(Verdict.DUPLICATE, f"seq {b.seq} is older than the FULL seq {progress[1]} in progress", chunk_duplicate=True)
        if b.full:
            if b.chunk == 0:
                return Decision(Verdict.FULL_LAST if b.last else Verdict.FULL_CHUNK, "full", full_restart=True)
            if progress == (b.incarnation, b.seq, b.chunk):
                return Decision(Verdict.FULL_LAST if b.last else Verdict.FULL_CHUNK, "full continues")
            if progress is not None and progress[:2] == (b.incarnation, b.seq) and b.chunk < progress[2]:
                return Decision(Verdict.DUPLICATE, f"chunk {b.chunk} of seq {b.seq} already applied", chunk_duplicate=True)
            return Decision(Verdict.GAP, f"chunk {b.chunk} of FULL seq {b.seq} without its predecessors")
        if self.pending_digest == Position(b.incarnation, b.base_seq):
            return Decision(Verdict.APPLY_DELTA, "digest repair")
        if not same or applied is None:
            return Decision(Verdict.GAP, f"DELTA of incarnation {b.incarnation} but the hub holds {applied.incarnation if applied else 'nothing'}")
        if b.base_seq <= applied.seq:
            return Decision(Verdict.APPLY_DELTA)
        return Decision(Verdict.GAP, f"base_seq {b.base_seq} > applied {applied.seq}")

    def committed(self, b: BundleHeader, decision: Decision) -> AckPosition | None:
        """Record that ``decision`` for ``b`` committed; returns what to ack (None: nothing, for a GAP)."""
        if decision.verdict is Verdict.DUPLICATE:
            if decision.chunk_duplicate and self.full_progress is not None:
                incarnation, seq, next_chunk = self.full_progress
                return AckPosition(incarnation, seq, next_chunk - 1, partial=True)
            applied = self.applied
            if decision.covered and (applied is None or applied.incarnation != b.incarnation):
                return None  # nothing of this incarnation is committed yet: the repair's ack will say it all
            assert applied is not None and applied.incarnation == b.incarnation  # decide() says DUPLICATE only then
            return AckPosition(applied.incarnation, applied.seq)
        if decision.verdict is Verdict.FULL_CHUNK:
            self.full_progress = (b.incarnation, b.seq, b.chunk + 1)
            return AckPosition(b.incarnation, b.seq, b.chunk, partial=True)
        if decision.verdict in (Verdict.APPLY_DELTA, Verdict.FULL_LAST):
            self.full_progress = None
            if decision.verdict is Verdict.FULL_LAST or self.pending_digest == Position(b.incarnation, b.base_seq):
                self.pending_digest = None
            self.applied = Position(b.incarnation, b.seq)
            return AckPosition(b.incarnation, b.seq)
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


def can_merge(first: BundleHeader, second: BundleHeader) -> bool:
    """Whether DELTA ``second`` can be folded into DELTA ``first`` (hub-side conflation).

    Only a contiguous successor merges: same incarnation, ``second`` builds on what
    ``first`` ends with (``base_seq <= first.seq``) and goes further. The merged delta
    keeps ``first``'s base and takes ``second``'s seq; since a delta carries the final
    state of every key it touches, applying it equals applying both. A successor past
    a gap must not merge: that would hide the gap.
    """
    return not first.full and not second.full and first.incarnation == second.incarnation and second.base_seq <= first.seq < second.seq


def supersedes(full: BundleHeader, earlier: BundleHeader) -> bool:
    """Whether a queued bundle ``earlier`` (a DELTA, or a chunk of another FULL) is made redundant
    by the start (chunk 0) of ``full``: only an earlier seq of the same incarnation. The FULL
    carries the complete state and its ack covers every earlier seq. Nothing of another
    incarnation is superseded: incarnations are not ordered, so a stale resend of an old
    incarnation's FULL must not drop a newer incarnation's bundles."""
    return earlier.incarnation == full.incarnation and earlier.seq < full.seq


class Plan(enum.Enum):
    RESUME = "resume"  # resend the held bundles after the hub's position
    DIGEST = "digest"  # send a digest; the hub's diff drives one repair delta
    FULL = "full"  # send everything


@dataclass
class FullProgress:
    """A FULL being sent: its chunks go out as the in-flight window allows and are acked one by one."""

    seq: int
    base_seq: int
    #: chunk -> payload of every chunk sent and not yet acked (resent on an ack timeout).
    unacked: OrderedDict[int, object] = field(default_factory=OrderedDict)
    next_chunk: int = 0
    #: The last chunk has been sent; deltas may follow it.
    all_sent: bool = False


@dataclass
class AgentStream:
    """The agent's bookkeeping for one type: seq numbering, unacked bundles, resumable window."""

    incarnation: str
    #: How many already-acked bundles to keep for resuming after a reconnect.
    window: int = 256
    seq: int = 0
    acked: int = 0
    #: seq -> (base_seq, payload) of every DELTA sent and not yet dropped (unacked + window).
    held: OrderedDict[int, tuple[int, object]] = field(default_factory=OrderedDict)
    #: Whether the hub has this incarnation's stream started (a FULL or digest repair was acked).
    established: bool = False
    #: The seq of the digest sent and not yet answered; deltas wait while it is set.
    awaiting_digest: int | None = None
    #: The FULL being sent, until its last chunk is acked.
    full: FullProgress | None = None

    @property
    def can_send_delta(self) -> bool:
        """Deltas need a stream the hub has (or will have once the FULL ahead of them is applied)
        and no digest awaiting its diff (the repair carries what changed meanwhile)."""
        if self.awaiting_digest is not None:
            return False
        if self.full is not None:
            return self.full.all_sent
        return self.established

    def in_flight(self) -> int:
        """Messages sent and not yet acked (the flow-control window counts these)."""
        return sum(1 for s in self.held if s > self.acked) + (len(self.full.unacked) if self.full else 0)

    def start_full(self) -> tuple[int, int]:
        """(seq, base_seq) of a new FULL. It replaces everything, so held deltas are void."""
        self.seq += 1
        self.held.clear()
        self.awaiting_digest = None
        self.full = FullProgress(self.seq, self.seq - 1)
        return self.seq, self.seq - 1

    def full_chunk_sent(self, chunk: int, payload: object, *, last: bool) -> None:
        assert self.full is not None and chunk == self.full.next_chunk
        self.full.unacked[chunk] = payload
        self.full.next_chunk += 1
        self.full.all_sent = last

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

    def on_ack(self, incarnation: str, seq: int, *, chunk: int = 0, partial: bool = False) -> bool:
        """Record an ack; returns whether it acknowledged anything new."""
        if incarnation != self.incarnation:
            return False
        if partial:
            if self.full is None or self.full.seq != seq:
                return False
            done = [c for c in self.full.unacked if c <= chunk]
            for c in done:
                del self.full.unacked[c]
            return bool(done)
        if seq <= self.acked:
            return False
        self.acked = seq
        self.established = True
        if self.full is not None and seq >= self.full.seq:
            self.full = None
        acked = [s for s in self.held if s <= seq]
        for s in acked[: max(0, len(acked) - self.window)]:
            del self.held[s]
        return True

    def unacked(self) -> list[object]:
        """Every payload sent and not acked, in the order to resend it: FULL chunks, then deltas."""
        chunks = list(self.full.unacked.values()) if self.full else []
        return chunks + [payload for s, (_, payload) in self.held.items() if s > self.acked]

    def plan(self, hub: Position | None) -> tuple[Plan, list[tuple[int, int, object]]]:
        """On Welcome: resume from the hub's position if the held bundles cover it, else digest or FULL.

        A new connection voids a digest still awaiting its answer, and a FULL not yet
        complete (the hub forgets a FULL's progress with the connection).
        """
        self.awaiting_digest = None
        # A FULL in progress is dropped: if the hub completed it, its position says so and the
        # deltas after it resume as usual; if not, nothing held builds on the hub's position.
        self.full = None
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
