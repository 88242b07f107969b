"""The lease rules (:mod:`fleetsync.store.leasing`): who may take a cluster, which writes are fenced."""

from __future__ import annotations

import math

from fleetsync.store.contract import BundleWrite, Lease
from fleetsync.store.leasing import fenced, fenced_message, may_take

HELD = Lease(cluster="c1", holder="twin", incarnation="i1", hub_id="h", expires_at=130.0, connected=True, epoch=4)


def take(current: Lease | None, *, holder: str = "twin", incarnation: str = "i2", now: float = 110.0, last_seen: float = 109.0) -> bool:
    return may_take(current, holder=holder, incarnation=incarnation, now=now, last_seen=last_seen, silent_before=now - 15)


def test_a_free_or_expired_lease_goes_to_anyone() -> None:
    assert take(None, holder="other")
    assert take(HELD, holder="other", now=130.0)


def test_another_agent_waits_for_a_live_lease_and_for_the_grace_period() -> None:
    assert not take(HELD, holder="other", last_seen=0.0), "silence does not hand a cluster to another agent id"
    in_grace = Lease(cluster="c1", holder="twin", incarnation="i1", hub_id="h", expires_at=125.0, connected=False, epoch=4)
    assert not take(in_grace, holder="other")


def test_a_second_live_process_with_the_same_agent_id_is_refused_until_the_first_is_gone() -> None:
    assert not take(HELD), "the holder spoke a second ago"
    assert take(HELD, last_seen=94.0), "silent for more than the takeover time: gone"
    assert take(Lease(cluster="c1", holder="twin", incarnation="i1", hub_id="h", expires_at=125.0, connected=False, epoch=4)), "disconnected: a restart"
    assert take(HELD, incarnation="i1"), "the same process reconnecting (a half-open connection's successor)"
    assert not may_take(HELD, holder="twin", incarnation="i2", now=110.0, last_seen=0.0, silent_before=-math.inf), "no silence rule unless asked"


def test_only_writes_of_an_epoch_the_lease_no_longer_has_are_fenced() -> None:
    writes = [
        BundleWrite("c1", "v1/Pod", "i", 1, epoch=4),
        BundleWrite("c2", "v1/Pod", "i", 1, epoch=3),
        BundleWrite("c3", "v1/Pod", "i", 1),  # a pull refresh: not fenced
        BundleWrite("c4", "v1/Pod", "i", 1, epoch=1),  # no lease at all
    ]
    epochs = {"c1": 4, "c2": 5}
    assert fenced(writes, epochs) == [1, 3]
    message = fenced_message(writes, [1, 3], epochs)
    assert "cluster 'c2' (epoch 3, the lease now has 5)" in message and "cluster 'c4' (epoch 1, the lease now has none)" in message
