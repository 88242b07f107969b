"""Every cluster's labels (its agent's metadata), kept in memory for watches with a cluster selector.

A fleet-wide watch with ``clusterSelector`` decides for each change whether its cluster
is selected. Asking the store for every change would cost a query per change per
watch; this cache costs one query per cluster whose labels change. Whoever writes a
cluster's metadata (a session's Hello, a pull refresh) announces it on
:data:`CLUSTERS_CHANNEL`, which reaches every replica (PostgreSQL NOTIFY); the cache
reads that cluster again on its next use. In case a notification is lost (PostgreSQL's
listening connection dropped), it reads every cluster again after ``max_age`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from fleetsync.store.contract import ClusterRecord, Store

#: The store notification channel on which a cluster's name is announced when its labels change.
CLUSTERS_CHANNEL = "clusters"


async def announce_if_relabelled(store: Store, before: ClusterRecord | None, metadata: Mapping[str, str], name: str) -> None:
    """Tell every replica's :class:`ClusterLabels` that ``name`` is new or has other labels now."""
    if before is None or dict(before.metadata) != dict(metadata):
        await store.notify(CLUSTERS_CHANNEL, name)


class ClusterLabels:
    """Cluster name → labels, as current as the store's notifications make it."""

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

    async def current(self, *also: str) -> Mapping[str, Mapping[str, str]]:
        """Every known cluster's labels, having read what was announced as changed since the
        last call (and ``also``: names seen elsewhere, e.g. in a change, that are not known)."""
        async with self._lock:
            if self._loaded_at is None or self.clock() - self._loaded_at > self.max_age:
                self._stale.clear()
                self._loaded_at = self.clock()
                self._replace({c.name: c.metadata for c in await self.store.clusters()})
            missing = {name for name in also if name not in self._labels}
            if self._stale or missing:
                names, self._stale = self._stale | missing, set()
                labels = dict(self._labels)
                for name in sorted(names):
                    record = await self.store.cluster(name)
                    if record is not None:  # (no record: not a cluster yet, asked again next time)
                        labels[name] = record.metadata
                self._replace(labels)
            return self._labels

    def _replace(self, labels: dict[str, Mapping[str, str]]) -> None:
        if labels != self._labels:
            self.version += 1
        self._labels = labels
