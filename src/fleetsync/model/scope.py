"""What a scoped read token may see, as pure rules (no I/O): checked once, compiled once per scope.

A :class:`~fleetsync.store.contract.ReadScope` names clusters (``--clusters``), an admin-label
selector (``--cluster-selector``), namespaces (``--namespaces``) and types (``--types``). The
rules, in one place so that every read path applies the same ones:

- clusters: a cluster is in scope if it is named, or its admin-set labels (never what its
  agent reports) match the selector; with neither, every cluster is. Labels are read when
  the read is made, so a cluster labelled later enters the scope of a selector-scoped token
  from then on (and one unlabelled leaves it);
- namespaces: with any, only namespaced objects of those namespaces; cluster-scoped types
  (Nodes, Namespaces, IstioMesh) are out of scope, as a Kubernetes Role bound in namespaces
  grants none of them;
- types: with any, only those types;
- everything else the scope does not filter (gates, works, settings, metrics) is refused.

A scope is bounded: :data:`MAX_NAMES` cluster names, namespaces and types each, a selector
of :data:`MAX_SELECTOR` characters; the CLI refuses more, naming the limit.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fleetsync.model.names import check_cluster_name
from fleetsync.model.selectors import LabelSelector, SelectorError, is_label_value

if TYPE_CHECKING:  # named in annotations only: the model stays below the store
    from fleetsync.store.contract import ReadScope

#: Most cluster names, namespaces or types one scope may list (a token with more is better
#: written with a cluster selector; each read compares against these sets).
MAX_NAMES = 1000
#: Longest cluster selector a scope may hold, in characters.
MAX_SELECTOR = 4096


def scope_problem(scope: ReadScope) -> str:
    """Why ``scope`` cannot be a token's ("" if it can): names that are not names, a selector
    that does not parse, or more than the limits allow."""
    for what, values in (("--clusters", scope.clusters), ("--namespaces", scope.namespaces), ("--types", scope.types)):
        if len(values) > MAX_NAMES:
            return f"{what}: {len(values)} given, at most {MAX_NAMES} (use --cluster-selector for many clusters)"
    for name in scope.clusters:
        try:
            check_cluster_name(name)
        except ValueError as exc:
            return f"--clusters: {exc}"
    for namespace in scope.namespaces:
        if not namespace or len(namespace) > 63 or not is_label_value(namespace) or namespace != namespace.lower() or "." in namespace or "_" in namespace:
            return f"--namespaces: {namespace!r} is not a namespace name (lowercase letters, digits and '-', at most 63)"
    if len(scope.cluster_selector) > MAX_SELECTOR:
        return f"--cluster-selector: {len(scope.cluster_selector)} characters, at most {MAX_SELECTOR}"
    if scope.cluster_selector:
        try:
            if LabelSelector.parse(scope.cluster_selector).empty:
                return "--cluster-selector: empty (leave it out to mean every cluster)"
        except SelectorError as exc:
            return f"--cluster-selector: {exc}"
    return ""


def split_names(text: str) -> tuple[str, ...]:
    """A comma-separated flag value as names, sorted, without repeats or blanks."""
    return tuple(sorted({part.strip() for part in text.split(",") if part.strip()}))


class Scope:
    """A :class:`ReadScope` compiled for cheap checks per object (a watch checks every change)."""

    def __init__(self, scope: ReadScope) -> None:
        self.source = scope
        self.names = frozenset(scope.clusters)
        self.selector = LabelSelector.parse(scope.cluster_selector) if scope.cluster_selector else None
        #: Whether only some clusters are in scope.
        self.limits_clusters = bool(self.names) or self.selector is not None
        #: The namespaces in scope; None: every namespace (and cluster-scoped types).
        self.namespaces: frozenset[str] | None = frozenset(scope.namespaces) or None
        self.types: frozenset[str] | None = frozenset(scope.types) or None

    def admits_cluster(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether cluster ``name``, with these admin-set labels, is in scope."""
        if not self.limits_clusters or name in self.names:
            return True
        return self.selector is not None and self.selector.matches(labels)

    def clusters(self, labels: Mapping[str, Mapping[str, str]]) -> frozenset[str] | None:
        """The clusters in scope: those named, and those of ``labels`` (every known cluster's
        admin-set labels) the selector matches; None: every cluster, so a query need not name them."""
        if not self.limits_clusters:
            return None
        selector = self.selector
        return self.names | {name for name, cluster_labels in labels.items() if selector is not None and selector.matches(cluster_labels)}

    def admits_type(self, gvk: str, *, namespaced: bool) -> bool:
        """Whether objects of type ``gvk`` may be read at all (cluster-scoped ones not under a namespace limit)."""
        return (self.types is None or gvk in self.types) and (namespaced or self.namespaces is None)

    def admits_namespace(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def describe(self) -> str:
        """The scope in words, for a 403's message."""
        parts = []
        if self.limits_clusters:
            named = ",".join(sorted(self.names))
            parts.append("clusters " + " or ".join(p for p in (named, f"labelled {self.source.cluster_selector}" if self.selector else "") if p))
        if self.namespaces is not None:
            parts.append("namespaces " + ",".join(sorted(self.namespaces)))
        if self.types is not None:
            parts.append("types " + ",".join(sorted(self.types)))
        return "; ".join(parts) or "everything"


@functools.lru_cache(maxsize=1024)
def compiled(scope: ReadScope) -> Scope:
    """``scope`` compiled, once per distinct scope (a token's scope is the same on every request)."""
    return Scope(scope)
