"""A batch as it travels to a writer process (store/writerprocess.py): what arrives is the batch
that was sent, and its labels are stored as the JSON made once in the hub."""

from __future__ import annotations

import pickle

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetsync.store.contract import BundleWrite, ObjectRecord
from fleetsync.store.writerprocess import Labels, dumps, labels_json, packed, unpacked

text = st.text(max_size=12)
records = st.builds(
    ObjectRecord,
    cluster=st.just("c1"),
    type=st.just("v1/Pod"),
    namespace=text,
    name=text,
    uid=text,
    resource_version=text,
    hash=st.integers(0, 2**64 - 1),
    labels=st.dictionaries(text, text, max_size=4),
    owner=text,
    body=st.binary(max_size=64),
    compression=st.sampled_from([0, 1]),
    incarnation=text,
)
full = st.tuples(st.none(), st.just(False)) | st.tuples(st.integers(0, 2**40), st.booleans())  # (full_seq, full_end)
writes = full.flatmap(
    lambda f: st.builds(
        BundleWrite,
        cluster=st.just("c1"),
        type=st.just("v1/Pod"),
        incarnation=text,
        seq=st.integers(0, 2**40),
        upserts=st.lists(records, max_size=4),
        deletes=st.lists(text, max_size=3),
        move_to=st.none() | st.tuples(text, st.integers(0, 2**40)),
        now=st.floats(0, 1e10),
        epoch=st.integers(0, 2**31),
        full_seq=st.just(f[0]),
        full_end=st.just(f[1]),
    )
)


@settings(max_examples=50)
@given(st.lists(writes, max_size=4))
def test_a_batch_arrives_as_it_was_sent(batch: list[BundleWrite]) -> None:
    arrived = [unpacked(p) for p in pickle.loads(dumps([packed(w) for w in batch]))]
    assert len(arrived) == len(batch)
    for got, sent in zip(arrived, batch, strict=True):
        assert (got.cluster, got.type, got.incarnation, got.seq, tuple(got.deletes), got.full_seq, got.full_end, got.move_to, got.now, got.epoch) == (
            sent.cluster,
            sent.type,
            sent.incarnation,
            sent.seq,
            tuple(sent.deletes),
            sent.full_seq,
            sent.full_end,
            sent.move_to,
            sent.now,
            sent.epoch,
        )
        assert [
            (o.namespace, o.name, o.uid, o.resource_version, o.hash, dict(o.labels), o.owner, o.body, o.compression, o.incarnation) for o in got.upserts
        ] == [(o.namespace, o.name, o.uid, o.resource_version, o.hash, dict(o.labels), o.owner, o.body, o.compression, o.incarnation) for o in sent.upserts]


@given(st.dictionaries(text, text, max_size=6))
def test_travelled_labels_are_stored_as_the_json_they_came_as_and_read_as_a_mapping(labels: dict[str, str]) -> None:
    sent = labels_json(labels)
    travelled = Labels(sent)
    assert labels_json(travelled) is sent  # not made again in the writer
    assert travelled == labels and dict(travelled) == labels and len(travelled) == len(labels)
    assert orjson.loads(sent) == labels
