"""One type's state on the agent: the cache, the changes not yet sent, and the stream's bookkeeping.

The cache holds each object as made once for the wire (stripped, hashed,
compressed) so FULLs, digest repairs and resends never re-serialize anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fleetsync.model.types import ResourceType
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import AgentStream


def _now_ms() -> int:
    return int(time.time() * 1000)


class TypeSync:
    def __init__(
        self, rtype: ResourceType, incarnation: str, *, max_bundle_bytes: int, namespaces: set[str] | None = None, exclude: set[str] | None = None
    ) -> None:
        self.rtype = rtype
        self.type = rtype.gvk
        self.stream = AgentStream(incarnation)
        self.max_bundle_bytes = max_bundle_bytes
        self.include = namespaces or set()
        self.exclude = exclude or set()
        self.cache: dict[str, pb.Object] = {}
        self.pending: dict[str, pb.Object | None] = {}
        self.pending_since_ms = 0
        self.listed = False
        self.error = ""
        self.error_reported = ""
        self.planned = False  # this connection's resume / digest / FULL has been decided

    def wanted(self, namespace: str) -> bool:
        if self.include and namespace not in self.include:
            return False
        return namespace not in self.exclude

    # ---- from the cluster --------------------------------------------------------------

    def on_list(self, items: list[dict[str, Any]]) -> None:
        fresh: dict[str, pb.Object] = {}
        for item in items:
            meta = item.get("metadata") or {}
            if not self.wanted(meta.get("namespace", "")):
                continue
            obj = codec.make_object(item)
            fresh[codec.key_of(obj.namespace, obj.name)] = obj
        for key, obj in fresh.items():
            old = self.cache.get(key)
            if old is None or old.hash != obj.hash:
                self._changed(key, obj)
        for key in self.cache.keys() - fresh.keys():
            self._changed(key, None)
        self.cache = fresh
        self.listed = True
        self.error = ""

    def on_event(self, kind: str, item: dict[str, Any]) -> None:
        meta = item.get("metadata") or {}
        if not self.wanted(meta.get("namespace", "")):
            return
        key = codec.key_of(meta.get("namespace", ""), meta.get("name", ""))
        if kind == "DELETED":
            if self.cache.pop(key, None) is not None:
                self._changed(key, None)
            return
        obj = codec.make_object(item)
        old = self.cache.get(key)
        if old is None or old.hash != obj.hash:
            self.cache[key] = obj
            self._changed(key, obj)

    def _changed(self, key: str, obj: pb.Object | None) -> None:
        if not self.pending:
            self.pending_since_ms = _now_ms()
        self.pending[key] = obj

    # ---- to the hub ----------------------------------------------------------------------

    def _split(self, objects: list[pb.Object], deletes: list[str]) -> Iterator[tuple[list[pb.Object], list[str]]]:
        """Groups that stay under the max bundle size."""
        batch: list[pb.Object] = []
        size = 0
        for obj in objects:
            obj_size = obj.ByteSize() + 16
            if batch and size + obj_size > self.max_bundle_bytes:
                yield batch, []
                batch, size = [], 0
            batch.append(obj)
            size += obj_size
        yield batch, deletes

    def full(self) -> list[pb.Bundle]:
        """The whole cache as one FULL (chunked below the size bound); pending changes are in it."""
        seq, base = self.stream.next_seq()
        self.pending.clear()
        chunks = list(self._split(list(self.cache.values()), []))
        bundles = [
            pb.Bundle(
                type=self.type,
                incarnation=self.stream.incarnation,
                seq=seq,
                base_seq=base,
                kind=pb.FULL,
                chunk=i,
                last=i == len(chunks) - 1,
                upserts=objs,
                compression=pb.COMPRESSION_LZ4,
                collected_at_ms=_now_ms(),
            )
            for i, (objs, _) in enumerate(chunks)
        ]
        return bundles

    def digest(self) -> pb.Digest:
        at = self.stream.start_digest()
        return pb.Digest(type=self.type, incarnation=at.incarnation, seq=at.seq, entries=[pb.DigestEntry(key=k, hash=o.hash) for k, o in self.cache.items()])

    def repair(self, diff: pb.DigestDiff) -> list[pb.Bundle]:
        """The one DELTA (split if large) answering a DigestDiff: current state of every key it names plus what changed meanwhile."""
        if not self.stream.accept_diff(diff.incarnation, diff.seq):
            return []
        keys = set(diff.missing) | set(diff.stale) | set(diff.extra) | set(self.pending)
        self.pending.clear()
        return self._deltas({k: self.cache.get(k) for k in keys})

    def deltas(self) -> list[pb.Bundle]:
        if not self.pending or not self.stream.can_send_delta:
            return []
        changes, self.pending = self.pending, {}
        return self._deltas(changes)

    def _deltas(self, changes: dict[str, pb.Object | None]) -> list[pb.Bundle]:
        upserts = [o for o in changes.values() if o is not None]
        deletes = sorted(k for k, o in changes.items() if o is None)
        bundles = []
        for objs, dels in self._split(upserts, deletes):
            seq, base = self.stream.next_seq()
            bundle = pb.Bundle(
                type=self.type,
                incarnation=self.stream.incarnation,
                seq=seq,
                base_seq=base,
                kind=pb.DELTA,
                upserts=objs,
                deletes=dels,
                compression=pb.COMPRESSION_LZ4,
                collected_at_ms=self.pending_since_ms or _now_ms(),
            )
            self.stream.sent(seq, base, bundle)
            bundles.append(bundle)
        return bundles

    def error_report(self) -> pb.Bundle | None:
        """A type that fails to list is reported (once per distinct error); its last state stays on the hub."""
        if self.error == self.error_reported:
            return None
        self.error_reported = self.error
        return pb.Bundle(type=self.type, incarnation=self.stream.incarnation, error=self.error)
