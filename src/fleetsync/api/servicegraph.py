"""``GET /api/v1/servicegraph``: the mesh's service graph, merged across clusters.

Query: ``cluster=C`` (repeat it, or comma-separate, for several; none: every cluster) and
``namespace=NS`` (edges from or to services of that namespace). The answer::

    {"kind": "ServiceGraph", "clusters": ["c1", "c2"], "window": 300,
     "nodes": [{"service": "cart", "namespace": "shop", "clusters": [...], "requestRateIn": 12.5, "requestRateOut": 3.0}],
     "edges": [{"source": {...}, "destination": {...}, "clusters": [...], "requests": 3750.0,
                "requestRate": 12.5, "errorRate": 0.012, "latencyMs": {"p50": 21.3, "p90": 88.0, "p99": 240.1},
                "collectedAt": "..."}],
     "errors": {"c3": "prometheus http://...: ..."}}

An edge seen in several clusters is one edge: request and error counts and latency
histogram buckets are added, then rates and percentiles are computed from the sums
(:mod:`fleetsync.model.servicegraph`). ``errors`` are the clusters whose metrics provider
currently fails (their last collected edges are still shown).

A scoped read token (``api/scope.py``) sees only its clusters, and with namespaces in its
scope only edges both of whose ends are in them; a cluster or namespace asked for outside
its scope is 403, and so is the whole graph for a token whose types leave ServiceEdge out.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from fleetsync.api.scope import Scopes, scope_of
from fleetsync.model.names import check_cluster_name
from fleetsync.model.servicegraph import merge_edges
from fleetsync.model.status import ApiError
from fleetsync.model.types import SERVICE_EDGE
from fleetsync.protocol.bodies import UnreadableBody, stored_object
from fleetsync.store.contract import Store
from fleetsync.web import json_response

log = logging.getLogger(__name__)

PATH = "/api/v1/servicegraph"


class ServiceGraphApi:
    def __init__(self, store: Store, scopes: Scopes) -> None:
        self.store = store
        self.scopes = scopes

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.graph)

    async def graph(self, request: web.Request) -> web.Response:
        wanted: list[str] = []
        for value in request.query.getall("cluster", []):
            for name in (part.strip() for part in value.split(",")):
                try:
                    wanted.append(check_cluster_name(name))
                except ValueError as exc:
                    raise ApiError.bad_request(f"cluster: {exc}") from None
        namespace = request.query.get("namespace")
        if namespace is not None and not namespace:
            raise ApiError.bad_request("namespace: give a namespace, or leave the parameter out for every namespace")
        scope = scope_of(request)
        if scope is not None:
            Scopes.check_read(request, scope, SERVICE_EDGE, namespace)
            for name in wanted:
                await self.scopes.check_cluster(request, scope, name)
        known = {c.name for c in await self.store.clusters()}
        if (in_scope := await self.scopes.clusters(scope)) is not None:
            known &= in_scope
        if unknown := sorted(set(wanted) - known):
            raise ApiError(404, "NotFound", f"cluster {', '.join(repr(u) for u in unknown)} is not known to this hub")
        clusters = sorted(set(wanted)) or sorted(known)
        records = []
        namespaces = scope.namespaces if scope is not None else None
        for cluster in clusters if wanted else [None]:
            records.extend(await self.store.list_objects(SERVICE_EDGE.gvk, cluster=cluster, clusters=in_scope, namespaces=namespaces))
        pairs = []
        for record in records:
            try:
                obj = stored_object(record.body, record.compression)
            except UnreadableBody as exc:  # left out, as every read leaves it out
                log.warning("cluster %s: the stored body of %s %s is %s; the service graph leaves it out", record.cluster, record.type, record.key, exc)
                continue
            spec = obj.get("spec") or {}
            ends = ((spec.get("source") or {}).get("namespace"), (spec.get("destination") or {}).get("namespace"))
            if namespace and namespace not in ends:
                continue
            if namespaces is not None and not all(end in namespaces for end in ends):  # an edge to a service outside the scope would name it
                continue
            pairs.append((record.cluster, obj))
        edges = [edge.summary() for edge in merge_edges(pairs)]
        shown = set(clusters)
        errors = {s.cluster: s.error for s in await self.store.streams(None) if s.type == SERVICE_EDGE.gvk and s.error and s.cluster in shown}
        return json_response(
            {
                "kind": "ServiceGraph",
                "apiVersion": "fleetsync.io/v1",
                "clusters": clusters,
                "namespace": namespace or "",
                "window": max((e["window"] for e in edges), default=0),
                "nodes": _nodes(edges),
                "edges": edges,
                "errors": errors,
            }
        )


def _nodes(edges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every service an edge starts or ends at, with its request rates in and out."""
    nodes: dict[tuple[str, str], dict[str, Any]] = {}
    for edge in edges:
        for end, rate_field in (("source", "requestRateOut"), ("destination", "requestRateIn")):
            key = (edge[end]["service"], edge[end]["namespace"])
            node = nodes.setdefault(key, {"service": key[0], "namespace": key[1], "clusters": set(), "requestRateIn": 0.0, "requestRateOut": 0.0})
            node["clusters"].update(edge["clusters"])
            node[rate_field] += edge["requestRate"]
    return [{**n, "clusters": sorted(n["clusters"])} for _, n in sorted(nodes.items())]
