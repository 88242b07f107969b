"""The simulator's churn works on every cluster it can simulate, with or without Istio."""

from __future__ import annotations

import pytest

from fleetsync.model.types import VIRTUAL_SERVICE
from fleetsync.sim.fleet import SimConfig, SimFleet


@pytest.mark.parametrize("istio", [True, False])
def test_every_churn_operation_applies_with_and_without_istio(istio: bool) -> None:
    fleet = SimFleet(SimConfig(clusters=1, pods=60, namespaces=2, istio=istio))
    builder = fleet.clusters["c1"].builder
    done = [fleet.churn.step(builder) for _ in range(400)]  # an operation that fails raises here
    assert {"pod_readiness", "scale", "config", "event", "app_replace", "istio_route"} <= set(done), "every kind of operation ran"
    assert builder.cluster.serves(VIRTUAL_SERVICE) is istio
