"""The store contract (:mod:`fleetsync.store.contract`), checked against every engine.

Each test gets a fresh, open store from the ``engine`` fixture; an engine is added by
adding its name to the fixture's params and a branch to :func:`make_engine`. A few
tests at the end check SQLite specifics (pragmas, migrations).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest

from fleetsync.store.contract import (
    BundleWrite,
    ClusterRecord,
    EventRecord,
    GateConflict,
    GateExists,
    GateRecord,
    LeaseLost,
    ObjectRecord,
    ReadScope,
    Store,
    TokenRecord,
    WorkExists,
    WorkRecord,
    WorkStatusRecord,
)
from fleetsync.store.postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from fleetsync.store.postgres import PostgresStore
from fleetsync.store.sqlite import MIGRATIONS, SQLiteStore
from fleetsync.testing.postgres import PostgresServer

POD = "v1/Pod"
CM = "v1/ConfigMap"
BIG_HASH = 2**64 - 1  # does not fit a signed 64-bit integer
HIGH_BIT_HASH = 2**63


@dataclass(frozen=True)
class Engine:
    name: str
    make: Callable[[], Store]  # a new, unopened store on the same data every time
    source: str  # a Python expression building the same store in another process


def make_engine(name: str, request: pytest.FixtureRequest) -> Engine:
    if name == "sqlite":
        path = request.getfixturevalue("tmp_path") / "hub.db"
        return Engine(name, lambda: SQLiteStore(path), f"__import__('fleetsync.store.sqlite', fromlist=['x']).SQLiteStore({str(path)!r})")
    if name == "sqlite-process":  # the hub's way: batches written by a process of their own
        path = request.getfixturevalue("tmp_path") / "hub.db"
        return Engine(
            name,
            lambda: SQLiteStore(path, batch_writer="process"),
            f"__import__('fleetsync.store.sqlite', fromlist=['x']).SQLiteStore({str(path)!r}, batch_writer='process')",
        )
    if name == "postgres":
        url = request.getfixturevalue("pg_url")
        return Engine(name, lambda: PostgresStore(url), f"__import__('fleetsync.store.postgres', fromlist=['x']).PostgresStore({url!r})")
    raise AssertionError(f"unknown engine {name}")


@pytest.fixture(params=["sqlite", "sqlite-process", "postgres"])
def engine(request: pytest.FixtureRequest) -> Engine:
    return make_engine(request.param, request)


@pytest.fixture
async def store(engine: Engine) -> AsyncIterator[Store]:
    s = engine.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def obj(
    name: str,
    h: int = 1,
    *,
    namespace: str = "default",
    cluster: str = "c1",
    type_: str = POD,
    body: bytes | None = None,
    labels: dict[str, str] | None = None,
    **kw: object,
) -> ObjectRecord:
    return ObjectRecord(
        cluster=cluster,
        type=type_,
        namespace=namespace,
        name=name,
        uid=f"uid-{namespace}-{name}",
        resource_version=str(h % 1000),
        hash=h,
        labels={"app": name, "tier": "web"} if labels is None else labels,
        owner="ReplicaSet/rs-1",
        body=body if body is not None else f'{{"name":"{name}","h":{h}}}'.encode(),
        compression=0,
        incarnation="inc-1",
        **kw,  # type: ignore[arg-type]
    )


async def apply(
    store: Store,
    upserts: Sequence[ObjectRecord] = (),
    deletes: Sequence[str] = (),
    *,
    cluster: str = "c1",
    type_: str = POD,
    seq: int = 1,
    full_seq: int | None = None,
    full_end: bool = False,
    move: bool = True,
    now: float = 100.0,
) -> int:
    return await store.apply_bundle(
        cluster,
        type_,
        incarnation="inc-1",
        seq=seq,
        upserts=list(upserts),
        deletes=list(deletes),
        full_seq=full_seq,
        full_end=full_end,
        move_to=("inc-1", seq) if move else None,
        now=now,
    )


async def keys(store: Store, cluster: str = "c1", type_: str = POD) -> list[str]:
    return sorted(await store.object_hashes(cluster, type_))


def same_object(stored: ObjectRecord | None, sent: ObjectRecord) -> bool:
    """Equal but for the rev the store assigned."""
    return stored is not None and replace(stored, rev=0) == replace(sent, rev=0)


# ---- apply ---------------------------------------------------------------------------


async def test_a_new_store_is_empty_at_revision_zero(store: Store) -> None:
    assert await store.current_rev() == 0
    assert await store.oldest_rev() == 0
    assert await store.changes_since(0) == []
    assert await store.clusters() == []
    assert await store.list_objects(POD) == []


async def test_apply_assigns_increasing_revisions_and_logs_changes(store: Store) -> None:
    a, b = obj("a", 1), obj("b", 2)
    assert await apply(store, [a, b], seq=1) == 2
    a2 = obj("a", 11)
    assert await apply(store, [a2], ["default/b"], seq=2) == 4
    assert await store.current_rev() == 4

    changes = await store.changes_since(0)
    assert [(c.rev, c.type, c.obj.key) for c in changes] == [
        (1, "ADDED", "default/a"),
        (2, "ADDED", "default/b"),
        (3, "MODIFIED", "default/a"),
        (4, "DELETED", "default/b"),
    ]
    assert all(c.obj.rev == c.rev for c in changes)
    assert same_object(changes[0].obj, a) and same_object(changes[2].obj, a2)
    assert same_object(changes[3].obj, b), "a DELETED entry carries the last state"

    stored = await store.get_object("c1", POD, "default", "a")
    assert same_object(stored, a2)
    assert stored is not None and stored.rev == 3
    assert await store.get_object("c1", POD, "default", "b") is None
    assert [c.rev for c in await store.changes_since(2)] == [3, 4]
    assert [c.rev for c in await store.changes_since(0, limit=3)] == [1, 2, 3]


async def test_revisions_are_global_across_clusters_and_types(store: Store) -> None:
    assert await apply(store, [obj("a")], cluster="c1") == 1
    assert await apply(store, [obj("a", cluster="c2")], cluster="c2") == 2
    assert await apply(store, [obj("a", type_=CM)], type_=CM) == 3
    assert [(c.obj.cluster, c.obj.type) for c in await store.changes_since(0)] == [("c1", POD), ("c2", POD), ("c1", CM)]


async def test_unchanged_hash_writes_no_change(store: Store) -> None:
    await apply(store, [obj("a", 1), obj("b", 2)], seq=1)
    # same hashes (even with another resource_version): nothing changes, not even the rev
    assert await apply(store, [replace(obj("a", 1), resource_version="999"), obj("b", 2)], seq=2) == 2
    assert len(await store.changes_since(0)) == 2
    stored = await store.get_object("c1", POD, "default", "a")
    assert stored is not None and stored.resource_version == "1" and stored.rev == 1
    # one changed, one not: one change
    assert await apply(store, [obj("a", 1), obj("b", 3)], seq=3) == 3


async def test_deleting_a_missing_key_is_a_no_op(store: Store) -> None:
    await apply(store, [obj("a")])
    assert await apply(store, [], ["default/nope", "other/a"], seq=2) == 1
    assert await keys(store) == ["default/a"]


async def test_a_key_upserted_and_deleted_in_one_bundle_ends_deleted(store: Store) -> None:
    assert await apply(store, [obj("a")], ["default/a"]) == 2
    assert [c.type for c in await store.changes_since(0)] == ["ADDED", "DELETED"]
    assert await keys(store) == []


async def test_cluster_scoped_objects_have_an_empty_namespace(store: Store) -> None:
    node = obj("node-1", namespace="", type_="v1/Node")
    await apply(store, [node], type_="v1/Node")
    assert await store.object_hashes("c1", "v1/Node") == {"/node-1": 1}
    assert same_object(await store.get_object("c1", "v1/Node", "", "node-1"), node)
    await apply(store, [], ["/node-1"], type_="v1/Node", seq=2)
    assert await store.object_hashes("c1", "v1/Node") == {}


async def test_full_end_deletes_what_the_full_lacked(store: Store) -> None:
    await apply(store, [obj("a", 1), obj("b", 2), obj("d", 4)], seq=1)
    # FULL seq 5 in two chunks: a (same hash: nothing to write, but it is part of the FULL),
    # b (new hash); then c with the end: d, absent from the FULL, goes.
    assert await apply(store, [obj("a", 1), obj("b", 22)], seq=5, full_seq=5, move=False) == 4
    assert await keys(store) == ["default/a", "default/b", "default/d"], "nothing is deleted before the end"
    assert await apply(store, [obj("c", 3)], seq=5, full_seq=5, full_end=True) == 6
    assert await keys(store) == ["default/a", "default/b", "default/c"]
    tail = await store.changes_since(3)
    assert [(c.rev, c.type, c.obj.key) for c in tail] == [(4, "MODIFIED", "default/b"), (5, "ADDED", "default/c"), (6, "DELETED", "default/d")]
    assert tail[2].obj.hash == 4
    assert [(s.incarnation, s.seq) for s in await store.streams("c1")] == [("inc-1", 5)]


async def test_full_end_deletes_everything_when_the_full_is_empty(store: Store) -> None:
    await apply(store, [obj("a"), obj("b")], seq=1)
    assert await apply(store, [], seq=2, full_seq=2, full_end=True) == 4
    assert await keys(store) == []


async def test_full_end_only_touches_its_cluster_and_type(store: Store) -> None:
    await apply(store, [obj("a")], cluster="c1")
    await apply(store, [obj("a", cluster="c2")], cluster="c2")
    await apply(store, [obj("a", type_=CM)], type_=CM)
    await apply(store, [obj("b")], cluster="c1", seq=2, full_seq=2, full_end=True)
    assert await keys(store, "c1", POD) == ["default/b"]
    assert await keys(store, "c2", POD) == ["default/a"]
    assert await keys(store, "c1", CM) == ["default/a"]


async def test_a_later_full_does_not_count_marks_of_an_earlier_one(store: Store) -> None:
    await apply(store, [obj("a"), obj("b")], seq=1, full_seq=1, full_end=True)
    await apply(store, [obj("a")], seq=2, full_seq=2, full_end=True)
    assert await keys(store) == ["default/a"]


async def test_move_to_sets_the_stream_position_in_the_same_transaction(store: Store) -> None:
    assert await store.streams("c1") == []
    await apply(store, [obj("a")], seq=3, now=50.0)
    [stream] = await store.streams("c1")
    assert (stream.cluster, stream.type, stream.incarnation, stream.seq, stream.error, stream.updated_at) == ("c1", POD, "inc-1", 3, "", 50.0)
    # without move_to (a FULL chunk that is not the last) the position stays
    await apply(store, [obj("b")], seq=4, full_seq=4, move=False)
    assert [(s.incarnation, s.seq) for s in await store.streams("c1")] == [("inc-1", 3)]
    # a bundle that changes no object still moves the stream
    await store.apply_bundle("c1", POD, incarnation="inc-2", seq=1, upserts=[], deletes=[], full_seq=None, full_end=False, move_to=("inc-2", 1), now=60.0)
    assert [(s.incarnation, s.seq, s.updated_at) for s in await store.streams("c1")] == [("inc-2", 1, 60.0)]
    assert await store.current_rev() == 2


async def test_stream_errors_are_recorded_and_cleared_keeping_objects_and_position(store: Store) -> None:
    await apply(store, [obj("a")], seq=7)
    await store.set_stream_error("c1", POD, "forbidden", now=70.0)
    [stream] = await store.streams("c1")
    assert (stream.seq, stream.error, stream.updated_at) == (7, "forbidden", 70.0)
    assert await keys(store) == ["default/a"]
    await store.set_stream_error("c1", POD, "", now=71.0)
    assert [(s.seq, s.error) for s in await store.streams("c1")] == [(7, "")]
    # a type that never applied can report an error; it holds no position of any incarnation
    await store.set_stream_error("c1", CM, "no such kind", now=72.0)
    streams = {s.type: s for s in await store.streams("c1")}
    assert streams[CM].error == "no such kind" and streams[CM].incarnation == ""


async def test_failed_apply_rolls_back_everything(store: Store) -> None:
    await apply(store, [obj("a", 1), obj("b", 2)], seq=1)
    before = (await store.current_rev(), await store.list_objects(POD), await store.streams("c1"), await store.changes_since(0))
    # The first upsert is fine and gets written; the second has no body (NOT NULL) and
    # fails mid-statement: the first, the delete and the stream move must all be undone.
    bad = replace(obj("z"), body=None)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="body"):
        await apply(store, [obj("new", 5), obj("a", 99), bad], ["default/b"], seq=2)
    after = (await store.current_rev(), await store.list_objects(POD), await store.streams("c1"), await store.changes_since(0))
    assert after == before
    # the store is still usable, and no revision was burnt
    assert await apply(store, [obj("new", 5)], seq=2) == 3


async def test_a_bundle_is_never_half_visible_to_readers(store: Store) -> None:
    """Readers running while bundles commit see whole bundles only: bundle i replaces
    generation i-1 by generation i (upserts, then deletes in the same transaction)."""
    batch = 200
    stop = asyncio.Event()
    seen: list[set[str]] = []

    async def read() -> None:
        while not stop.is_set():
            seen.append({key.split("-")[0] for key in await store.object_hashes("c1", POD)})
            await asyncio.sleep(0)

    reader = asyncio.create_task(read())
    for i in range(1, 11):
        await apply(store, [obj(f"g{i}-{j}") for j in range(batch)], [f"default/g{i - 1}-{j}" for j in range(batch)], seq=i)
        await asyncio.sleep(0)
    stop.set()
    await reader
    assert len({frozenset(s) for s in seen}) > 3, "the reader ran between bundles"
    assert all(len(generations) <= 1 for generations in seen), [sorted(g) for g in seen if len(g) > 1][:3]


async def test_concurrent_applies_are_serialised(store: Store) -> None:
    revs = await asyncio.gather(*(apply(store, [obj(f"o{j}", cluster=f"c{i}") for j in range(20)], cluster=f"c{i}") for i in range(8)))
    assert sorted(revs) == [20 * (i + 1) for i in range(8)]
    changes = await store.changes_since(0, limit=0)
    assert [c.rev for c in changes] == list(range(1, 161))
    for i in range(8):  # each bundle's revisions are consecutive
        revs_of = [c.rev for c in changes if c.obj.cluster == f"c{i}"]
        assert revs_of == list(range(revs_of[0], revs_of[0] + 20))


async def test_large_unsigned_hash_round_trips(store: Store) -> None:
    await apply(store, [obj("big", BIG_HASH), obj("high", HIGH_BIT_HASH), obj("low", 7)])
    assert await store.object_hashes("c1", POD) == {"default/big": BIG_HASH, "default/high": HIGH_BIT_HASH, "default/low": 7}
    stored = await store.get_object("c1", POD, "default", "big")
    assert stored is not None and stored.hash == BIG_HASH
    assert {c.obj.hash for c in await store.changes_since(0)} == {BIG_HASH, HIGH_BIT_HASH, 7}
    assert {o.hash for o in await store.list_objects(POD)} == {BIG_HASH, HIGH_BIT_HASH, 7}
    # compared as unsigned: the same big hash is unchanged
    assert await apply(store, [obj("big", BIG_HASH)], seq=2) == 3
    await apply(store, [], ["default/big"], seq=3)
    assert (await store.changes_since(3))[0].obj.hash == BIG_HASH


# ---- reads ---------------------------------------------------------------------------


async def test_list_objects_filters_by_label_equalities_in_pages(store: Store) -> None:
    labelled = [obj(f"p{i}", labels={"app": ("web", "api")[i % 2], "app.kubernetes.io/part-of": "shop" if i % 3 else "blog", "tier": "x"}) for i in range(12)]
    await apply(store, labelled)
    await apply(store, [obj("q", cluster="c2", labels={"app": "web", "app.kubernetes.io/part-of": "shop"})], cluster="c2")

    def names(records: list[ObjectRecord]) -> list[str]:
        return [f"{r.cluster}/{r.name}" for r in records]

    web_shop = [*sorted(f"c1/p{i}" for i in range(12) if i % 2 == 0 and i % 3), "c2/q"]
    assert names(await store.list_objects(POD, labels={"app": "web", "app.kubernetes.io/part-of": "shop"})) == web_shop
    assert names(await store.list_objects(POD, cluster="c2", labels={"app": "web"})) == ["c2/q"]
    assert await store.list_objects(POD, labels={"app": "nope"}) == []
    assert await store.list_objects(POD, labels={"missing": "x"}) == []
    assert len(await store.list_objects(POD, labels={})) == 13
    first = await store.list_objects(POD, labels={"app": "web", "app.kubernetes.io/part-of": "shop"}, limit=2)
    rest = await store.list_objects(
        POD, labels={"app": "web", "app.kubernetes.io/part-of": "shop"}, after=(first[-1].cluster, first[-1].namespace, first[-1].name)
    )
    assert names(first + rest) == web_shop


async def test_list_objects_pages_across_clusters_in_order(store: Store) -> None:
    # names whose order is not obvious ('-' < '.' < '/' in ASCII), across clusters and namespaces
    names = ["x", "x-1", "x.1", "y", "X"]
    for cluster in ("c2", "c1", "c10"):
        await apply(store, [obj(n, namespace=ns, cluster=cluster) for ns in ("b", "a") for n in names], cluster=cluster)
    await apply(store, [obj("cm", type_=CM)], type_=CM)
    expected = sorted((c, ns, n) for c in ("c1", "c10", "c2") for ns in ("a", "b") for n in names)

    def triples(records: list[ObjectRecord]) -> list[tuple[str, str, str]]:
        return [(r.cluster, r.namespace, r.name) for r in records]

    assert triples(await store.list_objects(POD)) == expected
    for page_size in (1, 4, 7, 30, 31):
        got: list[tuple[str, str, str]] = []
        after: tuple[str, str, str] | None = None
        while True:
            page = triples(await store.list_objects(POD, after=after, limit=page_size))
            got += page
            if len(page) < page_size:
                break
            after = page[-1]
        assert got == expected, page_size

    # filters, with cursors inside, before and after the filtered range
    assert triples(await store.list_objects(POD, cluster="c10")) == [t for t in expected if t[0] == "c10"]
    assert triples(await store.list_objects(POD, namespace="a")) == [t for t in expected if t[1] == "a"]
    both = [t for t in expected if t[0] == "c10" and t[1] == "b"]
    assert triples(await store.list_objects(POD, cluster="c10", namespace="b")) == both
    filters: list[tuple[str | None, str | None]] = [(None, None), ("c10", None), (None, "b"), ("c10", "b")]
    for cursor in [("c1", "b", "y"), ("c10", "a", "x"), ("c10", "b", "x-1"), ("c10", "c", ""), ("c2", "a", "")]:
        for only_cluster, only_namespace in filters:
            want = [t for t in expected if t > cursor and only_cluster in (None, t[0]) and only_namespace in (None, t[1])]
            listed = await store.list_objects(POD, cluster=only_cluster, namespace=only_namespace, after=cursor)
            assert triples(listed) == want, (cursor, only_cluster, only_namespace)
            assert triples(await store.list_objects(POD, cluster=only_cluster, namespace=only_namespace, after=cursor, limit=2)) == want[:2]
    assert triples(await store.list_objects(CM)) == [("c1", "default", "cm")]
    assert await store.list_objects("v1/Secret") == []


async def test_list_objects_returns_whole_records(store: Store) -> None:
    a = obj("a", 5, body=b"\x04\x22\x4d\x18binary")
    await apply(store, [a])
    [listed] = await store.list_objects(POD)
    assert same_object(listed, a) and listed.rev == 1
    assert listed.labels == {"app": "a", "tier": "web"}


async def test_counts_are_per_type_for_one_cluster(store: Store) -> None:
    await apply(store, [obj("a"), obj("b")])
    await apply(store, [obj("a", type_=CM)], type_=CM)
    await apply(store, [obj("a", cluster="c2")], cluster="c2")
    assert await store.counts("c1") == {POD: 2, CM: 1}
    assert await store.counts("c2") == {POD: 1}
    assert await store.counts("nope") == {}
    assert await store.counts_by_cluster() == {"c1": {POD: 2, CM: 1}, "c2": {POD: 1}}, "the fleet's counts in one query"
    assert [(s.cluster, s.type) for s in await store.streams(None)] == [("c1", CM), ("c1", POD), ("c2", POD)], "every cluster's streams"


async def test_changes_since_and_trim_window(store: Store) -> None:
    for i in range(10):
        await apply(store, [obj(f"o{i}")], seq=i + 1)
    assert await store.oldest_rev() == 0
    await store.trim_changes(keep=4)
    assert await store.oldest_rev() == 6
    assert [c.rev for c in await store.changes_since(6)] == [7, 8, 9, 10]
    assert [c.rev for c in await store.changes_since(8)] == [9, 10]
    await store.trim_changes(keep=100)  # fewer than that: nothing goes
    assert await store.oldest_rev() == 6
    await store.trim_changes(keep=0)
    assert await store.oldest_rev() == 10 == await store.current_rev()
    assert await store.changes_since(0) == []
    await apply(store, [obj("late")], seq=11)
    assert await store.oldest_rev() == 10
    assert [c.rev for c in await store.changes_since(10)] == [11]
    assert len(await store.list_objects(POD)) == 11, "trimming the log keeps the objects"


# ---- tokens, clusters, leases --------------------------------------------------------


async def test_tokens_are_found_by_hash(store: Store) -> None:
    await store.add_token(name="c1", role="agent", token_hash="h1")
    await store.add_token(name="ops", role="admin", token_hash="h2")
    assert await store.find_token("h1") == TokenRecord("c1", "agent")
    assert await store.find_token("h2") == TokenRecord("ops", "admin")
    assert await store.find_token("h3") is None
    assert await store.find_token("c1") is None


async def test_tokens_are_listed_and_deleted_by_name_and_role(store: Store) -> None:
    await store.add_token(name="ops", role="read", token_hash="h1")
    await store.add_token(name="ops", role="admin", token_hash="h2")
    await store.add_token(name="c1", role="agent", token_hash="h3", types=["v1/Pod"])
    await store.add_token(name="c1", role="agent", token_hash="h4")
    assert await store.tokens() == [
        TokenRecord("c1", "agent", ("v1/Pod",)),
        TokenRecord("c1", "agent"),
        TokenRecord("ops", "admin"),
        TokenRecord("ops", "read"),
    ]
    assert await store.delete_tokens("ops", role="read") == 1
    assert await store.find_token("h1") is None
    assert await store.find_token("h2") == TokenRecord("ops", "admin")
    assert await store.delete_tokens("c1") == 2
    assert await store.delete_tokens("c1") == 0
    assert await store.tokens() == [TokenRecord("ops", "admin")]


async def test_a_read_tokens_scope_is_kept_as_given(store: Store) -> None:
    scope = ReadScope(clusters=("c1", "c2"), cluster_selector="env=prod,tier!=db", namespaces=("team-a",), types=("v1/Pod", "apps/v1/Deployment"))
    await store.add_token(name="dash", role="read", token_hash="h1", scope=scope)
    await store.add_token(name="ops", role="read", token_hash="h2")
    await store.add_token(name="narrow", role="read", token_hash="h3", scope=ReadScope(namespaces=("x",)))
    assert await store.find_token("h1") == TokenRecord("dash", "read", scope=scope)
    assert await store.find_token("h2") == TokenRecord("ops", "read")  # unscoped: None, not an empty scope
    assert [t.scope for t in await store.tokens()] == [scope, ReadScope(namespaces=("x",)), None]


async def test_lists_are_narrowed_to_clusters_and_namespaces_in_the_store(store: Store) -> None:
    for cluster in ("c1", "c2", "c3"):
        await apply(store, [obj(f"p{i}", namespace=ns, cluster=cluster) for i in range(3) for ns in ("a", "b", "c")], cluster=cluster)

    def names(records: list[ObjectRecord]) -> list[str]:
        return [f"{r.cluster}/{r.namespace}/{r.name}" for r in records]

    both = await store.list_objects(POD, clusters={"c3", "c1"}, namespaces=["c", "a"])
    assert names(both) == [f"{c}/{ns}/p{i}" for c in ("c1", "c3") for ns in ("a", "c") for i in range(3)]
    # paged with the cursor, the pages add up to the whole, in order
    pages: list[ObjectRecord] = []
    after = None
    while page := await store.list_objects(POD, clusters={"c3", "c1"}, namespaces=["c", "a"], after=after, limit=4):
        pages += page
        after = (page[-1].cluster, page[-1].namespace, page[-1].name)
    assert names(pages) == names(both)
    assert names(await store.list_objects(POD, clusters=["c2"], namespace="b")) == ["c2/b/p0", "c2/b/p1", "c2/b/p2"]
    assert names(await store.list_objects(POD, cluster="c1", clusters=["c2"])) == []  # both conditions hold
    assert await store.list_objects(POD, clusters=[]) == [] and await store.list_objects(POD, namespaces=()) == []
    assert len(await store.list_objects(POD, clusters=None, namespaces=None)) == 27
    # namespaces alone: across every cluster holding the type, paged the same way
    only_b = [f"{c}/b/p{i}" for c in ("c1", "c2", "c3") for i in range(3)]
    assert names(await store.list_objects(POD, namespaces={"b"})) == only_b
    paged: list[str] = []
    after = None
    while page := await store.list_objects(POD, namespaces={"b"}, after=after, limit=2):
        paged += names(page)
        after = (page[-1].cluster, page[-1].namespace, page[-1].name)
    assert paged == only_b
    assert await store.list_objects(CM, namespaces={"b"}) == []  # no cluster holds the type


async def test_events_are_narrowed_to_clusters(store: Store) -> None:
    await store.add_events([EventRecord(time=float(i), cluster=f"c{i % 3}", reason="Connected", message=f"m{i}") for i in range(9)])
    assert [e.message for e in await store.events(clusters={"c2", "c0"})] == ["m0", "m2", "m3", "m5", "m6", "m8"]
    assert [e.message for e in await store.events(clusters=["c1"], limit=2)] == ["m4", "m7"]
    first = (await store.events(limit=9))[0].id
    assert [e.message for e in await store.events(clusters=["c1"], after=first)] == ["m1", "m4", "m7"]
    assert await store.events(clusters=[]) == []


# ---- feature gates ----------------------------------------------------------------------


async def test_gates_are_set_listed_and_deleted_with_a_revision_per_write(store: Store) -> None:
    assert await store.gates() == [] and await store.gate("feature.x") is None
    a = await store.set_gate("feature.multi-region", True, by="admin", now=10.0, create=True)
    b = await store.set_gate("feature.storage.ceph", False, by="node-1", now=11.0)
    assert a == GateRecord("feature.multi-region", True, 10.0, "admin", 1)
    assert b == GateRecord("feature.storage.ceph", False, 11.0, "node-1", 2)
    with pytest.raises(GateExists):
        await store.set_gate("feature.multi-region", False, by="other", now=12.0, create=True)
    assert await store.gate("feature.multi-region") == a, "a refused create changes nothing"
    c = await store.set_gate("feature.multi-region", False, by="node-2", now=13.0)
    assert c.revision == 3 and await store.gates() == [c, b]
    gone = await store.delete_gate("feature.storage.ceph", by="node-1", now=14.0)
    assert gone == GateRecord("feature.storage.ceph", False, 14.0, "node-1", 4, deleted=True)
    assert await store.delete_gate("feature.storage.ceph", by="node-1", now=15.0) is None
    assert await store.delete_gate("feature.never", by="node-1", now=15.0) is None
    assert await store.gates() == [c] and await store.gate("feature.storage.ceph") is None
    # what changed after a revision, the unset included, for an agent catching up
    assert await store.gates(since=2) == [c, gone]
    assert await store.gates(since=4) == []
    assert await store.gates(since=0) == [c, gone]
    # a deleted gate can be created again
    again = await store.set_gate("feature.storage.ceph", True, by="admin", now=16.0, create=True)
    assert again.revision == 5 and not again.deleted


async def test_every_fleet_gate_write_is_in_the_history_with_old_and_new(store: Store) -> None:
    a = await store.set_gate("feature.x", True, by="admin", now=10.0, create=True)
    with pytest.raises(GateExists):
        await store.set_gate("feature.x", False, by="other", now=11.0, create=True)
    await store.set_gate("feature.x", False, by="agent c1", now=12.0)
    with pytest.raises(GateConflict):  # a stale resend: nothing written, nothing recorded
        await store.set_gate("feature.x", True, by="agent c2", now=13.0, based_on=a.revision)
    await store.delete_gate("feature.x", by="admin", now=14.0)
    assert await store.delete_gate("feature.x", by="admin", now=15.0) is None
    await store.set_gate("feature.y", True, by="admin", now=16.0)
    history = await store.gate_history(key="feature.x")
    assert [(c.cluster, c.old, c.new, c.by, c.at, c.revision) for c in history] == [
        ("", False, None, "admin", 14.0, 3),
        ("", True, False, "agent c1", 12.0, 2),
        ("", None, True, "admin", 10.0, 1),
    ], "newest first, only what was written"
    assert [c.key for c in await store.gate_history()] == ["feature.y", "feature.x", "feature.x", "feature.x"]
    assert len(await store.gate_history(limit=2)) == 2
    assert history[0].id > history[1].id > history[2].id


async def test_a_clusters_own_gate_values_are_kept_with_their_changes_in_the_history(store: Store) -> None:
    first = await store.report_cluster_gate("c1", "feature.x", True, old=None, by="agent c1", now=1.0)
    assert first is not None and (first.cluster, first.old, first.new, first.by, first.at, first.revision) == ("c1", None, True, "agent c1", 1.0, 0)
    assert await store.report_cluster_gate("c1", "feature.x", True, old=True, by="agent c1", now=2.0) is None, "a resend is no change"
    assert [(v.enabled, v.updated_at) for v in await store.cluster_gate_values(cluster="c1")] == [(True, 2.0)], "but its value is kept"
    await store.report_cluster_gate("c2", "feature.x", False, old=True, by="agent c2", now=3.0)
    await store.report_cluster_gate("c1", "feature.y", False, old=None, by="agent c1", now=4.0)
    unset = await store.report_cluster_gate("c1", "feature.x", None, old=True, by="agent c1", now=5.0)
    assert unset is not None and (unset.old, unset.new) == (True, None)
    values = await store.cluster_gate_values()
    assert [(v.cluster, v.key, v.enabled, v.updated_at) for v in values] == [
        ("c1", "feature.x", None, 5.0),
        ("c2", "feature.x", False, 3.0),
        ("c1", "feature.y", False, 4.0),
    ]
    assert [v.cluster for v in await store.cluster_gate_values(key="feature.y")] == ["c1"]
    assert [v.key for v in await store.cluster_gate_values(key="feature.x", cluster="c2")] == ["feature.x"]
    assert [(c.cluster, c.new) for c in await store.gate_history(cluster="c1", key="feature.x")] == [("c1", None), ("c1", True)]
    await store.set_gate("feature.x", True, by="admin", now=6.0)
    assert [c.by for c in await store.gate_history(cluster="")] == ["admin"], "cluster='' is the fleet's writes only"
    assert await store.gates() == [GateRecord("feature.x", True, 6.0, "admin", 1)], "a cluster's own values are not the fleet's"


async def test_the_gate_history_keeps_its_newest_entries(store: Store) -> None:
    cast(Any, store).gate_history_keep = 3  # the engines' setting (--gate-history-keep)
    for i in range(6):
        await store.set_gate("feature.x", i % 2 == 0, by=f"admin-{i}", now=float(i))
    await store.report_cluster_gate("c1", "feature.x", True, old=None, by="agent c1", now=7.0)
    assert [c.by for c in await store.gate_history(limit=100)] == ["agent c1", "admin-5", "admin-4"]


# ---- works and their status --------------------------------------------------------------


async def test_works_are_created_replaced_and_deleted_with_growing_generations(store: Store) -> None:
    assert await store.works() == [] and await store.work("web") is None
    web = await store.put_work("web", b'{"v":1}', by="admin", now=10.0, create=True)
    assert web == WorkRecord("web", b'{"v":1}', generation=1, revision=1, created_at=10.0, updated_at=10.0, updated_by="admin")
    assert await store.work("web") == web

    # a spec equal to the stored one changes nothing: no revision, no new time or author
    assert await store.put_work("web", b'{"v":1}', by="other", now=11.0) == web
    assert await store.work("web") == web

    # create on an existing work is refused and writes nothing, not even a revision
    with pytest.raises(WorkExists):
        await store.put_work("web", b'{"v":2}', by="other", now=12.0, create=True)
    with pytest.raises(WorkExists):
        await store.put_work("web", b'{"v":1}', by="other", now=12.0, create=True)
    assert await store.work("web") == web

    # a changed spec takes the next revision as its generation; the creation time stays
    web2 = await store.put_work("web", b'{"v":2}', by="ops", now=13.0)
    assert web2 == WorkRecord("web", b'{"v":2}', generation=2, revision=2, created_at=10.0, updated_at=13.0, updated_by="ops")
    assert await store.work("web") == web2

    # one counter for all works, listed by name
    api = await store.put_work("api", b"\x00binary{}", by="admin", now=14.0)
    assert (api.generation, api.revision, api.spec) == (3, 3, b"\x00binary{}")
    assert await store.works() == [api, web2]

    # deleted, then created again: the generation keeps growing past the old one
    assert await store.delete_work("web") is True
    assert await store.delete_work("web") is False
    assert await store.delete_work("never") is False
    assert await store.work("web") is None and await store.works() == [api]
    again = await store.put_work("web", b'{"v":1}', by="admin", now=15.0, create=True)
    assert again == WorkRecord("web", b'{"v":1}', generation=4, revision=4, created_at=15.0, updated_at=15.0, updated_by="admin")
    assert again.generation > web2.generation
    assert [w.name for w in await store.works()] == ["api", "web"]


async def test_work_statuses_are_upserted_filtered_and_outlive_their_work(store: Store) -> None:
    def status(work: str, cluster: str, generation: int = 1, at: float = 1.0) -> WorkStatusRecord:
        manifests = f'[{{"manifest":"{work}","condition":"Applied","message":""}}]'.encode()
        return WorkStatusRecord(work=work, cluster=cluster, generation=generation, manifests=manifests, updated_at=at)

    assert await store.work_statuses() == []
    await store.put_work("web", b"{}", by="admin", now=1.0)
    rows = [status("web", "c2"), status("api", "c1"), status("web", "c1"), status("api", "c3")]
    for row in rows:
        await store.set_work_status(row)
    assert await store.work_statuses() == sorted(rows, key=lambda r: (r.work, r.cluster))
    assert await store.work_statuses(work="web") == [status("web", "c1"), status("web", "c2")]
    assert await store.work_statuses(cluster="c1") == [status("api", "c1"), status("web", "c1")]
    assert await store.work_statuses(work="api", cluster="c3") == [status("api", "c3")]
    assert await store.work_statuses(work="api", cluster="c2") == []
    assert await store.work_statuses(work="nope") == []

    # upsert on (work, cluster)
    newer = replace(status("web", "c1", generation=7, at=2.0), manifests=b'[{"manifest":"x","condition":"Failed","message":"boom"}]')
    await store.set_work_status(newer)
    assert await store.work_statuses(work="web", cluster="c1") == [newer]
    assert len(await store.work_statuses()) == 4

    # the rows stay when the work goes: they say what the agents must remove
    assert await store.delete_work("web")
    assert await store.work_statuses(work="web") == [newer, status("web", "c2")]

    await store.delete_work_status("web", "c1")
    await store.delete_work_status("web", "c1")  # absent: a no-op
    await store.delete_work_status("never", "c9")
    assert await store.work_statuses(work="web") == [status("web", "c2")]
    assert await store.work_statuses(cluster="c1") == [status("api", "c1")]


async def test_the_gate_revision_each_cluster_applied_is_kept_per_cluster(store: Store) -> None:
    assert await store.gates_applied() == {}
    await store.set_gates_applied("c1", 3, now=1.0)
    await store.set_gates_applied("c2", 5, now=1.0)
    await store.set_gates_applied("c1", 6, now=2.0)
    assert await store.gates_applied() == {"c1": 6, "c2": 5}


async def test_hub_settings_are_set_and_unset(store: Store) -> None:
    assert await store.hub_settings() == {}
    await store.set_hub_setting("deployment-type", "edge")
    await store.set_hub_setting("other", "x")
    assert await store.hub_settings() == {"deployment-type": "edge", "other": "x"}
    await store.set_hub_setting("deployment-type", "central")
    assert await store.hub_settings() == {"deployment-type": "central", "other": "x"}
    await store.set_hub_setting("other", None)
    await store.set_hub_setting("never", None)  # unsetting what is not set: a no-op
    assert await store.hub_settings() == {"deployment-type": "central"}
    await store.set_hub_setting("empty", "")
    assert await store.hub_settings() == {"deployment-type": "central", "empty": ""}


async def test_works_statuses_and_settings_survive_reopen(engine: Engine, store: Store) -> None:
    await store.put_work("web", b'{"v":1}', by="admin", now=1.0)
    await store.set_work_status(WorkStatusRecord("web", "c1", 1, b"[]", 2.0))
    await store.set_hub_setting("deployment-type", "edge")
    snapshot = (await store.works(), await store.work_statuses(), await store.hub_settings())
    await store.close()
    again = engine.make()
    await again.open()
    try:
        assert (await again.works(), await again.work_statuses(), await again.hub_settings()) == snapshot
        assert (await again.put_work("web", b'{"v":2}', by="admin", now=3.0)).generation == 2, "the counter survives too"
    finally:
        await again.close()


async def test_agent_tokens_may_be_scoped_to_types(store: Store) -> None:
    await store.add_token(name="c1", role="agent", token_hash="h1", types=["v1/Pod", "v1/Service"])
    assert await store.find_token("h1") == TokenRecord("c1", "agent", ("v1/Pod", "v1/Service"))


async def test_agent_tokens_carry_grants_that_are_found_and_listed(store: Store) -> None:
    await store.add_token(name="c1", role="agent", token_hash="h1", grants=["gates"])
    await store.add_token(name="c2", role="agent", token_hash="h2")
    assert await store.find_token("h1") == TokenRecord("c1", "agent", grants=("gates",))
    assert await store.find_token("h2") == TokenRecord("c2", "agent"), "no grant unless given: least authority"
    assert [t.grants for t in await store.tokens()] == [("gates",), ()]


async def test_a_clusters_agent_tokens_are_granted_and_ungranted_in_place(store: Store) -> None:
    await store.add_token(name="c1", role="agent", token_hash="h1")
    await store.add_token(name="c1", role="agent", token_hash="h1b")
    await store.add_token(name="c1", role="read", token_hash="r1")  # an API client that happens to be named c1
    assert await store.set_token_grants("c1", ["gates"]) == 2, "both agent tokens of c1"
    assert (await store.find_token("h1"), await store.find_token("h1b")) == (TokenRecord("c1", "agent", grants=("gates",)),) * 2
    assert await store.find_token("r1") == TokenRecord("c1", "read"), "grants are for agent tokens only"
    assert await store.set_token_grants("c1", []) == 2
    assert await store.find_token("h1") == TokenRecord("c1", "agent"), "revoked"
    assert await store.set_token_grants("nobody", ["gates"]) == 0


async def test_a_gate_write_based_on_an_older_revision_loses_to_someone_elses_later_write(store: Store) -> None:
    mine = await store.set_gate("feature.x", True, by="agent c1", now=1.0)
    admin = await store.set_gate("feature.x", False, by="admin", now=2.0)
    with pytest.raises(GateConflict) as refused:
        await store.set_gate("feature.x", True, by="agent c1", now=3.0, based_on=mine.revision - 1)
    assert refused.value.current == admin
    with pytest.raises(GateConflict):
        await store.delete_gate("feature.x", by="agent c1", now=3.0, based_on=mine.revision)
    assert await store.gate("feature.x") == admin, "nothing was written"
    assert max(g.revision for g in await store.gates(since=0)) == admin.revision, "no revision was taken"
    later = await store.set_gate("feature.x", True, by="agent c1", now=4.0, based_on=admin.revision)
    assert later.revision > admin.revision and later.enabled
    again = await store.set_gate("feature.x", False, by="agent c1", now=5.0, based_on=admin.revision)
    assert not again.enabled, "its own later write is no conflict (two local changes before one snapshot)"
    gone = await store.delete_gate("feature.x", by="admin", now=6.0)
    assert gone is not None
    with pytest.raises(GateConflict):  # a tombstone is a write too
        await store.set_gate("feature.x", True, by="agent c1", now=7.0, based_on=again.revision)
    assert (await store.set_gate("feature.new", True, by="agent c1", now=8.0, based_on=0)).enabled, "a gate never set has nothing to lose"


async def test_admin_labels_are_set_and_removed_per_cluster_in_one_write(store: Store) -> None:
    assert await store.cluster_labels() == {}
    assert await store.label_cluster("c1", add={"env": "prod", "region": "eu"}, remove=[], now=1.0) == {"env": "prod", "region": "eu"}
    assert await store.label_cluster("c2", add={"env": "dev"}, remove=[], now=1.0) == {"env": "dev"}
    assert await store.label_cluster("c1", add={"tier": "1"}, remove=["region", "absent"], now=2.0) == {"env": "prod", "tier": "1"}
    assert await store.cluster_labels() == {"c1": {"env": "prod", "tier": "1"}, "c2": {"env": "dev"}}
    assert await store.cluster_labels("c2") == {"c2": {"env": "dev"}}
    assert await store.label_cluster("c2", add={}, remove=["env"], now=3.0) == {}
    assert await store.cluster_labels() == {"c1": {"env": "prod", "tier": "1"}}
    assert await store.cluster_labels("c2") == {}
    await store.upsert_cluster(ClusterRecord(name="c1", metadata={"env": "dev"}))
    assert await store.cluster_labels("c1") == {"c1": {"env": "prod", "tier": "1"}}, "an agent's Hello does not touch them"
    assert (await store.cluster("c1")) == ClusterRecord(name="c1", metadata={"env": "dev"})


async def test_deleting_a_cluster_removes_it_everywhere_through_the_change_log(store: Store) -> None:
    a, b = obj("a", 1), obj("b", 2)
    await apply(store, [a, b])
    await apply(store, [obj("x", 3, cluster="c2")], cluster="c2")
    await apply(store, [obj("cm", 4, type_=CM)], type_=CM)
    await store.upsert_cluster(ClusterRecord(name="c1", status="active"))
    await store.upsert_cluster(ClusterRecord(name="c2", status="active"))
    await store.label_cluster("c1", add={"env": "prod"}, remove=[], now=1.0)
    await store.add_token(name="c1", role="agent", token_hash="h-agent")
    await store.add_token(name="c1", role="read", token_hash="h-read")  # an API token of the same name is not the cluster's
    granted = await store.acquire_lease("c1", holder="a", incarnation="i", hub_id="h", now=0.0, ttl=30)
    await store.set_gates_applied("c1", 3, now=1.0)
    await store.set_work_status(WorkStatusRecord("web", "c1", 1, b"[]", 2.0))
    await store.set_refresh("c1", mode="push", interval=10, next_refresh_at=100.0)
    before = await store.current_rev()

    gone = await store.delete_cluster("c1")
    assert (gone.objects, gone.tokens, gone.rev, gone.found) == (3, 1, before + 3, True)
    assert await store.current_rev() == before + 3
    changes = await store.changes_since(before)
    assert [(c.type, c.obj.cluster, c.obj.type, c.obj.key) for c in changes] == [  # in key order
        ("DELETED", "c1", CM, "default/cm"),
        ("DELETED", "c1", POD, "default/a"),
        ("DELETED", "c1", POD, "default/b"),
    ]
    assert all(c.type == "DELETED" and c.obj.rev == c.rev for c in changes)
    assert same_object(next(c.obj for c in changes if c.obj.key == "default/a"), a), "a DELETED entry carries the last state"
    assert await store.list_objects(POD, cluster="c1") == [] and await store.list_objects(CM) == []
    assert [o.name for o in await store.list_objects(POD)] == ["x"], "other clusters keep theirs"
    assert await store.cluster("c1") is None and [c.name for c in await store.clusters()] == ["c2"]
    assert await store.cluster_labels("c1") == {}
    assert await store.find_token("h-agent") is None and await store.find_token("h-read") is not None
    assert [lease.cluster for lease in await store.leases()] == []
    assert await store.streams("c1") == []
    assert "c1" not in await store.gates_applied()
    assert await store.work_statuses(cluster="c1") == []
    assert await store.refresh_targets("c1") == []
    with pytest.raises(LeaseLost):  # a session of it still open is fenced out
        await store.apply_batch([BundleWrite("c1", POD, "inc-1", 9, [obj("late", 9)], [], move_to=("inc-1", 9), now=3.0, epoch=granted.lease.epoch)])
    again = await store.delete_cluster("c1")
    assert (again.objects, again.tokens, again.found) == (0, 0, False)


async def test_concurrent_labellers_of_one_cluster_lose_no_label(store: Store) -> None:
    await asyncio.gather(*(store.label_cluster("c1", add={f"k{i}": "v"}, remove=[], now=1.0) for i in range(20)))
    assert await store.cluster_labels("c1") == {"c1": {f"k{i}": "v" for i in range(20)}}


async def test_inactive_clusters_expire_once_and_are_named(store: Store) -> None:
    for name, seen in (("old", 10.0), ("fresh", 50.0), ("gone", 5.0)):
        await store.upsert_cluster(ClusterRecord(name=name, status="active", last_seen=seen))
    await store.set_cluster_status("gone", status="inactive", now=5.0)
    await store.touch_cluster("old", now=45.0)  # a pending touch counts
    assert await store.expire_clusters(cutoff=40.0) == []
    assert await store.expire_clusters(cutoff=48.0) == ["old"]
    assert await store.expire_clusters(cutoff=48.0) == [], "an expired cluster is reported once"
    assert {c.name: c.status for c in await store.clusters()} == {"fresh": "active", "gone": "inactive", "old": "inactive"}


async def test_leases_are_listed(store: Store) -> None:
    await store.acquire_lease("c1", holder="a", incarnation="i", hub_id="h", now=0.0, ttl=30)
    await store.release_lease("c1", holder="a", incarnation="i", now=5.0, grace=15)
    (lease,) = await store.leases()
    assert (lease.cluster, lease.holder, lease.connected, lease.expires_at) == ("c1", "a", False, 20.0)


async def test_a_replica_renews_its_agents_leases_together_and_learns_which_it_lost(store: Store) -> None:
    kept = (await store.acquire_lease("kept", holder="a", incarnation="i", hub_id="h", now=0.0, ttl=30)).lease
    in_grace = (await store.acquire_lease("in-grace", holder="b", incarnation="i", hub_id="h", now=0.0, ttl=30)).lease
    await store.release_lease("in-grace", holder="b", incarnation="i", now=1.0, grace=15)
    old = (await store.acquire_lease("taken", holder="c", incarnation="k", hub_id="h", now=0.0, ttl=30)).lease
    await store.release_lease("taken", holder="c", incarnation="k", now=1.0, grace=0)
    await store.acquire_lease("taken", holder="other", incarnation="j", hub_id="h2", now=2.0, ttl=30)
    lost = await store.renew_leases([("kept", kept.epoch), ("in-grace", in_grace.epoch), ("taken", old.epoch), ("never", 1)], hub_id="h", now=10.0, ttl=30)
    assert lost == ["never", "taken"], "a lease another session was granted since (or none) is not renewed"
    leases = {lease.cluster: lease for lease in await store.leases()}
    assert (leases["kept"].expires_at, leases["kept"].connected, leases["kept"].epoch) == (40.0, True, kept.epoch)
    assert (leases["in-grace"].holder, leases["in-grace"].connected, leases["in-grace"].expires_at) == ("b", True, 40.0)
    assert (leases["taken"].holder, leases["taken"].expires_at) == ("other", 32.0)
    assert "never" not in leases
    assert await store.renew_leases([("taken", old.epoch)], hub_id="h", now=40.0, ttl=30) == ["taken"], "expired or not, the old epoch is fenced"
    assert await store.renew_leases([], hub_id="h", now=31.0, ttl=30) == []


async def test_every_grant_takes_the_next_epoch_and_renewals_keep_it(store: Store) -> None:
    first = await store.acquire_lease("c1", holder="a", incarnation="i1", hub_id="h1", now=0.0, ttl=30)
    again = await store.acquire_lease("c1", holder="a", incarnation="i1", hub_id="h2", now=1.0, ttl=30)  # the same process reconnecting
    assert first.lease.epoch >= 1 and again.lease.epoch == first.lease.epoch + 1
    assert await store.renew_leases([("c1", again.lease.epoch)], hub_id="h2", now=5.0, ttl=30) == []
    (lease,) = await store.leases()
    assert (lease.epoch, lease.expires_at) == (again.lease.epoch, 35.0)
    await store.release_lease("c1", holder="a", incarnation="i1", now=6.0, grace=0)
    other = await store.acquire_lease("c1", holder="b", incarnation="j", hub_id="h1", now=7.0, ttl=30)
    assert other.granted and other.lease.epoch == again.lease.epoch + 1
    refused = await store.acquire_lease("c1", holder="a", incarnation="i2", hub_id="h1", now=8.0, ttl=30)
    assert not refused.granted and refused.lease.epoch == other.lease.epoch, "a refusal takes no epoch"


async def test_a_live_agent_keeps_its_cluster_from_another_process_with_its_agent_id(store: Store) -> None:
    await store.upsert_cluster(ClusterRecord(name="c1", agent_id="a", incarnation="i1", status="active", last_seen=100.0))
    live = await store.acquire_lease("c1", holder="a", incarnation="i1", hub_id="h", now=100.0, ttl=30)
    await store.touch_cluster("c1", now=110.0)  # the holder speaks (buffered: it counts all the same)
    twin = await store.acquire_lease("c1", holder="a", incarnation="i2", hub_id="h", now=111.0, ttl=30, silent_before=111.0 - 15)
    assert not twin.granted and twin.lease.incarnation == "i1" and twin.lease.epoch == live.lease.epoch
    # the holder has been silent for longer than the takeover time: it is gone (a partition, a crash)
    taken = await store.acquire_lease("c1", holder="a", incarnation="i2", hub_id="h", now=126.0, ttl=30, silent_before=126.0 - 15)
    assert taken.granted and taken.lease.incarnation == "i2" and taken.lease.epoch == live.lease.epoch + 1
    # a disconnected holder is gone at once (a restart), silent or not
    await store.touch_cluster("c1", now=127.0)
    await store.release_lease("c1", holder="a", incarnation="i2", now=127.0, grace=15)
    restarted = await store.acquire_lease("c1", holder="a", incarnation="i3", hub_id="h", now=127.5, ttl=30, silent_before=127.5 - 15)
    assert restarted.granted and restarted.lease.incarnation == "i3"


async def test_a_write_of_a_session_that_lost_its_lease_is_fenced_and_nothing_of_its_batch_is_written(store: Store) -> None:
    old = (await store.acquire_lease("c1", holder="a", incarnation="i", hub_id="h1", now=0.0, ttl=30)).lease
    other = (await store.acquire_lease("c2", holder="b", incarnation="i", hub_id="h1", now=0.0, ttl=30)).lease
    await store.apply_batch([BundleWrite("c1", POD, "i", 1, [obj("a")], move_to=("i", 1), epoch=old.epoch)])
    new = (await store.acquire_lease("c1", holder="a", incarnation="i", hub_id="h2", now=1.0, ttl=30)).lease  # the agent moved to h2
    await store.apply_batch([BundleWrite("c1", POD, "i", 2, [obj("b")], move_to=("i", 2), epoch=new.epoch)])
    rev = await store.current_rev()
    stale = BundleWrite("c1", POD, "i", 1, [obj("a", 7)], ["default/b"], move_to=("i", 1), epoch=old.epoch)  # the paused replica wakes up
    fine = BundleWrite("c2", POD, "i", 1, [obj("x", cluster="c2")], move_to=("i", 1), epoch=other.epoch)
    with pytest.raises(LeaseLost) as caught:
        await store.apply_batch([fine, stale])
    assert caught.value.fenced == (1,) and "'c1'" in str(caught.value) and "another session holds the cluster" in str(caught.value)
    assert await store.current_rev() == rev, "nothing of the batch is written"
    assert [(s.cluster, s.incarnation, s.seq) for s in await store.streams(None)] == [("c1", "i", 2)], "no stream position moves backwards"
    assert {o.name for o in await store.list_objects(POD)} == {"a", "b"}
    assert await store.apply_batch([fine]) == rev + 1, "the rest of the batch applies without the fenced bundle"
    unfenced = BundleWrite("c3", POD, "i", 1, [obj("p", cluster="c3")], move_to=("i", 1))  # a pull refresh holds no lease
    assert await store.apply_batch([unfenced]) == rev + 2
    with pytest.raises(LeaseLost):
        await store.apply_batch([BundleWrite("c4", POD, "i", 1, [obj("q", cluster="c4")], epoch=1)])  # no lease at all


async def test_events_keep_their_order_and_filter(store: Store) -> None:
    await store.add_events(
        [EventRecord(time=float(i), cluster=f"c{i % 2}", reason="Connected" if i % 3 else "GapDetected", message=f"m{i}") for i in range(10)]
    )
    newest = await store.events(limit=3)
    assert [e.message for e in newest] == ["m7", "m8", "m9"]
    assert [e.id for e in newest] == sorted(e.id for e in newest)
    after = await store.events(after=newest[0].id, limit=100)
    assert [e.message for e in after] == ["m8", "m9"]
    assert [e.message for e in await store.events(cluster="c0", reason="GapDetected")] == ["m0", "m6"]
    assert (await store.events(limit=1))[0].time == 9.0


async def test_clusters_are_upserted_touched_and_marked(store: Store) -> None:
    record = ClusterRecord(
        name="c2", agent_id="ag", incarnation="i1", status="active", metadata={"region": "eu"}, connected_at=10.0, last_seen=10.0, hub_id="hub-a"
    )
    await store.upsert_cluster(record)
    await store.upsert_cluster(ClusterRecord(name="c1"))
    assert await store.clusters() == [ClusterRecord(name="c1"), record]
    assert await store.cluster("c2") == record and await store.cluster("c3") is None
    await store.touch_cluster("c2", now=12.5)
    await store.touch_cluster("c2", now=12.0)  # never backwards
    [_, c2] = await store.clusters()
    assert c2.last_seen == 12.5
    await store.set_cluster_status("c2", status="inactive", now=13.0)
    [_, c2] = await store.clusters()
    assert (c2.status, c2.last_seen, c2.connected_at, c2.metadata) == ("inactive", 13.0, 10.0, {"region": "eu"})
    await store.upsert_cluster(replace(record, incarnation="i2", connected_at=20.0, last_seen=20.0, metadata={}))
    [_, c2] = await store.clusters()
    assert (c2.status, c2.incarnation, c2.connected_at, c2.metadata) == ("active", "i2", 20.0, {})
    await store.set_cluster_status("unknown", status="inactive", now=1.0)
    await store.touch_cluster("unknown", now=1.0)
    assert [c.name for c in await store.clusters()] == ["c1", "c2"]


async def test_refresh_claims_move_the_next_time_and_take_push_clusters_only_where_connected(store: Store) -> None:
    await store.set_refresh("p1", mode="pull", url="http://a/v1/state", interval=10, next_refresh_at=100.0)
    await store.set_refresh("p2", mode="pull", url="http://b/v1/state", interval=10, next_refresh_at=105.0)
    await store.set_refresh("s1", mode="push", interval=30, next_refresh_at=100.0)  # its agent is on hub-b
    await store.acquire_lease("s1", holder="ag", incarnation="i", hub_id="hub-b", now=100.0, ttl=1000)
    assert await store.claim_due_refreshes(hub_id="hub-a", now=99.0) == []
    claimed = await store.claim_due_refreshes(hub_id="hub-a", now=101.0)
    assert [(t.cluster, t.url, t.next_refresh_at) for t in claimed] == [("p1", "http://a/v1/state", 111.0)]
    assert await store.claim_due_refreshes(hub_id="hub-a", now=101.0) == [], "a claim moves the next time"
    assert [t.cluster for t in await store.claim_due_refreshes(hub_id="hub-b", now=106.0)] == ["p2", "s1"]
    await store.postpone_refresh("p1", until=113.0)  # its refresh started at 103
    await store.postpone_refresh("p1", until=112.0)  # never earlier
    assert await store.claim_due_refreshes(hub_id="hub-a", now=112.5) == [], "a late start moves the next time on"
    assert [t.cluster for t in await store.claim_due_refreshes(hub_id="hub-a", now=113.0)] == ["p1"]
    # re-registering keeps an earlier next time; removing stops the refreshes
    await store.set_refresh("p1", mode="pull", url="http://a2/v1/state", interval=5, next_refresh_at=500.0)
    assert {t.cluster: (t.url, t.interval, t.next_refresh_at) for t in await store.refresh_targets()}["p1"] == ("http://a2/v1/state", 5, 123.0)
    assert await store.remove_refresh("p1") and not await store.remove_refresh("p1")
    assert [t.cluster for t in await store.refresh_targets()] == ["p2", "s1"]
    assert [t.cluster for t in await store.refresh_targets("s1")] == ["s1"] and await store.refresh_targets("p1") == []


async def test_claims_are_limited_and_oldest_first(store: Store) -> None:
    for i in range(5):
        await store.set_refresh(f"p{i}", mode="pull", url="u", interval=60, next_refresh_at=float(10 - i))
    assert [t.cluster for t in await store.claim_due_refreshes(hub_id="h", now=20.0, limit=2)] == ["p3", "p4"]
    assert len(await store.claim_due_refreshes(hub_id="h", now=20.0, limit=10)) == 3


async def test_locks_are_exclusive_until_released_or_expired(store: Store) -> None:
    assert await store.try_lock("refresh/c1", holder="a", now=0.0, ttl=10)
    assert not await store.try_lock("refresh/c1", holder="b", now=5.0, ttl=10)
    assert await store.lock_holder("refresh/c1", now=5.0) == "a"
    assert await store.try_lock("refresh/c1", holder="a", now=9.0, ttl=10), "the holder renews it"
    assert not await store.try_lock("refresh/c1", holder="b", now=15.0, ttl=10), "until 19 now"
    assert await store.try_lock("refresh/c2", holder="b", now=5.0, ttl=10), "locks are per name"
    await store.unlock("refresh/c1", holder="b")  # not the holder: nothing happens
    assert not await store.try_lock("refresh/c1", holder="b", now=6.0, ttl=10)
    await store.unlock("refresh/c1", holder="a")
    assert await store.try_lock("refresh/c1", holder="b", now=6.0, ttl=10)
    assert await store.try_lock("refresh/c1", holder="c", now=16.5, ttl=10), "an expired lock is free"
    assert await store.lock_holder("refresh/c1", now=26.0) == "c" and await store.lock_holder("refresh/c1", now=26.5) is None


async def test_commits_and_events_are_announced_to_listeners(store: Store) -> None:
    heard: list[tuple[str, str]] = []
    store.listen(lambda channel, payload: heard.append((channel, payload)))
    rev = await apply(store, [obj("a"), obj("b")])
    await apply(store, [obj("a")], seq=2)  # no change: no revision, nothing to announce
    await store.add_events([EventRecord(time=1.0, cluster="c1", reason="Connected", message="m")])
    await store.notify("resync", "c1")
    await wait_for(lambda: len(heard) >= 3)
    [newest] = await store.events(limit=1)
    assert heard == [("changes", str(rev)), ("events", str(newest.id)), ("resync", "c1")]


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Notifications of a shared engine arrive on another connection: wait for them, with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_last_seen_survives_reopen(engine: Engine, store: Store) -> None:
    await store.upsert_cluster(ClusterRecord(name="c1", status="active", last_seen=1.0))
    for t in (1.1, 1.2, 1.3):  # within a second of each other
        await store.touch_cluster("c1", now=t)
    await store.close()
    again = engine.make()
    await again.open()
    try:
        assert [c.last_seen for c in await again.clusters()] == [1.3]
    finally:
        await again.close()


async def test_lease_is_exclusive_and_held_for_the_same_agent_during_grace(store: Store) -> None:
    first = await store.acquire_lease("c1", holder="agent-a", incarnation="i1", hub_id="hub-1", now=100.0, ttl=30.0)
    assert first.granted and first.lease.connected and first.lease.expires_at == 130.0
    assert (first.lease.cluster, first.lease.holder, first.lease.incarnation, first.lease.hub_id) == ("c1", "agent-a", "i1", "hub-1")

    other = await store.acquire_lease("c1", holder="agent-b", incarnation="j1", hub_id="hub-2", now=110.0, ttl=30.0)
    assert not other.granted and other.lease == first.lease

    renewed = await store.acquire_lease("c1", holder="agent-a", incarnation="i1", hub_id="hub-1", now=120.0, ttl=30.0)
    assert renewed.granted and renewed.lease.expires_at == 150.0

    await store.release_lease("c1", holder="agent-b", incarnation="j1", now=121.0, grace=60.0)  # not the holder: nothing happens
    blocked = await store.acquire_lease("c1", holder="agent-b", incarnation="j1", hub_id="hub-2", now=122.0, ttl=30.0)
    assert not blocked.granted and blocked.lease.connected

    await store.release_lease("c1", holder="agent-a", incarnation="i0", now=124.0, grace=60.0)  # an older incarnation's late close: nothing happens
    still = await store.acquire_lease("c1", holder="agent-b", incarnation="j1", hub_id="hub-2", now=124.5, ttl=30.0)
    assert not still.granted and still.lease.connected
    await store.release_lease("c1", holder="agent-a", incarnation="i1", now=125.0, grace=60.0)
    in_grace = await store.acquire_lease("c1", holder="agent-b", incarnation="j1", hub_id="hub-2", now=170.0, ttl=30.0)
    assert not in_grace.granted
    assert (in_grace.lease.holder, in_grace.lease.connected, in_grace.lease.expires_at) == ("agent-a", False, 185.0)

    back = await store.acquire_lease("c1", holder="agent-a", incarnation="i2", hub_id="hub-3", now=171.0, ttl=30.0)
    assert back.granted and back.lease.connected and (back.lease.incarnation, back.lease.hub_id, back.lease.expires_at) == ("i2", "hub-3", 201.0)

    unrelated = await store.acquire_lease("c2", holder="agent-b", incarnation="j1", hub_id="hub-2", now=171.0, ttl=30.0)
    assert unrelated.granted


async def test_expired_lease_can_be_taken_by_another_agent(store: Store) -> None:
    await store.acquire_lease("c1", holder="agent-a", incarnation="i1", hub_id="hub-1", now=100.0, ttl=30.0)
    # connected but not renewed (the hub died): expired at 130
    taken = await store.acquire_lease("c1", holder="agent-b", incarnation="j1", hub_id="hub-2", now=130.0, ttl=30.0)
    assert taken.granted and taken.lease.holder == "agent-b" and taken.lease.expires_at == 160.0
    # released and the grace is over
    await store.release_lease("c1", holder="agent-b", incarnation="j1", now=140.0, grace=5.0)
    again = await store.acquire_lease("c1", holder="agent-a", incarnation="i2", hub_id="hub-1", now=145.0, ttl=30.0)
    assert again.granted and again.lease.holder == "agent-a" and again.lease.connected
    lost = await store.acquire_lease("c1", holder="agent-b", incarnation="j1", hub_id="hub-2", now=146.0, ttl=30.0)
    assert not lost.granted and lost.lease.holder == "agent-a"


# ---- durability ----------------------------------------------------------------------


async def test_data_survives_reopen(engine: Engine, store: Store) -> None:
    await store.add_token(name="c1", role="agent", token_hash="h")
    await store.upsert_cluster(ClusterRecord(name="c1", agent_id="ag", status="active", metadata={"k": "v"}, last_seen=5.0))
    await store.acquire_lease("c1", holder="ag", incarnation="i", hub_id="hub", now=1.0, ttl=1000.0)
    await apply(store, [obj("a", BIG_HASH), obj("b")], seq=1)
    await apply(store, [], ["default/b"], seq=2)
    await store.set_stream_error("c1", POD, "partial", now=3.0)
    snapshot = (
        await store.clusters(),
        await store.streams("c1"),
        await store.list_objects(POD),
        await store.changes_since(0),
        await store.current_rev(),
        await store.oldest_rev(),
    )
    await store.close()

    again = engine.make()
    await again.open()
    try:
        assert await again.find_token("h") == TokenRecord("c1", "agent")
        reopened = (
            await again.clusters(),
            await again.streams("c1"),
            await again.list_objects(POD),
            await again.changes_since(0),
            await again.current_rev(),
            await again.oldest_rev(),
        )
        assert reopened == snapshot
        other = await again.acquire_lease("c1", holder="x", incarnation="i", hub_id="hub", now=2.0, ttl=1.0)
        assert not other.granted and other.lease.holder == "ag"
        assert await apply(again, [obj("c")], seq=3) == 4
    finally:
        await again.close()


CHILD = """
import asyncio, sys
from fleetsync.store.contract import ObjectRecord

async def main():
    store = {source}
    await store.open()
    seq = 0
    while True:  # bundle after bundle, as fast as it can, until killed
        seq += 1
        upserts = [
            ObjectRecord(cluster="c1", type="v1/Pod", namespace="ns", name=f"p{{seq}}-{{i}}", uid="u", resource_version=str(seq),
                         hash=2**64 - seq, labels={{}}, owner="", body=b"x" * 2000, compression=0, incarnation="i")
            for i in range(50)
        ]
        rev = await store.apply_bundle("c1", "v1/Pod", incarnation="i", seq=seq, upserts=upserts, deletes=[], full_seq=None,
                                       full_end=False, move_to=("i", seq), now=float(seq))
        print("committed", seq, rev, flush=True)

asyncio.run(main())
"""


async def test_committed_bundle_survives_kill_9(engine: Engine) -> None:
    store = engine.make()
    await store.open()  # create the schema first, so the child only applies bundles
    await store.close()
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD.format(source=engine.source), stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdout is not None
        for _ in range(5):
            line = (await asyncio.wait_for(child.stdout.readline(), 60)).decode()
            assert line.startswith("committed"), f"child said {line!r}"
        _, seq, rev = line.split()
    finally:
        # Right after the ack: the next bundle is likely mid-transaction. Kill once, through the
        # Process: a second kill (or os.kill first) makes Popen.send_signal poll() and reap the
        # zombie before asyncio's child watcher can, and wait() then reports 255, not -9.
        if child.returncode is None:
            child.kill()
        await asyncio.wait_for(child.wait(), 30)
    assert child.returncode == -signal.SIGKILL

    again = engine.make()
    await again.open()
    try:
        assert await again.current_rev() >= int(rev)
        [stream] = await again.streams("c1")
        assert stream.seq >= int(seq)
        held = await again.object_hashes("c1", POD)
        assert len(held) == await again.current_rev(), "whole bundles only"
        for s in range(1, int(seq) + 1):
            assert all(held[f"ns/p{s}-{i}"] == 2**64 - s for i in range(50))
        stored = await again.get_object("c1", POD, "ns", f"p{seq}-49")
        assert stored is not None and stored.body == b"x" * 2000
    finally:
        await again.close()


# ---- several hub replicas on one PostgreSQL database --------------------------------------


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[list[PostgresStore]]:
    stores = [PostgresStore(pg_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))  # migrations race: each is applied once
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


async def test_replicas_apply_migrations_once_and_share_revisions(replicas: list[PostgresStore]) -> None:
    assert [await r.schema_version() for r in replicas] == [len(POSTGRES_MIGRATIONS)] * 3
    revs = await asyncio.gather(*(apply(r, [obj(f"o{j}", cluster=f"c{i}") for j in range(50)], cluster=f"c{i}") for i, r in enumerate(replicas)))
    assert sorted(revs) == [50, 100, 150]
    changes = await replicas[0].changes_since(0, limit=0)
    assert [c.rev for c in changes] == list(range(1, 151))


async def test_replicas_group_committing_at_once_make_gap_free_revisions_a_reader_never_sees_out_of_order(replicas: list[PostgresStore]) -> None:
    # Each replica commits batches of bundles of many clusters (group commit) while a reader
    # follows the change log: a revision may never appear below one the reader has already
    # passed (it would be skipped by every watch), and no revision may be missing.
    done = False
    followed: list[int] = []

    async def follow() -> None:
        while True:
            stop = done  # read before the changes: a last round after the writers finished
            changes = await replicas[0].changes_since(followed[-1] if followed else 0, limit=0)
            followed.extend(c.rev for c in changes)
            if stop:
                return
            await asyncio.sleep(0)

    async def write(r: int, replica: PostgresStore) -> None:
        for round_ in range(1, 6):
            batch = [
                BundleWrite(f"r{r}-c{i}", POD, "i", round_, [obj(f"o{round_}", round_, cluster=f"r{r}-c{i}")], [], move_to=("i", round_), now=1.0)
                for i in range(10)
            ]
            await replica.apply_batch(batch)

    reader = asyncio.create_task(follow())
    await asyncio.gather(*(write(r, replica) for r, replica in enumerate(replicas)))
    done = True
    await reader
    assert followed == list(range(1, 3 * 5 * 10 + 1))


async def test_replicas_hear_each_others_commits_in_revision_order(replicas: list[PostgresStore]) -> None:
    heard: list[int] = []
    replicas[0].listen(lambda channel, payload: heard.append(int(payload)) if channel == "changes" else None)
    for i in range(20):
        await apply(replicas[1 + i % 2], [obj(f"o{i}")], seq=i + 1)
    await wait_for(lambda: len(heard) == 20)
    assert heard == list(range(1, 21))


async def test_replicas_race_for_a_lease_and_exactly_one_wins(replicas: list[PostgresStore]) -> None:
    for round_ in range(10):
        results = await asyncio.gather(
            *(r.acquire_lease(f"c{round_}", holder=f"agent-{i}", incarnation="i", hub_id=f"hub-{i}", now=0.0, ttl=30) for i, r in enumerate(replicas))
        )
        assert sum(r.granted for r in results) == 1
        winner = next(r.lease for r in results if r.granted)
        assert all(r.lease == winner for r in results)


async def test_replicas_writing_one_gate_at_once_agree_on_the_last_write(replicas: list[PostgresStore]) -> None:
    writes = await asyncio.gather(*(r.set_gate("feature.x", i % 2 == 0, by=f"r{i}", now=float(i)) for i in range(20) for r in replicas))
    assert sorted(w.revision for w in writes) == list(range(1, 20 * len(replicas) + 1)), "one revision per write, none shared"
    last = max(writes, key=lambda w: w.revision)
    assert all([await r.gate("feature.x") == last for r in replicas])


async def test_replicas_writing_one_work_at_once_agree_on_the_last_write(replicas: list[PostgresStore]) -> None:
    writes = await asyncio.gather(
        *(r.put_work("web", f'{{"write":{i},"replica":{j}}}'.encode(), by=f"r{j}", now=float(i)) for i in range(20) for j, r in enumerate(replicas))
    )
    assert sorted(w.revision for w in writes) == list(range(1, 20 * len(replicas) + 1)), "one revision per write, none shared"
    assert all(w.generation == w.revision for w in writes)
    last = max(writes, key=lambda w: w.revision)
    assert all([await r.work("web") == last for r in replicas])
    first = min(writes, key=lambda w: w.revision)
    assert last.created_at == first.created_at, "the creation time is the first write's"
    # concurrent creates of one new work: exactly one wins, the others are refused
    results = await asyncio.gather(*(r.put_work("api", b"{}", by=f"r{j}", now=1.0, create=True) for j, r in enumerate(replicas)), return_exceptions=True)
    assert sum(isinstance(r, WorkRecord) for r in results) == 1
    assert sum(isinstance(r, WorkExists) for r in results) == len(replicas) - 1
    assert (await replicas[0].work("api")) in results


async def test_replicas_claim_disjoint_refreshes(replicas: list[PostgresStore]) -> None:
    for i in range(60):
        await replicas[0].set_refresh(f"p{i:02}", mode="pull", url="u", interval=60, next_refresh_at=0.0)
    claims = await asyncio.gather(*(r.claim_due_refreshes(hub_id=f"hub-{i}", now=1.0, limit=25) for i, r in enumerate(replicas)))
    claims += [await replicas[0].claim_due_refreshes(hub_id="hub-0", now=1.0, limit=100)]
    names = [t.cluster for claim in claims for t in claim]
    assert sorted(names) == [f"p{i:02}" for i in range(60)], "every due cluster claimed exactly once"


async def test_a_lost_listen_connection_is_reestablished(replicas: list[PostgresStore], postgres: PostgresServer) -> None:
    heard: list[str] = []
    replicas[0].listen(lambda channel, payload: heard.append(channel))
    postgres.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
    await wait_for(lambda: "changes" in heard, timeout=15)  # the reconnect announces the current revision
    heard.clear()
    await apply(replicas[1], [obj("after")])
    await wait_for(lambda: "changes" in heard)


# ---- SQLite specifics ----------------------------------------------------------------


async def test_sqlite_uses_wal_and_applies_migrations_once(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    for _ in range(3):
        s = SQLiteStore(path)
        await s.open()
        await s.open()  # idempotent
        await s.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [(n,) for n in range(1, len(MIGRATIONS) + 1)]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        assert {"tokens", "clusters", "leases", "streams", "objects", "changes", "events", "meta", "schema_version"} <= tables
        assert {"gates", "works", "work_status", "hub_settings"} <= tables
        assert db.execute("SELECT value FROM meta WHERE key = 'works_rev'").fetchone() == (0,)
        strict = {r[0]: r[1] for r in db.execute("SELECT name, strict FROM pragma_table_list WHERE schema = 'main'")}
        assert strict["works"] == strict["work_status"] == strict["hub_settings"] == 1
        db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", (len(MIGRATIONS) + 1,))
        db.commit()
    finally:
        db.close()
    newer = SQLiteStore(path)
    with pytest.raises(RuntimeError, match="newer than this fleetsync"):
        await newer.open()


async def test_sqlite_rejects_an_unknown_synchronous_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "x.db", synchronous="SOMETIMES")
    s = SQLiteStore(tmp_path / "x.db", synchronous="normal")
    await s.open()
    await s.close()


async def test_sqlite_change_log_keeps_its_window_by_itself(tmp_path: Path) -> None:
    small = SQLiteStore(tmp_path / "small.db", change_log_keep=5)
    await small.open()
    try:
        for i in range(4):
            await apply(small, [obj(f"o{i}-{j}") for j in range(3)], seq=i + 1)
        assert await small.current_rev() == 12
        assert await small.oldest_rev() == 7
        assert [c.rev for c in await small.changes_since(7)] == [8, 9, 10, 11, 12]
    finally:
        await small.close()
    # trimmed in steps of 1% of the window: never less than the window, at most a step more
    stepped = SQLiteStore(tmp_path / "stepped.db", change_log_keep=200)
    await stepped.open()
    try:
        for i in range(260):
            rev = await apply(stepped, [obj(f"o{i}")], seq=i + 1)
            assert min(rev, 200) <= rev - await stepped.oldest_rev() <= 201
    finally:
        await stepped.close()


async def test_sqlite_events_keep_their_window_by_itself(tmp_path: Path) -> None:
    small = SQLiteStore(tmp_path / "events.db", events_keep=100)
    await small.open()
    try:
        for i in range(250):
            await small.add_events([EventRecord(time=float(i), cluster="c1", reason="Connected", message=str(i))])
        kept = await small.events(limit=10_000)
        assert 100 <= len(kept) <= 101 and kept[-1].message == "249"
    finally:
        await small.close()


async def test_sqlite_events_written_many_at_once_keep_their_order_and_window(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db", events_keep=1000)
    await store.open()
    try:
        # more than one multi-row statement's worth in one call
        await store.add_events([EventRecord(time=float(i), cluster="c1", reason="Connected", message=str(i)) for i in range(1201)])
        kept = await store.events(limit=10_000)
        assert 1000 <= len(kept) <= 1010 and kept[-1].message == "1200"
        assert [int(e.message) for e in kept] == list(range(1201 - len(kept), 1201))
        assert [e.id for e in kept] == sorted(e.id for e in kept)
    finally:
        await store.close()


async def test_reported_types_are_replaced_per_cluster_and_survive_reopen(engine: Engine, store: Store) -> None:
    assert await store.reported_types() == {}
    widget = '{"group":"example.com","version":"v1","kind":"Widget","plural":"widgets"}'
    gadget = '{"group":"example.com","version":"v1","kind":"Gadget","plural":"gadgets"}'
    await store.set_reported_types("c1", {"example.com/v1/Widget": widget, "example.com/v1/Gadget": gadget}, now=1.0)
    await store.set_reported_types("c2", {"example.com/v1/Widget": widget}, now=1.0)
    await store.set_reported_types("c1", {"example.com/v1/Gadget": gadget}, now=2.0)  # the CRD of widgets was deleted in c1
    expected = {"c1": {"example.com/v1/Gadget": gadget}, "c2": {"example.com/v1/Widget": widget}}
    assert await store.reported_types() == expected
    await store.close()
    again = engine.make()
    await again.open()
    try:
        assert await again.reported_types() == expected, "the API serves them while the agents are away"
        await again.set_reported_types("c2", {}, now=3.0)
        assert await again.reported_types() == {"c1": {"example.com/v1/Gadget": gadget}}
    finally:
        await again.close()
