"""Kubernetes-compatible watches of the hub (``?watch=1``), from the change feed.

The hub's global revision is the ``resourceVersion``: a watch resumes after any revision
the change log still holds and gets a 410 ``Expired`` ERROR event (as from a real API
server) before that; without a ``resourceVersion`` (or with "0") it starts with a
synthetic ADDED for every current object. Objects carry the hub revision of their last
change as ``metadata.resourceVersion``, so a client resuming from an object's version
resumes from the right place. Label and field selectors turn changes into what the
watcher sees, as an API server's do: an object entering the selection arrives as ADDED,
one leaving it as DELETED, and changes to objects outside it not at all. A fleet-wide
watch with a cluster selector follows the clusters' labels: a cluster that joins the
fleet later is in it if its labels match, and one whose labels change so that it enters
or leaves the selection ends the watch with 410 (list again), since what the client holds
of that cluster no longer matches what the watch would send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from aiohttp import web

from fleetsync.hub.clusterlabels import ClusterLabels
from fleetsync.hub.feed import ChangeFeed, Gone
from fleetsync.model.objects import CLUSTER_LABEL, CLUSTER_VERSION_ANNOTATION, selectable_fields
from fleetsync.model.selectors import FieldSelector, LabelSelector
from fleetsync.model.types import ResourceType
from fleetsync.protocol.codec import body_json
from fleetsync.store.contract import Change, ObjectRecord, Store

#: Seconds between BOOKMARK events of an idle watch that asked for them.
BOOKMARK_INTERVAL = 5.0
#: A watch writes what it has once it holds this many bytes (and at the end of each batch of changes).
WRITE_CHUNK = 256 * 1024
#: A watch ends after this long unless ``timeoutSeconds`` says otherwise (clients reconnect).
DEFAULT_TIMEOUT = 1800.0


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


class ClusterSelection:
    """The clusters a fleet-wide watch with ``clusterSelector`` covers, as their labels change.

    What each cluster's labels said is learnt at the watch's start (and, for a cluster not
    known then, when the watch first meets it). :meth:`check` compares with the labels now:
    a cluster joining the fleet is simply taken in (its objects arrive as changes), but a
    known cluster that enters or leaves the selection cannot be followed change by change
    (the client holds none, or all, of its objects), so the watch must start over.
    """

    def __init__(self, selector: LabelSelector, labels: ClusterLabels) -> None:
        self.selector = selector
        self.labels = labels
        self.selected: dict[str, bool] = {}
        self._version = -1

    def admits(self, cluster: str) -> bool:
        return self.selected.get(cluster, False)

    async def learn(self) -> None:
        """Take in every cluster's labels now."""
        current = await self.labels.current()
        self._version = self.labels.version
        self.selected = {name: self.selector.matches(labels) for name, labels in current.items()}

    async def meet(self, names: Iterable[str]) -> None:
        """Take in the labels of clusters in ``names`` met for the first time."""
        if new := {name for name in names if name not in self.selected}:
            current = await self.labels.current(*new)
            self.selected.update({name: self.selector.matches(current[name]) for name in new if name in current})

    async def check(self, names: Iterable[str] = ()) -> str | None:
        """Take in clusters met for the first time (``names``) and label changes; return why the
        watch must end if a cluster it knew entered or left the selection, else None."""
        await self.meet(names)
        current = await self.labels.current()
        if self.labels.version == self._version:
            return None
        self._version = self.labels.version
        for name, labels in current.items():
            now = self.selector.matches(labels)
            if self.selected.setdefault(name, now) != now:
                return f"cluster {name} {'entered' if now else 'left'} the clusterSelector's selection (its labels changed); list again"
        return None


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
        clusters: ClusterSelection | None = None,
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
        self.clusters = clusters  # fleet-wide: only the clusters a cluster selector admits; None: all
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.bookmarks = bookmarks
        self.rendered = rendered or RenderedObjects()
        #: A watch with a selector tracks which objects are in its selection (their keys), to send
        #: an object leaving it as DELETED, entering it as ADDED, and nothing for those outside.
        self.selective = not (labels.empty and fields.empty)
        self.selected: set[tuple[str, str, str]] = set()
        #: Changes up to this revision may predate what ``selected`` was learnt from.
        self.exact_after = 0

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
            and (self.clusters is None or self.clusters.admits(record.cluster))
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
        """Send the initial state if asked for; return the revision to follow from (None: ended).
        A selective watch also learns what its selection holds now (see :meth:`_follow`)."""
        if self.clusters is not None:
            await self.clusters.learn()
        if resource_version not in ("", "0"):
            if not resource_version.isdigit():
                message = f"invalid resourceVersion {resource_version!r}: must be a hub revision (an integer)"
                await response.write(_event("ERROR", orjson.dumps(_status(400, "BadRequest", message))))
                return None
            if self.selective:
                self.selected = {_key(record) async for record in self._selection()}
                self.exact_after = await self.store.current_rev()
            return int(resource_version)
        since = await self.store.current_rev()
        listed: set[tuple[str, str, str]] = set()
        out = bytearray()
        async for record in self._selection():  # changes meanwhile arrive again from the feed, which is harmless
            listed.add(_key(record))
            out += _event("ADDED", self.rendered.get(record, fleet=self.fleet))
            if len(out) >= WRITE_CHUNK:
                await response.write(bytes(out))
                out.clear()
        if out:
            await response.write(bytes(out))
        if self.selective:
            self.selected = listed
            self.exact_after = await self.store.current_rev()
        return since

    async def _selection(self) -> AsyncIterator[ObjectRecord]:
        """The objects the watch selects now (read in pages). Bodies are rendered only for a
        field selector (the label selector reads stored labels); what is rendered is cached."""
        after: tuple[str, str, str] | None = None
        equal, only = store_filter(self.labels, fleet=self.fleet)
        cluster = self.cluster or only
        while True:
            page = await self.store.list_objects(self.rtype.gvk, cluster=cluster, namespace=self.namespace, after=after, limit=500, labels=equal)
            if self.clusters is not None:  # clusters that joined since the watch learnt the labels
                await self.clusters.meet({record.cluster for record in page})
            for record in page:
                if not self._ours(record) or not self._labelled(record):
                    continue
                if self.fields.empty or self._fielded(self.rendered.get(record, fleet=self.fleet)):
                    yield record
            if len(page) < 500:
                return
            after = (page[-1].cluster, page[-1].namespace, page[-1].name)

    def _selective_event(self, change: Change) -> tuple[str, bytes] | None:
        """What a selective watch sends for ``change``, as an API server's watch does: an object
        entering the selection is ADDED, one changing in it MODIFIED, one leaving it (or deleted
        in it) DELETED, and one outside it nothing. Whether it was in the selection is known
        exactly after ``exact_after``; before (changes that may predate what the watch learnt
        of its selection), an object that is outside it now and changed is sent as DELETED,
        which a client that never had it ignores."""
        key = _key(change.obj)
        was = None if change.rev <= self.exact_after else key in self.selected
        labelled = self._labelled(change.obj)
        if not labelled and not was and (was is False or change.type != "MODIFIED"):
            self.selected.discard(key)
            return None
        encoded = self.rendered.get(change.obj, change.rev, fleet=self.fleet)
        inside = labelled and self._fielded(encoded)
        if change.type == "DELETED":
            self.selected.discard(key)
            return ("DELETED", encoded) if (was if was is not None else inside) else None
        if inside:
            self.selected.add(key)
            return ("ADDED" if was is False else change.type), encoded
        self.selected.discard(key)
        return ("DELETED", encoded) if (was if was is not None else change.type == "MODIFIED") else None

    async def _follow(self, response: web.StreamResponse, since: int) -> None:
        """Every batch of changes the feed yields becomes one write, or a few of up to
        ``WRITE_CHUNK`` (shared encodings; ``write`` waits while the client is slow to read)."""
        idle = BOOKMARK_INTERVAL if self.bookmarks or self.clusters is not None else None  # the clusters' labels are checked when idle too
        stream = self.feed.follow(since, idle=idle)
        try:
            async for batch in stream:
                out = bytearray()
                if self.clusters is not None and (changed := await self.clusters.check({c.obj.cluster for c in batch})):
                    await response.write(_event("ERROR", orjson.dumps(_status(410, "Expired", changed))))
                    return
                if not batch and self.bookmarks:
                    bookmark = {"kind": self.rtype.kind, "apiVersion": self.rtype.api_version, "metadata": {"resourceVersion": str(since)}}
                    out += _event("BOOKMARK", orjson.dumps(bookmark))
                for change in batch:
                    since = change.rev
                    if not self._ours(change.obj):
                        continue
                    if not self.selective:
                        out += _event(change.type, self.rendered.get(change.obj, change.rev, fleet=self.fleet))
                    elif sent := self._selective_event(change):
                        out += _event(*sent)
                    if len(out) >= WRITE_CHUNK:  # bounded: a hundred watchers of a big batch hold a chunk each, not the batch
                        await response.write(bytes(out))
                        out.clear()
                if out:
                    await response.write(bytes(out))
        except Gone as exc:
            await response.write(_event("ERROR", orjson.dumps(_status(410, "Expired", f"too old resource version: {exc.rev} ({exc.oldest + 1})"))))
        finally:
            await stream.aclose()


def _key(record: ObjectRecord) -> tuple[str, str, str]:
    return record.cluster, record.namespace, record.name


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}
