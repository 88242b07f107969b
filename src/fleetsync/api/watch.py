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
from typing import Any

import orjson
from aiohttp import web

from fleetsync.hub.feed import ChangeFeed, Gone
from fleetsync.model.objects import selectable_fields
from fleetsync.model.selectors import FieldSelector, LabelSelector
from fleetsync.model.types import ResourceType
from fleetsync.protocol.codec import body_json
from fleetsync.store.contract import ObjectRecord, Store

#: Seconds between BOOKMARK events of an idle watch that asked for them.
BOOKMARK_INTERVAL = 5.0
#: A watch ends after this long unless ``timeoutSeconds`` says otherwise (clients reconnect).
DEFAULT_TIMEOUT = 1800.0


#: The label fleet-wide reads add to every object: the cluster it is of.
CLUSTER_LABEL = "fleetsync.io/cluster"


def cluster_labels(record: ObjectRecord) -> dict[str, str]:
    """The object's labels as a fleet-wide read shows them (with its cluster's)."""
    return {**record.labels, CLUSTER_LABEL: record.cluster}


def with_cluster_label(obj: dict[str, Any], cluster: str) -> dict[str, Any]:
    meta = obj.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), CLUSTER_LABEL: cluster}
    return obj


def with_revision(record: ObjectRecord, rev: int | None = None, *, fleet: bool = False) -> dict[str, Any]:
    """The stored object with the hub revision as its ``metadata.resourceVersion`` (and, for a
    fleet-wide read, its cluster's label)."""
    obj: dict[str, Any] = orjson.loads(body_json(record.body, record.compression))
    obj.setdefault("metadata", {})["resourceVersion"] = str(rev if rev is not None else record.rev)
    return with_cluster_label(obj, record.cluster) if fleet else obj


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

    def _selected(self, record: ObjectRecord, obj: dict[str, Any]) -> bool:
        if not self.labels.matches(cluster_labels(record) if self.fleet else record.labels):
            return False
        return self.fields.empty or self.fields.matches(selectable_fields(self.rtype, obj))

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
                    await self._follow(send, since)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _start(self, send: Any, resource_version: str) -> int | None:
        """Send the initial state if asked for; return the revision to follow from (None: ended)."""
        if resource_version not in ("", "0"):
            if not resource_version.isdigit():
                await send("ERROR", _status(400, "BadRequest", f"invalid resourceVersion {resource_version!r}: must be a hub revision (an integer)"))
                return None
            return int(resource_version)
        since = await self.store.current_rev()
        after: tuple[str, str, str] | None = None
        while True:  # a list in pages; changes meanwhile arrive again from the feed, which is harmless
            page = await self.store.list_objects(self.rtype.gvk, cluster=self.cluster, namespace=self.namespace, after=after, limit=500)
            for record in page:
                if not self._ours(record):
                    continue
                obj = with_revision(record, fleet=self.fleet)
                if self._selected(record, obj):
                    await send("ADDED", obj)
            if len(page) < 500:
                return since
            after = (page[-1].cluster, page[-1].namespace, page[-1].name)

    async def _follow(self, send: Any, since: int) -> None:
        stream = self.feed.follow(since, idle=BOOKMARK_INTERVAL if self.bookmarks else None)
        try:
            async for batch in stream:
                if not batch:
                    await send("BOOKMARK", {"kind": self.rtype.kind, "apiVersion": self.rtype.api_version, "metadata": {"resourceVersion": str(since)}})
                for change in batch:
                    since = change.rev
                    if not self._ours(change.obj):
                        continue
                    obj = with_revision(change.obj, change.rev, fleet=self.fleet)
                    if change.type == "DELETED":
                        if self._selected(change.obj, obj):
                            await send("DELETED", obj)
                    elif self._selected(change.obj, obj):
                        await send(change.type, obj)
                    elif change.type == "MODIFIED":
                        await send("DELETED", obj)  # it left the selection (or was never in it: harmless)
        except Gone as exc:
            await send("ERROR", _status(410, "Expired", f"too old resource version: {exc.rev} ({exc.oldest + 1})"))
        finally:
            await stream.aclose()


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}
