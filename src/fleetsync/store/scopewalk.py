"""A list narrowed to sets of clusters and namespaces (a read token's scope), walked on the objects index.

Every engine's objects index is ``(type, cluster, namespace, name)``, and lists are ordered
the same way. A scope is at most a few thousand (cluster, namespace) pairs, so the list is
walked pair by pair in that order, each step the engine's plain, exact-prefix query
(``type = ? AND cluster = ? AND namespace = ? AND name > ?``), until ``limit`` objects are
found: the store reads the scope's rows and index probes for its empty pairs, never the
rest of the fleet. (A single query with ``cluster IN (...)`` and the ``continue`` cursor's
row comparison lets SQLite's planner choose the cursor's range and filter the rest of the
type's rows by the IN lists, which reads the fleet after the cursor; PostgreSQL before 17
sorts ``= ANY`` matches.) Without a cluster set, the clusters holding objects of the type
are found with a skip scan of the index (one probe per cluster).

Decisions only here; the engines provide the two queries (:class:`ScopedListing`).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Collection, Mapping

from fleetsync.store.contract import ObjectRecord

#: The engine's plain list: (type, cluster, namespace, after, limit, labels) -> objects in order.
PlainList = Callable[[str, str, str | None, tuple[str, str, str] | None, int, Mapping[str, str] | None], Awaitable[list[ObjectRecord]]]
#: The clusters holding objects of a type, in order.
ClustersOfType = Callable[[str], Awaitable[list[str]]]


async def walk_scope(
    plain: PlainList,
    clusters_of_type: ClustersOfType,
    type_: str,
    *,
    cluster: str | None,
    namespace: str | None,
    after: tuple[str, str, str] | None,
    limit: int,
    labels: Mapping[str, str] | None,
    clusters: Collection[str] | None,
    namespaces: Collection[str] | None,
) -> list[ObjectRecord]:
    """The objects of ``type_`` in ``clusters`` and ``namespaces`` (and ``cluster`` and
    ``namespace``, when given: every condition holds), after ``after``, at most ``limit`` (0: all)."""
    if cluster is not None:
        if clusters is not None and cluster not in clusters:
            return []
        walk_clusters = [cluster]
    elif clusters is not None:
        walk_clusters = sorted(clusters)
    else:
        walk_clusters = await clusters_of_type(type_)
    if namespace is not None:
        if namespaces is not None and namespace not in namespaces:
            return []
        walk_namespaces: list[str] | None = [namespace]
    else:
        walk_namespaces = sorted(namespaces) if namespaces is not None else None
    out: list[ObjectRecord] = []
    for c in walk_clusters:
        if after is not None and c < after[0]:
            continue
        for ns in walk_namespaces if walk_namespaces is not None else [None]:
            cursor = after if after is not None and c == after[0] else None
            if cursor is not None and ns is not None and ns < cursor[1]:
                continue
            want = limit - len(out) if limit else 0
            out += await plain(type_, c, ns, cursor, want, labels)
            if limit and len(out) >= limit:
                return out
    return out


class ScopedListing(abc.ABC):
    """The store's ``list_objects`` for an engine that provides the two queries: unscoped
    lists are its plain query, scoped ones walk the scope with :func:`walk_scope`."""

    @abc.abstractmethod
    async def _list_objects(
        self,
        type: str,  # noqa: A002
        cluster: str | None,
        namespace: str | None,
        after: tuple[str, str, str] | None,
        limit: int,
        labels: Mapping[str, str] | None,
    ) -> list[ObjectRecord]:
        """The engine's plain list, in index order."""

    @abc.abstractmethod
    async def _clusters_of_type(self, type: str) -> list[str]:  # noqa: A002
        """The clusters holding objects of ``type``, in order."""

    async def list_objects(
        self,
        type: str,  # noqa: A002
        *,
        cluster: str | None = None,
        namespace: str | None = None,
        after: tuple[str, str, str] | None = None,
        limit: int = 0,
        labels: Mapping[str, str] | None = None,
        clusters: Collection[str] | None = None,
        namespaces: Collection[str] | None = None,
    ) -> list[ObjectRecord]:
        if clusters is None and namespaces is None:
            return await self._list_objects(type, cluster, namespace, after, limit, labels)
        return await walk_scope(
            self._list_objects,
            self._clusters_of_type,
            type,
            cluster=cluster,
            namespace=namespace,
            after=after,
            limit=limit,
            labels=labels,
            clusters=clusters,
            namespaces=namespaces,
        )
