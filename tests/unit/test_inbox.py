"""Conflation in the hub's inbox: applying the conflated queue equals applying every message in order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetsync.hub.inbox import Inbox, QueuedDelta, QueuedDigest, header_of
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import BundleHeader, HubStream, Position, Verdict

TYPE = "v1/Pod"


def obj(key: str, value: int) -> pb.Object:
    namespace, name = key.split("/")
    return pb.Object(namespace=namespace, name=name, hash=value, body=b"{}")


def delta(inc: str, seq: int, base: int, upserts: dict[str, int], deletes: list[str] = ()) -> pb.Bundle:  # type: ignore[assignment]
    return pb.Bundle(type=TYPE, incarnation=inc, seq=seq, base_seq=base, kind=pb.DELTA, upserts=[obj(k, v) for k, v in upserts.items()], deletes=list(deletes))


@dataclass
class Hub:
    """The engine's apply logic over a dict: key -> hash."""

    state: dict[str, int] = field(default_factory=dict)
    stream: HubStream = field(default_factory=HubStream)
    full_seen: set[str] = field(default_factory=set)
    acked: list[tuple[str, int]] = field(default_factory=list)

    def apply(self, header: BundleHeader, upserts: list[pb.Object], deletes: list[str]) -> None:
        decision = self.stream.decide(header)
        if decision.verdict is Verdict.GAP:
            return
        if decision.verdict is not Verdict.DUPLICATE:
            if decision.full_restart:
                self.full_seen = set()
            for o in upserts:
                self.state[f"{o.namespace}/{o.name}"] = o.hash
            for key in deletes:
                self.state.pop(key, None)
            if header.full:
                self.full_seen |= {f"{o.namespace}/{o.name}" for o in upserts}
                if decision.verdict is Verdict.FULL_LAST:
                    self.state = {k: v for k, v in self.state.items() if k in self.full_seen}
        ack = self.stream.committed(header, decision)
        if ack is not None and not ack.partial:
            self.acked.append((ack.incarnation, ack.seq))

    def apply_bundle(self, bundle: pb.Bundle) -> None:
        self.apply(header_of(bundle), list(bundle.upserts), list(bundle.deletes))

    def apply_item(self, item: QueuedDelta | QueuedDigest | pb.Bundle) -> None:
        if isinstance(item, QueuedDelta):
            self.apply(item.header, item.upserts, item.deletes)
        elif isinstance(item, pb.Bundle):
            self.apply_bundle(item)


# A run: what an agent sends (contiguous deltas, complete FULLs, restarts), then faults on the deltas.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("delta"), st.dictionaries(st.sampled_from([f"ns/o{i}" for i in range(6)]), st.integers(0, 3), min_size=1, max_size=3)),
        st.tuples(st.just("full"), st.integers(1, 3)),
        st.tuples(st.just("restart"), st.just(0)),
        st.tuples(st.just("catch_up"), st.integers(1, 3)),
    ),
    max_size=30,
)
FAULTS = st.lists(st.tuples(st.sampled_from(["drop", "duplicate", "swap", "resend_full"]), st.integers(0, 100)), max_size=6)


def agent_messages(steps: list[tuple[str, object]]) -> list[pb.Bundle | int]:
    """The bundles an agent sends (and ``int`` markers: the hub catches up by that many items)."""
    out: list[pb.Bundle | int] = []
    cluster: dict[str, int] = {}
    inc, seq = "i0", 0
    for kind, arg in steps:
        if kind == "delta":
            changes: dict[str, int] = arg  # type: ignore[assignment]
            seq += 1
            upserts = {k: v for k, v in changes.items() if v}
            deletes = [k for k, v in changes.items() if not v]
            cluster.update(upserts)
            for k in deletes:
                cluster.pop(k, None)
            out.append(delta(inc, seq, seq - 1, upserts, deletes))
        elif kind == "full":
            seq += 1
            keys = sorted(cluster)
            parts = [keys[i :: int(arg)] for i in range(int(arg))]  # type: ignore[call-overload]
            for i, part in enumerate(parts):
                out.append(
                    pb.Bundle(
                        type=TYPE,
                        incarnation=inc,
                        seq=seq,
                        base_seq=seq - 1,
                        kind=pb.FULL,
                        chunk=i,
                        last=i == len(parts) - 1,
                        upserts=[obj(k, cluster[k]) for k in part],
                    )
                )
        elif kind == "restart":
            inc, seq = f"i{int(inc[1:]) + 1}", 0
        else:
            out.append(int(arg))  # type: ignore[call-overload]
    return out


def with_faults(messages: list[pb.Bundle | int], faults: list[tuple[str, int]]) -> list[pb.Bundle | int]:
    """Drops, duplicates and swaps of DELTAs, and FULL chunks resent after their FULL: a FULL always arrives
    whole and in order first (an incomplete FULL is redone by the protocol, and dropping the deltas it
    supersedes is only equal once it completes)."""
    out = list(messages)
    for fault, index in faults:
        if fault == "resend_full":
            fulls = [i for i, m in enumerate(out) if isinstance(m, pb.Bundle) and m.kind == pb.FULL]
            if fulls:
                i = fulls[index % len(fulls)]
                chunk: pb.Bundle = out[i]  # type: ignore[assignment]
                end = max(j for j in fulls if (out[j].incarnation, out[j].seq) == (chunk.incarnation, chunk.seq))  # type: ignore[union-attr]
                # resent within its own incarnation: a session carries one incarnation only (the hub
                # refuses any other), so an earlier run's FULL never reaches a later run's inbox
                stop = end + 1
                while stop < len(out) and (not isinstance(out[stop], pb.Bundle) or out[stop].incarnation == chunk.incarnation):  # type: ignore[union-attr]
                    stop += 1
                out.insert(end + 1 + index % (stop - end), chunk)
            continue
        deltas = [i for i, m in enumerate(out) if isinstance(m, pb.Bundle) and m.kind == pb.DELTA]
        if not deltas:
            break
        i = deltas[index % len(deltas)]
        if fault == "drop":
            del out[i]
        elif fault == "duplicate":
            out.insert(min(len(out), i + 1 + index % 3), out[i])
        elif i + 1 < len(out) and isinstance(out[i + 1], pb.Bundle) and out[i + 1].kind == pb.DELTA:  # type: ignore[union-attr]
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


@settings(max_examples=400, deadline=None)
@given(STEPS, FAULTS)
def test_conflated_queue_applies_to_the_same_state_as_every_message_in_order(steps: list[tuple[str, object]], faults: list[tuple[str, int]]) -> None:
    messages = with_faults(agent_messages(steps), faults)
    reference, conflating = Hub(), Hub()
    inbox = Inbox()

    async def run() -> None:
        for message in messages:
            if isinstance(message, int):  # the hub catches up a little
                for _ in range(min(message, len(inbox))):
                    conflating.apply_item(await inbox.get())
                continue
            reference.apply_bundle(message)
            inbox.put(message)
        while len(inbox):
            conflating.apply_item(await inbox.get())

    asyncio.run(run())
    assert conflating.state == reference.state
    assert conflating.stream.applied == reference.stream.applied
    # every ack the live agent gets from the reference is covered by one from the conflating hub
    # (an earlier incarnation's agent is gone: its superseded bundles need no ack)
    live = next((m.incarnation for m in reversed(messages) if isinstance(m, pb.Bundle)), None)
    for inc, seq in reference.acked:
        if inc == live:
            assert any(i == inc and s >= seq for i, s in conflating.acked), (inc, seq)


def test_contiguous_deltas_merge_into_one_item_and_count_as_conflated() -> None:
    async def run() -> None:
        inbox = Inbox()
        inbox.put(delta("a", 1, 0, {"ns/x": 1}))
        inbox.put(delta("a", 2, 1, {"ns/x": 2, "ns/y": 1}))
        inbox.put(delta("a", 3, 2, {}, ["ns/y"]))
        assert len(inbox) == 1 and inbox.conflated == 2
        item = await inbox.get()
        assert isinstance(item, QueuedDelta)
        assert item.header == BundleHeader("a", 3, 0, full=False)
        assert {o.name: o.hash for o in item.upserts} == {"x": 2} and item.deletes == ["ns/y"]

    asyncio.run(run())


def test_a_delta_past_a_gap_is_not_merged() -> None:
    async def run() -> None:
        inbox = Inbox()
        inbox.put(delta("a", 1, 0, {"ns/x": 1}))
        inbox.put(delta("a", 3, 2, {"ns/y": 1}))  # seq 2 is missing
        assert len(inbox) == 2 and inbox.conflated == 0

    asyncio.run(run())


def test_a_full_drops_the_deltas_it_supersedes_and_a_resent_chunk_keeps_its_place() -> None:
    async def run() -> None:
        inbox = Inbox()
        inbox.put(delta("a", 1, 0, {"ns/x": 1}))
        chunk0 = pb.Bundle(type=TYPE, incarnation="a", seq=2, base_seq=1, kind=pb.FULL, chunk=0, upserts=[obj("ns/x", 2)])
        chunk1 = pb.Bundle(type=TYPE, incarnation="a", seq=2, base_seq=1, kind=pb.FULL, chunk=1, last=True)
        inbox.put(chunk0)
        inbox.put(chunk1)
        inbox.put(chunk0)  # resent while still queued
        assert [type(i).__name__ for i in [await inbox.get(), await inbox.get()]] == ["Bundle", "Bundle"]
        assert len(inbox) == 0 and inbox.conflated == 2

    asyncio.run(run())


def test_digest_chunks_are_assembled_and_a_newer_digest_replaces_a_queued_one() -> None:
    from fleetsync.protocol.codec import pack_digest_entries

    def digest(seq: int, chunk: int, last: bool, keys: list[str]) -> pb.Digest:
        packed = pack_digest_entries([pb.DigestEntry(key=k, hash=1) for k in keys])
        return pb.Digest(type=TYPE, incarnation="a", seq=seq, compression=pb.COMPRESSION_LZ4, packed=packed, chunk=chunk, last=last)

    async def run() -> None:
        inbox = Inbox()
        inbox.put(digest(5, 0, False, ["ns/a"]))
        assert len(inbox) == 0  # not complete yet
        inbox.put(digest(5, 1, True, ["ns/b"]))
        inbox.put(digest(6, 0, True, ["ns/c"]))
        item = await inbox.get()
        assert isinstance(item, QueuedDigest) and (item.seq, item.entries) == (6, {"ns/c": 1})
        assert len(inbox) == 0
        assert Position("a", 6) == Position(item.incarnation, item.seq)

    asyncio.run(run())


def test_a_resent_full_chunk_does_not_drop_later_deltas_queued_before_it() -> None:
    async def run() -> None:
        inbox = Inbox()
        full = pb.Bundle(type=TYPE, incarnation="a", seq=5, base_seq=4, kind=pb.FULL, chunk=0, last=True, upserts=[obj("ns/x", 1)])
        inbox.put(delta("a", 6, 5, {"ns/y": 1}))  # after the FULL, which was applied already
        inbox.put(full)  # a retransmission of the FULL arrives late
        items = [await inbox.get(), await inbox.get()]
        assert isinstance(items[0], QueuedDelta) and items[0].header.seq == 6
        assert inbox.conflated == 0

    asyncio.run(run())
