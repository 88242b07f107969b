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
of that cluster no longer matches what the watch would send. A scoped read token's watch
follows its clusters the same way (a cluster labelled into or out of its scope ends the
watch with 410, and the relist shows it or is refused), and checks each change's namespace
against a precompiled set. An object whose stored body is not a JSON object is left out of
lists and watches (with a warning in the hub's log, once per state of it): one bad row must
not end every reader's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from fleetsync.hub.clusterlabels import ClusterLabels
from fleetsync.hub.feed import ChangeFeed, Gone
from fleetsync.model.objects import CLUSTER_LABEL, CLUSTER_VERSION_ANNOTATION
from fleetsync.model.scope import Scope
from fleetsync.model.selection import ObjectSelection
from fleetsync.model.selectors import FieldSelector, LabelSelector
from fleetsync.model.status import status_body
from fleetsync.model.types import ResourceType
from fleetsync.protocol.bodies import UnreadableBody, stored_object
from fleetsync.store.contract import Change, ObjectRecord, Store

log = logging.getLogger(__name__)

#: Seconds between BOOKMARK events of an idle watch that asked for them.
BOOKMARK_INTERVAL = 5.0
#: A watch writes what it has once it holds this many bytes (and at the end of each batch of changes).
WRITE_CHUNK = 256 * 1024
#: A watch ends after this long unless ``timeoutSeconds`` says otherwise (clients reconnect).
DEFAULT_TIMEOUT = 1800.0


def with_cluster_label(obj: dict[str, Any], cluster: str) -> dict[str, Any]:
    meta = obj.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), CLUSTER_LABEL: cluster}
    return obj


def with_revision(record: ObjectRecord, rev: int | None = None, *, fleet: bool = False) -> dict[str, Any]:
    """The stored object with the hub revision as its ``metadata.resourceVersion``, the cluster's
    in an annotation (and, for a fleet-wide read, its cluster's label); :class:`UnreadableBody`
    if its stored body is not a JSON object."""
    obj = stored_object(record.body, record.compression)
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

    A state whose stored body is not a JSON object renders as None, which every read skips;
    the warning is logged when it is first met and remembered (the last ``UNREADABLE_KEPT``
    of them), so a poller does not write one to the log on every read.
    """

    UNREADABLE_KEPT = 10_000

    def __init__(self, budget: int = 64 * 1024 * 1024) -> None:
        self.budget = budget
        self.size = 0
        self._cache: OrderedDict[tuple[int, bool], bytes] = OrderedDict()
        self._unreadable: OrderedDict[int, None] = OrderedDict()  # revisions of states that are not JSON objects

    def get(self, record: ObjectRecord, rev: int | None = None, *, fleet: bool) -> bytes | None:
        """The JSON of ``record`` (its state at ``rev``, default its last change) as reads show it;
        None (and a warning, once) if its stored body is not a JSON object."""
        key = (rev if rev is not None else record.rev, fleet)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        if key[0] in self._unreadable:
            return None
        try:
            found = self._cache[key] = orjson.dumps(with_revision(record, key[0], fleet=fleet))
        except UnreadableBody as exc:
            self._unreadable[key[0]] = None
            if len(self._unreadable) > self.UNREADABLE_KEPT:
                self._unreadable.popitem(last=False)
            log.warning(
                "cluster %s: the stored body of %s %s (revision %d) is %s; reads leave it out until its agent sends it again",
                record.cluster,
                record.type,
                record.key,
                key[0],
                exc,
            )
            return None
        self.size += len(found)
        while self.size > self.budget and self._cache:
            self.size -= len(self._cache.popitem(last=False)[1])
        return found


class ClusterSelection:
    """The clusters a fleet-wide watch with ``clusterSelector`` (and/or a scoped token's
    clusters) covers, as their labels change.

    What each cluster's labels said is learnt at the watch's start (and, for a cluster not
    known then, when the watch first meets it). :meth:`check` compares with the labels now:
    a cluster joining the fleet is simply taken in (its objects arrive as changes), but a
    known cluster that enters or leaves the selection cannot be followed change by change
    (the client holds none, or all, of its objects), so the watch must start over.
    """

    def __init__(self, selector: LabelSelector | None, labels: ClusterLabels, *, scope: Scope | None = None, only: str | None = None) -> None:
        self.selector = selector
        self.scope = scope
        self.only = only  # a watch of one cluster's path: other clusters' labels do not concern it
        self.labels = labels
        self.selected: dict[str, bool] = {}
        self._version = -1

    def _matches(self, name: str, labels: Mapping[str, str]) -> bool:
        return (self.selector is None or self.selector.matches(labels)) and (self.scope is None or self.scope.admits_cluster(name, labels))

    def admits(self, cluster: str) -> bool:
        return self.selected.get(cluster, False)

    async def now_selected(self) -> frozenset[str]:
        """The clusters selected, having taken in every cluster known now: a condition for the
        store's query (a cluster joining after this writes its objects as changes the watch follows)."""
        await self.meet((await self.labels.current()).keys())
        return frozenset(name for name, selected in self.selected.items() if selected)

    async def learn(self) -> None:
        """Take in every cluster's labels now."""
        current = await self.labels.current()
        self._version = self.labels.version
        self.selected = {name: self._matches(name, labels) for name, labels in current.items()}

    async def meet(self, names: Iterable[str]) -> None:
        """Take in the labels of clusters in ``names`` met for the first time."""
        if new := {name for name in names if name not in self.selected}:
            current = await self.labels.current(*new)
            self.selected.update({name: self._matches(name, current[name]) for name in new if name in current})

    async def check(self, names: Iterable[str] = ()) -> str | None:
        """Take in clusters met for the first time (``names``) and label changes; return why the
        watch must end if a cluster it knew entered or left the selection, else None."""
        await self.meet(names)
        current = await self.labels.current()
        if self.labels.version == self._version:
            return None
        self._version = self.labels.version
        for name, labels in current.items():
            if self.only is not None and name != self.only:
                continue
            now = self._matches(name, labels)
            if self.selected.setdefault(name, now) != now:
                return f"cluster {name} {'entered' if now else 'left'} the watch's selection of clusters (its labels changed); list again"
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
        namespaces: frozenset[str] | None = None,
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
        self.namespaces = namespaces  # a scoped token's namespaces (checked per change); None: every one
        #: What the watch selects, exactly as a list with the same selectors does.
        self.selection = ObjectSelection(rtype, labels, fields, fleet=self.fleet)
        self.bookmarks = bookmarks
        self.rendered = rendered or RenderedObjects()
        #: A watch with a selector tracks which objects are in its selection (their keys), to send
        #: an object leaving it as DELETED, entering it as ADDED, and nothing for those outside.
        self.selective = not self.selection.empty
        self.selected: set[tuple[str, str, str]] = set()
        #: Changes up to this revision may predate what ``selected`` was learnt from.
        self.exact_after = 0

    def _labelled(self, record: ObjectRecord) -> bool:
        return self.selection.admits_labels(record)

    def _fielded(self, encoded: bytes) -> bool:
        return self.selection.admits_rendering(encoded)

    def _ours(self, record: ObjectRecord) -> bool:
        return (
            record.type == self.rtype.gvk
            and (self.cluster is None or record.cluster == self.cluster)
            and (self.clusters is None or self.clusters.admits(record.cluster))
            and (self.namespace is None or record.namespace == self.namespace)
            and (self.namespaces is None or record.namespace in self.namespaces)
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
            if not (resource_version.isascii() and resource_version.isdigit()):  # the API checks it first; ``"²".isdigit()`` holds
                message = f"invalid resourceVersion {resource_version!r}: must be a hub revision (an integer)"
                await response.write(_event("ERROR", orjson.dumps(_status(400, "BadRequest", message))))
                return None
            if self.selective:
                self.selected = {_key(record) async for record, _ in self._selection(render=False)}
                self.exact_after = await self.store.current_rev()
            return int(resource_version)
        since = await self.store.current_rev()
        listed: set[tuple[str, str, str]] = set()
        out = bytearray()
        async for record, encoded in self._selection():  # changes meanwhile arrive again from the feed, which is harmless
            listed.add(_key(record))
            out += _event("ADDED", encoded)
            if len(out) >= WRITE_CHUNK:
                await response.write(bytes(out))
                out.clear()
        if out:
            await response.write(bytes(out))
        if self.selective:
            self.selected = listed
            self.exact_after = await self.store.current_rev()
        return since

    async def _selection(self, *, render: bool = True) -> AsyncIterator[tuple[ObjectRecord, bytes]]:
        """The objects the watch selects now (read in pages), each with its rendering (cached,
        shared with every other read); objects whose stored body is unreadable are left out.
        Without ``render`` (only their keys are wanted), bodies are rendered only for a field
        selector (the label selector reads stored labels) and b"" stands for the rendering."""
        after: tuple[str, str, str] | None = None
        equal, only = self.selection.store_filter()
        cluster = self.cluster or only
        # a scoped token's clusters are a condition of the query: its watch never reads the rest of the fleet
        clusters = await self.clusters.now_selected() if self.clusters is not None and self.clusters.scope is not None else None
        while True:
            page = await self.store.list_objects(
                self.rtype.gvk, cluster=cluster, namespace=self.namespace, after=after, limit=500, labels=equal, clusters=clusters, namespaces=self.namespaces
            )
            if self.clusters is not None:  # clusters that joined since the watch learnt the labels
                await self.clusters.meet({record.cluster for record in page})
            for record in page:
                if not self._ours(record) or not self._labelled(record):
                    continue
                if not render and self.selection.fields.empty:
                    yield record, b""
                    continue
                encoded = self.rendered.get(record, fleet=self.fleet)
                if encoded is not None and self._fielded(encoded):
                    yield record, encoded
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
        if encoded is None:  # not a JSON object: left out, as lists leave it out
            return None
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
                        if (encoded := self.rendered.get(change.obj, change.rev, fleet=self.fleet)) is not None:
                            out += _event(change.type, encoded)
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
    return status_body(message, reason=reason, code=code)
