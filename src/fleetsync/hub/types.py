"""The resource types this hub serves: its fixed ones and every type any cluster's agent reported.

Agents report the discovery data of the types they sync (``TypeInfo``, see
:mod:`fleetsync.protocol.typeinfo`); the hub keeps each cluster's set in the store, so the
API serves a CRD's objects while its agent is away, and merges them into one registry. A
session that takes a report updates this replica's registry at once (its bundles of the
new type are accepted next) and announces it on :data:`TYPES_CHANNEL`, which reaches every
replica (PostgreSQL NOTIFY); the others read the store again on their next use. In case a
notification is lost, every replica reads the store again after ``max_age`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from fleetsync.model.types import HUB_TYPES, ResourceType, TypeRegistry
from fleetsync.protocol import typeinfo
from fleetsync.store.contract import Store

log = logging.getLogger(__name__)

#: The store notification channel on which a cluster's name is announced when its reported types change.
TYPES_CHANNEL = "types"


class HubTypes:
    """The hub's registry of types, as current as the store's notifications make it."""

    def __init__(self, store: Store, *, fixed: Iterable[ResourceType] = HUB_TYPES, max_age: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.fixed = tuple(fixed)
        self.max_age = max_age
        self.clock = clock
        #: The registry now (the fixed types until the store has been read).
        self.registry = TypeRegistry(self.fixed)
        self._reported: dict[str, tuple[ResourceType, ...]] = {}
        self._loaded_at: float | None = None
        self._stale = True
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self.store.listen(self._on_notification)

    def _on_notification(self, channel: str, payload: str) -> None:
        if channel == TYPES_CHANNEL:
            self._stale = True

    async def current(self) -> TypeRegistry:
        """The registry, having read the store again if a replica announced a change (or ``max_age`` passed)."""
        if self._stale or self._loaded_at is None or self.clock() - self._loaded_at > self.max_age:
            async with self._lock:
                if self._stale or self._loaded_at is None or self.clock() - self._loaded_at > self.max_age:
                    await self._load()
        return self.registry

    async def _load(self) -> None:
        self._stale = False
        self._loaded_at = self.clock()
        reported: dict[str, tuple[ResourceType, ...]] = {}
        for cluster, types in (await self.store.reported_types()).items():
            parsed = [typeinfo.from_json(text) for text in types.values()]
            reported[cluster] = tuple(t for t in parsed if t is not None)
            if len(parsed) != len(reported[cluster]):
                log.warning("cluster %s: %d stored type(s) are not valid type descriptions; left out", cluster, len(parsed) - len(reported[cluster]))
        self._reported = reported
        self.registry = typeinfo.merge(reported, self.fixed)

    async def report(self, cluster: str, types: Iterable[ResourceType], *, now: float) -> None:
        """Replace what ``cluster``'s agent serves with ``types`` (checked already): stored, merged
        here at once, and announced to every replica."""
        types = tuple(types)
        if self._loaded_at is None:
            await self.current()
        if self._reported.get(cluster, ()) == types:
            return
        await self.store.set_reported_types(cluster, {t.gvk: typeinfo.to_json(t) for t in types}, now=now)
        self._reported = {**self._reported, cluster: types}
        self.registry = typeinfo.merge(self._reported, self.fixed)
        await self.store.notify(TYPES_CHANNEL, cluster)
