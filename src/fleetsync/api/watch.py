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
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from fleetsync.hub.feed import ChangeFeed, Gone
from fleetsync.model.objects import CLUSTER_VERSION_ANNOTATION, selectable_fields
from fleetsync.model.selectors import FieldSelector, LabelSelector
from fleetsync.model.types import ResourceType
from fleetsync.protocol.codec import body_json
from fleetsync.store.contract import Change, ObjectRecord, Store

#: Seconds between BOOKMARK events of an idle watch that asked for them.
BOOKMARK_INTERVAL = 5.0
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


class EncodedChanges:
    """Each change as watch events carry it, decoded and encoded once for every watcher.

    A hundred watchers of one change would otherwise each decompress, parse, annotate and
    serialise the same object; keyed by (revision, fleet-wide or not), the newest
    ``keep`` stay cached, which covers every watcher that is not far behind.
    """

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._cache: OrderedDict[tuple[int, bool], tuple[dict[str, Any], bytes]] = OrderedDict()

    def get(self, change: Change, *, fleet: bool) -> tuple[dict[str, Any], bytes]:
        """The object (not to be modified: it is shared) and its JSON."""
        key = (change.rev, fleet)
        found = self._cache.get(key)
        if found is None:
            obj = with_revision(change.obj, change.rev, fleet=fleet)
            found = self._cache[key] = (obj, orjson.dumps(obj))
            if len(self._cache) > self.keep:
                self._cache.popitem(last=False)
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
        encoded: EncodedChanges | None = None,
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
        self.encoded = encoded or EncodedChanges()

    def _labelled(self, record: ObjectRecord) -> bool:
        """The label selector, on the stored labels (no body decoded for it)."""
        return self.labels.matches(cluster_labels(record) if self.fleet else record.labels)

    def _selected(self, record: ObjectRecord, obj: dict[str, Any]) -> bool:
        return self._labelled(record) and (self.fields.empty or self.fields.matches(selectable_fields(self.rtype, obj)))

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

        async def send(kind: str, obj: dict[str, Any]) -> None:
            await response.write(orjson.dumps({"type": kind, "object": obj}) + b"\n")

        with contextlib.suppress(ConnectionResetError, asyncio.TimeoutError):
            async with asyncio.timeout(timeout):
                since = await self._start(send, resource_version)
                if since is not None:
                    await self._follow(response, since)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _start(self, send: Callable[[str, dict[str, Any]], Awaitable[None]], resource_version: str) -> int | None:
        """Send the initial state if asked for; return the revision to follow from (None: ended)."""
        if resource_version not in ("", "0"):
            if not resource_version.isdigit():
                await send("ERROR", _status(400, "BadRequest", f"invalid resourceVersion {resource_version!r}: must be a hub revision (an integer)"))
                return None
            return int(resource_version)
        since = await self.store.current_rev()
        after: tuple[str, str, str] | None = None
        equal, only = store_filter(self.labels, fleet=self.fleet)
        cluster = self.cluster or only
        while True:  # a list in pages; changes meanwhile arrive again from the feed, which is harmless
            page = await self.store.list_objects(self.rtype.gvk, cluster=cluster, namespace=self.namespace, after=after, limit=500, labels=equal)
            for record in page:
                if not self._ours(record) or not self._labelled(record):
                    continue
                obj = with_revision(record, fleet=self.fleet)
                if self._selected(record, obj):
                    await send("ADDED", obj)
            if len(page) < 500:
                return since
            after = (page[-1].cluster, page[-1].namespace, page[-1].name)

    async def _follow(self, response: web.StreamResponse, since: int) -> None:
        """Every batch of changes the feed yields becomes one write (shared encodings, one
        send per batch; ``write`` waits while the client is slow to read)."""
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
                    obj, encoded = self.encoded.get(change, fleet=self.fleet)
                    if labelled and (self.fields.empty or self.fields.matches(selectable_fields(self.rtype, obj))):
                        out += _event(change.type, encoded)
                    elif change.type == "MODIFIED":
                        out += _event("DELETED", encoded)  # it left the selection (or was never in it: harmless)
                if out:
                    await response.write(bytes(out))
        except Gone as exc:
            await response.write(_event("ERROR", orjson.dumps(_status(410, "Expired", f"too old resource version: {exc.rev} ({exc.oldest + 1})"))))
        finally:
            await stream.aclose()


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}
