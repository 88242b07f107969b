"""The fault-injecting transport layer: what it does to messages, and its spec's errors."""

from __future__ import annotations

import pytest

from fleetsync.transport.faults import FaultInjector, FaultSpec, _Direction


def route_all(spec: FaultSpec, messages: list[str]) -> list[tuple[object, float]]:
    direction = _Direction(FaultInjector(spec), "up")
    return [out for m in messages for out in direction.route(m)]


def test_a_spec_parses_and_bad_ones_say_what_is_wrong() -> None:
    assert FaultSpec.parse("drop=0.1,for=20,seed=3") == FaultSpec(drop=0.1, duration=20, seed=3)
    for bad, words in (("drop=2", "between 0 and 1"), ("lose=0.1", "NAME=VALUE"), ("delay=-1", "negative"), ("drop=much", "not a number")):
        with pytest.raises(ValueError, match=words):
            FaultSpec.parse(bad)


def test_each_fault_does_what_it_says() -> None:
    assert route_all(FaultSpec(drop=1), ["a", "b"]) == []
    assert route_all(FaultSpec(duplicate=1), ["a"]) == [("a", 0.0), ("a", 0.0)]
    assert [m for m, _ in route_all(FaultSpec(reorder=1), ["a", "b", "c"])] == ["b", "a"]  # c is held in turn
    delayed = route_all(FaultSpec(delay=0.5, seed=1), ["a"])
    assert len(delayed) == 1 and 0 <= delayed[0][1] <= 0.5


def test_outside_its_window_nothing_happens() -> None:
    assert route_all(FaultSpec(drop=1, after=3600), ["a", "b"]) == [("a", 0.0), ("b", 0.0)]
    assert route_all(FaultSpec(drop=1, duration=0), ["a"]) == [("a", 0.0)]
