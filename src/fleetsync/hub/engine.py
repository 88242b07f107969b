"""The sync engine: applies one cluster's bundles in order, by the protocol's rules, and acks after commit.

One :class:`ClusterEngine` per connected cluster. The session puts the agent's
bundles and digests into the engine's :class:`~fleetsync.hub.inbox.Inbox` as they
arrive (where they conflate while the engine is behind); :meth:`ClusterEngine.run`
takes them out one at a time, so a cluster's bundles are applied strictly in order.
The rules themselves live in :mod:`fleetsync.protocol.rules`; this module turns their
decisions into writes for the :class:`~fleetsync.hub.writer.BatchWriter` (which commits
the bundles of many clusters together) and the answer to send (an Ack, only after the
commit; a ResyncRequest on a gap; a DigestDiff).

A write that fails is never skipped: while the store is unavailable the engine retries
with backoff, for ``store_retry`` seconds, and then raises :class:`StoreUnavailable`
to its session, which ends (the agent reconnects and resends what was not acked). A
bundle the store refuses by itself (not the store's state) refuses its type, as a
malformed one would: :class:`BundleRefused`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import xxhash

from fleetsync.backoff import Backoff
from fleetsync.hub import events
from fleetsync.hub.events import EventLog
from fleetsync.hub.inbox import Inbox, InboxBudget, QueuedDelta, QueuedDigest, header_of
from fleetsync.hub.metrics import HubMetrics
from fleetsync.hub.writer import BatchWriter
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import HubStream, Position, Verdict, compare_digest
from fleetsync.store.contract import BundleWrite, ObjectRecord, Store, StoreUnavailable, StreamRecord

log = logging.getLogger(__name__)

Send = Callable[[pb.HubMessage], Awaitable[None]]

#: A stream past a gap is asked for a resync at most this often (seconds); every bundle past it would otherwise ask again.
GAP_REQUEST_INTERVAL = 1.0
#: Why the hub asks for a periodic digest; digests for it that find nothing make no event.
PERIODIC = "periodic"


def full_mark(incarnation: str, seq: int) -> int:
    """The store's mark for rows of one FULL: unique per (incarnation, seq), since a new
    incarnation numbers its FULL from 1 again and must not inherit an old FULL's marks."""
    return xxhash.xxh3_64_intdigest(f"{incarnation}:{seq}".encode()) >> 1  # a positive 63-bit integer


def object_record(cluster: str, type_: str, incarnation: str, obj: pb.Object, compression: int) -> ObjectRecord:
    return ObjectRecord(
        cluster=cluster,
        type=type_,
        namespace=obj.namespace,
        name=obj.name,
        uid=obj.uid,
        resource_version=obj.resource_version,
        hash=obj.hash,
        labels=dict(obj.labels),
        owner=obj.owner,
        body=obj.body,
        compression=compression,
        incarnation=incarnation,
    )


class BundleRefused(Exception):
    """The store could not write one bundle (the bundle, not the store, is at fault)."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_


@dataclass
class _Resync:
    """A resync of one type under way: why, since when, and what it repairs."""

    what: str
    started: float


class ClusterEngine:
    """Ordered apply for one cluster."""

    def __init__(
        self,
        store: Store,
        cluster: str,
        streams: Iterable[StreamRecord],
        *,
        send: Send,
        events: EventLog,
        metrics: HubMetrics,
        max_message_bytes: int,
        writer: BatchWriter | None = None,
        store_retry: float = 30.0,
        inbox_bytes: int = 64 * 1024 * 1024,
        inbox_budget: InboxBudget | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.writer = writer or BatchWriter(store, metrics=metrics)
        self.store_retry = store_retry
        self.cluster = cluster
        self.send = send
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.max_diff_bytes = max_message_bytes // 2
        self.inbox = Inbox(max_bytes=inbox_bytes, budget=inbox_budget)
        self.streams: dict[str, HubStream] = {}
        self.errors: dict[str, str] = {}
        for s in streams:
            self.streams[s.type] = HubStream(applied=Position(s.incarnation, s.seq) if s.incarnation else None)
            self.errors[s.type] = s.error
        self.applied_objects = 0
        self._asked: dict[str, str] = {}  # type -> why the hub asked for its resync
        self._resyncs: dict[str, _Resync] = {}
        self._gaps: dict[str, float] = {}  # type -> when the gap was seen (until the stream moves again)
        self._gap_asked: dict[str, float] = {}
        self._conflated = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # this cluster's samples, looked up once (a label lookup per bundle costs as much as the rest of its metrics)
        self._queued_bytes = metrics.queued_bytes.labels(cluster)
        self._sync_lag = metrics.sync_lag.labels(cluster)

    def stream(self, type_: str) -> HubStream:
        return self.streams.setdefault(type_, HubStream())

    # ---- in -----------------------------------------------------------------------------

    async def submit(self, message: pb.Bundle | pb.Digest) -> None:
        """Queue a received bundle or digest chunk; waits while too much is queued (backpressure)."""
        self.inbox.put(message)
        self._idle.clear()
        self._observe_inbox()
        await self.inbox.room()

    def _observe_inbox(self) -> None:
        if self.inbox.conflated != self._conflated:
            self.metrics.conflated.inc(self.inbox.conflated - self._conflated)
            self._conflated = self.inbox.conflated
        self._queued_bytes.set(self.inbox.bytes)

    async def request_resync(self, types: Iterable[str], reason: str, *, all_types: bool = False) -> None:
        """Ask the agent for a digest resync of ``types`` (``all_types``: of every type it syncs)."""
        wanted = list(self.streams) if all_types else list(types)
        for t in wanted:
            self._asked[t] = reason
        self.metrics.resyncs_requested.labels(reason.split(":")[0]).inc()
        if all_types:
            await self.send(pb.HubMessage(resync=pb.ResyncRequest(type="", reason=reason)))
        else:
            for t in wanted:
                await self.send(pb.HubMessage(resync=pb.ResyncRequest(type=t, reason=reason)))

    # ---- the worker ---------------------------------------------------------------------

    async def run(self) -> None:
        """Apply what arrives, in order, forever (cancelled when the session ends)."""
        while True:
            if not len(self.inbox):
                self._idle.set()
            await self.step()

    async def step(self) -> None:
        """Apply the next queued item (waiting for one) and send what answers it."""
        item = await self.inbox.get()
        try:
            answers = await self.process(item)
        finally:
            self.inbox.done()
            self._observe_inbox()
        for answer in answers:
            await self.send(answer)

    def idle(self) -> bool:
        """Nothing submitted waits to be applied (or is being applied)."""
        return self._idle.is_set() and not len(self.inbox) and not self.inbox.waiting

    async def drained(self) -> None:
        """Wait until everything submitted so far is applied and answered."""
        await self._idle.wait()

    async def process(self, item: QueuedDelta | QueuedDigest | pb.Bundle) -> list[pb.HubMessage]:
        if isinstance(item, QueuedDigest):
            return [await self._answer_digest(item)]
        if isinstance(item, pb.Bundle) and item.kind == pb.BUNDLE_KIND_UNSPECIFIED:
            await self._type_error(item.type, item.error)
            return []
        try:
            return await self._apply(item)
        except BundleRefused as exc:  # the stream stays where it was: the agent may send it again later
            self.metrics.refused.labels("store").inc()
            await self.events.record(self.cluster, events.TYPE_REFUSED, str(exc), type=exc.type)
            return [pb.HubMessage(reject=pb.Reject(reason=pb.PROTOCOL, message=str(exc), type=exc.type))]

    async def _apply(self, item: QueuedDelta | pb.Bundle) -> list[pb.HubMessage]:
        if isinstance(item, QueuedDelta):
            header, upserts, deletes = item.header, item.upserts, item.deletes
        else:
            header, upserts, deletes = header_of(item), list(item.upserts), list(item.deletes)
        type_ = item.type
        stream = self.stream(type_)
        decision = stream.decide(header)
        if decision.verdict is Verdict.GAP:
            return await self._gap(type_, decision.reason)
        if decision.full_restart:
            self._resyncs[type_] = _Resync("FULL sync", self.clock())
            await self.events.record(self.cluster, events.RESYNC_STARTED, f"FULL sync started (incarnation {header.incarnation}, seq {header.seq})", type=type_)
        repairing = stream.pending_digest is not None
        if decision.verdict is not Verdict.DUPLICATE:
            started = time.perf_counter()
            moves = decision.verdict in (Verdict.APPLY_DELTA, Verdict.FULL_LAST)
            records = [object_record(self.cluster, type_, header.incarnation, o, item.compression) for o in upserts]
            await self._write(
                BundleWrite(
                    self.cluster,
                    type_,
                    header.incarnation,
                    header.seq,
                    records,
                    deletes,
                    full_seq=full_mark(header.incarnation, header.seq) if header.full else None,
                    full_end=decision.verdict is Verdict.FULL_LAST,
                    move_to=(header.incarnation, header.seq) if moves else None,
                    now=self.clock(),
                ),
                size=sum(len(r.body) for r in records),
            )
            objects = len(upserts) + len(deletes)
            self.applied_objects += objects
            self.metrics.applied(type_, objects, time.perf_counter() - started)
            if item.collected_at_ms:
                self._sync_lag.set(max(0.0, self.clock() - item.collected_at_ms / 1000))
        ack = stream.committed(header, decision)
        if decision.verdict in (Verdict.APPLY_DELTA, Verdict.FULL_LAST):
            self._gaps.pop(type_, None)
            if decision.verdict is Verdict.FULL_LAST or (repairing and stream.pending_digest is None):
                await self._resync_finished(type_)
        if ack is None:
            return []
        return [pb.HubMessage(ack=pb.Ack(type=type_, incarnation=ack.incarnation, seq=ack.seq, chunk=ack.chunk, partial=ack.partial))]

    async def _write(self, write: BundleWrite, *, size: int) -> None:
        """Commit ``write`` (with other clusters' bundles), retrying while the store is unavailable."""
        backoff: Backoff | None = None
        deadline = 0.0
        while True:
            try:
                await self.writer.apply(write, size=size)
                return
            except StoreUnavailable as exc:
                now = time.monotonic()
                if backoff is None:
                    backoff, deadline = Backoff(initial=0.05, maximum=2.0), now + self.store_retry
                    log.warning(
                        "cluster %s: the store is unavailable (%s); retrying %s seq %d for up to %.0fs",
                        self.cluster,
                        exc,
                        write.type,
                        write.seq,
                        self.store_retry,
                    )
                if now >= deadline:
                    raise StoreUnavailable(f"the store has been unavailable for {self.store_retry:.0f}s: {exc}") from exc
                await asyncio.sleep(min(backoff.next_delay(), max(0.0, deadline - now)))
            except Exception as exc:
                raise BundleRefused(write.type, f"the hub could not store bundle seq {write.seq} of {write.type}: {exc}") from exc

    async def _gap(self, type_: str, reason: str) -> list[pb.HubMessage]:
        now = self.clock()
        if type_ not in self._gaps:
            self._gaps[type_] = now
            await self.events.record(self.cluster, events.GAP_DETECTED, f"{reason}; asking the agent for a digest resync", type=type_)
        if now - self._gap_asked.get(type_, -math.inf) < GAP_REQUEST_INTERVAL:
            return []
        self._gap_asked[type_] = now
        self._asked[type_] = "gap"
        self.metrics.resyncs_requested.labels("gap").inc()
        return [pb.HubMessage(resync=pb.ResyncRequest(type=type_, reason=f"gap: {reason}"))]

    async def _answer_digest(self, digest: QueuedDigest) -> pb.HubMessage:
        """Compare the agent's digest with what the store holds; the agent repairs with one DELTA (or a FULL)."""
        held = await self.store.object_hashes(self.cluster, digest.type)
        diff = compare_digest(digest.entries, held)
        self.stream(digest.type).digest_answered(digest.incarnation, digest.seq)
        reason = self._asked.pop(digest.type, "")
        keys = [*diff.missing, *diff.stale, *diff.extra]
        send_full = sum(len(k) + 3 for k in keys) > self.max_diff_bytes
        self.metrics.digests_answered.labels("full" if send_full else "repair" if keys else "clean").inc()
        if keys or reason not in ("", PERIODIC):
            why = f" ({reason})" if reason else ""
            found = f"{len(diff.missing)} missing, {len(diff.stale)} stale, {len(diff.extra)} extra"
            self._resyncs[digest.type] = _Resync(f"repair of {found}", self.clock())
            await self.events.record(
                self.cluster,
                events.RESYNC_STARTED,
                f"digest of {len(digest.entries)} objects{why}: {found}" + ("; too many to list, asking for a FULL" if send_full else ""),
                type=digest.type,
            )
        if send_full:
            return pb.HubMessage(digest_diff=pb.DigestDiff(type=digest.type, incarnation=digest.incarnation, seq=digest.seq, send_full=True))
        return pb.HubMessage(
            digest_diff=pb.DigestDiff(
                type=digest.type, incarnation=digest.incarnation, seq=digest.seq, missing=diff.missing, stale=diff.stale, extra=diff.extra
            )
        )

    async def _resync_finished(self, type_: str) -> None:
        resync = self._resyncs.pop(type_, None)
        if resync is not None:
            took = self.clock() - resync.started
            await self.events.record(self.cluster, events.RESYNC_FINISHED, f"{resync.what} done in {took:.1f}s", type=type_)

    async def _type_error(self, type_: str, error: str) -> None:
        """A type failed to list (or recovered): its last known state is kept either way."""
        before = self.errors.get(type_, "")
        if error == before:
            return
        self.errors[type_] = error
        await self.store.set_stream_error(self.cluster, type_, error, now=self.clock())
        if error:
            await self.events.record(self.cluster, events.TYPE_FAILED, f"{error}; keeping its last known state", type=type_)
        else:
            await self.events.record(self.cluster, events.TYPE_RECOVERED, "syncing again", type=type_)
