"""Node readiness and its changes: where the cluster-view events ``NodeUp`` / ``NodeDown`` (seed 003) come from.

Pure code, used by the refresh scheduler (pull clusters, from the state it pulled) and by each
push cluster's sync engine (from the Node bundles it applies). Node events come from the
nodes' own reports, as in Replicante: a node is not called down because something else thinks
it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def node_ready(node: Mapping[str, Any]) -> bool:
    """Whether a Node object reports condition Ready=True (a node without the condition is not ready)."""
    status = node.get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def node_changes(before: Mapping[str, bool], after: Mapping[str, bool]) -> Iterable[tuple[str, bool]]:
    """(node, up) for every node whose readiness changed; a new ready node is up, a vanished one down."""
    for name in sorted(set(before) | set(after)):
        was, now = before.get(name, False), after.get(name, False)
        if was != now:
            yield name, now


class NodeReadiness:
    """One push cluster's nodes' readiness, kept in memory by its sync engine so that a Node
    bundle's events cost no store read: seeded once (from the store, when the engine applies its
    first Node bundle), then moved by every applied bundle. While it knew no node (a cluster's
    first sync), it records the nodes it is shown without calling them up: they are not news."""

    def __init__(self, seed: Mapping[str, bool]) -> None:
        self.ready: dict[str, bool] = dict(seed)
        self._quiet = not self.ready

    def apply(self, upserts: Mapping[str, bool], deletes: Iterable[str]) -> list[tuple[str, bool]]:
        """Apply one bundle (node name -> Ready of its upserts; names deleted); the (node, up) changes to report."""
        after = dict(self.ready)
        after.update(upserts)
        for name in deletes:
            after.pop(name, None)
        changes = [] if self._quiet else list(node_changes(self.ready, after))
        self.ready = after
        self._quiet = self._quiet and not after
        return changes
