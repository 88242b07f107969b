"""``/api/v1/works``: manifests for the clusters a placement picks, and their status per cluster.

- ``GET /api/v1/works``: every work (a ``WorkList``); ``GET /api/v1/works/{name}``: one (404);
- ``POST /api/v1/works``: a new work (409 if the name is taken);
- ``PUT /api/v1/works/{name}``: create or replace (what ``fleetsync works apply`` does);
- ``DELETE /api/v1/works/{name}``: delete it; agents remove its objects.

Bodies are JSON or YAML (by ``Content-Type``); a body that does not parse is a 400, a work
that is not valid (see :func:`fleetsync.model.works.parse_work`) a 422 naming each problem.
Errors are Kubernetes ``Status`` objects, as everywhere under ``/api/``.

A work's ``status`` is computed on every read from the clusters' reports: per targeted
cluster, its state (``Pending`` until its agent reports the current generation, then
``Failed`` if a manifest failed, ``Available`` if all are, else ``Applied``) and each
manifest's condition and message; clusters the work no longer targets but whose agents
have not yet removed its objects are listed as ``Removing``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import yaml
from aiohttp import web

from fleetsync.api.auth import caller_name
from fleetsync.hub.works import WORKS_CHANNEL, SpecCache
from fleetsync.model.objects import rfc3339
from fleetsync.model.status import ApiError
from fleetsync.model.works import API_VERSION, APPLIED, AVAILABLE, FAILED, KIND, PENDING, WorkError, name_problem, parse_work
from fleetsync.store.contract import ClusterRecord, Store, WorkExists, WorkRecord, WorkStatusRecord
from fleetsync.web import json_response

PREFIX = "/api/v1/works"
GROUP = "fleetsync.io"
REMOVING = "Removing"
#: Largest request body taken by default (a work is bounded well below it, by
#: ``MAX_WORK_BYTES``; the rest is YAML's slack); the hub's ``--http-max-body-bytes``.
MAX_BODY = 1024 * 1024


def cluster_state(generation: int, status: WorkStatusRecord | None) -> tuple[str, list[dict[str, Any]]]:
    """A targeted cluster's state for a work at ``generation``, and its manifests' conditions."""
    if status is None or status.generation < generation:
        return PENDING, []
    manifests: list[dict[str, Any]] = orjson.loads(status.manifests)
    conditions = {m["condition"] for m in manifests}
    if FAILED in conditions:
        return FAILED, manifests
    return (AVAILABLE if conditions <= {AVAILABLE} else APPLIED), manifests


def work_json(work: WorkRecord, spec: dict[str, Any], statuses: list[WorkStatusRecord], targeted: list[str]) -> dict[str, Any]:
    """A work as the API shows it, with its status across the fleet."""
    by_cluster = {s.cluster: s for s in statuses}
    clusters: list[dict[str, Any]] = []
    summary = {"targeted": len(targeted), PENDING: 0, APPLIED: 0, AVAILABLE: 0, FAILED: 0}
    for name in targeted:
        status = by_cluster.pop(name, None)
        state, manifests = cluster_state(work.generation, status)
        summary[state] += 1
        entry: dict[str, Any] = {"cluster": name, "state": state}
        if status is not None:
            entry |= {"observedGeneration": status.generation, "updated": rfc3339(status.updated_at), "manifests": manifests}
        clusters.append(entry)
    for name, status in sorted(by_cluster.items()):
        clusters.append({"cluster": name, "state": REMOVING, "observedGeneration": status.generation, "updated": rfc3339(status.updated_at)})
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": work.name,
            "generation": work.generation,
            "resourceVersion": str(work.revision),
            "creationTimestamp": rfc3339(work.created_at),
            "annotations": {"fleetsync.io/updated-by": work.updated_by, "fleetsync.io/updated-at": rfc3339(work.updated_at)},
        },
        "spec": spec,
        "status": {
            "targeted": summary["targeted"],
            "applied": summary[APPLIED] + summary[AVAILABLE],
            "available": summary[AVAILABLE],
            "failed": summary[FAILED],
            "pending": summary[PENDING],
            "clusters": clusters,
        },
    }


class WorksApi:
    """The handlers of ``/api/v1/works``, on the hub's store."""

    def __init__(self, store: Store, specs: SpecCache, *, clock: Callable[[], float] = time.time, max_body: int = MAX_BODY) -> None:
        self.store = store
        self.specs = specs
        self.clock = clock
        self.max_body = max_body

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self.list_works)
        app.router.add_post(PREFIX, self.create)
        app.router.add_get(PREFIX + "/{name}", self.get)
        app.router.add_put(PREFIX + "/{name}", self.put)
        app.router.add_delete(PREFIX + "/{name}", self.delete)

    async def list_works(self, request: web.Request) -> web.Response:
        works, statuses, clusters = await self.store.works(), await self.store.work_statuses(), await self.store.clusters()
        labels = await self.store.cluster_labels()
        items = [self._show(w, [s for s in statuses if s.work == w.name], clusters, labels) for w in works]
        return json_response({"apiVersion": API_VERSION, "kind": "WorkList", "metadata": {}, "items": items})

    async def get(self, request: web.Request) -> web.Response:
        work = await self._existing(request.match_info["name"])
        return json_response(await self._shown(work))

    async def create(self, request: web.Request) -> web.Response:
        name, spec = await self._body(request, None)
        try:
            work = await self.store.put_work(name, spec, by=caller_name(request), now=self.clock(), create=True)
        except WorkExists:
            raise ApiError(
                409, "AlreadyExists", f'works.{GROUP} "{name}" already exists: replace it with PUT {PREFIX}/{name} (fleetsync works apply)'
            ) from None
        await self.store.notify(WORKS_CHANNEL, name)
        return json_response(await self._shown(work), 201)

    async def put(self, request: web.Request) -> web.Response:
        name, spec = await self._body(request, request.match_info["name"])
        existed = await self.store.work(name) is not None
        work = await self.store.put_work(name, spec, by=caller_name(request), now=self.clock())
        await self.store.notify(WORKS_CHANNEL, name)
        return json_response(await self._shown(work), 200 if existed else 201)

    async def delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        work = await self._existing(name)
        shown = await self._shown(work)
        if not await self.store.delete_work(name):
            raise ApiError.not_found("works", name, GROUP)
        await self.store.notify(WORKS_CHANNEL, name)
        return json_response(shown)

    # ---- helpers --------------------------------------------------------------------------

    async def _existing(self, name: str) -> WorkRecord:
        if problem := name_problem(name):
            raise ApiError(422, "Invalid", problem)
        work = await self.store.work(name)
        if work is None:
            raise ApiError.not_found("works", name, GROUP)
        return work

    async def _shown(self, work: WorkRecord) -> dict[str, Any]:
        return self._show(work, await self.store.work_statuses(work=work.name), await self.store.clusters(), await self.store.cluster_labels())

    def _show(
        self, work: WorkRecord, statuses: list[WorkStatusRecord], clusters: list[ClusterRecord], labels: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]:
        """The work as the API shows it; the clusters it targets by the labels an admin set (``labels``), as the hub places it."""
        spec = self.specs.spec(work)
        targeted = [c.name for c in clusters if spec.placement.targets(c.name, labels.get(c.name, {}))]
        return work_json(work, orjson.loads(work.spec), statuses, targeted)

    async def _body(self, request: web.Request, name: str | None) -> tuple[str, bytes]:
        """The work in the request (JSON or YAML), validated: its name and stored spec."""
        if request.content_length is not None and request.content_length > self.max_body:
            raise ApiError(413, "RequestEntityTooLarge", f"the body is {request.content_length} bytes; a work request may have at most {self.max_body}")
        # read(n) returns what has arrived so far, not n bytes: gather the body chunk by chunk
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_body:
                raise ApiError(413, "RequestEntityTooLarge", f"the body is larger than {self.max_body} bytes, the most a work request may have")
            chunks.append(chunk)
        return work_from_body(b"".join(chunks), yaml_form="yaml" in request.content_type, name=name)


def work_from_body(raw: bytes, *, yaml_form: bool, name: str | None) -> tuple[str, bytes]:
    """A request body (YAML or JSON) as a valid work: its name and stored spec. Whatever the
    bytes, an ApiError: 400 if they do not parse, 422 naming each problem of the work."""
    form = "YAML" if yaml_form else "JSON"
    try:
        doc = yaml.load(raw, Loader=_NoAliasLoader) if yaml_form else orjson.loads(raw)  # a SafeLoader
        # as JSON, what is stored and sent: YAML's keys as strings (as kubectl takes them); no value
        # JSON cannot hold (binary, sets, integers beyond 64 bits), no nesting deeper than orjson writes
        doc = orjson.loads(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS))
    except (orjson.JSONDecodeError, yaml.YAMLError, TypeError, ValueError, RecursionError) as exc:
        raise ApiError.bad_request(f"the body is not valid {form} for a work: {exc}") from None
    try:
        work_name, spec = parse_work(doc, name=name)
    except WorkError as exc:
        raise ApiError.invalid(KIND, exc.name, exc.causes, GROUP) from None
    return work_name, spec.to_json()


#: Deepest nesting of a work's YAML (a Kubernetes object nests a few dozen levels at most).
#: PyYAML's scanner takes time quadratic in the depth of ``[``/``{`` nesting, and its
#: composer recurses: 2,000 levels (4 KB) took 2.8 s of the event loop; refused at this
#: depth, they take milliseconds.
MAX_YAML_DEPTH = 100


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a few hundred bytes of nested aliases expand to
    gigabytes (a "billion laughs"), and a work has no use for them; and no deeper than
    :data:`MAX_YAML_DEPTH`."""

    depth = 0

    def fetch_flow_collection_start(self, TokenClass: type[yaml.Token]) -> None:
        if self.flow_level >= MAX_YAML_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"YAML nested deeper than {MAX_YAML_DEPTH} levels is not accepted in a work", self.get_mark())  # type: ignore[no-untyped-call]
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not accepted in a work: write the value out", event.start_mark)
        if self.depth >= MAX_YAML_DEPTH:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, f"YAML nested deeper than {MAX_YAML_DEPTH} levels is not accepted in a work", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self.depth -= 1
