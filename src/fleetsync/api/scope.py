"""A scoped read token's scope, applied to the API's reads (the rules are in ``model/scope.py``).

Reads narrow what they select to the scope *in the store query* (the clusters and namespaces
in scope are conditions of the query, walked on the objects index), never by reading
everything and dropping what is outside: a token scoped to one cluster of a million-object
fleet reads that cluster's rows only. A watch checks each change against precompiled sets.

Anything named explicitly that is outside the scope (a cluster path, a namespace, a type, a
``cluster=`` parameter) is 403 Forbidden, as Kubernetes answers a get or list its RBAC does
not allow, whether or not the object exists: a scoped token cannot learn which clusters,
namespaces or objects exist outside its scope. A read across clusters or namespaces shows
what is in scope and leaves out the rest. An admin token, or a read token without a scope,
sees everything.
"""

from __future__ import annotations

from aiohttp import web

from fleetsync.api.auth import CALLER
from fleetsync.hub.clusterlabels import ClusterLabels
from fleetsync.model.scope import Scope, compiled
from fleetsync.model.status import ApiError
from fleetsync.model.types import ResourceType
from fleetsync.store.contract import TokenRecord


def scope_of(request: web.Request) -> Scope | None:
    """The caller's scope, compiled; None if it may see everything."""
    caller: TokenRecord | None = request.get(CALLER)
    if caller is None or caller.role != "read" or caller.scope is None:
        return None
    return compiled(caller.scope)


def forbidden(request: web.Request, scope: Scope, what: str) -> ApiError:
    """The 403 for a read of ``what``, outside the caller's scope."""
    caller: TokenRecord | None = request.get(CALLER)
    name = caller.name if caller else "?"
    return ApiError.forbidden(f'token "{name}" may read only {scope.describe()}: {what} is outside its scope (an admin widens it with a new token)')


class Scopes:
    """Applies the caller's scope with the clusters' admin-set labels as every replica knows them."""

    def __init__(self, labels: ClusterLabels) -> None:
        self.labels = labels

    async def clusters(self, scope: Scope | None) -> frozenset[str] | None:
        """The clusters ``scope`` admits now; None: every cluster."""
        if scope is None or not scope.limits_clusters:
            return None
        return scope.clusters(await self.labels.current())

    async def check_cluster(self, request: web.Request, scope: Scope | None, name: str) -> None:
        """403 unless cluster ``name`` is in scope (asked before whether it exists, which is not told)."""
        if scope is not None and scope.limits_clusters and not scope.admits_cluster(name, await self.labels.of(name)):
            raise forbidden(request, scope, f"cluster {name}")

    @staticmethod
    def check_read(request: web.Request, scope: Scope | None, rtype: ResourceType, namespace: str | None) -> None:
        """403 unless objects of ``rtype`` (in ``namespace``, if one is named) may be read."""
        if scope is None:
            return
        if not scope.admits_type(rtype.gvk, namespaced=rtype.namespaced):
            what = f"{rtype.plural}" + ("" if rtype.namespaced or scope.namespaces is None else " (not namespaced)")
            raise forbidden(request, scope, what)
        if namespace is not None and not scope.admits_namespace(namespace):
            raise forbidden(request, scope, f"namespace {namespace}")
