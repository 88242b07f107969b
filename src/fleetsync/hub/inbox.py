"""One cluster's queue of received bundles and digests, with conflation (no I/O).

The transport puts messages in as they arrive; the engine takes them out one by one
and applies them in order. When the engine falls behind, the queue conflates:

- a DELTA that continues a queued DELTA of the same stream (see
  :func:`~fleetsync.protocol.rules.can_merge`) is folded into it, the last write per
  key winning: one transaction and one ack instead of many;
- a queued DELTA or FULL chunk that a FULL (its chunk 0) makes redundant is dropped (see
  :func:`~fleetsync.protocol.rules.supersedes`);
- a resent copy of something still queued is dropped;
- a digest's chunks are assembled here and queued as one item once complete; a newer
  digest of a type replaces an older one still queued.

What an agent sends is bounded here too (:class:`~fleetsync.hub.limits.ProtocolLimits`):
a digest chunk's packed entries are decompressed with a limit, a digest that goes on past
its entry or chunk limit, or is not complete in time, is dropped and refused, and a
bundle whose lz4 object bodies declare more than the object size limit is refused whole,
before it is queued. Each raises a :class:`~fleetsync.protocol.codec.CodecError` that the
session answers with ``Reject{PROTOCOL, type}``.

Applying the conflated queue leaves the store exactly as applying every message would,
with fewer transactions (a hypothesis test checks this). Memory is bounded twice: per
cluster by ``max_bytes``, and for the whole hub by a shared :class:`InboxBudget` that
counts every inbox's bytes and the item each engine is applying. :meth:`Inbox.room`
waits while either is exceeded, so the transport stops reading, and flow control (gRPC's
windows, the broker's in-flight limits) pushes back on the agents before memory grows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetsync.hub.limits import ProtocolLimits
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import BundleHeader, can_merge, supersedes

log = logging.getLogger(__name__)


def header_of(bundle: pb.Bundle) -> BundleHeader:
    return BundleHeader(bundle.incarnation, bundle.seq, bundle.base_seq, full=bundle.kind == pb.FULL, chunk=bundle.chunk, last=bundle.last)


@dataclass
class QueuedDelta:
    """One or more contiguous DELTAs of a stream, merged: the final state of every key they touch."""

    type: str
    header: BundleHeader
    compression: int
    collected_at_ms: int
    changes: dict[str, pb.Object | None] = field(default_factory=dict)
    size: int = 0
    bundles: int = 1  # how many received bundles this stands for

    @classmethod
    def of(cls, bundle: pb.Bundle, size: int) -> QueuedDelta:
        queued = cls(bundle.type, header_of(bundle), bundle.compression, bundle.collected_at_ms, size=0, bundles=0)
        queued.merge(bundle, size)
        return queued

    def merge(self, bundle: pb.Bundle, size: int) -> None:
        for obj in bundle.upserts:
            self.changes[codec.key_of(obj.namespace, obj.name)] = obj
        for key in bundle.deletes:
            self.changes[key] = None
        self.header = BundleHeader(self.header.incarnation, max(self.header.seq, bundle.seq), self.header.base_seq, full=False)
        if bundle.collected_at_ms:
            self.collected_at_ms = min(self.collected_at_ms or bundle.collected_at_ms, bundle.collected_at_ms)
        self.size += size
        self.bundles += 1

    @property
    def upserts(self) -> list[pb.Object]:
        return [o for o in self.changes.values() if o is not None]

    @property
    def deletes(self) -> list[str]:
        return [k for k, o in self.changes.items() if o is None]


@dataclass
class QueuedDigest:
    """A complete digest (all its chunks): key -> hash as of (incarnation, seq)."""

    type: str
    incarnation: str
    seq: int
    entries: dict[str, int]
    size: int = 0


Item = QueuedDelta | QueuedDigest | pb.Bundle  # pb.Bundle: a FULL chunk or an error report


class _Reservations:
    """Reservations of one duration, by holder, in the order they lapse: every one lasts
    ``seconds`` from when it is taken and a new one goes to the end, so the lapsed ones are
    found at the front and :meth:`prune` is O(1) per call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.by_holder: OrderedDict[int, tuple[float, int]] = OrderedDict()  # holder -> (until, bytes)
        self.bytes = 0

    def add(self, holder: int, size: int, now: float) -> None:
        """A reservation for ``holder``, which holds none (of either duration: see ``InboxBudget._let_in``)."""
        self.by_holder[holder] = (now + self.seconds, size)
        self.bytes += size

    def pop(self, holder: int) -> bool:
        if (reserved := self.by_holder.pop(holder, None)) is None:
            return False
        self.bytes -= reserved[1]
        return True

    def prune(self, now: float) -> None:
        while self.by_holder and next(iter(self.by_holder.values()))[0] <= now:
            _, (_, size) = self.by_holder.popitem(last=False)
            self.bytes -= size

    def next_lapse(self) -> float | None:
        return next(iter(self.by_holder.values()))[0] if self.by_holder else None


class InboxBudget:
    """The bytes every cluster's inbox of one hub holds together, against one limit, and who may
    read next.

    A session waits in :meth:`room` before its transport reads the agent's next message. Were
    that only a check of the bytes held, the moment the budget had room again every waiting
    session would pass at once and read one message each: a thousand agents starting their
    initial sync would put a thousand FULL chunks (half a gigabyte) over the budget, and the
    hub's peak memory would follow the fleet's size. So a session passes only with a
    *reservation* for the message it is about to read, counted as held until that message is
    queued (its next :meth:`room`) or the reservation lapses (it had nothing to send). A
    reservation is as large as the session's previous message (``size``; the largest an agent
    may send, ``reservation``, for its first), so a session sending FULL chunks reserves a
    chunk and one sending single-object DELTAs a few kilobytes: a thousand quiet agents do not
    fill the budget with reservations, and a thousand starting a FULL at once are let in a
    budget's worth at a time. The waiting sessions are let in first come first served, as
    their reservations fit.

    How long a reservation lasts depends on what the session's last message said of the next:
    after a FULL chunk or a digest chunk that is not the last (``more``), the agent has its next
    chunk ready, and the reservation lasts ``continuing_seconds``; otherwise the agent may have
    nothing to send, and it lasts ``reservation_seconds``. On a loop busy with a thousand
    agents a chunk can take longer than the short lapse to arrive, and every reservation that
    lapsed with its chunk on the way let another session in: the budget held 205 MB of
    chunks on 64 MiB at 1,000 agents before the distinction, and 953 MB at 3,000. What the
    inboxes hold together stays within the budget, except for a message larger than its
    session's reservation or arriving after it lapsed; :attr:`peak` says how far it went.
    """

    def __init__(
        self,
        max_bytes: int,
        *,
        reservation: int = 512 * 1024,
        reservation_seconds: float = 0.05,
        continuing_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"the inbox budget must be at least one byte, not {max_bytes}")
        self.max_bytes = max_bytes
        self.reservation = reservation
        self.clock = clock
        #: Bytes queued in every inbox, and the item each engine is applying.
        self.bytes = 0
        #: The most :attr:`bytes` has been.
        self.peak = 0
        self._idle = _Reservations(reservation_seconds)
        self._continuing = _Reservations(continuing_seconds)
        #: Sessions waiting to read, first come first served: (holder, bytes to reserve, more, a future set when let in).
        self._waiters: deque[tuple[int, int, bool, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when it fires (this clock's time)

    @property
    def held(self) -> int:
        """Bytes queued plus reservations in force."""
        now = self.clock()
        self._idle.prune(now)
        self._continuing.prune(now)
        return self.bytes + self._idle.bytes + self._continuing.bytes

    def take(self, size: int) -> None:
        self.bytes += size
        self.peak = max(self.peak, self.bytes)

    def give(self, size: int) -> None:
        self.bytes -= size
        self._admit()

    def release(self, holder: object) -> None:
        """``holder``'s reservation, if any, is used (its message is queued) or no longer needed."""
        if self._idle.pop(id(holder)) | self._continuing.pop(id(holder)):
            self._admit()

    def _let_in(self, holder: int, size: int, more: bool) -> bool:
        """Whether ``holder`` may read now, taking a reservation of ``size`` bytes: when it fits,
        or when nothing at all is held (a message larger than the budget still gets read)."""
        held = self.held
        if held + size > self.max_bytes and held > 0:
            return False
        self._idle.pop(holder)  # a holder has one reservation at most, of either duration
        self._continuing.pop(holder)
        (self._continuing if more else self._idle).add(holder, size, self.clock())
        return True

    def _admit(self) -> None:
        """Let waiting sessions in, in order, while they fit; O(1) when the first does not."""
        while self._waiters:
            holder, size, more, waiter = self._waiters[0]
            if waiter.done():  # its session ended meanwhile
                self._waiters.popleft()
                continue
            if not self._let_in(holder, size, more):
                break
            self._waiters.popleft()
            waiter.set_result(None)
        if not self._waiters:
            return
        # a lapsing reservation frees room: wake up when the first lapses (an idle reservation
        # taken now may lapse before the continuing one the timer was set for)
        lapses = [t for t in (self._idle.next_lapse(), self._continuing.next_lapse()) if t is not None]
        if lapses and (self._timer is None or min(lapses) < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = min(lapses)
            self._timer = asyncio.get_running_loop().call_later(max(0.0, self._timer_at - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._admit()

    def _size(self, size: int | None) -> int:
        return self.reservation if size is None else max(1, min(size, self.reservation))

    def try_room(self, holder: object, size: int | None = None, *, more: bool = False) -> bool:
        """Whether ``holder`` may read its next message now, without waiting (see :meth:`room`);
        if not, :meth:`room` waits for it."""
        self.release(holder)
        return not self._waiters and self._let_in(id(holder), self._size(size), more)

    async def room(self, holder: object, size: int | None = None, *, more: bool = False) -> None:
        """Wait until ``holder`` may read its next message, expected to be ``size`` bytes (at
        most :attr:`reservation`; the largest, if not given) and, with ``more``, on its way (see
        the class docstring)."""
        if self.try_room(holder, size, more=more):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((id(holder), self._size(size), more, waiter))
        self._admit()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(holder)  # let in just as it stopped waiting: the room goes to the next
            raise


class Inbox:
    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        budget: InboxBudget | None = None,
        limits: ProtocolLimits | None = None,
        max_message_bytes: int = 512 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.budget = budget or InboxBudget(max_bytes)
        self.limits = limits or ProtocolLimits()
        #: The most one digest chunk's packed entries may decompress to.
        self.digest_chunk_bytes = max_message_bytes * self.limits.max_digest_ratio
        self.clock = clock
        self._digest_started: dict[str, float] = {}  # type -> when the digest being assembled began
        self.bytes = 0
        #: Bytes of the item the engine took last and has not reported :meth:`done` with.
        self.in_hand = 0
        #: The transport waits in :meth:`room` before it reads the agent's next message.
        self.waiting = False
        #: The size of the message put last: what the next is expected to be (None before the first).
        self.last_size: int | None = None
        #: Whether the message put last said more follows at once (a FULL or digest chunk not its last).
        self.more_coming = False
        self._queue: deque[tuple[Item, int]] = deque()
        self._assembling: dict[str, tuple[QueuedDigest, int]] = {}  # type -> (digest so far, next chunk)
        self._nonempty = asyncio.Event()  # one consumer (the engine) waits on it
        self._room = asyncio.Event()  # the transport's reader waits on it
        self._room.set()
        #: Received bundles that were merged into others or dropped as redundant (a metric).
        self.conflated = 0

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, message: pb.Bundle | pb.Digest) -> None:
        """Queue ``message`` (conflating where it can). Raises CodecError for a digest chunk that cannot be read."""
        size = self.last_size = message.ByteSize()
        self.more_coming = not message.last if isinstance(message, pb.Digest) or message.kind == pb.FULL else False
        if isinstance(message, pb.Digest):
            self._put_digest(message, size)
        elif problem := self._bodies_problem(message):
            raise codec.CodecError(f"bundle of {message.type} (seq {message.seq}) refused: {problem}")
        elif message.kind == pb.DELTA and not message.error:
            self._put_delta(message, size)
        elif message.kind == pb.FULL:
            self._put_full_chunk(message, size)
        else:
            self._append(message, size)
        if self._queue:
            self._nonempty.set()
        if self.bytes >= self.max_bytes:
            self._room.clear()

    def _append(self, item: Item, size: int) -> None:
        self._queue.append((item, size))
        self._grow(size)

    def _grow(self, size: int) -> None:
        """``size`` bytes more (or, negative, fewer) are queued."""
        self.bytes += size
        self.budget.take(size)

    def _put_delta(self, bundle: pb.Bundle, size: int) -> None:
        header = header_of(bundle)
        for item, _ in reversed(self._queue):
            if item.type != bundle.type:
                continue
            if isinstance(item, QueuedDelta) and item.compression == bundle.compression and item.header.incarnation == header.incarnation:
                if can_merge(item.header, header):
                    item.merge(bundle, size)
                    self._grow(size)
                    self.conflated += 1
                    return
                if header.seq <= item.header.seq and header.base_seq >= item.header.base_seq:
                    self.conflated += 1  # a resent copy of what is queued: the queued one's ack covers it
                    return
            break  # anything else of this type (a FULL chunk, a digest, a gap) keeps its place in order
        self._append(QueuedDelta.of(bundle, size), size)

    def _put_full_chunk(self, bundle: pb.Bundle, size: int) -> None:
        this = (bundle.type, bundle.incarnation, bundle.seq)
        if any(isinstance(item, pb.Bundle) and (item.type, item.incarnation, item.seq, item.chunk) == (*this, bundle.chunk) for item, _ in self._queue):
            self.conflated += 1  # a resent chunk still queued: keep the queued copy, in its place
            return
        header = header_of(bundle)
        kept: deque[tuple[Item, int]] = deque()
        for item, item_size in self._queue:
            redundant = False
            if item.type == bundle.type and header.chunk == 0:  # a FULL starts: what it replaces goes
                if isinstance(item, QueuedDelta):
                    redundant = supersedes(header, item.header)
                elif isinstance(item, pb.Bundle) and item.kind == pb.FULL:
                    redundant = supersedes(header, header_of(item))
            if redundant:
                self.conflated += item.bundles if isinstance(item, QueuedDelta) else 1
                self._grow(-(item.size if isinstance(item, QueuedDelta) else item_size))
            else:
                kept.append((item, item_size))
        self._queue = kept
        self._append(bundle, size)

    def _bodies_problem(self, bundle: pb.Bundle) -> str:
        """Why the lz4 bodies of ``bundle`` may not be stored ("" if they may)."""
        if bundle.compression != pb.COMPRESSION_LZ4:
            return ""
        limit = self.limits.max_object_bytes
        for obj in bundle.upserts:
            if problem := codec.declared_size_problem(obj.body, limit):
                return f"{obj.namespace}/{obj.name}: {problem}"
        return ""

    def _drop_assembly(self, type_: str) -> None:
        partial = self._assembling.pop(type_, None)
        self._digest_started.pop(type_, None)
        if partial is not None:
            self._grow(-partial[0].size)

    def _put_digest(self, digest: pb.Digest, size: int) -> None:
        """Chunks being assembled count as queued, and one digest's entries, chunks and time
        are bounded: a digest that never ends is dropped and refused, not held for ever."""
        try:
            entries = codec.digest_entries(digest, limit=self.digest_chunk_bytes)
        except codec.CodecError:
            self._drop_assembly(digest.type)
            raise
        partial = self._assembling.get(digest.type)
        if digest.chunk == 0:
            if partial is not None:  # a new digest replaces an unfinished one
                self._grow(-partial[0].size)
            partial = (QueuedDigest(digest.type, digest.incarnation, digest.seq, {}), 0)
            self._digest_started[digest.type] = self.clock()
        elif partial is None or (partial[0].incarnation, partial[0].seq, partial[1]) != (digest.incarnation, digest.seq, digest.chunk):
            log.info("digest of %s: chunk %d arrived out of order; dropped (the agent sends its digest again)", digest.type, digest.chunk)
            self._drop_assembly(digest.type)
            return
        assembled, _ = partial
        limits = self.limits
        took = self.clock() - self._digest_started.get(digest.type, self.clock())
        problem = ""
        if digest.chunk + 1 > limits.max_digest_chunks:
            problem = f"more than {limits.max_digest_chunks} chunks (--max-digest-chunks)"
        elif len(assembled.entries) + len(entries) > limits.max_digest_entries:
            problem = f"more than {limits.max_digest_entries} entries (--max-digest-entries)"
        elif took > limits.digest_timeout:
            problem = f"not complete {took:.0f}s after its first chunk (--digest-timeout {limits.digest_timeout:g}s)"
        if problem:
            self._assembling[digest.type] = partial  # counted until dropped
            self._drop_assembly(digest.type)
            raise codec.CodecError(f"digest of {digest.type} (seq {digest.seq}) refused at chunk {digest.chunk}: {problem}")
        assembled.entries.update(entries)
        assembled.size += size
        self._grow(size)
        if not digest.last:
            self._assembling[digest.type] = (assembled, digest.chunk + 1)
            return
        self._assembling.pop(digest.type, None)
        self._digest_started.pop(digest.type, None)
        older = [(item, s) for item, s in self._queue if isinstance(item, QueuedDigest) and item.type == digest.type]
        for entry in older:
            self._queue.remove(entry)
            self._grow(-entry[1])
        self._queue.append((assembled, assembled.size))  # its bytes are counted already

    async def get(self) -> Item:
        """The next item, waiting for one."""
        while not self._queue:
            self._nonempty.clear()
            await self._nonempty.wait()
        self.done()
        item, size = self._queue.popleft()
        if isinstance(item, QueuedDelta):
            size = item.size  # with the bundles merged into it since it was queued
        self.bytes -= size  # still counted by the budget until done(): the engine holds it
        self.in_hand = size
        if self.bytes < self.max_bytes:
            self._room.set()
        return item

    def done(self) -> None:
        """The item taken last is applied (or dropped): its bytes leave the hub's budget."""
        self.budget.give(self.in_hand)
        self.in_hand = 0

    def discard(self) -> None:
        """The inbox's session ended: nothing it holds counts against the budget any more."""
        self.budget.release(self)
        self.budget.give(self.bytes + self.in_hand)
        self.bytes = self.in_hand = 0
        self._queue.clear()
        self._assembling.clear()
        self._digest_started.clear()

    def try_room(self) -> bool:
        """Whether there is room now (see :meth:`room`), without waiting: what a session finds
        after almost every message, and then needs no task or timer to wait with."""
        return self.bytes < self.max_bytes and self.budget.try_room(self, self.last_size, more=self.more_coming)

    async def room(self) -> None:
        """Wait until less than ``max_bytes`` is queued here and the hub's budget has room."""
        self.waiting = True
        self.budget.release(self)  # its message is queued: no reservation held while this inbox is full
        try:
            while self.bytes >= self.max_bytes:
                self._room.clear()
                await self._room.wait()
            await self.budget.room(self, self.last_size, more=self.more_coming)
        finally:
            self.waiting = False
