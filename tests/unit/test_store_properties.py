"""Property tests for ``fleetsync.sim.store.ClusterState``.

The store promises: any sequence of writes, watched from any retained
resourceVersion, replays to exactly the state a list returns. Hypothesis drives
random create / update / delete sequences of ConfigMaps and Pods over two
namespaces and checks that promise from several angles: watches resumed from a
past revision, exact-revision lists, consistent paginated lists, label-selector
watches and no-op updates.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from fleetsync.model import types as t
from fleetsync.model.selectors import LabelSelector
from fleetsync.model.status import ApiError
from fleetsync.sim.store import ClusterState, StoredObject, Watcher

NAMESPACES = ("a", "b")
# Names whose keys sort in a non-obvious order ('-' < '.' < '/' in ASCII).
NAMES = ("x", "x-1", "x.1", "y")
PAGE_NAMES = ("m", "m-1", "m.1", "n", *NAMES)  # more objects, so that lists span several pages
TYPES = (t.CONFIG_MAP, t.POD)
TIERS = ("web", "db", None)  # None: no tier label
VALUES = ("1", "2", "3")
BIG_HISTORY = 100_000
WEB = LabelSelector.parse("tier=web")

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


# ---- operations ----------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    kind: str  # "create", "update", "delete"
    rtype: t.ResourceType
    namespace: str
    name: str
    tier: str | None
    value: str

    def __repr__(self) -> str:  # short, so hypothesis' falsifying examples stay readable
        return f"Op({self.kind} {self.rtype.kind} {self.namespace}/{self.name} tier={self.tier} value={self.value})"


@st.composite
def op_lists(draw: st.DrawFn, max_size: int = 40, kinds: tuple[str, ...] = ("create", "update", "delete"), names: tuple[str, ...] = NAMES) -> list[Op]:
    """A random write sequence. Updates and deletes mostly target objects that exist
    at that point (tracked while drawing), so that most operations take effect;
    repeating a kind in ``kinds`` makes it more likely."""
    live: list[tuple[t.ResourceType, str, str]] = []
    ops = []
    for _ in range(draw(st.integers(0, max_size), label="length")):
        kind = draw(st.sampled_from(kinds))
        if kind == "create" or not live:
            rtype, namespace, name = draw(st.sampled_from(TYPES)), draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(names))
        else:
            rtype, namespace, name = draw(st.sampled_from(live))
        op = Op(kind, rtype, namespace, name, draw(st.sampled_from(TIERS)), draw(st.sampled_from(VALUES)))
        target = (rtype, namespace, name)
        if op.kind == "create" and target not in live:
            live.append(target)
        elif op.kind == "delete" and target in live:
            live.remove(target)
        ops.append(op)
    return ops


def _set_tier(meta: dict[str, Any], tier: str | None) -> None:
    labels = dict(meta.get("labels") or {})
    labels.pop("tier", None)
    if tier is not None:
        labels["tier"] = tier
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)


def _set_value(rtype: t.ResourceType, obj: dict[str, Any], value: str) -> None:
    if rtype is t.CONFIG_MAP:
        obj["data"] = {"value": value}
    else:
        obj["spec"] = {"nodeName": f"node-{value}", "containers": [{"name": "c", "image": "img"}]}
        obj["status"] = {"phase": "Running" if value == "1" else "Pending"}


def apply(state: ClusterState, op: Op) -> bool:
    """Apply ``op`` if it is valid for the current state; False if it was skipped."""
    exists = state.get(op.rtype, op.namespace, op.name) is not None
    if op.kind == "create":
        if exists:
            return False
        obj: dict[str, Any] = {"metadata": {"name": op.name, "namespace": op.namespace}}
        _set_tier(obj["metadata"], op.tier)
        _set_value(op.rtype, obj, op.value)
        state.create(op.rtype, obj)
    elif op.kind == "update":
        if not exists:
            return False
        obj = state.read(op.rtype, op.namespace, op.name)
        _set_tier(obj["metadata"], op.tier)
        _set_value(op.rtype, obj, op.value)
        state.update(op.rtype, obj)  # may be a no-op: then nothing is written
    else:
        if not exists:
            return False
        state.delete(op.rtype, op.namespace, op.name)
    return True


def new_state(history_limit: int = BIG_HISTORY) -> tuple[ClusterState, list[int]]:
    """A cluster holding namespaces a and b; returns it with the revisions seen so far."""
    state = ClusterState("prop", history_limit=history_limit, seed=0, clock=lambda: 1_700_000_000.0)
    versions = [state.rv]
    for ns in NAMESPACES:
        state.create(t.NAMESPACE, {"metadata": {"name": ns}})
        versions.append(state.rv)
    return state, versions


def run(state: ClusterState, ops: Iterable[Op], versions: list[int] | None = None) -> None:
    for op in ops:
        if apply(state, op) and versions is not None:
            versions.append(state.rv)


# ---- views -----------------------------------------------------------------------


def as_map(items: Iterable[StoredObject]) -> dict[str, bytes]:
    return {obj.key: obj.raw for obj in items}


def replay(start: dict[str, bytes], events: Iterable[tuple[str, StoredObject]]) -> dict[str, bytes]:
    """Apply watch events onto a ``key -> raw`` map, the way an informer would."""
    result = dict(start)
    for event_type, obj in events:
        if event_type in ("ADDED", "MODIFIED"):
            result[obj.key] = obj.raw
        elif event_type == "DELETED":
            assert obj.key in result, f"DELETED for {obj.key}, which the watcher never saw"
            del result[obj.key]
        else:
            raise AssertionError(f"unexpected event type {event_type!r}")
    return result


def history_floor(state: ClusterState) -> int:
    """The oldest revision still resumable, derived from the public contract.

    Every write takes exactly one revision and one history slot, so with a history
    of ``history_limit`` changes every revision >= rv - history_limit is retained.
    """
    return max(0, state.rv - state.history_limit)


# ---- 1. watch replay -------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    history_limit=st.sampled_from((1, 5, 15, BIG_HISTORY)),
    ops=op_lists(),
    namespace=st.sampled_from((None, *NAMESPACES)),
    data=st.data(),
)
def test_watch_from_any_retained_version_replays_to_the_listed_state(history_limit: int, ops: list[Op], namespace: str | None, data: st.DataObject) -> None:
    state, versions = new_state(history_limit)
    run(state, ops, versions)
    floor = history_floor(state)
    note(f"rv={state.rv} floor={floor} versions={versions}")

    for rtype in TYPES:
        current = as_map(state.list(rtype, namespace=namespace).items)
        assert list(current) == sorted(current), "a list returns objects in key order"

        # A watch without a resourceVersion starts with the current objects as ADDED.
        initial = state.watch(rtype, namespace=namespace).drain()
        assert all(event_type == "ADDED" for event_type, _ in initial)
        assert replay({}, initial) == current

        since = data.draw(st.sampled_from(versions), label=f"resume {rtype.kind} from")
        if since < floor:
            event("resume version expired")
            with pytest.raises(ApiError) as gone:
                state.watch(rtype, namespace=namespace, resource_version=since)
            assert gone.value.code == 410
            with pytest.raises(ApiError) as gone:
                state.list(rtype, namespace=namespace, resource_version=since, exact=True)
            assert gone.value.code == 410
            continue

        event("resume version retained")
        then = state.list(rtype, namespace=namespace, resource_version=since, exact=True)
        assert then.resource_version == since
        watcher = state.watch(rtype, namespace=namespace, resource_version=since)
        events = watcher.drain()
        assert watcher.closed_reason is None
        assert all(obj.rv > since for _, obj in events), "a resumed watch replays only newer changes"
        assert [obj.rv for _, obj in events] == sorted(obj.rv for _, obj in events)
        assert replay(as_map(then.items), events) == current


@PROPERTY_SETTINGS
@given(ops=op_lists(), data=st.data())
def test_exact_list_at_a_past_version_matches_what_a_list_returned_then(ops: list[Op], data: st.DataObject) -> None:
    """The undo logic behind exact lists reconstructs exactly what an earlier list saw."""
    state, _ = new_state()
    seen: dict[int, dict[t.ResourceType, dict[str, bytes]]] = {}

    def remember() -> None:
        seen[state.rv] = {rtype: as_map(state.list(rtype).items) for rtype in TYPES}

    remember()
    for op in ops:
        if apply(state, op):
            remember()
    at = data.draw(st.sampled_from(sorted(seen)), label="version")
    for rtype in TYPES:
        assert as_map(state.list(rtype, resource_version=at, exact=True).items) == seen[at][rtype]


# ---- 2. consistent pagination ------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    history_limit=st.sampled_from((4, BIG_HISTORY)),
    ops=op_lists(max_size=60, kinds=("create", "create", "create", "update", "delete"), names=PAGE_NAMES),
    chunk=st.integers(0, 6),
    rtype=st.sampled_from(TYPES),
    namespace=st.sampled_from((None, None, *NAMESPACES)),
    selector=st.sampled_from(("", "", "tier=web", "tier!=web")),
    limit=st.integers(1, 2),
    data=st.data(),
)
def test_paginated_list_is_a_consistent_snapshot(
    history_limit: int,
    ops: list[Op],
    chunk: int,
    rtype: t.ResourceType,
    namespace: str | None,
    selector: str,
    limit: int,
    data: st.DataObject,
) -> None:
    split = len(ops) - data.draw(st.integers(0, min(len(ops), 15)), label="writes while paging")
    state, _ = new_state(history_limit)
    labels = LabelSelector.parse(selector)
    run(state, ops[:split])
    later = iter(ops[split:])  # applied ``chunk`` at a time between pages

    expected = as_map(state.list(rtype, namespace=namespace, labels=labels).items)
    page = state.list(rtype, namespace=namespace, labels=labels, limit=limit)
    at = page.resource_version
    assert at == state.rv
    pages = [page]
    while page.continue_token:
        assert len(page.items) == limit
        assert page.remaining == len(expected) - sum(len(p.items) for p in pages)
        run(state, itertools.islice(later, chunk))  # the cluster keeps changing while we page
        try:
            page = state.list(rtype, namespace=namespace, labels=labels, limit=limit, continue_token=page.continue_token)
        except ApiError as err:
            assert err.code == 410
            assert history_limit != BIG_HISTORY
            assert at < history_floor(state), "410 although the snapshot's revision is still retained"
            event("continue token expired")
            return
        assert at >= history_floor(state), "a page was served from a revision the history no longer holds"
        assert page.resource_version == at, "every page is served from the first page's revision"
        pages.append(page)
    event(f"paginated to the end in {min(len(pages), 4)}{'+' if len(pages) >= 4 else ''} pages")

    keys = [obj.key for p in pages for obj in p.items]
    assert len(keys) == len(set(keys)), f"duplicate keys across pages: {keys}"
    assert keys == sorted(keys)
    assert as_map(obj for p in pages for obj in p.items) == expected
    assert pages[-1].continue_token is None


# ---- 3. selector watches -------------------------------------------------------------


def _expected_selector_events(before: StoredObject | None, after: StoredObject | None, sel: LabelSelector) -> list[str]:
    matched_before = before is not None and sel.matches(before.labels)
    matches_after = after is not None and sel.matches(after.labels)
    if before is not None and after is not None and before.rv == after.rv:
        return []  # a no-op update writes nothing
    if matched_before and matches_after:
        return ["MODIFIED"]
    if matches_after:
        return ["ADDED"]
    if matched_before:
        return ["DELETED"]
    return []


@PROPERTY_SETTINGS
@given(
    ops=op_lists(max_size=50),
    rtype=st.sampled_from(TYPES),
    namespace=st.sampled_from((None, *NAMESPACES)),
    data=st.data(),
)
def test_selector_watch_turns_label_changes_into_added_and_deleted(ops: list[Op], rtype: t.ResourceType, namespace: str | None, data: st.DataObject) -> None:
    split = data.draw(st.integers(0, len(ops)), label="writes before the watch")
    state, versions = new_state()
    run(state, ops[:split], versions)  # objects that exist before the watch starts

    watcher = state.watch(rtype, namespace=namespace, labels=WEB)
    seen = replay({}, watcher.drain())
    assert seen == as_map(state.list(rtype, namespace=namespace, labels=WEB).items)

    for op in ops[split:]:
        before = state.get(op.rtype, op.namespace, op.name)
        if not apply(state, op):
            continue
        versions.append(state.rv)
        after = state.get(op.rtype, op.namespace, op.name)
        events = watcher.drain()
        if op.rtype is not rtype or (namespace and op.namespace != namespace):
            assert events == [], f"{op} is outside the watch, yet produced {events}"
            continue
        assert [event_type for event_type, _ in events] == _expected_selector_events(before, after, WEB), op
        for event_type, obj in events:
            assert obj.key == f"{op.namespace}/{op.name}"
            assert obj.rv == state.rv
            if after is not None:  # an object that stopped matching is sent in its new state
                assert obj.raw == after.raw
            event(f"selector watch: {event_type}")
        seen = replay(seen, events)
        assert seen == as_map(state.list(rtype, namespace=namespace, labels=WEB).items)

    # Resuming a selector watch from an earlier revision replays to the same place.
    since = data.draw(st.sampled_from(versions), label="resume from")
    then = state.list(rtype, namespace=namespace, labels=WEB, resource_version=since, exact=True)
    resumed = state.watch(rtype, namespace=namespace, labels=WEB, resource_version=since)
    assert replay(as_map(then.items), resumed.drain()) == as_map(state.list(rtype, namespace=namespace, labels=WEB).items)


# ---- 4. no-op updates ------------------------------------------------------------------


def _without_resource_version(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"].pop("resourceVersion", None)
    return obj


def _reversed_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _reversed_keys(obj[k]) for k in reversed(list(obj))}
    if isinstance(obj, list):
        return [_reversed_keys(v) for v in obj]
    return obj


@PROPERTY_SETTINGS
@given(
    ops=op_lists(),
    variant=st.sampled_from(("as read", "without resourceVersion", "keys reordered")),
    data=st.data(),
)
def test_noop_update_writes_nothing(ops: list[Op], variant: str, data: st.DataObject) -> None:
    state, _ = new_state()
    run(state, ops)
    existing = [(rtype, obj) for rtype in TYPES for obj in state.scan(rtype)]
    if not existing:
        # Always have something to update.
        state.create(t.CONFIG_MAP, {"metadata": {"name": "only", "namespace": "a"}, "data": {"value": "1"}})
        existing = [(t.CONFIG_MAP, obj) for obj in state.scan(t.CONFIG_MAP)]
    rtype, target = data.draw(st.sampled_from(existing), label="target")

    rv, writes = state.rv, state.writes
    watchers: list[Watcher] = [
        state.watch(rtype, resource_version=rv),
        state.watch(rtype, namespace=target.namespace, resource_version=rv),
        state.watch(rtype, labels=LabelSelector.from_match_labels(target.labels), resource_version=rv),
    ]
    obj = state.read(rtype, target.namespace, target.name)
    if variant == "without resourceVersion":
        obj = _without_resource_version(obj)
    elif variant == "keys reordered":
        obj = _reversed_keys(obj)

    result = state.update(rtype, obj)

    assert state.rv == rv
    assert state.writes == writes
    assert result.rv == target.rv
    assert result.raw == target.raw
    stored = state.get(rtype, target.namespace, target.name)
    assert stored is not None
    assert stored.raw == target.raw
    for watcher in watchers:
        assert watcher.drain() == []
    # The same update with the object's current resourceVersion as precondition is a no-op too.
    state.update(rtype, state.read(rtype, target.namespace, target.name), expected_rv=str(target.rv))
    assert state.rv == rv
