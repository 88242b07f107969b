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
malformed one would: :class:`BundleRefused`; so does a bundle carrying an object body that
is not a JSON object (checked once per object here, before the write, and never again on
the read path: see :mod:`fleetsync.protocol.bodies`). A bundle fenced out because the
session's lease epoch is no longer the cluster's (:class:`~fleetsync.store.contract.LeaseLost`:
another session holds the cluster) is not retried: it ends the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import xxhash

from fleetsync import tracing
from fleetsync.backoff import Backoff
from fleetsync.errors import FleetsyncError
from fleetsync.hub import events
from fleetsync.hub.events import EventLog
from fleetsync.hub.inbox import Inbox, InboxBudget, QueuedDelta, QueuedDigest, header_of
from fleetsync.hub.limits import ProtocolLimits
from fleetsync.hub.metrics import HubMetrics
from fleetsync.hub.writer import BatchWriter
from fleetsync.model.nodes import NodeReadiness, node_ready
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.bodies import UnreadableBody, bundle_problem, stored_object
from fleetsync.protocol.rules import BundleHeader, Decision, HubStream, Position, Verdict, compare_digest
from fleetsync.store.contract import BundleWrite, LeaseLost, ObjectRecord, Store, StoreUnavailable, StreamRecord

log = logging.getLogger(__name__)

Send = Callable[[pb.HubMessage], Awaitable[None]]

#: A stream past a gap is asked for a resync at most this often (seconds); every bundle past it would otherwise ask again.
GAP_REQUEST_INTERVAL = 1.0
#: Whose bundles move the cluster's node view (NodeUp / NodeDown).
NODE = "v1/Node"
#: Why the hub asks for a periodic digest; digests for it that find nothing make no event.
PERIODIC = "periodic"


def full_mark(incarnation: str, seq: int) -> int:
    """The store's mark for rows of one FULL: unique per (incarnation, seq), since a new
    incarnation numbers its FULL from 1 again and must not inherit an old FULL's marks."""
    return xxhash.xxh3_64_intdigest(f"{incarnation}:{seq}".encode()) >> 1  # a positive 63-bit integer


def object_record(cluster: str, type_: str, incarnation: str, obj: pb.Object, compression: int) -> ObjectRecord:
    # positional: this runs for every object an agent sends (see ObjectRecord for the field order)
    labels = obj.labels
    # not dict(labels): protobuf's map goes through the Mapping ABC's Python-level iterator
    # that way (1.3 µs for a Pod's four labels, against 0.75 µs for its own iteration here)
    return ObjectRecord(
        cluster,
        type_,
        obj.namespace,
        obj.name,
        obj.uid,
        obj.resource_version,
        obj.hash,
        {k: labels[k] for k in labels},
        obj.owner,
        obj.body,
        compression,
        incarnation,
    )


class BundleRefused(FleetsyncError):
    """One bundle cannot be written (the bundle, not the store, is at fault): the store refused
    it (``cause`` "store") or an object in it is not a JSON object ("malformed")."""

    def __init__(self, type_: str, message: str, *, cause: str = "store") -> None:
        super().__init__(message)
        self.type = type_
        self.cause = cause


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
        streams: Sequence[StreamRecord],
        *,
        send: Send,
        events: EventLog,
        metrics: HubMetrics,
        max_message_bytes: int,
        writer: BatchWriter | None = None,
        store_retry: float = 30.0,
        inbox_bytes: int = 64 * 1024 * 1024,
        inbox_budget: InboxBudget | None = None,
        limits: ProtocolLimits | None = None,
        clock: Callable[[], float] = time.time,
        epoch: int = 0,
    ) -> None:
        self.store = store
        #: The session's lease epoch: every bundle write is fenced by it (0: not fenced).
        self.epoch = epoch
        self.writer = writer or BatchWriter(store, metrics=metrics)
        self.store_retry = store_retry
        self.cluster = cluster
        self.send = send
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.max_diff_bytes = max_message_bytes // 2
        self.max_object_bytes = (limits or ProtocolLimits()).max_object_bytes
        self.inbox = Inbox(max_bytes=inbox_bytes, budget=inbox_budget, limits=limits, max_message_bytes=max_message_bytes)
        self.streams: dict[str, HubStream] = {s.type: HubStream(applied=Position(s.incarnation, s.seq) if s.incarnation else None) for s in streams}
        self.errors: dict[str, str] = {s.type: s.error for s in streams}
        self.applied_objects = 0
        #: Seconds from its last applied change's collection by the agent to its commit here (None: none yet).
        self.sync_lag: float | None = None
        self._asked: dict[str, str] = {}  # type -> why the hub asked for its resync
        self._resyncs: dict[str, _Resync] = {}
        self._gaps: dict[str, float] = {}  # type -> when the gap was seen (until the stream moves again)
        self._gap_asked: dict[str, float] = {}
        self._conflated = 0
        #: Its nodes' readiness, for NodeUp / NodeDown (None until its first Node bundle).
        self._nodes: NodeReadiness | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # this cluster's samples, looked up once (a label lookup per bundle costs as much as the rest of its metrics)
        self._queued_bytes = metrics.queued_bytes.labels(cluster)
        self._sync_lag = metrics.sync_lag.labels(cluster)

    def stream(self, type_: str) -> HubStream:
        return self.streams.setdefault(type_, HubStream())

    # ---- in -----------------------------------------------------------------------------

    def put(self, message: pb.Bundle | pb.Digest) -> None:
        """Queue a received bundle or digest chunk. The session's reader then waits for
        ``inbox.room()`` (backpressure) before it reads the agent's next message, holding no
        reference to this one: see :meth:`fleetsync.hub.session.Session.room`."""
        if tracing.enabled() and isinstance(message, pb.Bundle):
            tracing.bundle_received(self.cluster, message)
        self.inbox.put(message)
        self._idle.clear()
        self._observe_inbox()

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
            self.metrics.refused.labels(exc.cause).inc()
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
            await self._commit(item, header, upserts, deletes, decision)
        ack = stream.committed(header, decision)
        if decision.verdict in (Verdict.APPLY_DELTA, Verdict.FULL_LAST):
            self._gaps.pop(type_, None)
            if decision.verdict is Verdict.FULL_LAST or (repairing and stream.pending_digest is None):
                await self._resync_finished(type_)
        if ack is None:
            return []
        return [pb.HubMessage(ack=pb.Ack(type=type_, incarnation=ack.incarnation, seq=ack.seq, chunk=ack.chunk, partial=ack.partial))]

    async def _commit(self, item: QueuedDelta | pb.Bundle, header: BundleHeader, upserts: list[pb.Object], deletes: list[str], decision: Decision) -> None:
        """Write what a bundle (or a merged run of DELTAs) changes, through the group commit, and
        what follows from it: node events, metrics, the cluster's sync lag."""
        type_ = item.type
        started = time.perf_counter()
        moves = decision.verdict in (Verdict.APPLY_DELTA, Verdict.FULL_LAST)
        write = bundle_write(
            self.cluster,
            type_,
            header,
            upserts,
            deletes,
            item.compression,
            full_end=decision.verdict is Verdict.FULL_LAST,
            moves=moves,
            now=self.clock(),
            max_object_bytes=self.max_object_bytes,
            epoch=self.epoch,
        )
        records = write.upserts
        if type_ == NODE and self._nodes is None:
            self._nodes = await self._stored_readiness()
        traced = (
            tracing.apply_started(self.cluster, type_, header, traceparent=getattr(item, "traceparent", ""), upserts=upserts, deletes=deletes)
            if tracing.enabled()
            else None
        )
        await self._write(write, size=sum(len(r.body) for r in records))
        if traced:
            traced.committed()
        if type_ == NODE:
            await self._node_events(records, deletes)
        objects = len(upserts) + len(deletes)
        self.applied_objects += objects
        self.metrics.applied(type_, objects, time.perf_counter() - started)
        if item.collected_at_ms:
            self.sync_lag = max(0.0, self.clock() - item.collected_at_ms / 1000)
            self._sync_lag.set(self.sync_lag)

    async def _stored_readiness(self) -> NodeReadiness | None:
        """The cluster's nodes' readiness as the store holds them: read once per engine. None if
        the store cannot be read now: node events wait for the next Node bundle, the write does not."""
        ready: dict[str, bool] = {}
        try:
            stored = await self.store.list_objects(NODE, cluster=self.cluster)
        except Exception as exc:  # the write that follows retries and reports a store that is away
            log.warning("cluster %s: its nodes could not be read for node events (%s); trying again with its next Node bundle", self.cluster, exc)
            return None
        for record in stored:
            with contextlib.suppress(UnreadableBody):
                ready[record.name] = node_ready(stored_object(record.body, record.compression))
        return NodeReadiness(ready)

    async def _node_events(self, records: Sequence[ObjectRecord], deletes: Iterable[str]) -> None:
        """NodeUp / NodeDown for the nodes of an applied Node bundle whose readiness changed
        (seed 003's cluster view, as pull clusters get from their refreshes)."""
        if self._nodes is None:
            return
        upserts: dict[str, bool] = {}
        for record in records:
            with contextlib.suppress(UnreadableBody):  # checked before the write: not expected
                upserts[record.name] = node_ready(stored_object(record.body, record.compression))
        for name, up in self._nodes.apply(upserts, [key.rpartition("/")[2] for key in deletes]):
            await self.events.record(
                self.cluster, events.NODE_UP if up else events.NODE_DOWN, f"node {name} reports {'Ready' if up else 'not Ready'}", type=NODE
            )

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
                        extra={"type": write.type},
                    )
                if now >= deadline:
                    raise StoreUnavailable(f"the store has been unavailable for {self.store_retry:.0f}s: {exc}") from exc
                await asyncio.sleep(min(backoff.next_delay(), max(0.0, deadline - now)))
            except LeaseLost:
                raise  # another session holds the cluster: this one must end, not retry
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


def bundle_write(
    cluster: str,
    type_: str,
    header: BundleHeader,
    upserts: list[pb.Object],
    deletes: Sequence[str],
    compression: int,
    *,
    full_end: bool,
    moves: bool,
    now: float,
    max_object_bytes: int,
    epoch: int = 0,
    name: str = "",
) -> BundleWrite:
    """The store write of one bundle (a DELTA, a merged run of them, or a FULL chunk), built the
    one way both paths that write objects use: the engine for what an agent pushes, and the
    refresh scheduler for a pull cluster's state (a FULL in one chunk). The rows of a FULL are
    marked with :func:`full_mark`, so its end (``full_end``) deletes what it did not carry;
    ``moves``: the stream's position moves to this bundle in the same transaction.

    Raises :class:`BundleRefused` (cause "malformed") if an upserted body is not one bounded
    JSON object (:func:`~fleetsync.protocol.bodies.bundle_problem`): nothing of it is written.
    ``name``: what its message calls the bundle (by default its seq and type).
    """
    if problem := bundle_problem(upserts, compression, max_bytes=max_object_bytes):
        raise BundleRefused(type_, f"{name or f'bundle seq {header.seq} of {type_}'} refused: {problem}", cause="malformed")
    return BundleWrite(
        cluster,
        type_,
        header.incarnation,
        header.seq,
        [object_record(cluster, type_, header.incarnation, o, compression) for o in upserts],
        deletes,
        full_seq=full_mark(header.incarnation, header.seq) if header.full else None,
        full_end=full_end,
        move_to=(header.incarnation, header.seq) if moves else None,
        now=now,
        epoch=epoch,
    )
