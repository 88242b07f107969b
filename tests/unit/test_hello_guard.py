"""The rules for refused Hellos (pure): what a Hello's identity may be, the per-peer rate,
and the fleet-wide cap on their events with its summary."""

from __future__ import annotations

from fleetsync.hub.guard import QUIET, RECORD, THROTTLE, HelloGuard, peer_host
from fleetsync.hub.limits import ProtocolLimits
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.hello import hello_problem


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hello_identity_rules_accept_what_agents_send_and_quote_little_of_the_rest() -> None:
    ok = pb.Hello(cluster_id="eu-west_1", agent_id="host-1.example.com/eu-west_1", incarnation="0f3a9c2d1b7e4a66", token="fs_" + "x" * 44)
    assert hello_problem(ok) == ""
    for field, value, why in (
        ("cluster_id", "c" * 500_000, "is not a valid cluster name"),
        ("cluster_id", "a/b", "is not a valid cluster name"),
        ("cluster_id", "c1\n", "is not a valid cluster name"),
        ("agent_id", "has space", "agent_id"),
        ("agent_id", "a" * 254, "agent_id"),
        ("incarnation", "i" * 65, "incarnation"),
        ("incarnation", "i\x00", "incarnation"),
        ("token", "t" * 1025, "the token is 1025 characters"),
        ("cluster_id", "", "needs cluster_id, agent_id and incarnation"),
    ):
        hello = pb.Hello()
        hello.CopyFrom(ok)
        setattr(hello, field, value)
        problem = hello_problem(hello)
        assert why in problem and len(problem) < 300, (field, problem)


def test_peer_host_drops_the_port() -> None:
    assert peer_host("ipv4:10.0.0.1:5555") == "ipv4:10.0.0.1"
    assert peer_host("ipv6:%5B::1%5D:5555") == "ipv6:%5B::1%5D"
    assert peer_host("mqtt:c1/abc") == "mqtt:c1/abc"


def test_a_peer_past_its_burst_is_throttled_until_its_bucket_refills() -> None:
    clock = Clock()
    guard = HelloGuard(ProtocolLimits(auth_failure_burst=3, auth_failures_per_minute=6, rejected_events=100), clock=clock)
    assert [guard.refused("ipv4:1.2.3.4:1") for _ in range(4)] == [RECORD, RECORD, RECORD, THROTTLE]
    assert guard.refused("ipv4:5.6.7.8:1") == RECORD  # another address has its own bucket
    assert guard.refused("ipv4:1.2.3.4:2") == THROTTLE  # another port of the same address does not
    clock.now += 10  # 6 a minute: one more after 10 s
    assert [guard.refused("ipv4:1.2.3.4:3") for _ in range(2)] == [RECORD, THROTTLE]


def test_events_are_capped_fleet_wide_and_summed_up_once_per_window() -> None:
    clock = Clock()
    guard = HelloGuard(ProtocolLimits(auth_failure_burst=1000, rejected_events=2, rejected_events_window=60), clock=clock)
    verdicts = [guard.refused(f"ipv4:10.0.0.{i % 8}:{i}") for i in range(100)]
    assert verdicts[:2] == [RECORD, RECORD] and set(verdicts[2:]) == {QUIET}
    assert guard.summary() == ""  # the window is not over
    clock.now += 60
    summary = guard.summary()
    assert "and 98 more refused Hellos from 8 peers in the last 60s" in summary, summary
    assert guard.summary() == ""  # said once
    assert guard.refused("ipv4:10.0.0.1:1") == RECORD  # a new window
