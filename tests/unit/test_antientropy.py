"""One anti-entropy schedule per cluster: partial syncs per type, a full sync that stands for them, intervals that stretch with the fleet."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetsync.hub.antientropy import AntiEntropySchedule, ClusterSyncer, SyncPlan, scale_factor
from fleetsync.hub.settings import DigestSchedule, HubSettings

POD, SVC = "v1/Pod", "v1/Service"


def _syncer() -> ClusterSyncer:
    return ClusterSyncer(connected_at=0.0, jitter=lambda: 1.0)  # no jitter: the first partial sync is one interval after it is first asked


def test_partial_syncs_follow_each_types_interval() -> None:
    schedule = AntiEntropySchedule(partial=DigestSchedule(default=300, per_type={POD: 60}), full=0)
    syncer = _syncer()
    assert syncer.due(0, schedule, [POD, SVC]) is None
    assert syncer.due(60, schedule, [POD, SVC]) == SyncPlan(types=(POD,))
    assert syncer.due(61, schedule, [POD, SVC]) is None
    assert syncer.due(300, schedule, [POD, SVC]) == SyncPlan(types=(POD, SVC))


def test_a_full_sync_stands_for_every_types_partial_sync() -> None:
    schedule = AntiEntropySchedule(partial=DigestSchedule(default=300), full=600)
    syncer = _syncer()
    assert syncer.due(0, schedule, [POD]) is None
    assert syncer.due(300, schedule, [POD]) == SyncPlan(types=(POD,))
    assert syncer.due(600, schedule, [POD]) == SyncPlan(full=True)
    # the Pods were just digested by the full sync: not again before a partial interval has passed
    assert syncer.due(601, schedule, [POD]) is None
    assert syncer.due(899, schedule, [POD]) is None
    assert syncer.due(900, schedule, [POD]) == SyncPlan(types=(POD,))


def test_zero_turns_either_kind_off() -> None:
    syncer = _syncer()
    never = AntiEntropySchedule(partial=DigestSchedule(default=0), full=0)
    assert all(syncer.due(t, never, [POD]) is None for t in range(0, 10_000, 100))


def test_intervals_stretch_with_the_fleet_as_consuls_do() -> None:
    assert [scale_factor(n) for n in (1, 128, 129, 256, 257, 512, 1024, 5000)] == [1, 1, 2, 2, 3, 3, 4, 7]
    schedule = AntiEntropySchedule(partial=DigestSchedule(default=300), full=0)
    syncer = _syncer()
    assert syncer.due(0, schedule, [POD], fleet_size=1000) is None
    assert syncer.due(300, schedule, [POD], fleet_size=1000) is None  # 4 x 300 s with a thousand clusters
    assert syncer.due(1200, schedule, [POD], fleet_size=1000) == SyncPlan(types=(POD,))


def test_the_schedule_is_configured_by_the_hubs_two_flags() -> None:
    settings = HubSettings(digest_schedule=DigestSchedule(default=120), push_refresh_interval=900)
    assert AntiEntropySchedule.from_settings(settings) == AntiEntropySchedule(partial=DigestSchedule(default=120), full=900)


@given(
    partial=st.floats(min_value=1, max_value=1000),
    full=st.floats(min_value=1, max_value=1000),
    steps=st.lists(st.floats(min_value=0.01, max_value=50), min_size=1, max_size=200),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_no_type_is_digested_twice_within_its_interval(partial: float, full: float, steps: list[float], jitter: float) -> None:
    # two types with different intervals: a full sync must not digest one a partial sync just did
    intervals = {POD: partial, SVC: partial * 3}
    schedule = AntiEntropySchedule(partial=DigestSchedule(default=intervals[SVC], per_type={POD: partial}), full=full)
    syncer = ClusterSyncer(connected_at=0.0, jitter=lambda: jitter)
    now, last = 0.0, {POD: 0.0, SVC: 0.0}  # the connection's own sync
    for step in steps:
        now += step
        plan = syncer.due(now, schedule, [POD, SVC])
        if plan is None:
            continue
        for type_ in (POD, SVC) if plan.full else plan.types:
            # the first partial sync after connecting is spread over the second half of its interval
            spacing = min(intervals[type_], full) * (0.5 if last[type_] == 0.0 else 1.0)
            assert now - last[type_] >= spacing - 1e-9, (type_, now, last)
            last[type_] = now
