"""The hub's HTTP API.

- ``GET /api/v1/clusters``: every cluster with status (active / inactive, and ``stale``
  when inactive), whether an agent is connected, last message, object counts, errors;
- ``GET``/``PATCH /api/v1/clusters/{cluster}/labels``: the labels an admin sets on a cluster,
  which placement and ``clusterSelector`` match (``api/clusterlabels.py``);
- ``POST /api/v1/clusters/{cluster}/resync[?type=T]``: ask its agent for a digest resync
  (a pull cluster: fetch its state now; 409 if a refresh of it is running already);
- ``GET /apis/fleetsync.io/v1/fleetsyncevents[?cluster=C&reason=R&since=ID&limit=N]``: fleetsync's
  events; with ``watch=1``, a stream of them (one JSON object per line) as any replica records
  them (``api/events.py``; ``/api/v1/events`` is the clusters' own Kubernetes Events);
- ``/apis/fleetsync.io/v1/clusters[/NAME]``: every cluster as a ``Cluster`` object, and
  ``DELETE`` of one (``api/clusters.py``);
- ``/clusters/{cluster}/api/...`` and ``/clusters/{cluster}/apis/...``: Kubernetes-compatible
  discovery, list (selectors, ``limit``/``continue``, server-side Tables), get and watch for
  every synced type, so ``kubectl --server http://HUB/clusters/c1 get pods -A`` works;
- ``/api/...`` and ``/apis/...``: the same across every cluster, each object labelled
  ``fleetsync.io/cluster`` (and, in Tables, a ``Cluster`` column), with ``clusterSelector`` on the
  clusters' admin-set labels (names are per cluster, so a get by name needs the cluster path);
- ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus), ``/openapi.json`` (this API as an OpenAPI 3 document);
- ``/`` and ``/ui/...``: the web dashboard (``api/dashboard.py``), which calls this API with the user's token.

Every request but ``/healthz``, ``/livez``, ``/readyz`` and ``/openapi.json`` needs an API token
(``Authorization: Bearer``): role read for reads, admin for the rest (see ``api/auth.py``). A
scoped read token sees only its clusters, namespaces and types (``api/scope.py``).

Reads of an inactive cluster carry a ``Warning`` header (kubectl prints it): the
objects are its last known state.

Object bodies are the agent's compressed JSON; they are checked once when applied (each
must be a JSON object, see ``protocol/bodies.py``), and decompressed and parsed to answer a
read of them (which sets ``metadata.resourceVersion`` to the hub revision of the object's
last change, the same version its watch events carry). A stored body that is not a JSON
object anyway is left out of every read, with a warning in the log and, for lists, in a
``Warning`` header: one bad row never fails a read for everyone.

Every query parameter is checked before anything is read or streamed: a bad value is a 400
``Status`` naming the parameter, never a 500 or a watch cut by a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fleetsync import __version__
from fleetsync.api import auth, openapi, params
from fleetsync.api.auth import Authenticator
from fleetsync.api.clusterlabels import ClusterLabelsApi
from fleetsync.api.clusters import ClustersApi
from fleetsync.api.dashboard import Dashboard
from fleetsync.api.events import GROUP as FLEETSYNC_GROUP
from fleetsync.api.events import EventsApi
from fleetsync.api.gates import GatesApi
from fleetsync.api.limits import ConnectionGuard, ConnectionMetrics, GuardedSite, HttpLimits
from fleetsync.api.scope import Scopes, forbidden, scope_of
from fleetsync.api.servicegraph import ServiceGraphApi
from fleetsync.api.settings import SettingsApi
from fleetsync.api.watch import DEFAULT_TIMEOUT, ClusterSelection, RenderedObjects, WatchRequest
from fleetsync.api.works import WorksApi
from fleetsync.hub.core import HubCore, NotConnected
from fleetsync.model import discovery
from fleetsync.model.selection import ObjectSelection
from fleetsync.model.selectors import FieldSelector, LabelSelector, SelectorError
from fleetsync.model.status import ApiError
from fleetsync.model.tables import table
from fleetsync.model.types import HUB_TYPES, ISTIO_MESH, SERVICE_EDGE, ResourceType, TypeRegistry, UnknownResourceType
from fleetsync.protocol.bodies import UnreadableBody, stored_object
from fleetsync.store.contract import ClusterRecord, ObjectRecord, StreamRecord
from fleetsync.web import JSON, json_response, status_errors


def _skipped_warning(skipped: int) -> str:
    """A Kubernetes ``Warning`` header value (kubectl prints it) for a read that left objects out."""
    return f'299 - "{skipped} object(s) left out: their stored body is not a JSON object (see the hub\'s log)"'


def _stale_warning(cluster: ClusterRecord) -> str:
    """A Kubernetes ``Warning`` header value (kubectl shows it) for reads of an inactive cluster."""
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cluster.last_seen)) if cluster.last_seen else "ever"
    return f'299 - "cluster {cluster.name} is inactive (no message from its agent since {since}): this is its last known state"'


def istio_summary(mesh: dict[str, Any] | None) -> dict[str, Any] | None:
    """What ``/api/v1/clusters`` shows of a cluster's IstioMesh object (None: its agent has not reported one)."""
    if mesh is None:
        return None
    spec = _dict_of(mesh.get("spec"))
    planes = [{k: c.get(k) for k in ("namespace", "revision", "version", "readyReplicas")} for c in _list_of(spec.get("controlPlanes")) if isinstance(c, dict)]
    crds = _dict_of(spec.get("crds"))
    return {"controlPlanes": planes, "absentCrds": len(_list_of(crds.get("absent")))}


def _dict_of(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else {} (an agent's object may have any shape)."""
    return value if isinstance(value, dict) else {}


def _list_of(value: Any) -> list[Any]:
    """``value`` if it is a list, else [] (an agent's object may have any shape)."""
    return value if isinstance(value, list) else []


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
        limits: HttpLimits | None = None,
    ) -> None:
        self.core = core
        self.limits = limits or HttpLimits()
        self.connections = ConnectionGuard(self.limits)
        core.metrics.registry.register(ConnectionMetrics(self.connections))
        self.store = core.store
        self.host = host
        self.port = port
        self.registry = registry or TypeRegistry(HUB_TYPES)
        self.ssl_context = ssl_context
        self.authenticator = Authenticator(core.store)
        self.gates = GatesApi(core.store, deployment_type=core.settings.deployment_type)
        self.works = WorksApi(core.store, core.specs, max_body=self.limits.max_body_bytes)
        self.settings = SettingsApi(core.store)
        self.cluster_labels = ClusterLabelsApi(core.store, clock=core.clock)
        self.scopes = Scopes(core.cluster_labels)  # what a scoped read token may see
        self.servicegraph = ServiceGraphApi(core.store, self.scopes)
        self.clusters = ClustersApi(core, self._streaming, self.scopes)
        self.events = EventsApi(core, self._streaming, self.scopes)
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
        app = web.Application(middlewares=[status_errors, GatesApi.middleware, auth.middleware(self.authenticator)], client_max_size=self.limits.max_body_bytes)
        self.gates.add_routes(app)
        self.works.add_routes(app)
        self.settings.add_routes(app)
        self.cluster_labels.add_routes(app)
        self.servicegraph.add_routes(app)
        self.clusters.add_routes(app)
        self.events.add_routes(app)
        self.dashboard.add_routes(app)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/api/v1/clusters", self._clusters)
        app.router.add_post("/api/v1/clusters/{cluster}/resync", self._resync)
        app.router.add_get(r"/clusters/{cluster}/{tail:[\s\S]*}", self._kube)  # any path, also with a (decoded) newline in it
        # The whole fleet as one API server (after the fleetsync routes above, which win):
        # lists and watches across clusters, each object labelled with its cluster.
        for path in ("/version", "/api", "/apis", r"/api/{tail:[\s\S]*}", r"/apis/{tail:[\s\S]*}"):
            app.router.add_get(path, self._fleet)
        return app

    async def start(self) -> None:
        # handler_cancellation: a watch whose client went away ends now, not at its next write;
        # keepalive_timeout: aiohttp closes a connection with no request in progress after it
        runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True, keepalive_timeout=self.limits.idle_timeout)
        await runner.setup()
        site = GuardedSite(runner, self.host, self.port, guard=self.connections, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self.port = runner, site.port

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
        meshes = {}
        for record in await self.store.list_objects(ISTIO_MESH.gvk):
            with contextlib.suppress(UnreadableBody):  # not a JSON object: shown as no mesh reported (reads of it warn)
                meshes[record.cluster] = stored_object(record.body, record.compression)
        # a few queries for the whole fleet, not a few per cluster (a dashboard reads this often)
        counts = await self.store.counts_by_cluster()
        gates_current = max((g.revision for g in await self.store.gates(since=0)), default=0)
        gates_applied = await self.store.gates_applied()
        labels = await self.store.cluster_labels()
        all_streams: dict[str, list[StreamRecord]] = {}
        for stream in await self.store.streams(None):
            all_streams.setdefault(stream.cluster, []).append(stream)
        scope = scope_of(request)
        in_scope = await self.scopes.clusters(scope)
        for c in await self.store.clusters():
            if in_scope is not None and c.name not in in_scope:
                continue
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
                    "labels": labels.get(c.name, {}),  # set by an admin: what placement and clusterSelector match
                    "metadata": dict(c.metadata),  # as its agent reported it (never trusted for placement)
                    "objects": {t: n for t, n in counts.get(c.name, {}).items() if scope is None or scope.types is None or t in scope.types},
                    "types": sorted(s.type for s in streams if scope is None or scope.types is None or s.type in scope.types),
                    "errors": {s.type: s.error for s in streams if s.error and (scope is None or scope.types is None or s.type in scope.types)},
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
                type_ = (await self.core.types.current()).resolve(request.query["type"]).gvk
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

    # ---- Kubernetes-compatible reads ---------------------------------------------------------

    async def _kube(self, request: web.Request) -> web.StreamResponse:
        await self.scopes.check_cluster(request, scope_of(request), request.match_info["cluster"])  # before telling whether it exists
        record = await self._cluster(request.match_info["cluster"])
        response = await self._kube_read(request, record.name, request.match_info["tail"])
        if record.status == "inactive" and not response.prepared:  # a watch has sent its headers already
            response.headers["Warning"] = _stale_warning(record)
        return response

    async def _fleet(self, request: web.Request) -> web.StreamResponse:
        """``/api/...`` and ``/apis/...`` across every cluster (``kubectl --server http://HUB get pods -A``)."""
        return await self._kube_read(request, None, request.path)

    async def _kube_read(self, request: web.Request, cluster: str | None, tail: str) -> web.StreamResponse:
        registry = await self.core.types.current()  # the fixed types and every one an agent reported
        parts = [p for p in tail.split("/") if p]
        if parts == ["version"]:
            return json_response(discovery.version_info(f"v1.36.0-fleetsync-hub-{__version__}"))
        if parts == ["api"]:
            return json_response(discovery.api_versions())
        if parts == ["apis"]:
            return json_response(discovery.api_group_list({**registry.groups(), FLEETSYNC_GROUP: ["v1"]}))
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        elif len(parts) == 2 and parts[0] == "apis" and parts[1] in registry.groups():
            return json_response(discovery.api_group(parts[1], registry.groups()[parts[1]]))
        else:
            raise ApiError.path_not_found(request.path)
        if not rest:
            types = registry.in_group_version(group, version)
            if not types:
                raise ApiError.path_not_found(request.path)
            return json_response(discovery.api_resource_list(group, version, types, read_only=True))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        rtype = registry.by_path(group, version, rest[0])
        if rtype is None or len(rest) > 2 or (namespace and not rtype.namespaced):
            raise ApiError.path_not_found(request.path)
        self.scopes.check_read(request, scope_of(request), rtype, namespace)
        if len(rest) == 2:
            if cluster is None:
                raise ApiError.bad_request(
                    f"names are per cluster: get {rtype.plural} {rest[1]!r} through /clusters/CLUSTER{request.path}, "
                    f"or list across clusters with a fieldSelector metadata.name={rest[1]}"
                )
            record = await self.store.get_object(cluster, rtype.gvk, namespace or "", rest[1])
            if record is not None and (scope := scope_of(request)) is not None and not scope.admits_namespace(record.namespace):
                raise forbidden(request, scope, f"namespace {record.namespace or '(none)'}")
            if record is None:
                raise ApiError.not_found(rtype.plural, rest[1], rtype.group)
            encoded = self._rendered.get(record, fleet=False)
            if encoded is None:  # as lists and watches leave it out
                raise ApiError(
                    404,
                    "NotFound",
                    f'{rtype.plural} "{rest[1]}" cannot be shown: its stored body is not a JSON object (see the hub\'s log); '
                    "it is shown again once its agent sends it anew",
                    details={"name": rest[1], "group": rtype.group, "kind": rtype.plural},
                )
            if "as=Table" in request.headers.get("Accept", ""):
                return json_response(
                    table(rtype.kind, [orjson.loads(encoded)], include_object=params.include_object(request.query), printer_columns=rtype.printer_columns)
                )
            return web.Response(body=encoded, content_type=JSON)
        return await self._list(request, cluster, rtype, namespace)

    async def _list(self, request: web.Request, cluster: str | None, rtype: ResourceType, namespace: str | None) -> web.StreamResponse:
        try:
            labels = LabelSelector.parse(request.query.get("labelSelector"))
            fields = FieldSelector.parse(request.query.get("fieldSelector"), allowed=rtype.field_selector_keys)
        except SelectorError as exc:
            raise ApiError.bad_request(str(exc)) from None
        fleet = cluster is None
        cluster_selector = params.cluster_selector(request.query) if fleet else None
        scope = scope_of(request)
        # every parameter's value is checked, also of those this request does not use (a bad timeoutSeconds on a list is refused too)
        watching, bookmarks = params.flag(request.query, "watch"), params.flag(request.query, "allowWatchBookmarks")
        timeout = float(params.count(request.query, "timeoutSeconds")) or DEFAULT_TIMEOUT
        limit = params.count(request.query, "limit")
        resource_version = params.resource_version(request.query)
        include_object = params.include_object(request.query)
        token = request.query.get("continue")
        after = params.decode_cursor(token) if token else None
        if watching:
            watch = WatchRequest(
                store=self.store,
                feed=self.core.feed,
                rtype=rtype,
                cluster=cluster,
                # a scoped token's watch follows its clusters' labels, of one cluster too: one leaving the scope ends it (410)
                clusters=ClusterSelection(cluster_selector, self.core.cluster_labels, scope=scope, only=cluster)
                if cluster_selector or (scope is not None and scope.limits_clusters)
                else None,
                namespace=namespace,
                namespaces=scope.namespaces if scope is not None and namespace is None else None,
                labels=labels,
                fields=fields,
                bookmarks=bookmarks,
                rendered=self._rendered,
            )
            return await self._streaming(watch.serve(request, resource_version=resource_version, timeout=timeout))
        clusters = (
            {name for name, labels in (await self.core.cluster_labels.current()).items() if cluster_selector.matches(labels)} if cluster_selector else None
        )
        if fleet and (in_scope := await self.scopes.clusters(scope)) is not None:  # the scope's clusters are a condition of the query
            clusters = set(in_scope) if clusters is None else clusters & in_scope
        namespaces = scope.namespaces if scope is not None and namespace is None else None
        rev = await self.store.current_rev()
        items: list[bytes] = []
        last: ObjectRecord | None = None
        more = False
        batch = max(limit, 500)
        skipped = 0
        selection = ObjectSelection(rtype, labels, fields, fleet=fleet)  # as a watch with the same selectors selects
        equal, only = selection.store_filter()  # the store skips what cannot match
        while True:
            records = await self.store.list_objects(
                rtype.gvk, cluster=cluster or only, namespace=namespace, after=after, limit=batch, labels=equal, clusters=clusters, namespaces=namespaces
            )
            for record in records:
                if clusters is not None and record.cluster not in clusters:
                    continue
                if not selection.admits_labels(record):
                    continue
                encoded = self._rendered.get(record, fleet=fleet)
                if encoded is None:
                    skipped += 1
                    continue
                if not selection.admits_rendering(encoded):
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
            meta["continue"] = params.encode_cursor(last.cluster, last.namespace, last.name)
        warning = {"Warning": _skipped_warning(skipped)} if skipped else None
        if "as=Table" in request.headers.get("Accept", ""):
            return json_response(
                table(
                    rtype.kind,
                    [orjson.loads(item) for item in items],
                    resource_version=str(rev),
                    continue_token=meta.get("continue"),
                    include_object=include_object,
                    fleet=fleet,
                    printer_columns=rtype.printer_columns,
                ),
                headers=warning,
            )
        head = orjson.dumps({"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta})
        return web.Response(body=b"".join((head[:-1], b',"items":[', b",".join(items), b"]}")), content_type=JSON, headers=warning)
