"""What the hub says a cluster's local config holds of a gate (``fleetsync gates where``), and
the old side of a cluster's next change in the history: the rules of ``hub/gates.py``."""

from __future__ import annotations

from fleetsync.hub.gates import cluster_value, fleet_value, previous_value
from fleetsync.store.contract import ClusterGateValue, GateRecord

ON = GateRecord("feature.x", True, 10.0, "admin", revision=5)
GONE = GateRecord("feature.x", True, 11.0, "admin", revision=6, deleted=True)
MINE_OFF = ClusterGateValue("c1", "feature.x", False, 9.0)


def test_local_deployments_hold_the_fleets_value_once_its_last_write_is_applied() -> None:
    assert cluster_value(deployment_type="local", fleet=ON, applied=5, reported=MINE_OFF) == ("true", "fleet")
    assert cluster_value(deployment_type="local", fleet=ON, applied=9, reported=None) == ("true", "fleet")
    assert cluster_value(deployment_type="local", fleet=GONE, applied=6, reported=MINE_OFF) == ("unset", "fleet")
    assert cluster_value(deployment_type="", fleet=ON, applied=4, reported=MINE_OFF) == ("unknown", "pending")


def test_a_gate_the_fleet_never_had_or_maas_is_what_the_agent_reported() -> None:
    assert cluster_value(deployment_type="local", fleet=None, applied=5, reported=MINE_OFF) == ("false", "local")
    assert cluster_value(deployment_type="maas", fleet=ON, applied=5, reported=MINE_OFF) == ("false", "local")
    assert cluster_value(deployment_type="maas", fleet=ON, applied=5, reported=None) == ("unknown", "unreported")
    assert cluster_value(deployment_type="local", fleet=ON, applied=None, reported=None) == ("unknown", "unreported")


def test_the_old_side_of_a_change_is_what_the_hub_knew_else_the_last_report_else_unset() -> None:
    # the fleet's write replaced c1's earlier false: turning it false again is a change
    assert previous_value(deployment_type="local", fleet=ON, applied=5, reported=MINE_OFF) is True
    # not applied yet: its own last report is the best the hub knows (a resend is no change)
    assert previous_value(deployment_type="local", fleet=ON, applied=4, reported=MINE_OFF) is False
    assert previous_value(deployment_type="maas", fleet=ON, applied=5, reported=None) is None
    assert fleet_value(None) == fleet_value(GONE) == "unset" and fleet_value(ON) == "true"
