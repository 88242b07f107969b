"""``--log-format json``: one JSON object per line, with the cluster, type and session the line is about."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from fleetsync import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writing JSON into a buffer (the test's own handler, removed after)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_record_is_one_json_object_with_time_level_logger_and_message(captured: io.StringIO) -> None:
    logging.getLogger("fleetsync.test").warning("cluster %s: %d objects", "c1", 3)
    (line,) = lines(captured)
    assert line["level"] == "warning" and line["logger"] == "fleetsync.test" and line["message"] == "cluster c1: 3 objects"
    assert isinstance(line["time"], str) and line["time"].endswith("Z") and "T" in line["time"]
    assert "cluster" not in line, "no context bound: no cluster field"


def test_bound_fields_reach_every_line_in_the_block_and_the_tasks_it_starts_and_go_with_it(captured: io.StringIO) -> None:
    log = logging.getLogger("fleetsync.test")

    async def scenario() -> None:
        with logs.bound(cluster="c1", session="inc-1"):
            log.info("in the block")

            async def watch() -> None:
                logs.bind(type="v1/Pod")
                log.info("in a task")

            await asyncio.create_task(watch())
            log.info("the task's binding stayed in the task")
            with logs.bound(cluster=None):
                log.info("cluster removed")
        log.info("after the block")

    asyncio.run(scenario())
    got = {line["message"]: {k: line.get(k) for k in logs.CONTEXT_FIELDS} for line in lines(captured)}
    assert got["in the block"] == {"cluster": "c1", "type": None, "session": "inc-1"}
    assert got["in a task"] == {"cluster": "c1", "type": "v1/Pod", "session": "inc-1"}
    assert got["the task's binding stayed in the task"] == {"cluster": "c1", "type": None, "session": "inc-1"}
    assert got["cluster removed"] == {"cluster": None, "type": None, "session": "inc-1"}
    assert got["after the block"] == {"cluster": None, "type": None, "session": None}


def test_extra_fields_are_fields_and_win_over_the_context(captured: io.StringIO) -> None:
    with logs.bound(cluster="c1", type="v1/Pod"):
        logging.getLogger("fleetsync.test").info("retrying", extra={"type": "v1/Service", "attempt": 3, "peer": object()})
    (line,) = lines(captured)
    assert line["cluster"] == "c1" and line["type"] == "v1/Service" and line["attempt"] == 3
    assert isinstance(line["peer"], str), "what JSON cannot hold is written as text"


def test_an_exception_is_one_field_not_lines_of_its_own(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("boom\nwith a second line")
    except RuntimeError:
        logging.getLogger("fleetsync.test").exception("the engine failed")
    text = captured.getvalue()
    assert text.count("\n") == 1, text
    (line,) = lines(captured)
    assert line["message"] == "the engine failed" and line["level"] == "error"
    exception = line["exception"]
    assert isinstance(exception, str) and "Traceback" in exception and "RuntimeError: boom" in exception


def test_configure_chooses_the_format_and_refuses_an_unknown_one() -> None:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        out = io.StringIO()
        logs.configure(level="warning", fmt="json", stream=out)
        logging.getLogger("fleetsync.test").info("below the level")
        logging.getLogger("fleetsync.test").warning("kept")
        assert [line["message"] for line in lines(out)] == ["kept"]
        out = io.StringIO()
        logs.configure(level="info", fmt="text", stream=out)
        logging.getLogger("fleetsync.test").info("plain")
        assert out.getvalue().rstrip().endswith("INFO fleetsync.test: plain")
        with pytest.raises(ValueError, match="log format 'xml'"):
            logs.configure(fmt="xml")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before[0]:
            root.addHandler(handler)
        root.setLevel(before[1])
        logging.captureWarnings(False)
