"""fleetsync's own events (``Connected``, ``GapDetected``, ``NodeDown``, ``ClusterDeleted``...)
under the ``fleetsync.io/v1`` group, as ``FleetsyncEvent`` objects, so that ``/api/v1/events``
is the clusters' own Kubernetes Events (synced like any type) and ``kubectl get events -A`` on
the hub shows those:

- ``GET /apis/fleetsync.io/v1/fleetsyncevents[?cluster=C&reason=R&since=ID&limit=N]``: the
  newest ``limit`` events (100; at most 10000), or with ``since`` the first ``limit`` after
  that id, oldest first; a Table for ``kubectl get fleetsyncevents``;
- with ``watch=1``: a stream of them (one JSON object per line) as any replica records them,
  for ``timeoutSeconds`` (1800); a client resumes with ``since``;
- ``/clusters/C/apis/fleetsync.io/v1/fleetsyncevents``: the same, of cluster C only.

Each item keeps the fields clients read (``id``, ``time``, ``cluster``, ``reason``, ``type``:
the resource type it concerns, ``message``, ``hub``) and adds what a Kubernetes object has
(``apiVersion``, ``kind``, ``metadata.name``: ``CLUSTER.ID``, ``metadata.creationTimestamp``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from fleetsync.api import params
from fleetsync.api.scope import Scopes, scope_of
from fleetsync.hub.core import HubCore
from fleetsync.hub.events import REASONS
from fleetsync.model.names import check_cluster_name
from fleetsync.model.objects import rfc3339
from fleetsync.model.status import ApiError
from fleetsync.model.tables import table
from fleetsync.model.types import ResourceType
from fleetsync.store.contract import EventRecord
from fleetsync.web import json_response

GROUP = "fleetsync.io"
#: How kubectl and discovery name fleetsync's events: not ``events``, which are the clusters' own.
FLEETSYNC_EVENT = ResourceType(GROUP, "v1", "FleetsyncEvent", "fleetsyncevents", False, short_names=("fsev",))
PATH = f"/apis/{GROUP}/v1/{FLEETSYNC_EVENT.plural}"
#: The most events one list returns.
MAX_LIMIT = 10_000
#: How long a watch of events lasts unless ``timeoutSeconds`` says otherwise.
WATCH_TIMEOUT = 1800.0
_BATCH = 500

Streaming = Callable[[Awaitable[web.StreamResponse]], Awaitable[web.StreamResponse]]


def event_item(e: EventRecord) -> dict[str, Any]:
    """One event as the API shows it: its fields, and enough of a Kubernetes object for kubectl."""
    return {
        "apiVersion": FLEETSYNC_EVENT.api_version,
        "kind": FLEETSYNC_EVENT.kind,
        "metadata": {"name": f"{e.cluster}.{e.id}", "creationTimestamp": rfc3339(e.time)},
        "id": e.id,
        "time": e.time,
        "cluster": e.cluster,
        "reason": e.reason,
        "type": e.type,
        "message": e.message,
        "hub": e.hub_id,
    }


class GroupApi:
    """What each resource of the ``fleetsync.io/v1`` group (clusters, events) is served with."""

    def __init__(self, core: HubCore, streaming: Streaming, scopes: Scopes) -> None:
        self.core = core
        self.store = core.store
        #: A scoped read token sees the clusters of its scope only, and their events.
        self.scopes = scopes
        #: Serves a watch so that the API server's stop ends it.
        self.streaming = streaming


class EventsApi(GroupApi):
    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.events)
        app.router.add_get("/clusters/{cluster}" + PATH, self.events)

    async def events(self, request: web.Request) -> web.StreamResponse:
        reason = request.query.get("reason")
        if reason is not None and reason not in REASONS:
            raise ApiError.bad_request(f"unknown event reason {reason!r}: one of {', '.join(REASONS)}")
        since = params.count(request.query, "since") if "since" in request.query else None
        limit = params.count(request.query, "limit", 100)
        if not 0 < limit <= MAX_LIMIT:
            raise ApiError.bad_request(f"invalid limit {limit}: must be between 1 and {MAX_LIMIT}")
        cluster = request.match_info.get("cluster") or request.query.get("cluster") or None
        if cluster is not None:
            try:
                check_cluster_name(cluster)
            except ValueError as exc:
                raise ApiError.bad_request(str(exc)[:300]) from None
        timeout = float(params.count(request.query, "timeoutSeconds")) or WATCH_TIMEOUT
        scope = scope_of(request)
        if cluster is not None:
            await self.scopes.check_cluster(request, scope, cluster)
        if params.flag(request.query, "watch"):
            return await self.streaming(self._watch(request, cluster=cluster, reason=reason, since=since, timeout=timeout))
        in_scope = await self.scopes.clusters(scope) if cluster is None else None
        records = await self.store.events(cluster=cluster, reason=reason, after=since, limit=limit, clusters=in_scope)
        items = [event_item(e) for e in records]
        if "as=Table" in request.headers.get("Accept", ""):
            return json_response(table(FLEETSYNC_EVENT.kind, items, include_object=params.include_object(request.query)))
        return json_response({"kind": "FleetsyncEventList", "apiVersion": FLEETSYNC_EVENT.api_version, "metadata": {}, "items": items})

    async def _watch(self, request: web.Request, *, cluster: str | None, reason: str | None, since: int | None, timeout: float) -> web.StreamResponse:
        """Events as they are recorded by any replica, one JSON object per line, after ``since``
        (default: from now). Ends after ``timeout``; a client resumes with ``since``."""
        if since is None:
            newest = await self.store.events(limit=1)
            since = newest[-1].id if newest else 0
        scope = scope_of(request)
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    # past the filtered ones too, so that a quiet filter does not re-read the same events
                    batch = await self.store.events(after=since, limit=_BATCH)
                    # a scoped token's clusters, as labelled now (a cluster labelled into its scope joins the stream)
                    in_scope = await self.scopes.clusters(scope) if batch else None
                    for event in batch:
                        since = event.id
                        if in_scope is not None and event.cluster not in in_scope:
                            continue
                        if (cluster is None or event.cluster == cluster) and (reason is None or event.reason == reason):
                            await response.write(orjson.dumps(event_item(event)) + b"\n")
                    if len(batch) < _BATCH:
                        await self.core.wait_for_events(since, timeout=1.0)  # woken by the store's notification; 1 s in case it is lost
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
