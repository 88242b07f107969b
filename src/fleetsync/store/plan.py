"""The pure plan of a batch of bundle writes: which rows change and which revision each change takes.

Every store engine applies a batch the same way: read what it holds of the keys the
batch touches, let :func:`plan_round` decide, then write the plan with a handful of
statements. The decisions are here, once, with no I/O, so the engines cannot drift
apart and a third engine would not copy them again:

- an upsert whose hash equals the stored one changes nothing (a FULL only marks it, and
  not even that in the bundle that ends the FULL: marks are read only by a FULL's end, and
  that end counts the bundle's own keys as carried. A reconnecting agent's FULL of an
  unchanged cluster, or a pull refresh, thus writes nothing for its last chunk's objects);
  any other takes the next revision and is logged ADDED or MODIFIED;
- a delete of a key held (or upserted in the same bundle) takes the next revision and is
  logged DELETED with the object's last state;
- the end of a FULL deletes, by (namespace, name), every key of the stream that this
  FULL did not carry;
- within a bundle: upserts in order (a key given twice counts once, with its last
  state), then deletes in order, then the FULL's end.

Revisions are planned as offsets (1, 2, ...) from the store's revision before the
batch, so an engine can take the real numbers once per batch, as late as possible:
PostgreSQL takes the counter's row lock only for the writing, not for the reads.

A batch is cut into *rounds* in which each (cluster, type) stream appears at most once
(see :func:`rounds`): bundles of different streams never share keys, so a round's
lookups can all be made before any of its writes, and a stream's second bundle is
planned on what its first one wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fleetsync.store.contract import BundleWrite, ObjectRecord
from fleetsync.store.rows import Key, split_key


@dataclass(frozen=True, slots=True)
class Held:
    """What the store holds of one key: the object's hash and the FULL that last carried it."""

    hash: int
    full_seq: int | None


@dataclass(frozen=True, slots=True)
class Upsert:
    offset: int  # the change's revision minus the store's revision before the batch
    added: bool  # ADDED (the key was not held) or MODIFIED
    record: ObjectRecord


@dataclass(frozen=True, slots=True)
class Delete:
    offset: int
    key: Key


@dataclass(slots=True)
class BundlePlan:
    """What one bundle writes."""

    write: BundleWrite
    upserts: list[Upsert] = field(default_factory=list)
    #: Keys whose stored hash is current: only their FULL mark moves to ``write.full_seq``.
    marks: list[Key] = field(default_factory=list)
    #: The bundle's own deletes, then those of its FULL's end, in revision order.
    deletes: list[Delete] = field(default_factory=list)

    @property
    def changes(self) -> int:
        """How many revisions (change-log entries) the bundle takes: what it really changes."""
        return len(self.upserts) + len(self.deletes)


@dataclass(slots=True)
class RoundPlan:
    """What one round of a batch writes; ``changes`` revisions in all, offsets ``first + 1 ...``."""

    bundles: list[BundlePlan]
    first: int
    changes: int

    @property
    def upserts(self) -> Iterable[tuple[BundleWrite, Upsert]]:
        return ((b.write, u) for b in self.bundles for u in b.upserts)

    @property
    def marks(self) -> Iterable[tuple[BundleWrite, Key]]:
        return ((b.write, k) for b in self.bundles for k in b.marks)

    @property
    def deletes(self) -> Iterable[tuple[BundleWrite, Delete]]:
        return ((b.write, d) for b in self.bundles for d in b.deletes)

    @property
    def changes_per_bundle(self) -> list[int]:
        """:attr:`BundlePlan.changes` of each bundle, in the round's order."""
        return [b.changes for b in self.bundles]

    @property
    def moves(self) -> list[BundleWrite]:
        return [b.write for b in self.bundles if b.write.move_to is not None]


def rounds(writes: Sequence[BundleWrite]) -> list[list[BundleWrite]]:
    """``writes`` cut into consecutive rounds, a new one wherever a stream comes again: no
    round holds a stream twice, and revisions follow the order of ``writes`` exactly. (The
    hub's writer never has two bundles of one stream waiting, so its batches are one round.)"""
    out: list[list[BundleWrite]] = []
    seen: set[tuple[str, str]] = set()
    for w in writes:
        if not out or (w.cluster, w.type) in seen:
            out.append([])
            seen = set()
        seen.add((w.cluster, w.type))
        out[-1].append(w)
    return out


def lookups(writes: Iterable[BundleWrite]) -> list[tuple[str, str, str, str]]:
    """(cluster, type, namespace, name) of every key a round's bundles touch, once each."""
    keys: dict[tuple[str, str, str, str], None] = {}
    for w in writes:
        for o in w.upserts:
            keys[(w.cluster, w.type, o.namespace, o.name)] = None
        for k in w.deletes:
            keys[(w.cluster, w.type, *split_key(k))] = None
    return list(keys)


def plan_round(
    writes: Sequence[BundleWrite],
    held: Mapping[tuple[str, str, str, str], Held],
    unmarked: Mapping[tuple[str, str], Sequence[Key]],
    *,
    first: int = 0,
) -> RoundPlan:
    """Plan one round (no stream twice; see :func:`rounds`).

    ``held``: what the store holds of the keys :func:`lookups` names; ``unmarked``: for each
    stream whose bundle ends a FULL, the keys it holds that are not marked with that FULL,
    sorted; ``first``: the offset the round starts after.
    """
    offset = first
    plans = []
    for w in writes:
        plan = BundlePlan(w)
        latest: dict[Key, ObjectRecord] = {}
        for o in w.upserts:
            latest[(o.namespace, o.name)] = o
        for key, o in latest.items():
            previous = held.get((w.cluster, w.type, *key))
            if previous is not None and previous.hash == o.hash:
                if w.full_seq is not None and not w.full_end and previous.full_seq != w.full_seq:
                    plan.marks.append(key)
                continue
            offset += 1
            plan.upserts.append(Upsert(offset, previous is None, o))
        gone = set()
        for key in dict.fromkeys(split_key(k) for k in w.deletes):
            if key in latest or (w.cluster, w.type, *key) in held:
                offset += 1
                plan.deletes.append(Delete(offset, key))
                gone.add(key)
        if w.full_end:
            for key in unmarked.get((w.cluster, w.type), ()):
                if key not in latest and key not in gone:
                    offset += 1
                    plan.deletes.append(Delete(offset, key))
        plans.append(plan)
    return RoundPlan(plans, first, offset - first)
