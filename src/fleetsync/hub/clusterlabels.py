"""Every cluster's labels, as an admin set them on the hub, kept in memory for placement and watches.

Works' placement and a fleet-wide watch's ``clusterSelector`` match the labels an admin
set (``fleetsync clusters label``, ``PATCH /api/v1/clusters/NAME/labels``), never the
metadata an agent reports in its Hello: an agent token must not be able to claim
``env=prod`` and receive production's works. (Reported metadata is stored and shown "as
reported".) Asking the store for every change or push would cost a query per change per
watch and per session; this cache costs one query per cluster whose labels change. Whoever
writes a cluster's labels, or a new cluster's record (a session's Hello, a pull refresh),
announces it on :data:`CLUSTERS_CHANNEL`, which reaches every replica (PostgreSQL NOTIFY);
the cache reads that cluster again on its next use, and the hub re-pushes that cluster's
works. In case a notification is lost (PostgreSQL's listening connection dropped), it reads
every cluster again after ``max_age`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from fleetsync.store.contract import ClusterRecord, Store

#: The store notification channel on which a cluster's name is announced when its labels change.
CLUSTERS_CHANNEL = "clusters"


async def announce_if_relabelled(store: Store, before: ClusterRecord | None, metadata: Mapping[str, str], name: str) -> None:
    """Tell every replica's :class:`ClusterLabels` that ``name`` is new or reports other metadata now."""
    if before is None or dict(before.metadata) != dict(metadata):
        await store.notify(CLUSTERS_CHANNEL, name)


def changed_keys(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """The metadata keys whose value differs (added, removed or changed), sorted: what a
    ``ClusterChanged`` event names (seed 003's cluster view)."""
    return sorted({key for key, _ in set(before.items()) ^ set(after.items())})


class ClusterLabels:
    """Cluster name → its admin-set labels ({} if none), as current as the store's notifications make it."""

    def __init__(self, store: Store, *, max_age: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.max_age = max_age
        self.clock = clock
        #: Grows whenever some cluster's labels are read and differ from before (or it is new).
        self.version = 0
        self._labels: dict[str, Mapping[str, str]] = {}
        self._loaded_at: float | None = None
        self._stale: set[str] = set()
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self.store.listen(self._on_notification)

    def _on_notification(self, channel: str, payload: str) -> None:
        if channel == CLUSTERS_CHANNEL:
            self._stale.add(payload)

    async def of(self, name: str) -> Mapping[str, str]:
        """``name``'s labels ({}: none, or not a cluster yet)."""
        return (await self.current(name)).get(name, {})

    async def current(self, *also: str) -> Mapping[str, Mapping[str, str]]:
        """Every known cluster's labels, having read what was announced as changed since the
        last call (and ``also``: names seen elsewhere, e.g. in a change, that are not known)."""
        async with self._lock:
            if self._loaded_at is None or self.clock() - self._loaded_at > self.max_age:
                self._stale.clear()
                self._loaded_at = self.clock()
                known: dict[str, Mapping[str, str]] = {c.name: {} for c in await self.store.clusters()}
                self._replace(known | await self.store.cluster_labels())
            missing = {name for name in also if name not in self._labels}
            if self._stale or missing:
                names, self._stale = self._stale | missing, set()
                labels = dict(self._labels)
                for name in sorted(names):
                    found = (await self.store.cluster_labels(name)).get(name)
                    if found is not None:
                        labels[name] = found
                    elif await self.store.cluster(name) is not None:
                        labels[name] = {}
                    else:  # not a cluster (yet), and not labelled: asked again next time
                        labels.pop(name, None)
                self._replace(labels)
            return self._labels

    def _replace(self, labels: dict[str, Mapping[str, str]]) -> None:
        if labels != self._labels:
            self.version += 1
        self._labels = labels
