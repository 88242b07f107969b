"""The store fails under running hubs, for real: a full disk, PostgreSQL restarted in the middle
of transactions, PostgreSQL unreachable from one replica, a replica paused past its lease.

The hub keeps running, refuses what it cannot write with a reason (``UNAVAILABLE``), its
agents reconnect and resend, a replica that lost a cluster writes nothing more for it (its
writes are fenced by the lease epoch), and every test ends with ``fleetsync check`` at 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from fleetsync.testing.postgres import PostgresServer
from fleetsync.testing.proxy import PartitionProxy
from tests.harness import Hub, Sim, create_token, http, metric, start_agent, start_hub, wait_converged, wait_until

FAST = ("--types", "v1/Service,v1/Pod")
#: Agents notice a silent hub after 4 heartbeats; leases last 3 s: faults show within seconds.
QUICK = ("--heartbeat-interval", "1", "--lease-ttl", "3", "--store-retry", "2")


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (a tmpfs), mounted at ``path``: it fills up as a disk does."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file (returned: delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1024 * 1024, 4096, 1):  # megabytes, then the last pages, then the last bytes
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def store_errors(hub: Hub, kind: str) -> float:
    return metric(f"{hub.url}/metrics", "fleetsync_store_errors_total", kind=kind)


def connected(hub: Hub) -> float:
    return metric(f"{hub.url}/metrics", "fleetsync_connected_agents")


def test_a_full_disk_is_refused_as_unavailable_and_everything_converges_once_space_is_freed(quiet_sim: Sim, tmp_path: Path) -> None:
    sim = quiet_sim
    with small_disk(tmp_path / "disk", "64m") as disk:
        db = f"sqlite:///{disk / 'hub.db'}"
        hub = start_hub(tmp_path, db, *QUICK)
        clusters = ("c1", "c2")
        agents = [start_agent(tmp_path, sim, c, hub.agent_url, create_token(tmp_path, db, c), *FAST) for c in clusters]
        try:
            wait_converged(sim, hub, *clusters, timeout=60, what="initial sync")
            filler = fill(disk)
            sim.set_churn(20)
            wait_until(lambda: store_errors(hub, "unavailable") >= 2, timeout=30, what="writes refused: the disk is full")
            wait_until(lambda: any("UNAVAILABLE" in a.output() and "full" in a.output() for a in agents), timeout=30, what="an agent told why")
            assert hub.proc.process.poll() is None, "the hub keeps running on a full disk"
            assert http("GET", f"{hub.url}/api/v1/clusters")[0] == 200, "and keeps serving what it has"
            filler.unlink()
            wait_until(lambda: connected(hub) == len(clusters), timeout=60, what="the agents back")
            sim.set_churn(0)
            wait_converged(sim, hub, *clusters, timeout=60, what="convergence once space is freed")
        finally:
            sim.set_churn(0)
            for agent in agents:
                agent.stop()
            hub.proc.stop()


def stream_positions(pg: PostgresServer, database: str) -> dict[tuple[str, str], tuple[str, int]]:
    rows = pg.psql(database, "SELECT cluster, type, incarnation, seq FROM streams ORDER BY cluster, type")
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for line in rows.splitlines():
        if line:
            cluster, type_, incarnation, seq = line.split("|")
            out[(cluster, type_)] = (incarnation, int(seq))
    return out


def never_backwards(before: dict[tuple[str, str], tuple[str, int]], after: dict[tuple[str, str], tuple[str, int]]) -> list[str]:
    """Streams whose position went back (same incarnation, lower seq)."""
    return [f"{k}: {before[k]} -> {after.get(k)}" for k in before if k not in after or (after[k][0] == before[k][0] and after[k][1] < before[k][1])]


def test_postgresql_restarted_in_the_middle_of_transactions_under_churn_loses_nothing(sim: Sim, tmp_path: Path) -> None:
    with PostgresServer() as pg:
        url = pg.create_database("fleet")
        hub = start_hub(tmp_path, url, *QUICK)
        clusters = ("c1", "c2", "c3")
        agents = [start_agent(tmp_path, sim, c, hub.agent_url, create_token(tmp_path, url, c), *FAST) for c in clusters]
        try:
            wait_converged(sim, hub, timeout=60, what="initial sync")
            sim.set_churn(30)
            for _ in range(2):  # twice: the second restart hits a hub that already recovered from the first
                before = stream_positions(pg, "fleet")
                wait_until(lambda before=before: stream_positions(pg, "fleet") != before, timeout=30, what="bundles being committed")
                pg.restart()  # fast shutdown: every transaction in flight is aborted, every connection dropped
                wait_until(lambda: store_errors(hub, "unavailable") >= 1 or connected(hub) < len(clusters), timeout=30, what="the hub noticed")
                assert hub.proc.process.poll() is None
                wait_until(lambda: connected(hub) == len(clusters), timeout=60, what="every agent connected again")
            sim.set_churn(0)
            wait_converged(sim, hub, timeout=90, what="convergence after the restarts")
        finally:
            sim.set_churn(0)
            for agent in agents:
                agent.stop()
            hub.proc.stop()


def holder_hub(hub: Hub, cluster: str) -> str:
    """The hub id of the replica holding ``cluster`` ("" if no agent of it is connected), read through ``hub``."""
    found = [c for c in http("GET", f"{hub.url}/api/v1/clusters")[1]["items"] if c["name"] == cluster]
    return str(found[0]["hub"]) if found and found[0]["connected"] else ""


def victim_and_survivor(a: Hub, b: Hub, clusters: tuple[str, ...]) -> tuple[Hub, Hub]:
    """Once every agent is connected: the replica holding the first cluster (the one the test fails), and the other.

    Agents fail over between replicas in turn, so which one they settle on depends on timing
    (a Hello that times out on a busy machine moves an agent on): the test fails whichever
    replica holds them rather than assume it is the first."""
    wait_until(lambda: all(holder_hub(b, c) for c in clusters), timeout=60, what="every agent connected to a replica")
    return (a, b) if holder_hub(b, clusters[0]) == a.hub_id else (b, a)


def test_postgresql_unreachable_from_one_replica_its_agents_move_to_the_other(sim: Sim, tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database("cut")
    # each replica reaches PostgreSQL through a proxy of its own: the one holding the agents is cut off
    with PartitionProxy(("127.0.0.1", postgres.port)) as proxy_a, PartitionProxy(("127.0.0.1", postgres.port)) as proxy_b:
        a = start_hub(tmp_path, url.replace(f":{postgres.port}/", f":{proxy_a.port}/"), *QUICK)
        b = start_hub(tmp_path, url.replace(f":{postgres.port}/", f":{proxy_b.port}/"), *QUICK)
        via = {a.hub_id: proxy_a, b.hub_id: proxy_b}
        clusters = ("c1", "c2")
        agents = [start_agent(tmp_path, sim, c, f"{a.grpc_url},{b.grpc_url}", create_token(tmp_path, url, c), *FAST) for c in clusters]
        try:
            victim, survivor = victim_and_survivor(a, b, clusters)
            wait_converged(sim, survivor, *clusters, timeout=60, what="initial sync")
            sim.set_churn(20)
            via[victim.hub_id].partition()  # the victim's connections to PostgreSQL hang, as across a network partition
            wait_until(lambda: all(holder_hub(survivor, c) == survivor.hub_id for c in clusters), timeout=45, what="the agents moved to the other replica")
            sim.set_churn(0)
            wait_converged(sim, survivor, *clusters, timeout=60, what="convergence through the other replica while one is cut off")
            positions = stream_positions(postgres, "cut")
            via[victim.hub_id].heal()  # the victim's stalled writes arrive now: they are fenced, its sessions end
            wait_until(lambda: connected(victim) == 0, timeout=60, what="the cut-off replica let go of its sessions")
            assert a.proc.process.poll() is None and b.proc.process.poll() is None
            assert not never_backwards(positions, stream_positions(postgres, "cut"))
            wait_converged(sim, victim, *clusters, timeout=60, what="no divergence, read through the replica that was cut off")
        finally:
            sim.set_churn(0)
            for proxy in via.values():
                proxy.heal()
            for agent in agents:
                agent.stop()
            a.proc.stop()
            b.proc.stop()


def test_a_replica_paused_past_its_lease_cannot_move_a_position_back_when_it_resumes(sim: Sim, tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database("paused")
    a = start_hub(tmp_path, url, *QUICK)
    b = start_hub(tmp_path, url, *QUICK)
    clusters = ("c1", "c2")
    agents = [start_agent(tmp_path, sim, c, f"{a.grpc_url},{b.grpc_url}", create_token(tmp_path, url, c), *FAST) for c in clusters]
    victim = a
    try:
        victim, survivor = victim_and_survivor(a, b, clusters)
        wait_converged(sim, survivor, *clusters, timeout=60, what="initial sync")
        sim.set_churn(20)
        os.kill(victim.proc.process.pid, signal.SIGSTOP)  # a GC pause, a frozen VM: it still believes it holds its clusters
        try:
            wait_until(lambda: all(holder_hub(survivor, c) == survivor.hub_id for c in clusters), timeout=45, what="the agents moved to the other replica")
            moved = stream_positions(postgres, "paused")
            wait_until(lambda: stream_positions(postgres, "paused") != moved, timeout=30, what="the other replica writing past the paused one's last positions")
        finally:
            positions = stream_positions(postgres, "paused")
            os.kill(victim.proc.process.pid, signal.SIGCONT)  # it resumes with what it had received and its old leases
        wait_until(lambda: connected(victim) == 0, timeout=30, what="the paused replica let go of its sessions")
        sim.set_churn(0)
        assert not never_backwards(positions, stream_positions(postgres, "paused"))
        wait_converged(sim, survivor, *clusters, timeout=60, what="no divergence")
        # each cluster is held by a live replica (the survivor, or the paused one again if an
        # agent's Hello queued in its backlog during the pause took it back once it resumed:
        # fenced either way, as asserted above)
        wait_until(lambda: all(holder_hub(survivor, c) in (a.hub_id, b.hub_id) for c in clusters), timeout=30, what="every cluster held by a replica")
        assert not never_backwards(positions, stream_positions(postgres, "paused"))
    finally:
        sim.set_churn(0)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.proc.process.pid, signal.SIGCONT)
        for agent in agents:
            agent.stop()
        a.proc.stop()
        b.proc.stop()
