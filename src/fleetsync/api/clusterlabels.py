"""``/api/v1/clusters/{cluster}/labels``: the labels an admin sets on a cluster, which works'
placement and fleet-wide ``clusterSelector`` match (never what an agent reports of itself).

- ``GET``: ``{"cluster", "labels", "reported"}``: the admin's labels, and the metadata the
  cluster's agent reported in its Hello, shown as reported (read token);
- ``PATCH`` ``{"labels": {"env": "prod", "old": null}}``: set ``env``, remove ``old`` (a JSON
  merge patch of the labels; admin token). The cluster need not have connected yet, so that
  placement is right from its first connection.

A change is announced on the clusters channel: every replica's label cache reads the
cluster again, and its agent gets the works its new labels select (and removes the rest).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from fleetsync.api.scope import forbidden, scope_of
from fleetsync.hub.clusterlabels import CLUSTERS_CHANNEL
from fleetsync.model import clusterlabels
from fleetsync.model.names import check_cluster_name
from fleetsync.model.status import ApiError
from fleetsync.store.contract import Store
from fleetsync.web import json_response

PATH = "/api/v1/clusters/{cluster}/labels"
#: Largest PATCH body taken (64 labels of the longest keys and values fit with room to spare).
MAX_BODY = 64 * 1024


class ClusterLabelsApi:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.get)
        app.router.add_patch(PATH, self.patch)

    async def get(self, request: web.Request) -> web.Response:
        name = _name(request)
        labels = (await self.store.cluster_labels(name)).get(name, {})
        if (scope := scope_of(request)) is not None and not scope.admits_cluster(name, labels):  # before telling whether it exists
            raise forbidden(request, scope, f"cluster {name}")
        record = await self.store.cluster(name)
        if record is None and not labels:
            raise ApiError(404, "NotFound", f'cluster "{name}" is not known to this hub and has no labels')
        return json_response({"cluster": name, "labels": labels, "reported": dict(record.metadata) if record else {}})

    async def patch(self, request: web.Request) -> web.Response:
        name = _name(request)
        raw = await request.read()  # whole (content.read(n) may return a first chunk only); the app caps its size
        if len(raw) > MAX_BODY:
            raise ApiError(413, "RequestEntityTooLarge", f"a labels patch is at most {MAX_BODY} bytes")
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError.bad_request(f'the body is not JSON ({exc}); send e.g. {{"labels": {{"env": "prod", "old": null}}}}') from None
        labels = body.get("labels") if isinstance(body, dict) and set(body) == {"labels"} else None
        if not isinstance(labels, dict):
            raise ApiError(422, "Invalid", 'the body must be {"labels": {KEY: VALUE or null, ...}} and nothing else')
        if bad := next((k for k, v in labels.items() if v is not None and not isinstance(v, str)), None):
            raise ApiError(422, "Invalid", f"label {str(bad)[:100]}: a value is a string (or null to remove the label)")
        add = {k: v for k, v in labels.items() if v is not None}
        remove = [k for k, v in labels.items() if v is None]
        if problem := clusterlabels.change_problem(add, remove):
            raise ApiError(422, "Invalid", problem)
        current = (await self.store.cluster_labels(name)).get(name, {})
        if len(set(current) - set(remove) | set(add)) > clusterlabels.MAX_LABELS:
            raise ApiError(422, "Invalid", f"cluster {name} would have more than {clusterlabels.MAX_LABELS} labels")
        now = await self.store.label_cluster(name, add=add, remove=remove, now=self.clock())
        await self.store.notify(CLUSTERS_CHANNEL, name)
        return json_response({"cluster": name, "labels": now})


def _name(request: web.Request) -> str:
    try:
        return check_cluster_name(request.match_info["cluster"])
    except ValueError as exc:
        raise ApiError.bad_request(str(exc)) from None
