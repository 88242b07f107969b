"""Kubernetes-compatible watches of the hub (``?watch=1``), from the change feed.

The hub's global revision is the ``resourceVersion``: a watch resumes after any revision
the change log still holds and gets a 410 ``Expired`` ERROR event (as from a real API
server) before that; without a ``resourceVersion`` (or with "0") it starts with a
synthetic ADDED for every current object. Objects carry the hub revision of their last
change as ``metadata.resourceVersion``, so a client resuming from an object's version
resumes from the right place. Label selectors turn changes into what the watcher
sees: an object that stops matching arrives as DELETED.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import Any

import orjson
from aiohttp import web

from fleetsync.hub.feed import ChangeFeed, Gone
from fleetsync.model.objects import CLUSTER_VERSION_ANNOTATION, selectable_fields
from fleetsync.model.selectors import FieldSelector, LabelSelector
from fleetsync.model.types import ResourceType
from fleetsync.protocol.codec import body_json
from fleetsync.store.contract import ObjectRecord, Store

#: Seconds between BOOKMARK events of an idle watch that asked for them.
BOOKMARK_INTERVAL = 5.0
#: A watch writes what it has once it holds this many bytes (and at the end of each batch of changes).
WRITE_CHUNK = 256 * 1024
#: A watch ends after this long unless ``timeoutSeconds`` says otherwise (clients reconnect).
DEFAULT_TIMEOUT = 1800.0


#: The label fleet-wide reads add to every object: the cluster it is of.
CLUSTER_LABEL = "fleetsync.io/cluster"


def cluster_labels(record: ObjectRecord) -> dict[str, str]:
    """The object's labels as a fleet-wide read shows them (with its cluster's)."""
    return {**record.labels, CLUSTER_LABEL: record.cluster}


def store_filter(labels: LabelSelector, *, fleet: bool) -> tuple[dict[str, str], str | None]:
    """What of a label selector the store can filter by: its equalities on stored labels, and
    for a fleet-wide read the one cluster that ``fleetsync.io/cluster=C`` leaves (or None)."""
    equal = labels.equalities()
    return equal, equal.pop(CLUSTER_LABEL, None) if fleet else None


def with_cluster_label(obj: dict[str, Any], cluster: str) -> dict[str, Any]:
    meta = obj.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), CLUSTER_LABEL: cluster}
    return obj


def with_revision(record: ObjectRecord, rev: int | None = None, *, fleet: bool = False) -> dict[str, Any]:
    """The stored object with the hub revision as its ``metadata.resourceVersion``, the cluster's
    in an annotation (and, for a fleet-wide read, its cluster's label)."""
    obj: dict[str, Any] = orjson.loads(body_json(record.body, record.compression))
    meta = obj.setdefault("metadata", {})
    meta["resourceVersion"] = str(rev if rev is not None else record.rev)
    if record.resource_version:
        meta["annotations"] = {**(meta.get("annotations") or {}), CLUSTER_VERSION_ANNOTATION: record.resource_version}
    return with_cluster_label(obj, record.cluster) if fleet else obj


class RenderedObjects:
    """Objects as the hub's reads show them (:func:`with_revision`), rendered once and shared.

    A stored object's state is named by the revision of its last change, so the JSON a
    list, a get or a watch event carries for it is the same bytes for every reader until
    it changes again: a hundred watchers of one change, or a poller listing a cluster ten
    times a second, decompress, parse, annotate and serialise it once. Keyed by (revision,
    fleet-wide or not); the least recently used are dropped beyond ``budget`` bytes.
    """

    def __init__(self, budget: int = 64 * 1024 * 1024) -> None:
        self.budget = budget
        self.size = 0
        self._cache: OrderedDict[tuple[int, bool], bytes] = OrderedDict()

    def get(self, record: ObjectRecord, rev: int | None = None, *, fleet: bool) -> bytes:
        """The JSON of ``record`` (its state at ``rev``, default its last change) as reads show it;
        raises :class:`CodecError` if the stored body cannot be read."""
        key = (rev if rev is not None else record.rev, fleet)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        found = self._cache[key] = orjson.dumps(with_revision(record, key[0], fleet=fleet))
        self.size += len(found)
        while self.size > self.budget and self._cache:
            self.size -= len(self._cache.popitem(last=False)[1])
        return found


def _event(kind: str, encoded: bytes) -> bytes:
    return b'{"type":"' + kind.encode() + b'","object":' + encoded + b"}\n"


class WatchRequest:
    """One watch: what it selects, and how to write its events."""

    def __init__(
        self,
        *,
        store: Store,
        feed: ChangeFeed,
        rtype: ResourceType,
        cluster: str | None,
        namespace: str | None,
        clusters: set[str] | None = None,
        labels: LabelSelector,
        fields: FieldSelector,
        bookmarks: bool,
        rendered: RenderedObjects | None = None,
    ) -> None:
        self.store = store
        self.feed = feed
        self.rtype = rtype
        self.cluster = cluster
        self.fleet = cluster is None  # across clusters: objects carry their cluster's label
        self.clusters = clusters  # fleet-wide: only these (a cluster selector); None: all
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.bookmarks = bookmarks
        self.rendered = rendered or RenderedObjects()

    def _labelled(self, record: ObjectRecord) -> bool:
        """The label selector, on the stored labels (no body decoded for it)."""
        return self.labels.matches(cluster_labels(record) if self.fleet else record.labels)

    def _fielded(self, encoded: bytes) -> bool:
        """The field selector, on the rendered object (parsed only if there is one)."""
        return self.fields.empty or self.fields.matches(selectable_fields(self.rtype, orjson.loads(encoded)))

    def _ours(self, record: ObjectRecord) -> bool:
        return (
            record.type == self.rtype.gvk
            and (self.cluster is None or record.cluster == self.cluster)
            and (self.clusters is None or record.cluster in self.clusters)
            and (self.namespace is None or record.namespace == self.namespace)
        )

    async def serve(self, request: web.Request, *, resource_version: str, timeout: float) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
        await response.prepare(request)

        with contextlib.suppress(ConnectionResetError, asyncio.TimeoutError):
            async with asyncio.timeout(timeout):
                since = await self._start(response, resource_version)
                if since is not None:
                    await self._follow(response, since)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _start(self, response: web.StreamResponse, resource_version: str) -> int | None:
        """Send the initial state if asked for; return the revision to follow from (None: ended)."""
        if resource_version not in ("", "0"):
            if not resource_version.isdigit():
                message = f"invalid resourceVersion {resource_version!r}: must be a hub revision (an integer)"
                await response.write(_event("ERROR", orjson.dumps(_status(400, "BadRequest", message))))
                return None
            return int(resource_version)
        since = await self.store.current_rev()
        after: tuple[str, str, str] | None = None
        equal, only = store_filter(self.labels, fleet=self.fleet)
        cluster = self.cluster or only
        while True:  # a list in pages; changes meanwhile arrive again from the feed, which is harmless
            page = await self.store.list_objects(self.rtype.gvk, cluster=cluster, namespace=self.namespace, after=after, limit=500, labels=equal)
            out = bytearray()
            for record in page:
                if not self._ours(record) or not self._labelled(record):
                    continue
                encoded = self.rendered.get(record, fleet=self.fleet)
                if self._fielded(encoded):
                    out += _event("ADDED", encoded)
            if out:
                await response.write(bytes(out))
            if len(page) < 500:
                return since
            after = (page[-1].cluster, page[-1].namespace, page[-1].name)

    async def _follow(self, response: web.StreamResponse, since: int) -> None:
        """Every batch of changes the feed yields becomes one write, or a few of up to
        ``WRITE_CHUNK`` (shared encodings; ``write`` waits while the client is slow to read)."""
        stream = self.feed.follow(since, idle=BOOKMARK_INTERVAL if self.bookmarks else None)
        try:
            async for batch in stream:
                out = bytearray()
                if not batch:
                    bookmark = {"kind": self.rtype.kind, "apiVersion": self.rtype.api_version, "metadata": {"resourceVersion": str(since)}}
                    out += _event("BOOKMARK", orjson.dumps(bookmark))
                for change in batch:
                    since = change.rev
                    if not self._ours(change.obj):
                        continue
                    labelled = self._labelled(change.obj)
                    if not labelled and change.type != "MODIFIED":
                        continue
                    encoded = self.rendered.get(change.obj, change.rev, fleet=self.fleet)
                    if labelled and self._fielded(encoded):
                        out += _event(change.type, encoded)
                    elif change.type == "MODIFIED":
                        out += _event("DELETED", encoded)  # it left the selection (or was never in it: harmless)
                    if len(out) >= WRITE_CHUNK:  # bounded: a hundred watchers of a big batch hold a chunk each, not the batch
                        await response.write(bytes(out))
                        out.clear()
                if out:
                    await response.write(bytes(out))
        except Gone as exc:
            await response.write(_event("ERROR", orjson.dumps(_status(410, "Expired", f"too old resource version: {exc.rev} ({exc.oldest + 1})"))))
        finally:
            await stream.aclose()


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}
