"""Every parser of the hub's HTTP input, fuzzed: whatever a client (or an agent's body) holds,
each returns a value or raises its documented error, never anything else (which the API
would answer with a 500, or which would cut a watch's stream)."""

from __future__ import annotations

from typing import Any

import lz4.frame
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleetsync.api import params
from fleetsync.api.works import work_from_body
from fleetsync.model.selectors import FieldSelector, LabelSelector, SelectorError
from fleetsync.model.status import ApiError
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.bodies import UnreadableBody, body_problem, parse_object, stored_object

#: Text as clients send it: any unicode, and the characters selectors and numbers are made of.
SELECTOR_TEXT = st.one_of(st.text(max_size=60), st.text(alphabet="abc/.-_=!<>(), \t0123456789²in notin", max_size=60))
QUERY_TEXT = st.one_of(st.text(max_size=30), st.text(alphabet="0123456789²³٣-+.eE ", max_size=25), st.integers(min_value=-(2**80), max_value=2**80).map(str))
LABELS = st.dictionaries(st.sampled_from(["a", "b", "app", "x/y", "tier"]), st.text(alphabet="abc0123456789-", max_size=5), max_size=4)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)


@given(SELECTOR_TEXT, LABELS)
@example("a in (", {})
@example("a>²", {"a": "1"})
@example("a>1", {"a": "²"})
def test_label_selectors_parse_or_raise_a_selector_error(text: str, labels: dict[str, str]) -> None:
    try:
        selector = LabelSelector.parse(text)
    except SelectorError:
        return
    selector.matches(labels)
    selector.equalities()


@given(SELECTOR_TEXT)
@example("metadata.name=a\\,b,spec.nodeName!=")
def test_field_selectors_parse_or_raise_a_selector_error(text: str) -> None:
    try:
        selector = FieldSelector.parse(text, allowed={"metadata.name", "metadata.namespace", "spec.nodeName"})
    except SelectorError:
        return
    selector.matches({"metadata.name": "a"})


@given(st.one_of(st.text(max_size=80), st.binary(max_size=60).map(lambda b: orjson.dumps(b.decode("latin-1")).decode())))
@example("WzEsMl0=")  # base64 of [1,2]
@example("\ud800")
def test_continue_tokens_decode_or_are_a_400(token: str) -> None:
    try:
        cluster, namespace, name = params.decode_cursor(token)
    except ApiError as exc:
        assert exc.code == 400 and "continue" in exc.message
        return
    assert all(isinstance(part, str) for part in (cluster, namespace, name))


@given(st.text(max_size=30), st.text(max_size=30), st.text(max_size=30))
def test_continue_tokens_the_hub_issues_decode_to_where_the_page_ended(cluster: str, namespace: str, name: str) -> None:
    try:
        token = params.encode_cursor(cluster, namespace, name)
    except orjson.JSONEncodeError:  # lone surrogates: no object is named so (names come from JSON)
        return
    assert params.decode_cursor(token) == (cluster, namespace, name)


@given(st.dictionaries(st.sampled_from(["resourceVersion", "limit", "timeoutSeconds", "watch", "includeObject", "clusterSelector"]), QUERY_TEXT))
@example({"resourceVersion": "²"})
@example({"resourceVersion": "99999999999999999999"})
@example({"limit": "-1"})
def test_query_parameters_parse_or_are_a_400_naming_the_parameter(query: dict[str, str]) -> None:
    parsers: list[tuple[str, Any]] = [
        ("resourceVersion", params.resource_version),
        ("limit", lambda q: params.count(q, "limit")),
        ("timeoutSeconds", lambda q: params.count(q, "timeoutSeconds")),
        ("watch", lambda q: params.flag(q, "watch")),
        ("includeObject", params.include_object),
        ("clusterSelector", params.cluster_selector),
    ]
    for name, parse in parsers:
        try:
            value = parse(query)
        except ApiError as exc:
            assert exc.code == 400 and name in exc.message, (name, exc.message)
            continue
        if name == "resourceVersion" and value:
            assert 0 <= int(value) <= params.MAX_COUNT
        if name in ("limit", "timeoutSeconds"):
            assert 0 <= value <= params.MAX_COUNT


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        JSON_VALUES.map(lambda v: orjson.dumps(v)),
        st.fixed_dictionaries({"apiVersion": st.just("fleetsync.io/v1"), "kind": st.just("Work"), "metadata": JSON_VALUES, "spec": JSON_VALUES}).map(
            lambda v: orjson.dumps(v)
        ),
    ),
    st.booleans(),
)
@example(b"a: &x [1]\nb: *x", True)  # aliases are refused
@example(b"!!python/object:os.system {}", True)
@example(b"a: !!binary aGVsbG8=", True)
@example(b"a: !!set {x}", True)
@example(b"a: 123456789012345678901234567890", True)
@example(b"[" * 2000 + b"]" * 2000, False)
@example(b"[" * 2000 + b"]" * 2000, True)
@example(b"\xff\xfe\x00", True)
def test_work_bodies_parse_or_are_a_400_or_422(raw: bytes, yaml_form: bool) -> None:
    try:
        name, spec = work_from_body(raw, yaml_form=yaml_form, name="w1")
    except ApiError as exc:
        assert exc.code in (400, 422), exc.message
        return
    assert name == "w1" and isinstance(orjson.loads(spec), dict)


@given(st.binary(max_size=200), st.sampled_from([pb.COMPRESSION_NONE, pb.COMPRESSION_LZ4, 7]))
@example(b"\x04\x22\x4d\x18", pb.COMPRESSION_LZ4)  # an lz4 magic number and nothing else
def test_object_bodies_are_checked_without_raising(body: bytes, compression: int) -> None:
    problem = body_problem(body, compression, max_bytes=1024)
    assert isinstance(problem, str)
    try:
        stored_object(body, compression)
    except UnreadableBody:
        return


@given(JSON_VALUES, st.integers(min_value=0, max_value=64))
def test_object_bodies_pass_exactly_when_they_are_json_objects_within_the_bound(value: Any, cut: int) -> None:
    raw = orjson.dumps(value)
    frame = lz4.frame.compress(raw)
    problem = body_problem(frame, pb.COMPRESSION_LZ4, max_bytes=4096)
    is_object = isinstance(value, dict) and isinstance(value.get("metadata", {}), dict)
    assert (problem == "") == (is_object and len(raw) <= 4096), (value, problem)
    if cut and cut < len(frame):  # a truncated frame is never taken
        assert body_problem(frame[:-cut], pb.COMPRESSION_LZ4, max_bytes=4096)


METADATA = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({}, optional={"labels": JSON_VALUES, "annotations": JSON_VALUES, "name": st.text(max_size=5)}),
)


@given(
    st.one_of(
        JSON_VALUES.map(orjson.dumps),
        st.fixed_dictionaries({"metadata": METADATA}, optional={"spec": JSON_VALUES}).map(orjson.dumps),
        st.integers(min_value=-(2**80), max_value=2**80).map(lambda n: b'{"metadata": {}, "n": %d}' % n),
        st.binary(max_size=40),
    )
)
@example(b'{"a": 123456789012345678901234567890}')  # valid JSON simdjson cannot hold: orjson decides
@example(b'{"metadata": {"labels": {}, "annotations": [1]}}')
def test_the_fast_body_check_answers_exactly_as_parsing_the_body(data: bytes) -> None:
    """The apply check (simdjson, no Python objects built) refuses exactly what a read could not
    take, with the same message: what is applied is always readable."""
    try:
        parse_object(data)
        expected = ""
    except UnreadableBody as exc:
        expected = str(exc)
    assert body_problem(data, pb.COMPRESSION_NONE, max_bytes=1 << 20) == expected


def test_a_decompression_bomb_is_refused_without_decompressing_it_whole() -> None:
    bomb = lz4.frame.compress(b"{" + b" " * (256 * 1024 * 1024) + b"}")  # 256 MiB in about 1 MB
    assert len(bomb) < 2 * 1024 * 1024
    assert "larger than 4194304 bytes" in body_problem(bomb, pb.COMPRESSION_LZ4, max_bytes=4 * 1024 * 1024)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not an object"),
        (b'{"metadata": []}', "metadata is not an object"),
        (b'{"metadata": {"labels": "x"}}', "metadata.labels is not an object"),
        (b'{"metadata": {"annotations": [1]}}', "metadata.annotations is not an object"),
    ],
)
def test_object_bodies_that_are_not_json_objects_are_named_for_what_they_are(body: bytes, why: str) -> None:
    assert why in body_problem(body, pb.COMPRESSION_NONE, max_bytes=1024)
    with pytest.raises(UnreadableBody, match=why):
        stored_object(body, pb.COMPRESSION_NONE)
