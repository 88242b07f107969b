"""Every benchmark in ``bench/`` runs, at its smallest size, and prints the figures it is for.

The benchmarks are run by hand, seldom, and rotted between runs (an import of a helper that
had moved, a cache's changed form, a page count that held only for large fleets): here each
one runs as a subprocess, exactly as a person runs it, on a fleet a few objects large and for
a second or two, so that a bench that breaks fails CI. What is asserted is that it exits 0
and that its summary shows the figures it exists to measure, with numbers in them; the
numbers themselves mean nothing at this size.

The whole file takes about a minute and a half of wall time on two busy cores.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import BIN

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FLEETSYNC = ("--fleetsync", str(BIN / "fleetsync"))
#: A figure as the benches print one: "12", "1,234", "0.5", "n/a" never.
NUMBER = r"\d[\d,]*(?:\.\d+)?"


def run_bench(script: str, *args: str, timeout: float = 180) -> str:
    """``python bench/SCRIPT ARGS`` from the repository root (as the benches are run); its output,
    after asserting it exited 0 (else: the end of what it said, which names the failed phase
    and the logs of its processes)."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"bench/{script} exited with {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def assert_figure(output: str, pattern: str) -> None:
    """``pattern`` (a regular expression; NUMBER stands for a figure) is on a line of ``output``."""
    assert re.search(pattern.replace("NUMBER", NUMBER), output, re.MULTILINE), f"no line matching {pattern!r} in:\n{output[-4000:]}"


@dataclass(frozen=True)
class Bench:
    """A bench at its smallest size, and the summary lines that must show its figures."""

    script: str
    #: What it measures, and what its size leaves out.
    what: str
    args: tuple[str, ...]
    #: Regular expressions, one of which must match a line each; NUMBER stands for a figure.
    figures: tuple[str, ...]
    #: It starts fleetsync processes (``--fleetsync``): not the store benches.
    fleetsync: bool = True


BENCHES = (
    Bench(
        "swarm.py",
        "protocol-level agents against one hub: the initial sync and the ack latency under changes",
        (
            *("--clusters", "4", "--objects", "10", "--procs", "1", "--duration", "2", "--idle", "1"),
            *("--raw-objects", "200", "--raw-bundle", "50", "--drain", "5", "--visibility-wait", "5", "--stop-grace", "5"),
        ),
        (
            r"^every FULL acked after\s+NUMBER s",
            r"^ack latency p50 / p99 / max\s+NUMBER ms / NUMBER ms / NUMBER ms",
            r"^visibility latency p50 / p99 / max\s+NUMBER ms",
        ),
    ),
    Bench(
        "agent.py",
        "one real agent's footprint against the sim: sync rate, RSS, CPU at churn (no soak)",
        ("--pods", "20", "--settle", "0.5", "--churn-warmup", "0.5", "--cpu-seconds", "1", "--soak-seconds", "0", "--sync-timeout", "60"),
        (r"^synced to the hub, from start\s+NUMBER obj/s", r"^steady RSS \(idle, synced\)\s+NUMBER MiB", r"^CPU at --churn\s+NUMBER % core"),
    ),
    Bench(
        "ingest.py",
        "real agents into one hub: the initial sync, churn with the change-to-hub latency probe, convergence",
        (
            *("--clusters", "1", "--pods", "5", "--churn", "10", "--duration", "1", "--latency-clusters", "1"),
            *("--startup-timeout", "60", "--sync-timeout", "60", "--converge-timeout", "60", "--check-timeout", "30", "--stop-grace", "5"),
        ),
        (
            r"^\s+agents started -> fleetsync check passes\s+NUMBER s",
            r"^\s+p50 / p90 / p99 / max\s+NUMBER ms / NUMBER ms",
            r"^\s+churn stopped -> fleetsync check passes\s+NUMBER s",
        ),
    ),
    Bench(
        "store_apply.py",
        "the SQLite store's apply rate (no process but the bench)",
        ("-n", "100", "-b", "50"),
        (r"^\s*insert:\s+NUMBER objects/s", r"^\s*update:\s+NUMBER objects/s"),
        fleetsync=False,
    ),
    Bench(
        "pg_apply.py",
        "the PostgreSQL store's apply rate against raw upserts, on a server of the bench's own (no replica pass)",
        ("-n", "100", "-b", "50", "--replicas", "1"),
        (r"raw executemany insert:\s+NUMBER rows/s", r"hub store\s+insert:\s+NUMBER objects/s .* of raw"),
        fleetsync=False,
    ),
    Bench(
        "query.py",
        "list latency and watch fan-out of a hub over a populated store",
        ("--clusters", "2", "--pods", "10", "--requests", "2", "--warmup", "1", "--watchers", "2", "--duration", "1", "--rate", "20"),
        (
            r"p50 / p99 / max \(mean\)\s+NUMBER ms / NUMBER ms / NUMBER ms",
            r"delivery lag p50 / p99 / max \(mean\)\s+NUMBER ms",
            r"^query: OK: every watcher received every change",
        ),
    ),
    Bench(
        "fleet_list.py",
        "a fleet-wide paged read: the raw store against the hub's pages and kubectl",
        ("--clusters", "1", "--pods", "10"),
        (r"^hub JSON pages\s+10\s+NUMBER\s+NUMBER", r"^kubectl get pods -A\s+10\s+NUMBER\s+NUMBER"),
    ),
    Bench(
        "scoped_list.py",
        "what a read token's scope costs on list latency (every case also checks its item count)",
        ("--clusters", "2", "--pods", "10", "--requests", "2", "--warmup", "1"),
        (r"admin page\s+p50\s+NUMBER ms .*\(20 items\)", r"scoped page \(1 cluster\)\s+p50\s+NUMBER ms .*\(10 items\)"),
    ),
    Bench(
        "resync.py",
        "the cost of a FULL, of a digest resync, and of catching up after a partition",
        ("--pods", "20", "--outage", "1", "--churn", "2"),
        (r"^FULL: NUMBER objects in NUMBERs", r"^digest resync of the unchanged cluster: NUMBER MB", r"^after the heal: .*check: 0 divergence"),
    ),
    Bench(
        "gates.py",
        "how fast a feature gate reaches the agents' local config",
        ("--agents", "1", "--changes", "1"),
        (r"API call -> every agent's local config\s+p50 NUMBER ms / p99 NUMBER ms", r"every local config equals the hub's gates\s+yes"),
    ),
    Bench(
        "works.py",
        "how long a work takes to be applied on (and removed from) the clusters it targets",
        ("--agents", "1", "--rounds", "1"),
        (r"API call -> status Applied, every cluster\s+p50 NUMBER ms", r"objects on every cluster after apply/delete\s+as the work says / none"),
    ),
    Bench(
        "istio_config.py",
        "how large an Istio configuration syncs (the single-object bound's search is left out: --skip-bound)",
        ("--scales", "5", "--pods", "5", "--namespaces", "2", "--skip-bound", "--timeout", "60"),
        (r"agent start -> hub holds all\s+NUMBERs", r"largest message\s+NUMBER KiB of NUMBER KiB"),
    ),
    Bench(
        "dashboard.py",
        "the web dashboard in headless Chromium; 51 clusters are the fewest the bench takes, since it pages the fleet table (50 a page)",
        ("--clusters", "51", "--repeat", "1", "--calls", "2", "--idle", "0.5"),
        (r"navigation \+ sign-in -> first page shown\s+p50 NUMBER ms", r"table paginated \(rows = page size\)\s+yes"),
    ),
    Bench(
        "sim_scale.py",
        "what one sim process costs holding clusters and serving their watches",
        (
            *("--clusters", "2", "--pods", "10", "--churn", "5", "--duration", "1", "--idle", "0"),
            *("--startup-timeout", "60", "--list-timeout", "60", "--catchup-timeout", "20"),
        ),
        (r"time until every LIST returned\s+NUMBER s", r"watches caught up after churn\s+True", r"watch views == sim object counts\s+True"),
    ),
)


@pytest.mark.parametrize("bench", BENCHES, ids=[b.script.removesuffix(".py") for b in BENCHES])
def test_bench_runs_and_prints_its_figures(bench: Bench) -> None:
    """The bench exits 0 and its summary shows the figures it is for (``bench.what``)."""
    out = run_bench(bench.script, *(FLEETSYNC if bench.fleetsync else ()), *bench.args)
    for figure in bench.figures:
        assert_figure(out, figure)


def test_every_bench_is_run_here() -> None:
    """A bench added to bench/ without a run here would rot unseen again."""
    scripts = {p.name for p in (ROOT / "bench").glob("*.py")} - {"benchlib.py"}
    assert scripts <= {b.script for b in BENCHES}, f"benches not run by {Path(__file__).name}: {sorted(scripts - {b.script for b in BENCHES})}"
