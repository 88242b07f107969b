"""The hub's HTTP API.

- ``GET /api/v1/clusters``: every cluster with status (active / inactive, and ``stale``
  when inactive), whether an agent is connected, last message, object counts, errors;
- ``POST /api/v1/clusters/{cluster}/resync[?type=T]``: ask its agent for a digest resync
  (a pull cluster: fetch its state now; 409 if a refresh of it is running already);
- ``GET /api/v1/events[?cluster=C&reason=R&since=ID&limit=N]``: cluster events; with
  ``watch=1``, a stream of them (one JSON object per line) as any replica records them;
- ``/clusters/{cluster}/api/...`` and ``/clusters/{cluster}/apis/...``: Kubernetes-compatible
  discovery, list (selectors, ``limit``/``continue``, server-side Tables), get and watch for
  every synced type, so ``kubectl --server http://HUB/clusters/c1 get pods -A`` works;
- ``/api/...`` and ``/apis/...``: the same across every cluster, each object labelled
  ``fleetsync.io/cluster``, with ``clusterSelector`` on the clusters' labels (names are per
  cluster, so a get by name needs the cluster path);
- ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus), ``/openapi.json`` (this API as an OpenAPI 3 document);
- ``/`` and ``/ui/...``: the web dashboard (``api/dashboard.py``), which calls this API with the user's token.

Every request but ``/healthz``, ``/livez``, ``/readyz`` and ``/openapi.json`` needs an API token
(``Authorization: Bearer``): role read for reads, admin for the rest (see ``api/auth.py``).

Reads of an inactive cluster carry a ``Warning`` header (kubectl prints it): the
objects are its last known state.

Object bodies are the agent's compressed JSON; they are decompressed and parsed only
to answer a read of them (which sets ``metadata.resourceVersion`` to the hub revision of
the object's last change, the same version its watch events carry) and never on apply.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ssl
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fleetsync import __version__
from fleetsync.api import auth, openapi
from fleetsync.api.auth import Authenticator
from fleetsync.api.dashboard import Dashboard
from fleetsync.api.gates import GatesApi
from fleetsync.api.servicegraph import ServiceGraphApi
from fleetsync.api.settings import SettingsApi
from fleetsync.api.watch import DEFAULT_TIMEOUT, ClusterSelection, RenderedObjects, WatchRequest, cluster_labels, store_filter
from fleetsync.api.works import WorksApi
from fleetsync.hub.core import HubCore, NotConnected
from fleetsync.hub.events import REASONS
from fleetsync.model import discovery
from fleetsync.model.objects import selectable_fields
from fleetsync.model.selectors import FieldSelector, LabelSelector, SelectorError
from fleetsync.model.status import ApiError
from fleetsync.model.tables import table
from fleetsync.model.types import HUB_TYPES, ISTIO_MESH, SERVICE_EDGE, ResourceType, TypeRegistry, UnknownResourceType
from fleetsync.protocol.codec import CodecError, body_json
from fleetsync.store.contract import ClusterRecord, EventRecord, ObjectRecord, StreamRecord
from fleetsync.web import JSON, json_response, serve, status_errors


def _encode_cursor(cluster: str, namespace: str, name: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([cluster, namespace, name])).decode()


def _decode_cursor(token: str) -> tuple[str, str, str]:
    try:
        cluster, namespace, name = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        return str(cluster), str(namespace), str(name)
    except (binascii.Error, ValueError, TypeError):
        raise ApiError.bad_request(f"continue key is not valid: {token!r} is not a token this hub issued") from None


#: The largest count a query parameter may give (a signed 64-bit integer, as Kubernetes and the stores count).
MAX_COUNT = 2**63 - 1


def _count(request: web.Request, name: str, default: int = 0) -> int:
    """A non-negative integer query parameter (ASCII digits: ``str.isdigit`` also takes ``²``, which ``int``
    refuses); ``default`` if it is not sent. Sent empty, it is refused like any other value that is not a count."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_COUNT:
        raise ApiError.bad_request(f"invalid {name} {raw!r}: must be a non-negative integer (at most {MAX_COUNT})")
    return int(raw)


def _cluster_selector(request: web.Request) -> LabelSelector | None:
    """A fleet-wide read's ``clusterSelector`` on the clusters' labels (agent metadata), e.g.
    ``region=eu,env!=dev``; None: every cluster."""
    raw = request.query.get("clusterSelector")
    if not raw:
        return None
    try:
        return LabelSelector.parse(raw)
    except SelectorError as exc:
        raise ApiError.bad_request(f"clusterSelector: {exc}") from None


def _flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter as Kubernetes clients send it (``1``, ``true``; Python clients send ``True``;
    ``0``, ``false``, or no parameter: false). Anything else, even an empty value, is refused rather than guessed."""
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw.lower() not in ("0", "1", "false", "true"):
        raise ApiError.bad_request(f"invalid {name} {raw!r}: must be true or false (or 1 or 0)")
    return raw.lower() in ("1", "true")


def _limit(request: web.Request) -> int:
    return _count(request, "limit")


def _event_item(e: EventRecord) -> dict[str, Any]:
    return {"id": e.id, "time": e.time, "cluster": e.cluster, "reason": e.reason, "type": e.type, "message": e.message, "hub": e.hub_id}


def _stale_warning(cluster: ClusterRecord) -> str:
    """A Kubernetes ``Warning`` header value (kubectl shows it) for reads of an inactive cluster."""
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cluster.last_seen)) if cluster.last_seen else "ever"
    return f'299 - "cluster {cluster.name} is inactive (no message from its agent since {since}): this is its last known state"'


def istio_summary(mesh: dict[str, Any] | None) -> dict[str, Any] | None:
    """What ``/api/v1/clusters`` shows of a cluster's IstioMesh object (None: its agent has not reported one)."""
    if mesh is None:
        return None
    spec = mesh.get("spec") or {}
    planes = [{k: c.get(k) for k in ("namespace", "revision", "version", "readyReplicas")} for c in spec.get("controlPlanes") or []]
    return {"controlPlanes": planes, "absentCrds": len((spec.get("crds") or {}).get("absent") or [])}


def service_graph_health(streams: list[StreamRecord]) -> dict[str, Any] | None:
    """The cluster's metrics provider as its agent reports it: None when the agent has none (it
    syncs no ServiceEdge), else whether its last collection worked and why not."""
    stream = next((s for s in streams if s.type == SERVICE_EDGE.gvk), None)
    if stream is None:
        return None
    return {"healthy": not stream.error, "error": stream.error}


class ApiServer:
    """The hub's HTTP API (HTTPS with ``ssl_context``); every request but the probes needs an API token."""

    def __init__(
        self,
        core: HubCore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: TypeRegistry | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.core = core
        self.store = core.store
        self.host = host
        self.port = port
        self.registry = registry or TypeRegistry(HUB_TYPES)
        self.ssl_context = ssl_context
        self.authenticator = Authenticator(core.store)
        self.gates = GatesApi(core.store)
        self.works = WorksApi(core.store, core.specs)
        self.settings = SettingsApi(core.store)
        self.servicegraph = ServiceGraphApi(core.store)
        self.dashboard = Dashboard()  # GET / and /ui/...: the web dashboard (docs/dashboard.md)
        self._runner: web.AppRunner | None = None
        self._openapi_document: dict[str, Any] | None = None  # built on first request
        self._rendered = RenderedObjects()  # each object's state rendered once for every read
        self._streams: set[asyncio.Task[Any]] = set()  # open watches, which stop() ends

    @property
    def url(self) -> str:
        """Where the API answers (once started)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}"

    def app(self) -> web.Application:
        # outermost first: Kubernetes Status for failures, microcluster's shape under /1.0/, then the token
        app = web.Application(middlewares=[status_errors, GatesApi.middleware, auth.middleware(self.authenticator)])
        self.gates.add_routes(app)
        self.works.add_routes(app)
        self.settings.add_routes(app)
        self.servicegraph.add_routes(app)
        self.dashboard.add_routes(app)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/api/v1/clusters", self._clusters)
        app.router.add_post("/api/v1/clusters/{cluster}/resync", self._resync)
        app.router.add_get("/api/v1/events", self._events)
        app.router.add_get(r"/clusters/{cluster}/{tail:[\s\S]*}", self._kube)  # any path, also with a (decoded) newline in it
        # The whole fleet as one API server (after the fleetsync routes above, which win):
        # lists and watches across clusters, each object labelled with its cluster.
        for path in ("/version", "/api", "/apis", r"/api/{tail:[\s\S]*}", r"/apis/{tail:[\s\S]*}"):
            app.router.add_get(path, self._fleet)
        return app

    async def start(self) -> None:
        # handler_cancellation: a watch whose client went away ends now, not at its next write
        self._runner, self.port = await serve(self.app(), self.host, self.port, ssl_context=self.ssl_context, handler_cancellation=True)

    async def stop(self) -> None:
        """Stop serving; open watches end (their clients reconnect, to another replica or later)."""
        for task in list(self._streams):
            task.cancel()
        if self._runner:
            await self._runner.cleanup()

    async def _streaming(self, response: Awaitable[web.StreamResponse]) -> web.StreamResponse:
        """Serve a long-lived response (a watch) that :meth:`stop` can end."""
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            return await response
        finally:
            self._streams.discard(task)

    # ---- plain endpoints -------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            await self.store.current_rev()
        except Exception as exc:
            return web.Response(status=503, text=f"store not ready: {exc}")
        if self.core.starting:
            return web.Response(status=503, text="starting: " + "; ".join(f"{what}: {why}" for what, why in self.core.starting.items()))
        return web.Response(text="ok")

    async def _openapi(self, request: web.Request) -> web.Response:
        """This API's OpenAPI 3 document (built once, from the registry's types)."""
        if self._openapi_document is None:
            self._openapi_document = openapi.document(self.registry)
        return json_response(self._openapi_document)

    async def _metrics(self, request: web.Request) -> web.Response:
        clusters = await self.store.clusters()
        counts = await self.store.counts_by_cluster()
        for cluster in clusters:
            self.core.metrics.objects.labels(cluster.name).set(sum(counts.get(cluster.name, {}).values()))
        self.core.metrics.inactive.set(sum(c.status == "inactive" for c in clusters))
        return web.Response(body=generate_latest(self.core.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _clusters(self, request: web.Request) -> web.Response:
        now = self.core.clock()
        connected = {lease.cluster for lease in await self.store.leases() if lease.connected and lease.expires_at > now}
        items = []
        meshes = {r.cluster: orjson.loads(body_json(r.body, r.compression)) for r in await self.store.list_objects(ISTIO_MESH.gvk)}
        # a few queries for the whole fleet, not a few per cluster (a dashboard reads this often)
        counts = await self.store.counts_by_cluster()
        gates_current = max((g.revision for g in await self.store.gates(since=0)), default=0)
        gates_applied = await self.store.gates_applied()
        all_streams: dict[str, list[StreamRecord]] = {}
        for stream in await self.store.streams(None):
            all_streams.setdefault(stream.cluster, []).append(stream)
        for c in await self.store.clusters():
            streams = all_streams.get(c.name, [])
            items.append(
                {
                    "name": c.name,
                    "status": c.status,
                    "stale": c.status == "inactive",
                    "connected": c.name in connected,
                    "agent": c.agent_id,
                    "incarnation": c.incarnation,
                    "hub": c.hub_id,
                    "connectedAt": c.connected_at,
                    "lastHeartbeat": c.last_seen,  # the last message of any kind
                    "metadata": dict(c.metadata),
                    "objects": counts.get(c.name, {}),
                    "types": sorted(s.type for s in streams),
                    "errors": {s.type: s.error for s in streams if s.error},
                    "istio": istio_summary(meshes.get(c.name)),
                    "serviceGraph": service_graph_health(streams),
                    # the gate snapshot its agent's local config reflects, against the fleet's newest
                    "gates": {"applied": gates_applied.get(c.name), "current": gates_current},
                }
            )
        return json_response({"kind": "ClusterList", "apiVersion": "fleetsync.io/v1", "items": items})

    async def _cluster(self, name: str) -> ClusterRecord:
        found = await self.store.cluster(name)
        if found is None:
            raise ApiError(404, "NotFound", f'cluster "{name}" is not known to this hub')
        return found

    async def _resync(self, request: web.Request) -> web.Response:
        cluster = (await self._cluster(request.match_info["cluster"])).name
        type_ = None
        if "type" in request.query:  # sent empty, it names no type: refused
            try:
                type_ = self.registry.resolve(request.query["type"]).gvk
            except UnknownResourceType as exc:
                raise ApiError.bad_request(f"type: {exc}") from None
        pull = next((t for t in await self.store.refresh_targets(cluster) if t.mode == "pull"), None)
        if pull is not None:  # no agent to ask: fetch its state now
            if not await self.core.refresh.refresh(pull, why="on-demand"):
                raise ApiError(409, "Conflict", f"a refresh of pull cluster {cluster} is running already (on this or another hub replica); try again later")
            return json_response(
                {"kind": "ResyncRequest", "apiVersion": "fleetsync.io/v1", "cluster": cluster, "type": "", "message": f"state pulled from {pull.url}"}
            )
        try:
            replica = await self.core.request_resync(cluster, type_, reason="requested through the API")
        except NotConnected:
            raise ApiError(
                409,
                "Conflict",
                f"cluster {cluster} has no agent connected to any hub replica: nothing to resync now (a cluster is resynced by digest when its agent reconnects)",
            ) from None
        what = type_ or "every type"
        return json_response(
            {
                "kind": "ResyncRequest",
                "apiVersion": "fleetsync.io/v1",
                "cluster": cluster,
                "type": type_ or "",
                "message": f"digest resync of {what} requested"
                + ("" if replica == self.core.settings.hub_id else f" through hub replica {replica}, which its agent is connected to"),
            },
            status=202,
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        reason = request.query.get("reason")
        if reason is not None and reason not in REASONS:
            raise ApiError.bad_request(f"unknown event reason {reason!r}: one of {', '.join(REASONS)}")
        since = _count(request, "since") if "since" in request.query else None
        limit = _count(request, "limit", 100)
        if not 0 < limit <= 10_000:
            raise ApiError.bad_request(f"invalid limit {limit}: must be between 1 and 10000")
        cluster = request.query.get("cluster") or None
        timeout = float(_count(request, "timeoutSeconds")) or 1800.0
        if _flag(request, "watch"):
            return await self._streaming(self._watch_events(request, cluster=cluster, reason=reason, since=since, timeout=timeout))
        records = await self.store.events(cluster=cluster, reason=reason, after=since, limit=limit)
        return json_response({"kind": "EventList", "apiVersion": "fleetsync.io/v1", "items": [_event_item(e) for e in records]})

    async def _watch_events(self, request: web.Request, *, cluster: str | None, reason: str | None, since: int | None, timeout: float) -> web.StreamResponse:
        """Events as they are recorded by any replica, one JSON object per line, after ``since``
        (default: from now). Ends after ``timeout`` (``timeoutSeconds``, default 1800); a client resumes with ``since``."""
        if since is None:
            newest = await self.store.events(limit=1)
            since = newest[-1].id if newest else 0
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    # past the filtered ones too, so that a quiet filter does not re-read the same events
                    batch = await self.store.events(after=since, limit=500)
                    for event in batch:
                        since = event.id
                        if (cluster is None or event.cluster == cluster) and (reason is None or event.reason == reason):
                            await response.write(orjson.dumps(_event_item(event)) + b"\n")
                    if len(batch) < 500:
                        await self.core.wait_for_events(since, timeout=1.0)  # woken by the store's notification; 1 s in case it is lost
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    # ---- Kubernetes-compatible reads ---------------------------------------------------------

    async def _kube(self, request: web.Request) -> web.StreamResponse:
        record = await self._cluster(request.match_info["cluster"])
        response = await self._kube_read(request, record.name, request.match_info["tail"])
        if record.status == "inactive" and not response.prepared:  # a watch has sent its headers already
            response.headers["Warning"] = _stale_warning(record)
        return response

    async def _fleet(self, request: web.Request) -> web.StreamResponse:
        """``/api/...`` and ``/apis/...`` across every cluster (``kubectl --server http://HUB get pods -A``)."""
        return await self._kube_read(request, None, request.path)

    async def _kube_read(self, request: web.Request, cluster: str | None, tail: str) -> web.StreamResponse:
        parts = [p for p in tail.split("/") if p]
        if parts == ["version"]:
            return json_response(discovery.version_info(f"v1.36.0-fleetsync-hub-{__version__}"))
        if parts == ["api"]:
            return json_response(discovery.api_versions())
        if parts == ["apis"]:
            return json_response(discovery.api_group_list(self.registry.groups()))
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        elif len(parts) == 2 and parts[0] == "apis" and parts[1] in self.registry.groups():
            return json_response(discovery.api_group(parts[1], self.registry.groups()[parts[1]]))
        else:
            raise ApiError.path_not_found(request.path)
        if not rest:
            types = self.registry.in_group_version(group, version)
            if not types:
                raise ApiError.path_not_found(request.path)
            return json_response(discovery.api_resource_list(group, version, types, read_only=True))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        rtype = self.registry.by_path(group, version, rest[0])
        if rtype is None or len(rest) > 2 or (namespace and not rtype.namespaced):
            raise ApiError.path_not_found(request.path)
        if len(rest) == 2:
            if cluster is None:
                raise ApiError.bad_request(
                    f"names are per cluster: get {rtype.plural} {rest[1]!r} through /clusters/CLUSTER{request.path}, "
                    f"or list across clusters with a fieldSelector metadata.name={rest[1]}"
                )
            record = await self.store.get_object(cluster, rtype.gvk, namespace or "", rest[1])
            if record is None:
                raise ApiError.not_found(rtype.plural, rest[1], rtype.group)
            encoded = self._render(record)
            if "as=Table" in request.headers.get("Accept", ""):
                return json_response(table(rtype.kind, [orjson.loads(encoded)], include_object=request.query.get("includeObject", "Metadata")))
            return web.Response(body=encoded, content_type=JSON)
        return await self._list(request, cluster, rtype, namespace)

    def _render(self, record: ObjectRecord, *, fleet: bool = False) -> bytes:
        """The stored object's JSON as a read shows it (rendered once per state, see RenderedObjects)."""
        try:
            return self._rendered.get(record, fleet=fleet)
        except CodecError as exc:
            raise ApiError(500, "InternalError", f"stored body of {record.cluster}/{record.type}/{record.key} is unreadable: {exc}") from None

    async def _list(self, request: web.Request, cluster: str | None, rtype: ResourceType, namespace: str | None) -> web.StreamResponse:
        try:
            labels = LabelSelector.parse(request.query.get("labelSelector"))
            fields = FieldSelector.parse(request.query.get("fieldSelector"), allowed=rtype.field_selector_keys)
        except SelectorError as exc:
            raise ApiError.bad_request(str(exc)) from None
        fleet = cluster is None
        cluster_selector = _cluster_selector(request) if fleet else None
        # every parameter's value is checked, also of those this request does not use (a bad timeoutSeconds on a list is refused too)
        watching, bookmarks = _flag(request, "watch"), _flag(request, "allowWatchBookmarks")
        timeout = float(_count(request, "timeoutSeconds")) or DEFAULT_TIMEOUT
        limit = _limit(request)
        token = request.query.get("continue")
        after = _decode_cursor(token) if token else None
        if watching:
            watch = WatchRequest(
                store=self.store,
                feed=self.core.feed,
                rtype=rtype,
                cluster=cluster,
                clusters=ClusterSelection(cluster_selector, self.core.cluster_labels) if cluster_selector else None,
                namespace=namespace,
                labels=labels,
                fields=fields,
                bookmarks=bookmarks,
                rendered=self._rendered,
            )
            return await self._streaming(watch.serve(request, resource_version=request.query.get("resourceVersion", ""), timeout=timeout))
        clusters = {c.name for c in await self.store.clusters() if cluster_selector.matches(c.metadata)} if cluster_selector else None
        rev = await self.store.current_rev()
        items: list[bytes] = []
        last: ObjectRecord | None = None
        more = False
        batch = max(limit, 500)
        equal, only = store_filter(labels, fleet=fleet)  # the store skips what cannot match
        while True:
            records = await self.store.list_objects(rtype.gvk, cluster=cluster or only, namespace=namespace, after=after, limit=batch, labels=equal)
            for record in records:
                if clusters is not None and record.cluster not in clusters:
                    continue
                if not labels.matches(cluster_labels(record) if fleet else record.labels):
                    continue
                encoded = self._render(record, fleet=fleet)
                if not fields.empty and not fields.matches(selectable_fields(rtype, orjson.loads(encoded))):
                    continue
                if limit and len(items) >= limit:
                    more = True
                    break
                items.append(encoded)
                last = record
            if more or len(records) < batch:
                break
            tail = records[-1]
            after = (tail.cluster, tail.namespace, tail.name)
        meta: dict[str, Any] = {"resourceVersion": str(rev)}
        if more and last is not None:
            meta["continue"] = _encode_cursor(last.cluster, last.namespace, last.name)
        if "as=Table" in request.headers.get("Accept", ""):
            return json_response(
                table(
                    rtype.kind,
                    [orjson.loads(item) for item in items],
                    resource_version=str(rev),
                    continue_token=meta.get("continue"),
                    include_object=request.query.get("includeObject", "Metadata"),
                )
            )
        head = orjson.dumps({"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta})
        return web.Response(body=b"".join((head[:-1], b',"items":[', b",".join(items), b"]}")), content_type=JSON)
