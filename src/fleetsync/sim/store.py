"""One virtual cluster's objects, change history and watchers.

Objects are kept as their serialized JSON bytes plus the few fields that listing
needs (namespace, name, labels, selectable fields): holding 100k parsed pod dicts
would cost gigabytes and make the garbage collector the bottleneck, while a list
response is then just a join of byte strings.

Every write gets the next value of the cluster's resourceVersion counter and is
appended to a bounded history. The history serves three things: watches resuming
from a resourceVersion, consistent paginated lists (a page at revision R is the
current state with the newer changes undone), and exact-revision lists. Anything
older than the history answers 410 Gone, as an apiserver does after compaction.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from sortedcontainers import SortedDict

from fleetsync.model import types as t
from fleetsync.model.objects import object_key, rfc3339, selectable_fields
from fleetsync.model.selectors import FieldSelector, LabelSelector
from fleetsync.model.status import ApiError
from fleetsync.model.types import ResourceType
from fleetsync.sim.crds import crd_types

EventType = Literal["ADDED", "MODIFIED", "DELETED"]

#: Metadata the server owns: kept from the stored object on update, never taken from a request.
_SERVER_OWNED_META = ("uid", "creationTimestamp", "generation", "resourceVersion")


@dataclass(slots=True)
class StoredObject:
    """An object as stored: its JSON bytes and what listing and selectors need."""

    namespace: str
    name: str
    rv: int
    labels: dict[str, str]
    fields: dict[str, str]
    raw: bytes

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.name)

    def decode(self) -> dict[str, Any]:
        result: dict[str, Any] = orjson.loads(self.raw)
        return result


@dataclass(slots=True)
class Change:
    """One committed write: the new state (for DELETED, the final state) and the state before it."""

    rv: int
    rtype: ResourceType
    type: EventType
    obj: StoredObject
    prev: StoredObject | None


@dataclass(slots=True)
class ListPage:
    items: list[StoredObject]
    resource_version: int
    continue_token: str | None = None
    remaining: int | None = None


def _scope_range(objects: SortedDict, namespace: str | None, after: str | None) -> Iterator[str]:
    """Keys of ``objects`` in ``namespace`` (all if None), strictly after ``after``."""
    if namespace:
        low, high = f"{namespace}/", f"{namespace}0"  # '0' sorts right after '/'
        if after is not None and after >= low:
            return objects.irange(after, high, inclusive=(False, False))  # type: ignore[no-any-return]
        return objects.irange(low, high, inclusive=(True, False))  # type: ignore[no-any-return]
    if after is not None:
        return objects.irange(minimum=after, inclusive=(False, True))  # type: ignore[no-any-return]
    return iter(objects.keys())


def encode_continue(rv: int, start: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})).decode()


def decode_continue(token: str) -> tuple[int, str]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), str(data["start"])
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise ApiError.bad_request(f"continue key is not valid: {token!r} is not a token this server issued") from None


class Watcher:
    """One watch: a filter and a queue of (event type, object) the HTTP handler drains."""

    def __init__(
        self,
        rtype: ResourceType,
        *,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        max_backlog: int,
    ) -> None:
        self.rtype = rtype
        self.namespace = namespace or None
        self.labels = labels
        self.fields = fields
        self.max_backlog = max_backlog
        self.queue: deque[tuple[str, StoredObject]] = deque()
        self.closed_reason: str | None = None
        self._wakeup = asyncio.Event()

    def _matches(self, obj: StoredObject) -> bool:
        if self.namespace and obj.namespace != self.namespace:
            return False
        return self.labels.matches(obj.labels) and self.fields.matches(obj.fields)

    def push(self, event_type: str, obj: StoredObject) -> None:
        if self.closed_reason:
            return
        self.queue.append((event_type, obj))
        if len(self.queue) > self.max_backlog:
            # An apiserver drops watchers that cannot keep up; the client re-watches
            # from the last resourceVersion it saw.
            self.close(f"watcher fell more than {self.max_backlog} events behind")
        self._wakeup.set()

    def offer(self, change: Change) -> None:
        """Queue ``change`` as this watcher sees it: a selector change turns MODIFIED into ADDED or DELETED."""
        now = self._matches(change.obj)
        if change.type == "ADDED":
            if now:
                self.push("ADDED", change.obj)
        elif change.type == "DELETED":
            if now:
                self.push("DELETED", change.obj)
        else:
            before = change.prev is not None and self._matches(change.prev)
            if now:
                self.push("MODIFIED" if before else "ADDED", change.obj)
            elif before:
                self.push("DELETED", change.obj)

    def close(self, reason: str) -> None:
        self.closed_reason = reason
        self._wakeup.set()

    async def wait(self, seconds: float) -> None:
        """Wait until there is something to send, the watch closed, or ``seconds`` passed."""
        if self.queue or self.closed_reason:
            return
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        except TimeoutError:
            pass

    def drain(self) -> list[tuple[str, StoredObject]]:
        items = list(self.queue)
        self.queue.clear()
        return items


class ClusterState:
    """Objects, history and watchers of one virtual cluster. Single-threaded (one event loop)."""

    def __init__(
        self,
        name: str,
        *,
        types: Iterable[ResourceType] = t.ALL_TYPES,
        history_limit: int = 10_000,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.rv = 0
        self.history_limit = history_limit
        self.clock = clock
        self._rng = random.Random(f"{seed}:{name}")
        self._objects: dict[ResourceType, SortedDict] = {rt: SortedDict() for rt in types}
        self._history: deque[Change] = deque()
        self._history_floor = 0  # every change with rv > floor is still in the history
        self._watchers: dict[ResourceType, set[Watcher]] = {rt: set() for rt in self._objects}
        self.writes = 0
        #: CRD name -> the types it added to this cluster (those served before it are not its own).
        self._defined: dict[str, tuple[ResourceType, ...]] = {}

    # ---- reads -------------------------------------------------------------------

    @property
    def types(self) -> tuple[ResourceType, ...]:
        return tuple(self._objects)

    def serves(self, rtype: ResourceType) -> bool:
        return rtype in self._objects

    def count(self, rtype: ResourceType) -> int:
        return len(self._objects[rtype])

    def get(self, rtype: ResourceType, namespace: str, name: str) -> StoredObject | None:
        stored: StoredObject | None = self._objects[rtype].get(object_key(namespace, name))
        return stored

    def read(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        stored = self.get(rtype, namespace, name)
        if stored is None:
            raise ApiError.not_found(rtype.plural, name, rtype.group)
        return stored.decode()

    def scan(self, rtype: ResourceType, namespace: str | None = None) -> Iterator[StoredObject]:
        objects = self._objects[rtype]
        for key in _scope_range(objects, namespace, None):
            yield objects[key]

    def scan_prefix(self, rtype: ResourceType, namespace: str, prefix: str) -> Iterator[StoredObject]:
        """Objects of ``namespace`` whose names start with ``prefix`` (a key range, not a scan of the namespace)."""
        objects = self._objects[rtype]
        low = f"{namespace}/{prefix}"
        for key in objects.irange(low, low + "\U0010ffff"):
            yield objects[key]

    def list(
        self,
        rtype: ResourceType,
        *,
        namespace: str | None = None,
        labels: LabelSelector = LabelSelector(),
        fields: FieldSelector = FieldSelector(),
        limit: int = 0,
        continue_token: str | None = None,
        resource_version: int | None = None,
        exact: bool = False,
    ) -> ListPage:
        """List like the apiserver: consistent pages, exact-revision reads, 410 past the history."""
        start: str | None = None
        at = self.rv
        if continue_token:
            at, start = decode_continue(continue_token)
            if at < self._history_floor:
                raise ApiError.gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."
                )
        elif exact and resource_version is not None:
            at = resource_version
        objects = self._objects_at(rtype, at)
        items: list[StoredObject] = []
        last_key = None
        remaining = 0
        for key in _scope_range(objects, namespace, start):
            obj = objects[key]
            if not (labels.matches(obj.labels) and fields.matches(obj.fields)):
                continue
            if limit and len(items) >= limit:
                remaining += 1
                continue
            items.append(obj)
            last_key = key
        if limit and remaining and last_key is not None:
            return ListPage(items, at, encode_continue(at, last_key), remaining)
        return ListPage(items, at)

    def _objects_at(self, rtype: ResourceType, rv: int) -> SortedDict:
        """The objects of ``rtype`` as they were right after revision ``rv``."""
        current = self._objects[rtype]
        if rv >= self.rv:
            if rv > self.rv:
                raise ApiError(504, "Timeout", f"Too large resource version: {rv}, current: {self.rv}")
            return current
        if rv < self._history_floor:
            raise ApiError.gone(f"too old resource version: {rv} ({self._history_floor + 1})")
        undo = self._changes_since(rtype, rv)
        if not undo:
            return current
        snapshot = SortedDict(current)
        for change in undo:  # newest first
            if change.prev is None:
                del snapshot[change.obj.key]
            else:
                snapshot[change.prev.key] = change.prev
        return snapshot

    def _changes_since(self, rtype: ResourceType, rv: int) -> Sequence[Change]:
        """The retained changes of ``rtype`` newer than ``rv``, newest first."""
        changes: builtins.list[Change] = []
        for change in reversed(self._history):
            if change.rv <= rv:
                break
            if change.rtype is rtype:
                changes.append(change)
        return changes

    # ---- writes ------------------------------------------------------------------

    def new_uid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def create(self, rtype: ResourceType, obj: dict[str, Any]) -> StoredObject:
        """Store a new object, filling the metadata the server owns. ``obj`` is taken over."""
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace", "") if rtype.namespaced else ""
        name = meta["name"]
        if object_key(namespace, name) in self._objects[rtype]:
            raise ApiError.already_exists(rtype.plural, name, rtype.group)
        if rtype.namespaced:
            ns = self.get(t.NAMESPACE, "", namespace)
            if ns is None:
                raise ApiError.not_found("namespaces", namespace)
            if b'"deletionTimestamp"' in ns.raw:
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{rtype.plural} "{name}" is forbidden: unable to create new content in namespace {namespace} because it is being terminated',
                )
        meta["uid"] = self.new_uid()
        meta["creationTimestamp"] = rfc3339(self.clock())
        meta["generation"] = 1
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        return self._commit(rtype, "ADDED", obj, None)

    def update(self, rtype: ResourceType, obj: dict[str, Any], *, expected_rv: str | None = None) -> StoredObject:
        """Replace an object. ``expected_rv`` (if given) must match: optimistic concurrency, 409 otherwise.

        Server-owned metadata is kept; ``generation`` moves when anything but metadata
        and status changed. An update that changes nothing is not written (no new
        resourceVersion, no watch event), as on a real apiserver.
        """
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace", "") if rtype.namespaced else ""
        name = meta.get("name", "")
        current = self.get(rtype, namespace, name)
        if current is None:
            raise ApiError.not_found(rtype.plural, name, rtype.group)
        if expected_rv and expected_rv != str(current.rv):
            raise ApiError.conflict(
                rtype.plural, name, "the object has been modified; please apply your changes to the latest version and try again", rtype.group
            )
        old = current.decode()
        old_meta = old["metadata"]
        for k in _SERVER_OWNED_META:
            if k in old_meta:
                meta[k] = old_meta[k]
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        if obj == old:
            return current
        if _spec_of(obj) != _spec_of(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return self._commit(rtype, "MODIFIED", obj, current)

    def delete(self, rtype: ResourceType, namespace: str, name: str, *, expected_rv: str | None = None, expected_uid: str | None = None) -> StoredObject:
        """Delete an object (a namespace takes everything in it along). Returns its final state."""
        namespace = namespace if rtype.namespaced else ""
        current = self.get(rtype, namespace, name)
        if current is None:
            raise ApiError.not_found(rtype.plural, name, rtype.group)
        obj = current.decode()
        if expected_rv and expected_rv != str(current.rv):
            raise ApiError.conflict(
                rtype.plural,
                name,
                f"Precondition failed: ResourceVersion in precondition: {expected_rv}, ResourceVersion in object meta: {current.rv}",
                rtype.group,
            )
        if expected_uid and expected_uid != obj["metadata"].get("uid"):
            raise ApiError.conflict(
                rtype.plural, name, f"Precondition failed: UID in precondition: {expected_uid}, UID in object meta: {obj['metadata'].get('uid')}", rtype.group
            )
        if rtype is t.NAMESPACE:
            for other in self._objects:
                if other.namespaced:
                    for stored in list(self.scan(other, name)):
                        self.delete(other, stored.namespace, stored.name)
        return self._commit(rtype, "DELETED", obj, current)

    def _commit(self, rtype: ResourceType, event_type: EventType, obj: dict[str, Any], prev: StoredObject | None) -> StoredObject:
        self.rv += 1
        self.writes += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        stored = StoredObject(
            namespace=meta.get("namespace", "") if rtype.namespaced else "",
            name=meta["name"],
            rv=self.rv,
            labels=dict(meta.get("labels") or {}),
            fields=selectable_fields(rtype, obj),
            raw=orjson.dumps(obj),
        )
        objects = self._objects[rtype]
        if event_type == "DELETED":
            del objects[stored.key]
        else:
            objects[stored.key] = stored
        change = Change(self.rv, rtype, event_type, stored, prev)
        self._history.append(change)
        while len(self._history) > self.history_limit:
            self._history_floor = self._history.popleft().rv
        for watcher in self._watchers[rtype]:
            watcher.offer(change)
        if rtype is t.CRD:
            self._define(stored.name, () if event_type == "DELETED" else crd_types(obj))
        return stored

    def _define(self, crd: str, types: tuple[ResourceType, ...]) -> None:
        """Serve the types a CRD now defines; stop serving those it no longer does (its objects
        deleted first, as watchers of them see; then their watches end)."""
        before = self._defined.pop(crd, ())
        paths = {(rt.group, rt.version, rt.plural) for rt in self._objects if rt not in before}
        now = tuple(rt for rt in types if (rt.group, rt.version, rt.plural) not in paths)
        for rtype in before:
            if rtype in now:
                continue
            for stored in list(self.scan(rtype)):
                self.delete(rtype, stored.namespace, stored.name)
            for watcher in self._watchers.pop(rtype, set()):
                watcher.close(f"the resource type {rtype.plural}.{rtype.group} is no longer served (CRD {crd} deleted)")
            del self._objects[rtype]
        for rtype in now:
            if rtype not in self._objects:
                self._objects[rtype] = SortedDict()
                self._watchers[rtype] = set()
        if now:
            self._defined[crd] = now

    # ---- watch -------------------------------------------------------------------

    def watch(
        self,
        rtype: ResourceType,
        *,
        namespace: str | None = None,
        labels: LabelSelector = LabelSelector(),
        fields: FieldSelector = FieldSelector(),
        resource_version: int | None = None,
        send_initial_events: bool = False,
        max_backlog: int = 20_000,
    ) -> Watcher:
        """Start a watch. Without a resourceVersion (or with ``send_initial_events``) the
        current objects come first as ADDED; otherwise every change after the given
        version. Raises 410 Gone when that version is older than the history."""
        watcher = Watcher(rtype, namespace=namespace, labels=labels, fields=fields, max_backlog=max_backlog)
        if resource_version is None or send_initial_events:
            if resource_version is not None and resource_version > self.rv:
                raise ApiError(504, "Timeout", f"Too large resource version: {resource_version}, current: {self.rv}")
            watcher.max_backlog += self.count(rtype)
            for obj in self.scan(rtype, namespace):
                if watcher._matches(obj):
                    watcher.push("ADDED", obj)
        else:
            if resource_version < self._history_floor:
                raise ApiError.gone(f"too old resource version: {resource_version} ({self._history_floor + 1})")
            if resource_version > self.rv:
                raise ApiError(504, "Timeout", f"Too large resource version: {resource_version}, current: {self.rv}")
            replay = self._changes_since(rtype, resource_version)
            watcher.max_backlog += len(replay)
            for change in reversed(replay):
                watcher.offer(change)
        self._watchers[rtype].add(watcher)
        return watcher

    def stop_watch(self, watcher: Watcher) -> None:
        self._watchers[watcher.rtype].discard(watcher)

    def watcher_count(self) -> int:
        return sum(len(ws) for ws in self._watchers.values())

    # ---- truth -------------------------------------------------------------------

    def truth(self, rtypes: Iterable[ResourceType] | None = None) -> Mapping[ResourceType, Sequence[StoredObject]]:
        """Every current object, per type: what a converged hub must hold."""
        return {rt: list(self._objects[rt].values()) if rt in self._objects else [] for rt in (rtypes or self._objects)}


def _spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}
