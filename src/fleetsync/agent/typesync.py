"""One type's state on the agent: the cache, the changes not yet sent, and the stream's bookkeeping.

The cache holds each object as made once for the wire (stripped, hashed,
compressed) so FULLs, digest repairs and resends never re-serialize anything; and
it holds it serialized (:class:`Cached`: the hash digests need, and the bytes a
bundle takes), not as a protobuf message, which costs ~1.5 KiB more per object
(docs/agent-memory.md).

Every message this module builds stays under ``max_message_bytes``: FULLs and
deltas are split into bundles, digests into chunks. FULL chunks and delta bundles are
filled to the size the hub asks for (``Welcome.chunk_bytes``: what a hub holding an agent
back has in flight from it follows the size of its chunks); an object larger than that
goes alone in its message. Digest chunks, packed to ~22 bytes an entry, are cut at the max
message size: cut smaller, a large cluster's digest would need thousands of chunks. A FULL is cut into chunks
lazily, as the in-flight window lets them go, from a snapshot of the keys taken
when it starts; a chunk carries each object's state at the time the chunk is made
(a change after the start is also pending, so a delta repeats it after the FULL).
An object too large for any message is left out, and reported as the type's error.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from fleetsync.model.types import ResourceType
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import AgentStream
from fleetsync.protocol.wireobject import Metadata, RawFields, fields_of_dict, metadata_of, wire_object

#: Room kept in every message for the envelope (type, incarnation, seqs, flags).
ENVELOPE_BYTES = 1024
#: Per-entry framing of a repeated message field (tag + length varint), generously.
FIELD_BYTES = 8


def _now_ms() -> int:
    return int(time.time() * 1000)


class Cached(NamedTuple):
    """One object as the agent keeps it: its digest hash, and its ``pb.Object`` serialized."""

    hash: int
    wire: bytes

    @property
    def size(self) -> int:
        """What it takes of a message (its bytes and their framing)."""
        return len(self.wire) + FIELD_BYTES


def _wire(fields: RawFields, metadata: Metadata) -> tuple[str, Cached]:
    """(key, cached form) of a cluster object whose metadata is ``metadata``."""
    obj = wire_object(fields, metadata=metadata)
    return codec.key_of(obj.namespace, obj.name), Cached(obj.hash, obj.SerializeToString())


def _add_upserts(objects: Iterable[Cached], upserts: Any) -> None:
    """Append cached objects to a bundle's ``upserts`` (each parsed once, into the bundle's own memory)."""
    for cached in objects:
        upserts.add().MergeFromString(cached.wire)


class TypeSync:
    def __init__(
        self,
        rtype: ResourceType,
        incarnation: str,
        *,
        max_message_bytes: int,
        namespaces: set[str] | None = None,
        exclude: set[str] | None = None,
        resume_window: int = 256,
    ) -> None:
        if max_message_bytes < 4 * ENVELOPE_BYTES:
            raise ValueError(f"max message size {max_message_bytes} is too small (at least {4 * ENVELOPE_BYTES} bytes)")
        self.rtype = rtype
        self.type = rtype.gvk
        self.stream = AgentStream(incarnation, window=resume_window)
        self.max_message_bytes = max_message_bytes
        self.budget = max_message_bytes - ENVELOPE_BYTES
        #: What a message is filled to (at most :attr:`budget`; an object larger goes alone).
        self.fill = self.budget
        self.include = namespaces or set()
        self.exclude = exclude or set()
        self.cache: dict[str, Cached] = {}
        self.pending: dict[str, Cached | None] = {}
        self.pending_since_ms = 0
        #: Objects left out, too large for any message (kept in case the hub's limit goes up again).
        self._left_out: dict[str, Cached] = {}
        self.listed = False
        self.list_error = ""
        self.error_reported: str | None = None  # None: not reported on this connection yet
        self.refused = ""  # the hub refused this type (Reject with type): nothing more is sent for it
        self._full_keys: list[str] = []
        self._full_next = 0
        #: chunk -> its bytes, for the FULL chunks not acknowledged yet (see :meth:`full_bytes_unacked`).
        self._chunk_bytes: dict[int, int] = {}

    def limit_to(self, hub_max_message_bytes: int, hub_chunk_bytes: int = 0) -> None:
        """Use the smaller of the agent's own limit and the hub's (Welcome.max_message_bytes; 0: none),
        and fill messages to the hub's chunk size (Welcome.chunk_bytes; 0: to the limit).
        Cached objects that no longer fit are left out from now on; left-out ones that fit again
        (a hub whose limit went up) are synced again."""
        limit = min(self.max_message_bytes, hub_max_message_bytes or self.max_message_bytes)
        self.budget = max(limit, 4 * ENVELOPE_BYTES) - ENVELOPE_BYTES
        self.fill = min(self.budget, max(hub_chunk_bytes, 4 * ENVELOPE_BYTES) - ENVELOPE_BYTES) if hub_chunk_bytes else self.budget
        for key in [k for k, cached in self.cache.items() if cached.size > self.budget]:
            self._left_out[key] = self.cache.pop(key)
            self._changed(key, None)
        for key in [k for k, cached in self._left_out.items() if cached.size <= self.budget]:
            obj = self._left_out.pop(key)
            self.cache[key] = obj
            self._changed(key, obj)

    def add_snapshot(self, upserts: Any) -> None:
        """Every cached object, into a bundle's ``upserts`` (pull mode's snapshot; the push path
        never needs them all at once): each parsed once, into the bundle's own memory."""
        _add_upserts(self.cache.values(), upserts)

    def wanted(self, namespace: str) -> bool:
        if self.include and namespace not in self.include:
            return False
        return namespace not in self.exclude

    @property
    def error(self) -> str:
        """What the hub should show for this type: the list error and objects left out, if any."""
        parts = [self.list_error] if self.list_error else []
        if self._left_out:
            largest = sorted(((k, cached.size) for k, cached in self._left_out.items()), key=lambda kv: -kv[1])[:3]
            parts.append(
                f"{len(self._left_out)} object(s) larger than the max message size ({self.budget + ENVELOPE_BYTES} bytes) are not synced: "
                + ", ".join(f"{k} ({size} bytes)" for k, size in largest)
            )
        return "; ".join(parts)

    # ---- from the cluster --------------------------------------------------------------

    def listing(self) -> Listing:
        """A LIST to take in page by page (:meth:`Listing.add`), then :meth:`finish_list`."""
        return Listing(self)

    def on_list(self, items: Iterable[dict[str, Any]]) -> None:
        """A whole LIST at once, of objects held as Python values (a source that builds them)."""
        listing = self.listing()
        listing.add(fields_of_dict(item) for item in items)
        self.finish_list(listing)

    def finish_list(self, listing: Listing) -> None:
        """The LIST is complete: it replaces the cache; what changed or went is pending."""
        fresh: dict[str, Cached] = {}
        self._left_out.clear()
        for key, obj in listing.objects.items():
            if obj.size > self.budget:  # the budget is checked here: the hub's limit may have changed while listing
                self._left_out[key] = obj
            else:
                fresh[key] = obj
        for key, obj in fresh.items():
            old = self.cache.get(key)
            if old is None or old.hash != obj.hash:
                self._changed(key, obj)
        for key in self.cache.keys() - fresh.keys():
            self._changed(key, None)
        self.cache = fresh
        self.listed = True
        self.list_error = ""

    def on_event(self, kind: str, item: dict[str, Any]) -> None:
        """A watch event of an object held as Python values."""
        self.on_change(kind, fields_of_dict(item))

    def on_change(self, kind: str, fields: RawFields) -> None:
        """A watch event (ADDED, MODIFIED, DELETED) of the object whose JSON fields are ``fields``."""
        metadata = metadata_of(fields)
        meta = metadata.meta
        if not self.wanted(meta.namespace):
            return
        if kind == "DELETED":
            key = codec.key_of(meta.namespace, meta.name)
            self._left_out.pop(key, None)
            if self.cache.pop(key, None) is not None:
                self._changed(key, None)
            return
        key, obj = _wire(fields, metadata)
        if obj.size > self.budget:
            self._left_out[key] = obj
            if self.cache.pop(key, None) is not None:  # it grew too large: the hub must not keep an old state
                self._changed(key, None)
            return
        self._left_out.pop(key, None)
        old = self.cache.get(key)
        if old is None or old.hash != obj.hash:
            self.cache[key] = obj
            self._changed(key, obj)

    def _changed(self, key: str, obj: Cached | None) -> None:
        if not self.pending:
            self.pending_since_ms = _now_ms()
        self.pending[key] = obj

    # ---- to the hub ----------------------------------------------------------------------

    def _groups(self, changes: Iterable[tuple[str, Cached | None]]) -> Iterator[dict[str, Cached | None]]:
        """Consecutive groups of changes that each fit one message."""
        group: dict[str, Cached | None] = {}
        size = 0
        for key, obj in changes:
            cost = obj.size if obj is not None else len(key) + FIELD_BYTES
            if group and size + cost > self.fill:
                yield group
                group, size = {}, 0
            group[key] = obj
            size += cost
        if group:
            yield group

    def start_full(self) -> None:
        """Begin a FULL of the cache as it is now; what is pending is in it."""
        self.stream.start_full()
        self.pending.clear()
        self._full_keys = sorted(self.cache)
        self._full_next = 0
        self._chunk_bytes = {}

    def next_full_chunk(self) -> pb.Bundle:
        """The next chunk of the FULL in progress (the last one has ``last`` set)."""
        full = self.stream.full
        assert full is not None and not full.all_sent, "no FULL chunk to send"
        objects: list[Cached] = []
        size = 0
        keys = self._full_keys
        while self._full_next < len(keys):
            key = keys[self._full_next]
            obj = self.cache.get(key)  # gone since the FULL started: leave it out (its delete is pending)
            if obj is not None:
                cost = obj.size
                if objects and size + cost > self.fill:
                    break
                objects.append(obj)
                size += cost
            self._full_next += 1
        last = self._full_next >= len(keys)
        chunk = pb.Bundle(
            type=self.type,
            incarnation=self.stream.incarnation,
            seq=full.seq,
            base_seq=full.base_seq,
            kind=pb.FULL,
            chunk=full.next_chunk,
            last=last,
            compression=pb.COMPRESSION_LZ4,
            collected_at_ms=_now_ms(),
        )
        _add_upserts(objects, chunk.upserts)
        self._chunk_bytes[full.next_chunk] = size + ENVELOPE_BYTES  # as budgeted: its objects and the room kept for the rest
        self.stream.full_chunk_sent(full.next_chunk, chunk, last=last)
        if last:
            self._full_keys = []
        return chunk

    def full_bytes_unacked(self) -> int:
        """The bytes of the FULL chunks sent and not acknowledged yet."""
        full = self.stream.full
        if full is None:
            return 0
        self._chunk_bytes = {c: size for c, size in self._chunk_bytes.items() if c in full.unacked}
        return sum(self._chunk_bytes.values())

    def digest(self) -> list[pb.Digest]:
        """The cache's (key, hash) as of now, in chunks under the message size; deltas wait for the diff."""
        at = self.stream.start_digest()
        entries = [pb.DigestEntry(key=k, hash=self.cache[k].hash) for k in sorted(self.cache)]
        chunks: list[list[pb.DigestEntry]] = [[]]
        size = 0
        for entry in entries:
            cost = len(entry.key) + 2 * FIELD_BYTES + 8
            if chunks[-1] and size + cost > self.budget:  # packed, ~22 B an entry: small for the hub as they are
                chunks.append([])
                size = 0
            chunks[-1].append(entry)
            size += cost
        return [
            pb.Digest(
                type=self.type,
                incarnation=at.incarnation,
                seq=at.seq,
                compression=pb.COMPRESSION_LZ4,
                packed=codec.pack_digest_entries(part),
                chunk=i,
                last=i == len(chunks) - 1,
            )
            for i, part in enumerate(chunks)
        ]

    def repair(self, diff: pb.DigestDiff) -> list[pb.Bundle] | None:
        """Answer the DigestDiff of the digest we wait for (None: it answers an older one, ignore it).

        Normally one DELTA (split if large) based on the digest's seq, with the current state
        of every key the diff names plus what changed meanwhile -- sent even when empty, so
        that the hub's stream adopts this incarnation. If the hub asks for a FULL instead, it
        starts here and its chunks go out as the window allows."""
        if not self.stream.accept_diff(diff.incarnation, diff.seq):
            return None
        if diff.send_full:
            self.start_full()
            return []
        keys = set(diff.missing) | set(diff.stale) | set(diff.extra) | set(self.pending)
        collected = self.pending_since_ms or _now_ms()
        self.pending.clear()
        groups = list(self._groups((k, self.cache.get(k)) for k in sorted(keys)))
        return self._bundles(groups or [{}], collected_at_ms=collected)

    def deltas(self, limit: int) -> list[pb.Bundle]:
        """Up to ``limit`` DELTA bundles of what is pending (the rest stays pending)."""
        if not self.pending or not self.stream.can_send_delta or limit <= 0:
            return []
        # islice: a large backlog is grouped only as far as the window lets it go
        groups = list(itertools.islice(self._groups(self.pending.items()), limit))
        collected = self.pending_since_ms
        for group in groups:
            for key in group:
                del self.pending[key]
        if not self.pending:
            self.pending_since_ms = 0
        return self._bundles(groups, collected_at_ms=collected)

    def _bundles(self, groups: list[dict[str, Cached | None]], *, collected_at_ms: int) -> list[pb.Bundle]:
        """One DELTA per group, numbered in the stream and held for resends and resumes."""
        bundles = []
        for group in groups:
            seq, base = self.stream.next_seq()
            bundle = pb.Bundle(
                type=self.type,
                incarnation=self.stream.incarnation,
                seq=seq,
                base_seq=base,
                kind=pb.DELTA,
                deletes=sorted(k for k, o in group.items() if o is None),
                compression=pb.COMPRESSION_LZ4,
                collected_at_ms=collected_at_ms,
            )
            _add_upserts((o for o in group.values() if o is not None), bundle.upserts)
            self.stream.sent(seq, base, bundle)
            bundles.append(bundle)
        return bundles

    def error_report(self) -> pb.Bundle | None:
        """The type's error (a failed list, objects left out), once per distinct error; its last state stays on the hub."""
        error = self.error
        if error == self.error_reported:
            return None
        self.error_reported = error
        return pb.Bundle(type=self.type, incarnation=self.stream.incarnation, error=error)


class Listing:
    """A LIST being taken in, page by page. Each object is made into its wire form as its page
    arrives (the page's JSON can then go), and the type's state changes only at
    :meth:`TypeSync.finish_list`: a LIST that fails half-way changes nothing."""

    def __init__(self, sync: TypeSync) -> None:
        self.sync = sync
        #: key -> cached form, of the wanted namespaces.
        self.objects: dict[str, Cached] = {}

    def add(self, items: Iterable[RawFields]) -> None:
        """Objects of the LIST, each as its JSON fields (:func:`fleetsync.protocol.wireobject.fields_of`)."""
        for fields in items:
            metadata = metadata_of(fields)
            if self.sync.wanted(metadata.meta.namespace):
                key, obj = _wire(fields, metadata)
                self.objects[key] = obj
