"""Each cluster's own gate values and the gate history (issue 19, item 3; seed 004's "what's set
where"): through the API and ``fleetsync gates where|history``, after admin writes and agents'
local changes, in ``maas`` (clusters differ by design) and ``local`` deployments (a refused change)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.harness import AgentFleet, Hub, Sim, fleetsync, http, start_hub, wait_until

FAST = ("--types", "v1/Service")


class Fleet(AgentFleet):
    def __init__(self, sim: Sim, hub: Hub, tmp: Path, clusters: tuple[str, ...], grants: tuple[str, ...]) -> None:
        self.grants = grants
        super().__init__(sim, hub, tmp, clusters)
        self.files = {c: tmp / f"{c}-local.json" for c in clusters}

    def agent_args(self, cluster: str) -> tuple[str, ...]:
        return (*FAST, "--local-config", str(self.files[cluster]))


def set_locally(path: Path, *assignments: str) -> None:
    result = fleetsync("agent", "config", "set", *assignments, "--local-config", str(path))
    assert result.returncode == 0, result.stderr


def where(hub: Hub, key: str) -> dict[str, Any]:
    status, body = http("GET", f"{hub.url}/1.0/feature-gates/{key}/clusters")
    assert status == 200, body
    return dict(body["metadata"])


def by_cluster(hub: Hub, key: str) -> dict[str, tuple[str, str]]:
    return {c["cluster"]: (c["value"], c["source"]) for c in where(hub, key)["clusters"]}


def history(hub: Hub, query: str = "") -> list[tuple[str, str, str, str, str]]:
    status, body = http("GET", f"{hub.url}/1.0/feature-gate-history{query}")
    assert status == 200, body
    return [(c["gate-key"], c["cluster"], c["old"], c["new"], c["by"]) for c in body["metadata"]]


def test_maas_clusters_values_differ_from_the_fleets_and_every_change_is_in_the_history(quiet_sim: Sim, tmp_path: Path) -> None:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", "--deployment-type", "maas")
    fleet = Fleet(quiet_sim, hub, tmp_path, ("c1", "c2"), grants=("gates",))
    try:
        fleet.start_all()
        set_locally(fleet.files["c1"], "feature.x=true")
        wait_until(lambda: by_cluster(hub, "feature.x").get("c1") == ("true", "local"), timeout=20, what="c1's value on the hub")
        set_locally(fleet.files["c2"], "feature.x=false")
        wait_until(lambda: by_cluster(hub, "feature.x").get("c2") == ("false", "local"), timeout=20, what="c2's value on the hub")
        # maas: the fleet's gate is the last write (c2's), and c1 keeps its own true: what's set where
        answer = where(hub, "feature.x")
        assert answer["fleet"] == "false" and answer["deployment-type"] == "maas", answer
        assert {c["cluster"]: c["in-sync"] for c in answer["clusters"]} == {"c1": False, "c2": True}
        assert fleetsync("gates", "set", "feature.x=true", "--hub", hub.url).returncode == 0
        assert by_cluster(hub, "feature.x") == {"c1": ("true", "local"), "c2": ("false", "local")}, "maas writes nothing down"

        assert history(hub, "?limit=10") == [
            ("feature.x", "", "false", "true", "admin (--admin-token-file)"),
            ("feature.x", "", "true", "false", "agent c2"),
            ("feature.x", "c2", "unset", "false", "agent c2"),
            ("feature.x", "", "unset", "true", "agent c1"),
            ("feature.x", "c1", "unset", "true", "agent c1"),
        ]
        assert [h[1] for h in history(hub, "?cluster=c1")] == ["c1"]
        assert [h[4] for h in history(hub, "?cluster=")] == ["admin (--admin-token-file)", "agent c2", "agent c1"]

        # the CLI
        shown = fleetsync("gates", "where", "feature.x", "--hub", hub.url)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith("feature.x: true in the fleet") and lines[1].split()[:4] == ["CLUSTER", "VALUE", "SOURCE", "IN-SYNC"], lines
        assert [line.split()[:4] for line in lines[2:]] == [["c1", "true", "local", "yes"], ["c2", "false", "local", "no"]]
        listed = fleetsync("gates", "history", "feature.x", "--limit", "2", "--hub", hub.url).stdout.splitlines()
        assert [line.split()[1:5] for line in listed[1:]] == [["feature.x", "(fleet)", "false", "true"], ["feature.x", "(fleet)", "true", "false"]]
        as_json = json.loads(fleetsync("gates", "history", "--cluster", "c2", "-o", "json", "--hub", hub.url).stdout)
        assert [(c["cluster"], c["new"]) for c in as_json] == [("c2", "false")]
        bad = fleetsync("gates", "history", "--limit", "0", "--hub", hub.url)
        assert bad.returncode == 2 and "--limit" in bad.stderr, bad.stderr
        status, body = http("GET", f"{hub.url}/1.0/feature-gate-history?limit=lots")
        assert status == 400 and "limit must be a whole number" in body["error"], body
        status, body = http("GET", f"{hub.url}/1.0/feature-gate-history?limit=%C2%B2")  # a digit to str.isdigit, not to int
        assert status == 400 and "limit must be a whole number" in body["error"], body
    finally:
        fleet.stop()


def test_a_refused_local_change_is_the_clusters_own_value_but_not_the_fleets(quiet_sim: Sim, tmp_path: Path) -> None:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", "--gate-history-keep", "4")
    fleet = Fleet(quiet_sim, hub, tmp_path, ("c1",), grants=())  # no gates grant: c1's changes stay its own
    try:
        assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.a", {"enabled": True})[0] == 200
        fleet.start_all()
        wait_until(lambda: by_cluster(hub, "feature.a").get("c1") == ("true", "fleet"), timeout=20, what="c1 applied the fleet's gate")
        set_locally(fleet.files["c1"], "feature.a=false", "feature.own=true")
        wait_until(lambda: by_cluster(hub, "feature.own").get("c1") == ("true", "local"), timeout=20, what="c1's own gate reported")
        wait_until(lambda: ("feature.a", "c1", "true", "false", "agent c1") in history(hub), timeout=20, what="c1's refused change recorded")
        # local deployment: the refusal put the fleet's value back into c1's config; the gate the fleet never had stays c1's
        wait_until(lambda: json.loads(fleet.files["c1"].read_text()).get("feature.a") is True, timeout=20, what="the fleet's value back in c1")
        assert by_cluster(hub, "feature.a") == {"c1": ("true", "fleet")}
        assert where(hub, "feature.own")["fleet"] == "unset" and http("GET", f"{hub.url}/1.0/feature-gates/feature.own")[0] == 404
        c1 = next(c for c in where(hub, "feature.a")["clusters"] if c["cluster"] == "c1")
        assert c1["reported"]["value"] == "false" and c1["in-sync"], c1
        # bounded by --gate-history-keep: the oldest go first
        for i in range(3):
            assert http("PUT", f"{hub.url}/1.0/feature-gates/feature.b", {"enabled": i % 2 == 0})[0] == 200
        kept = history(hub)
        assert (
            len(kept) == 4
            and kept[0][:4] == ("feature.b", "", "false", "true")
            and ("feature.a", "", "unset", "true", "admin (--admin-token-file)") not in kept
        )
    finally:
        fleet.stop()
