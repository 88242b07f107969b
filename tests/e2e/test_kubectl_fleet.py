"""kubectl and ``fleetsync get`` on the fleet (issue 19, item 4): fleet-wide Tables say which
cluster each row is from, the demo's kubeconfig has a fleet context and one per cluster, and
``fleetsync get`` reads the fleet-wide path page by page, with kubectl's exit codes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetsync.sim.kubeconfig import write_fleet_kubeconfig
from tests.harness import API_TOKEN, PKI, AgentFleet, Sim, fleetsync, hub_kubectl, kubectl_binary, start_hub, wait_converged

FAST = ("--types", "v1/Pod")
CLUSTERS = ("c1", "c2")


class Fleet(AgentFleet):
    def agent_args(self, cluster: str) -> tuple[str, ...]:
        return FAST


@pytest.fixture
def fleet(quiet_sim: Sim, tmp_path: Path) -> Iterator[Fleet]:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", tls=True)  # kubectl sends tokens over HTTPS only
    fleet = Fleet(quiet_sim, hub, tmp_path, CLUSTERS)
    try:
        fleet.start_all()
        wait_converged(quiet_sim, hub, *CLUSTERS, types="v1/Pod", timeout=60, what="c1 and c2 synced")
        yield fleet
    finally:
        fleet.stop()


def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def test_fleet_wide_tables_have_a_cluster_column_and_per_cluster_ones_do_not(fleet: Fleet) -> None:
    hub, sim = fleet.hub, fleet.sim
    lines = kubectl(*hub_kubectl(hub.url), "get", "pods", "-A").stdout.splitlines()
    assert lines[0].split()[:4] == ["NAMESPACE", "CLUSTER", "NAME", "READY"], lines[0]
    clusters = [line.split()[1] for line in lines[1:]]
    assert {c: clusters.count(c) for c in CLUSTERS} == {c: len(sim.truth(c, "v1/Pod")) for c in CLUSTERS}
    # kubectl's own paging (--chunk-size) keeps the column on every page
    chunked = kubectl(*hub_kubectl(hub.url), "get", "pods", "-A", "--chunk-size", "7").stdout.splitlines()
    assert sorted(line.split()[:3] for line in chunked[1:]) == sorted(line.split()[:3] for line in lines[1:])  # (ages move on)
    # one cluster's path: kubectl's usual columns
    one = kubectl(*hub_kubectl(f"{hub.url}/clusters/c1"), "get", "pods", "-A").stdout.splitlines()
    assert one[0].split()[:3] == ["NAMESPACE", "NAME", "READY"] and len(one) - 1 == len(sim.truth("c1", "v1/Pod")), one[0]


def test_the_demo_kubeconfig_has_a_fleet_context_and_one_per_cluster(fleet: Fleet, tmp_path: Path) -> None:
    hub, sim = fleet.hub, fleet.sim
    config = write_fleet_kubeconfig(tmp_path / "kc", "fleetsync", hub.url, API_TOKEN, list(CLUSTERS), certificate_authority=PKI.ca_file)
    base = [kubectl_binary(), "--kubeconfig", str(config)]
    contexts = kubectl(*base, "config", "get-contexts", "-o", "name").stdout.split()
    assert sorted(contexts) == ["fleetsync", "fleetsync/c1", "fleetsync/c2"], contexts
    assert kubectl(*base, "config", "current-context").stdout.strip() == "fleetsync"
    fleet_wide = kubectl(*base, "get", "pods", "-A", "-o", "name").stdout.split()
    assert len(fleet_wide) == sum(len(sim.truth(c, "v1/Pod")) for c in CLUSTERS)
    for cluster in CLUSTERS:
        own = kubectl(*base, "--context", f"fleetsync/{cluster}", "get", "pods", "-A", "-o", "name").stdout.split()
        assert sorted(own) == sorted(f"pod/{p['metadata']['name']}" for p in sim.truth(cluster, "v1/Pod")), cluster
    assert oct(config.stat().st_mode & 0o777) == "0o600", "it holds a token"


def test_fleetsync_get_pages_the_fleet_wide_path_and_exits_like_kubectl(fleet: Fleet) -> None:
    hub, sim = fleet.hub, fleet.sim
    total = sum(len(sim.truth(c, "v1/Pod")) for c in CLUSTERS)
    assert total > 3 * 7
    listed = fleetsync("get", "pods", "-A", "--chunk-size", "7", "--hub", hub.url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["CLUSTER", "NAMESPACE", "NAME", "READY"], lines[0]
    assert len(lines) - 1 == total and {line.split()[0] for line in lines[1:]} == set(CLUSTERS)
    names = fleetsync("get", "pods", "-o", "name", "--chunk-size", "5", "--hub", hub.url).stdout.split()
    assert len(names) == total
    # selectors are URL-encoded, and the fleet-wide path knows each object's cluster label
    only_c2 = fleetsync("get", "pods", "-l", "fleetsync.io/cluster in (c2)", "--chunk-size", "9", "--hub", hub.url)
    assert only_c2.returncode == 0 and {line.split()[0] for line in only_c2.stdout.splitlines()[1:]} == {"c2"}, only_c2.stderr
    assert len(only_c2.stdout.splitlines()) - 1 == len(sim.truth("c2", "v1/Pod"))
    one = fleetsync("get", "pods", "--cluster", "c1", "--chunk-size", "4", "--hub", hub.url).stdout.splitlines()
    assert len(one) - 1 == len(sim.truth("c1", "v1/Pod")) and {line.split()[0] for line in one[1:]} == {"c1"}

    # exit codes: 1 for an error, 2 for a usage error only
    for args, code, snippet in (
        (("get", "pods", "--hub", hub.url, "--token", "not-a-token"), 1, "401"),
        (("get", "pods", "-l", "a in (", "--hub", hub.url), 1, "400"),
        (("get", "pods", "--hub", "https://127.0.0.1:1"), 1, "cannot reach"),
        (("clusters", "--hub", hub.url, "--token", "not-a-token"), 1, "401"),
        (("gates", "get", "feature.nope", "--hub", hub.url), 1, "404"),
        (("get", "nosuchtypes", "--hub", hub.url), 2, "nosuchtypes"),
        (("get", "pods", "--chunk-size", "0", "--hub", hub.url), 2, "--chunk-size"),
        (("gates", "set", "storage=true", "--hub", hub.url), 2, "feature.* namespace"),
        (("clusters", "label", "c1", "env", "--hub", hub.url), 2, "expected KEY=VALUE"),
    ):
        result = fleetsync(*args)
        assert result.returncode == code and snippet in result.stderr, (args, result.returncode, result.stderr)
