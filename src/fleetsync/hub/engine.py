"""The sync engine: applies one cluster's bundles in order, by the protocol's rules, and acks after commit.

One :class:`ClusterEngine` per connected cluster; the session feeds it messages in
arrival order, so a cluster's bundles are applied strictly one after another. The
rules themselves live in :mod:`fleetsync.protocol.rules`; this module only turns
their decisions into one store transaction and the answer to send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import xxhash

from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import BundleHeader, HubStream, Position, Verdict, compare_digest
from fleetsync.store.contract import ObjectRecord, Store

log = logging.getLogger(__name__)


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


class ClusterEngine:
    """Ordered apply for one cluster."""

    def __init__(self, store: Store, cluster: str, positions: dict[str, Position], *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.cluster = cluster
        self.clock = clock
        self.streams: dict[str, HubStream] = {t: HubStream(applied=p) for t, p in positions.items()}
        self.applied_objects = 0
        self.on_applied: Callable[[str, int, float], None] | None = None  # (type, objects, seconds) for metrics
        self.on_lag: Callable[[float], None] | None = None  # seconds from the agent seeing a change to its commit

    def stream(self, type_: str) -> HubStream:
        return self.streams.setdefault(type_, HubStream())

    async def apply(self, bundle: pb.Bundle) -> pb.HubMessage | None:
        """Apply ``bundle`` if the rules allow; return the Ack (after commit) or ResyncRequest to send."""
        if bundle.kind == pb.BUNDLE_KIND_UNSPECIFIED:
            # an error report only: the type failed to list; keep its last known state
            await self.store.set_stream_error(self.cluster, bundle.type, bundle.error, now=self.clock())
            return None
        stream = self.stream(bundle.type)
        header = BundleHeader(bundle.incarnation, bundle.seq, bundle.base_seq, full=bundle.kind == pb.FULL, chunk=bundle.chunk, last=bundle.last)
        decision = stream.decide(header)
        if decision.verdict is Verdict.GAP:
            log.info("cluster %s type %s: gap (%s); asking for a resync", self.cluster, bundle.type, decision.reason)
            return pb.HubMessage(resync=pb.ResyncRequest(type=bundle.type, reason=decision.reason))
        if decision.verdict is not Verdict.DUPLICATE:
            started = time.perf_counter()
            moves = decision.verdict in (Verdict.APPLY_DELTA, Verdict.FULL_LAST)
            await self.store.apply_bundle(
                self.cluster,
                bundle.type,
                incarnation=bundle.incarnation,
                seq=bundle.seq,
                upserts=[object_record(self.cluster, bundle.type, bundle.incarnation, o, bundle.compression) for o in bundle.upserts],
                deletes=list(bundle.deletes),
                full_seq=full_mark(bundle.incarnation, bundle.seq) if header.full else None,
                full_end=decision.verdict is Verdict.FULL_LAST,
                move_to=(bundle.incarnation, bundle.seq) if moves else None,
                now=self.clock(),
            )
            if bundle.error or moves:
                await self.store.set_stream_error(self.cluster, bundle.type, bundle.error, now=self.clock())
            self.applied_objects += len(bundle.upserts) + len(bundle.deletes)
            if self.on_applied:
                self.on_applied(bundle.type, len(bundle.upserts) + len(bundle.deletes), time.perf_counter() - started)
            if self.on_lag and bundle.collected_at_ms:
                self.on_lag(max(0.0, self.clock() - bundle.collected_at_ms / 1000))
        position = stream.committed(header, decision)
        if position is None:
            return None
        return pb.HubMessage(ack=pb.Ack(type=bundle.type, incarnation=position.incarnation, seq=position.seq))

    async def answer_digest(self, digest: pb.Digest) -> pb.HubMessage:
        """Compare the agent's digest with what the store holds; the agent repairs with one DELTA."""
        held = await self.store.object_hashes(self.cluster, digest.type)
        diff = compare_digest({e.key: e.hash for e in digest.entries}, held)
        self.stream(digest.type).digest_answered(digest.incarnation, digest.seq)
        return pb.HubMessage(
            digest_diff=pb.DigestDiff(
                type=digest.type, incarnation=digest.incarnation, seq=digest.seq, missing=diff.missing, stale=diff.stale, extra=diff.extra
            )
        )
