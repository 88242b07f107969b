"""The agent's side of one connection to a hub, as a sans-I/O state machine.

The runner feeds it what the hub says (:meth:`Uplink.receive`) and asks what to send
(:meth:`Uplink.poll`), passing the time; it never touches a socket or a clock, so
every rule below is testable in microseconds (and is, by the fault tests).

Per type, once its first LIST is done, the protocol rules plan the stream on this
connection: resume (resend the held deltas after the hub's position), digest, or
FULL. Then:

- **Flow control.** At most ``window`` messages per type are unacknowledged, and of
  them FULL chunks of at most ``full_bytes_in_flight`` together; FULL chunks are acked one by one,
  so a 200,000-object FULL streams at the pace the hub commits and never piles up in a
  broker's queue or the agent's memory. Changes that do not fit wait in
  the type's pending map, where later changes to a key replace earlier ones.
- **Retransmission.** What stays unacked for ``ack_timeout`` without progress is sent
  again (doubling the timeout up to 8x while nothing moves). Duplicates are harmless:
  the hub acks and ignores them. This is what heals a lost bundle or a lost ack on a
  transport that can lose messages (a broker, or when faults are injected). On a
  *lossless* connection (gRPC: in order, and it breaks rather than lose a message) nothing
  is resent while it is up: a message not acked yet is queued at a hub that is behind,
  and a copy would only queue behind it. With 3,000 agents starting at once, the copies
  were most of what the hub read (5,309 resent FULL chunks of 6,000 sent) and stalled
  it for tens of seconds. What is unacked goes again after a reconnect (resume or FULL);
  a type that sees no ack through the whole backoff gives the connection up
  (:class:`HubStalled`), so even a hub that dropped a message without a word is healed.
- **Resync queue** (Global Hub's GlobalResyncQueue): digests requested by the hub (on
  a gap, on reactivation, at its startup, periodically, on demand) queue up FIFO, one
  type at a time, so a resync storm never starves the deltas of the other types. A
  digest unanswered for ``ack_timeout`` is sent again.
- **Heartbeat** when nothing else was sent for the hub's heartbeat interval.
- **Batching** is the runner's (``agent/batching.py``): :meth:`Uplink.poll` holds the
  pending changes back when told to, and says whether any wait
  (:meth:`Uplink.changes_waiting`) and whether anything is in flight
  (:attr:`Uplink.in_flight`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from fleetsync.agent.typesync import ENVELOPE_BYTES, TypeSync
from fleetsync.errors import FleetsyncError
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import Plan, Position
from fleetsync.transport.base import TransportError

log = logging.getLogger(__name__)

#: Retransmission timeouts double while nothing is acked, up to this factor.
MAX_BACKOFF_FACTOR = 8


class HubRejected(FleetsyncError):
    """The hub refused or ended the session (``Reject`` without a type)."""

    def __init__(self, reject: pb.Reject) -> None:
        super().__init__(reject.message)
        self.reject = reject

    @property
    def reason(self) -> str:
        return pb.RejectReason.Name(self.reject.reason)  # type: ignore[arg-type]


class ProtocolViolation(FleetsyncError):
    """The hub sent something the protocol does not allow at this point."""


class HubSilent(TransportError):
    """Nothing from the hub for too long, heartbeats included: over a broker, where no
    connection breaks when the hub dies, this is how the agent learns that it is gone."""


class HubStalled(TransportError):
    """On a lossless connection, a type's messages have gone unacknowledged through the whole
    backoff (15 + 30 + 60 + 120 s at the default timeout) while the hub answers heartbeats:
    the connection is given up, and the reconnect's plan (resume, digest or FULL) takes over.
    The net under a hub that would drop a message without a word; none is known to."""


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    #: Unacknowledged messages allowed per type.
    window: int = 32
    #: Of those, FULL chunks of at most this many bytes together (at least one chunk; the hub's
    #: Welcome.chunk_bytes sets their size, 128 KiB by default: 16 chunks): a chunk in flight is
    #: held for resends and queued in the transport, so 32 chunks of 512 KiB were ~16 MiB twice
    #: over, most of an agent's peak during its initial sync (docs/agent-memory.md). Acked one by
    #: one, 2 MiB keep a hub busy: ~1,000 Pods per round trip.
    full_bytes_in_flight: int = 2 * 1024 * 1024
    #: Seconds without an ack (or a digest's answer) before resending.
    ack_timeout: float = 15.0
    #: Seconds between heartbeats when the hub's Welcome does not say.
    heartbeat_interval: float = 10.0
    #: Heartbeat intervals without a word from the hub before the connection counts as dead
    #: (the hub answers every heartbeat).
    silence_heartbeats: float = 4.0


class Outgoing(NamedTuple):
    """A message to send, and what it is (for metrics: full, delta, repair, resume, resend, digest, error, heartbeat)."""

    kind: str
    message: pb.AgentMessage


class ResyncQueue:
    """FIFO of types to resync by digest, each at most once."""

    def __init__(self) -> None:
        self._types: OrderedDict[str, None] = OrderedDict()

    def push(self, types: Iterable[str], *, front: bool = False) -> None:
        for t in types:
            self._types[t] = None
            if front:
                self._types.move_to_end(t, last=False)

    def pop(self) -> str | None:
        if not self._types:
            return None
        return self._types.popitem(last=False)[0]

    def __contains__(self, type_: object) -> bool:
        return type_ in self._types

    def __len__(self) -> int:
        return len(self._types)


@dataclass
class _Timer:
    """Retransmission state of one type: when progress was last seen, and the backoff factor."""

    since: float | None = None
    factor: int = 1


def _bundle(kind: str, bundle: pb.Bundle) -> Outgoing:
    return Outgoing(kind, pb.AgentMessage(bundle=bundle))


class Uplink:
    """One connection's protocol state for all of an agent's types."""

    def __init__(self, syncs: Mapping[str, TypeSync], welcome: pb.Welcome, *, settings: UplinkSettings, now: float, lossless: bool = False) -> None:
        self.syncs = syncs
        self.settings = settings
        #: The connection loses nothing while it is up (``AgentConnection.lossless``): no resends on it.
        self.lossless = lossless
        self.positions = {p.type: Position(p.incarnation, p.seq) for p in welcome.applied}
        self.heartbeat_interval = welcome.heartbeat_interval_ms / 1000 or settings.heartbeat_interval
        for sync in syncs.values():
            sync.limit_to(welcome.max_message_bytes, welcome.chunk_bytes)
        self.queue = ResyncQueue()
        self._planned: set[str] = set()
        self._digest: tuple[str, float] | None = None  # (type, sent at) of the digest awaiting its diff
        self._digest_factor = 1
        self._timers = {t: _Timer() for t in syncs}
        self._out: list[Outgoing] = []
        self._last_sent = now
        self._last_heard = now
        for sync in syncs.values():
            sync.error_reported = None  # a new connection: report every type's error state once
            sync.refused = ""  # a refusal holds for the connection it came on (the hub may take the type now)

    # ---- from the hub ------------------------------------------------------------------

    @property
    def silence_timeout(self) -> float:
        return self.heartbeat_interval * self.settings.silence_heartbeats

    def receive(self, message: pb.HubMessage, now: float) -> None:
        kind = message.WhichOneof("message")
        self._last_heard = now
        if kind == "heartbeat":
            return
        if kind == "ack":
            ack = message.ack
            sync = self.syncs.get(ack.type)
            if sync and sync.stream.on_ack(ack.incarnation, ack.seq, chunk=ack.chunk, partial=ack.partial):
                timer = self._timers[ack.type]
                timer.since, timer.factor = (now if sync.stream.in_flight() else None), 1
        elif kind == "resync":
            wanted = [message.resync.type] if message.resync.type else list(self.syncs)
            types = [t for t in wanted if t in self.syncs and not self.syncs[t].refused]
            log.info("hub asks to resync %s (%s)", ", ".join(types) or "nothing this agent syncs", message.resync.reason or "no reason given")
            self.queue.push(types)
        elif kind == "digest_diff":
            diff = message.digest_diff
            sync = self.syncs.get(diff.type)
            if sync is None:
                return
            bundles = sync.repair(diff)
            if bundles is None:
                return  # the answer to an older digest
            if self._digest and self._digest[0] == diff.type:
                self._digest, self._digest_factor = None, 1
            if diff.send_full:
                log.info("%s: the hub asks for a FULL (the difference is too large to list)", diff.type)
            else:
                log.info("%s: repairing %d missing, %d stale, %d extra", diff.type, len(diff.missing), len(diff.stale), len(diff.extra))
            self._out += [_bundle("repair", b) for b in bundles]
        elif kind == "reject":
            if not message.reject.type:
                raise HubRejected(message.reject)
            sync = self.syncs.get(message.reject.type)
            if sync is not None:
                sync.refused = message.reject.message
                log.error("the hub refuses type %s: %s; not sending it on this connection", sync.type, message.reject.message)
        elif kind == "spec_update":
            log.debug("spec updates are not handled by this agent yet")
        else:
            raise ProtocolViolation(f"unexpected {kind} from the hub during the session")

    # ---- to the hub ----------------------------------------------------------------------

    def poll(self, now: float, *, changes: bool = True) -> list[Outgoing]:
        """Everything to send now, in order. Raises HubSilent if the hub has gone quiet.

        ``changes=False`` holds the pending changes back (the runner is batching them);
        everything else (FULL chunks, resumes, digests, repairs, resends, errors,
        heartbeats) still goes."""
        if now - self._last_heard > self.silence_timeout:
            raise HubSilent(f"no word from the hub for {now - self._last_heard:.0f}s (it answers every heartbeat)")
        out, self._out = self._out, []
        for sync in self.syncs.values():  # a type that never listed reports its error too
            if not sync.refused and (report := sync.error_report()) is not None:
                out.append(_bundle("error", report))
        live = [s for s in self.syncs.values() if s.listed and not s.refused]
        for sync in live:
            if sync.type not in self._planned:
                out += self._plan(sync)
        window = self.settings.window
        for sync in live:
            full = sync.stream.full
            while full is not None and not full.all_sent and sync.stream.in_flight() < window and self._full_room(sync):
                out.append(_bundle("full", sync.next_full_chunk()))
        out += self._next_digest(now)
        if changes:
            for sync in live:
                out += [_bundle("delta", b) for b in sync.deltas(window - sync.stream.in_flight())]
        out += self._retransmit(now, live)
        if out:
            self._last_sent = now
        elif now - self._last_sent >= self.heartbeat_interval:
            out.append(Outgoing("heartbeat", pb.AgentMessage(heartbeat=pb.Heartbeat(sent_at_ms=int(time.time() * 1000)))))
            self._last_sent = now
        return out

    def _full_room(self, sync: TypeSync) -> bool:
        """Whether another FULL chunk (of up to the hub's chunk size) fits in ``full_bytes_in_flight``
        beside those unacknowledged; one always does. An object larger than the chunk size goes
        alone in a chunk of its own size, counted as such."""
        unacked = sync.full_bytes_unacked()
        return unacked == 0 or unacked + sync.fill + ENVELOPE_BYTES <= self.settings.full_bytes_in_flight

    @property
    def in_flight(self) -> int:
        """Messages sent on this connection and not acknowledged yet, over every type."""
        return sum(s.stream.in_flight() for s in self.syncs.values() if s.type in self._planned and not s.refused)

    def changes_waiting(self) -> bool:
        """Whether :meth:`poll` would send pending changes now (some type has changes, its stream
        takes deltas, and its window has room). Once they are sent, this is False again."""
        window = self.settings.window
        return any(
            s.pending and s.type in self._planned and not s.refused and s.stream.can_send_delta and s.stream.in_flight() < window for s in self.syncs.values()
        )

    @property
    def resyncs_outstanding(self) -> int:
        """Digest resyncs queued, or sent and awaiting the hub's diff."""
        return len(self.queue) + (self._digest is not None)

    def next_deadline(self, now: float) -> float:
        """When :meth:`poll` has something to do even if nothing happens meanwhile."""
        deadlines = [self._last_sent + self.heartbeat_interval, self._last_heard + self.silence_timeout + 0.01]
        timeout = self.settings.ack_timeout
        deadlines += [t.since + timeout * t.factor for t in self._timers.values() if t.since is not None]
        if self._digest is not None:
            deadlines.append(self._digest[1] + timeout * self._digest_factor)
        return max(now, min(deadlines))

    def _plan(self, sync: TypeSync) -> list[Outgoing]:
        self._planned.add(sync.type)
        plan, resend = sync.stream.plan(self.positions.get(sync.type))
        if plan is Plan.RESUME:
            log.debug("%s: resuming with %d held bundles", sync.type, len(resend))
            return [_bundle("resume", payload) for _, _, payload in resend]  # type: ignore[arg-type]
        if plan is Plan.DIGEST:
            self.queue.push([sync.type])
        else:
            sync.start_full()
        return []

    def _next_digest(self, now: float) -> list[Outgoing]:
        """The digest of the next queued type, unless one is awaiting its diff."""
        if self._digest is not None:
            waiting, sent = self._digest
            if now - sent < self.settings.ack_timeout * self._digest_factor:
                return []
            log.warning("%s: no answer to its digest for %.0fs; sending it again", waiting, now - sent)
            self._digest_factor = min(self._digest_factor * 2, MAX_BACKOFF_FACTOR)
            self.queue.push([waiting], front=True)
            self._digest = None
        while (type_ := self.queue.pop()) is not None:
            sync = self.syncs[type_]
            if not sync.listed or sync.refused or type_ not in self._planned:
                continue  # not ready: its plan (after the first LIST) decides what it needs
            if sync.stream.full is not None:
                continue  # a FULL in flight is a complete resync already
            self._digest = (type_, now)
            return [Outgoing("digest", pb.AgentMessage(digest=d)) for d in sync.digest()]
        return []

    def _retransmit(self, now: float, live: list[TypeSync]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for sync in live:
            timer = self._timers[sync.type]
            if not sync.stream.in_flight():
                timer.since, timer.factor = None, 1
                continue
            if timer.since is None:
                timer.since = now
            elif now - timer.since >= self.settings.ack_timeout * timer.factor:
                unacked = sync.stream.unacked()
                if self.lossless and timer.factor >= MAX_BACKOFF_FACTOR:
                    waited = self.settings.ack_timeout * (2 * MAX_BACKOFF_FACTOR - 1)
                    raise HubStalled(f"{sync.type}: {len(unacked)} message(s) unacknowledged for {waited:.0f}s while the hub answers heartbeats; reconnecting")
                if self.lossless:
                    log.warning(
                        "%s: %d message(s) unacknowledged for %.0fs: the hub is behind (not resent: the connection loses nothing)",
                        sync.type,
                        len(unacked),
                        now - timer.since,
                    )
                else:
                    log.warning("%s: %d message(s) unacknowledged for %.0fs; sending them again", sync.type, len(unacked), now - timer.since)
                    out += [_bundle("resend", payload) for payload in unacked]  # type: ignore[arg-type]
                timer.since, timer.factor = now, min(timer.factor * 2, MAX_BACKOFF_FACTOR)
        return out
