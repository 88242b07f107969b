"""When the agent sends again what the hub has not acknowledged: after a timeout on a connection that
may lose messages (a broker), only after a reconnect on one that does not (gRPC)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from fleetsync.agent.typesync import TypeSync
from fleetsync.agent.uplink import HubStalled, Uplink, UplinkSettings
from fleetsync.model.types import POD
from fleetsync.protocol import fleetsync_pb2 as pb

TIMEOUT = 15.0


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": name},
        "spec": {"data": hashlib.sha512(name.encode()).hexdigest()},
    }


def listed() -> TypeSync:
    sync = TypeSync(POD, "inc", max_message_bytes=4096)
    sync.on_list([pod(f"p{i:03}") for i in range(80)])  # 4 KiB chunks: more than four
    return sync


def in_flight_four(**settings: Any) -> UplinkSettings:
    """Settings under which four of those 4 KiB chunks are in flight at most."""
    return UplinkSettings(full_bytes_in_flight=4 * 4096, **settings)


def kinds_over(uplink: Uplink, until: float, step: float = 1.0) -> list[str]:
    """What the uplink sends while the hub stays silent but for heartbeats, polled every ``step`` seconds."""
    sent, now = [], 0.0
    while now < until:
        now += step
        uplink.receive(pb.HubMessage(heartbeat=pb.Heartbeat()), now)
        sent += [out.kind for out in uplink.poll(now)]
    return sent


def test_over_a_lossy_connection_unacked_chunks_are_sent_again_after_the_timeout() -> None:
    uplink = Uplink({POD.gvk: listed()}, pb.Welcome(), settings=in_flight_four(ack_timeout=TIMEOUT), now=0.0)
    assert [out.kind for out in uplink.poll(0.0)].count("full") == 4
    resends = kinds_over(uplink, 3 * TIMEOUT + 1).count("resend")
    assert resends == 8, "at 15 s, then at 45 s (the timeout doubled): four chunks each time"


def test_over_a_lossless_connection_nothing_is_resent_while_it_is_up_and_a_reconnect_sends_it_again() -> None:
    sync = listed()
    uplink = Uplink({POD.gvk: sync}, pb.Welcome(), settings=in_flight_four(ack_timeout=TIMEOUT), now=0.0, lossless=True)
    first = [out.message.bundle for out in uplink.poll(0.0) if out.kind == "full"]
    assert len(first) == 4
    assert "resend" not in kinds_over(uplink, 200.0), "a hub that is behind gets no second copy behind the first"
    uplink.receive(pb.HubMessage(ack=pb.Ack(type=POD.gvk, incarnation="inc", seq=first[0].seq, chunk=1, partial=True)), 201.0)
    assert [out.message.bundle.chunk for out in uplink.poll(201.0)] == [4, 5], "an ack (of chunks 0 and 1) still moves the FULL on"

    again = Uplink({POD.gvk: sync}, pb.Welcome(), settings=in_flight_four(ack_timeout=TIMEOUT), now=300.0, lossless=True)
    chunks = [out.message.bundle.chunk for out in again.poll(300.0) if out.kind == "full"]
    assert chunks == [0, 1, 2, 3], "the new connection starts the unfinished FULL again"


def test_a_lossless_connection_without_an_ack_through_the_whole_backoff_is_given_up() -> None:
    """The net under a hub that would drop a message without a word: 15 + 30 + 60 + 120 s, then reconnect."""
    uplink = Uplink({POD.gvk: listed()}, pb.Welcome(), settings=in_flight_four(ack_timeout=TIMEOUT), now=0.0, lossless=True)
    uplink.poll(0.0)
    assert "resend" not in kinds_over(uplink, 224.0)
    uplink.receive(pb.HubMessage(heartbeat=pb.Heartbeat()), 226.0)
    with pytest.raises(HubStalled, match="unacknowledged for 225s while the hub answers heartbeats"):
        uplink.poll(226.0)


def test_a_type_the_hub_refused_is_sent_again_on_the_next_connection() -> None:
    sync = listed()
    uplink = Uplink({POD.gvk: sync}, pb.Welcome(), settings=in_flight_four(), now=0.0, lossless=True)
    uplink.receive(pb.HubMessage(reject=pb.Reject(reason=pb.PROTOCOL, message="not today", type=POD.gvk)), 0.0)
    assert uplink.poll(0.1) == [] and sync.refused == "not today"
    again = Uplink({POD.gvk: sync}, pb.Welcome(), settings=in_flight_four(), now=1.0, lossless=True)
    assert [out.kind for out in again.poll(1.0)].count("full") == 4, "the refusal held for its connection only (docs/protocol.md)"
