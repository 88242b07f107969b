"""What every benchmark in ``bench/`` shares: starting and stopping processes, reading metrics, machine facts.

The scripts run from the repository root (``.venv/bin/python bench/NAME.py``), which
puts this directory on ``sys.path``: they ``import benchlib``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from fleetsync.hub.auth import new_token
from fleetsync.testing import processes, services
from fleetsync.testing.processes import Proc, log_tail, log_tails
from fleetsync.testing.services import API_TOKEN as API_TOKEN
from fleetsync.testing.services import broker_argv, metric_samples, mosquitto_config
from fleetsync.testing.services import free_port as free_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FLEETSYNC = ROOT / ".venv" / "bin" / "fleetsync"
MIB = 1024 * 1024


class BenchError(Exception):
    """A phase could not complete; the run is aborted with exit status 1."""


# ---- processes -----------------------------------------------------------------------


#: A process a bench started (its name, log, psutil handle ``ps``, how it stopped).
Child = Proc


class Processes(processes.Processes):
    """Every process the bench starts, so that all of them are stopped whatever happens: each
    detached (Ctrl-C reaches only the bench, which stops them in order) and measured (``ps``)."""

    def __init__(self, fleetsync: Path, tmp: Path) -> None:
        super().__init__(detach=True, measured=True)
        self.fleetsync = fleetsync
        self.tmp = tmp

    def spawn(self, name: str, *args: str, executable: str | None = None) -> Child:
        """Start ``fleetsync ARGS`` (or ``executable ARGS``, e.g. a broker) as ``name``, its output in ``tmp/NAME.log``."""
        return self.start([executable or str(self.fleetsync), *args], self.tmp / f"{name}.log", name=name)

    def spawn_hub(self, db: str, grpc_port: int, http_port: int, *extra: str, name: str = "hub") -> Child:
        """``fleetsync hub`` on ``db`` and loopback ports, with the bench's admin token (:func:`admin_token_file`)."""
        listen = ("--grpc", f"127.0.0.1:{grpc_port}", "--http", f"127.0.0.1:{http_port}")
        return self.spawn(name, "hub", "--db", db, *listen, "--admin-token-file", str(admin_token_file(self.tmp)), *extra)

    def check_alive(self, *prefixes: str) -> None:
        """BenchError if one of the processes whose names start with ``prefixes`` exited."""
        for child in self.exited(*prefixes):
            raise BenchError(f"{child.name} exited with status {child.process.returncode}")


async def start_broker(transport: str, procs: Processes, tmp: Path) -> str:
    """A broker of the bench's own for ``transport`` (mqtt or nats) on a free loopback port,
    as tests/harness.py starts one; returns its URL once it listens."""
    port = free_port()
    config = None
    if transport == "mqtt":
        data = tmp / "mosquitto"
        data.mkdir()
        config = data / "mosquitto.conf"
        config.write_text(mosquitto_config(port, data))
    executable, *args = broker_argv(transport, port, tmp, config=config)
    procs.spawn("broker", *args, executable=executable)
    deadline = time.monotonic() + 30
    while True:
        procs.check_alive("broker")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return f"{transport}://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"the {transport} broker did not listen on port {port} within 30 s") from None
            await asyncio.sleep(0.1)


#: The end of a log file (e.g. a worker's, which is no process of the table).
tail = log_tail


#: What the command line of a fleetsync process's own helper process holds: the hub's SQLite
#: batch writer (``python -m fleetsync.store.sqlitebatch``), part of what the hub costs.
HELPER_PROCESS = "fleetsync.store.sqlitebatch"


def family(ps: psutil.Process) -> list[psutil.Process]:
    """``ps`` and its helper processes (:data:`HELPER_PROCESS`): a hub's CPU and memory are
    its own and its batch writer's. Other children (a bench's hubs and workers) are not."""
    members = [ps]
    with contextlib.suppress(psutil.Error):
        for child in ps.children():
            with contextlib.suppress(psutil.Error):
                if HELPER_PROCESS in " ".join(child.cmdline()):
                    members.append(child)
    return members


def rss(ps: psutil.Process) -> int:
    """The RSS of ``ps`` and its children (see :func:`family`)."""
    total = 0
    for member in family(ps):
        with contextlib.suppress(psutil.Error):
            total += int(member.memory_info().rss)
    return total


def cpu_seconds(ps: psutil.Process) -> float:
    """The CPU seconds of ``ps`` and its running children (see :func:`family`)."""
    total = 0.0
    for member in family(ps):
        with contextlib.suppress(psutil.Error):
            t = member.cpu_times()
            total += t.user + t.system
    return total


def vm_hwm(pid: int) -> int | None:
    """Peak RSS since the process started (Linux: VmHWM in /proc/PID/status), its children's
    peaks added (an upper bound of their peak together)."""
    try:
        members = [m.pid for m in family(psutil.Process(pid))]
    except psutil.Error:
        members = [pid]
    total = 0
    for member in members:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
                    break
            else:
                return None
        except (OSError, ValueError, IndexError):
            if member == pid:
                return None
    return total


# ---- HTTP ----------------------------------------------------------------------------------


#: The admin API token the benches provision in the hubs they start (``--admin-token-file``,
#: see :func:`admin_token_file`) and send to them: the tests' (fleetsync.testing.services).
HUB_AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def admin_token_file(tmp: Path) -> Path:
    """A file holding :data:`API_TOKEN`, for a hub's ``--admin-token-file``."""
    return services.admin_token_file(tmp / "admin.token")


async def get_json(
    session: aiohttp.ClientSession, url: str, *, method: str = "GET", timeout: float = 60, headers: Mapping[str, str] | None = None, body: Any = None
) -> Any:
    """The decoded JSON answer; BenchError on an HTTP error status. ``headers``: e.g. :data:`HUB_AUTH` for a hub;
    ``body``: sent as JSON."""
    data = None if body is None else orjson.dumps(body)
    async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout), headers=headers, data=data) as resp:
        body = await resp.read()
        if resp.status >= 300:
            raise BenchError(f"{method} {url} answered HTTP {resp.status}: {body[:300]!r}")
        return orjson.loads(body)


async def put_churn(session: aiohttp.ClientSession, sim: str, rate: float) -> Any:
    """Re-rate the sim's churn (operations/s per cluster); returns its answer."""
    async with session.put(
        f"{sim}/churn", data=orjson.dumps({"rate": rate}), headers={"Content-Type": "application/json"}, timeout=aiohttp.ClientTimeout(total=60)
    ) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise BenchError(f"PUT /churn answered HTTP {resp.status}: {body[:300]!r}")
        return orjson.loads(body)


# ---- a fleet of agents ------------------------------------------------------------------


def log_time(stamp: str) -> float:
    """The time of a fleetsync log line's stamp (``2026-11-30 12:00:00,123``; the machine's clock)."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def check_alive(procs: Processes) -> None:
    """BenchError if the hub, the sim or an agent exited, with the end of its log (run_bench shows only the first few logs)."""
    try:
        procs.check_alive("hub", "sim", "agent-")
    except BenchError as exc:
        raise BenchError(f"{exc}\n{log_tails(procs.exited('')[:3], lines=15)}") from None


async def answers(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether ``url`` answers 200 (a service coming up: a refused connection is "not yet")."""
    try:
        async with session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def wait_for(predicate: Callable[[], Awaitable[bool]], *, timeout: float, what: str, procs: Processes, interval: float = 0.05) -> None:
    """Await ``predicate`` until it holds; BenchError after ``timeout`` s or when a process dies."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        check_alive(procs)
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class AgentFleet:
    """``fleetsync sim --clusters N``, a hub on SQLite and one agent per cluster, all connected."""

    sim: str
    hub: str
    #: The hub's store (``sqlite:///...``), for a bench that checks it directly.
    db: str
    clusters: list[str]
    #: Seconds from the first agent's start until every agent was connected.
    connected_after: float


async def start_agent_fleet(procs: Processes, session: aiohttp.ClientSession, agents: int, *agent_args: str) -> AgentFleet:
    """Start a sim of ``agents`` one-pod clusters, a hub on SQLite (agent tokens written to its store
    directly, the admin token of :data:`HUB_AUTH`) and an agent per cluster syncing only Services
    (plus ``agent_args``, formatted with ``{cluster}``); return once every agent is connected."""
    from fleetsync.hub.auth import hash_token
    from fleetsync.store import open_store

    tmp = procs.tmp
    sim_port, grpc_port, http_port = free_port(), free_port(), free_port()
    sim, hub = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{http_port}"
    clusters = [f"c{i}" for i in range(1, agents + 1)]
    procs.spawn("sim", "sim", "--clusters", str(agents), "--pods", "1", "--churn", "0", "--port", str(sim_port), "--kubeconfig-dir", str(tmp / "kc"))
    db = f"sqlite:///{tmp / 'hub.db'}"
    store = open_store(db)
    await store.open()
    tokens = {c: new_token() for c in clusters}
    try:
        for cluster, token in tokens.items():
            await store.add_token(name=cluster, role="agent", token_hash=hash_token(token))
    finally:
        await store.close()
    procs.spawn_hub(db, grpc_port, http_port)

    await wait_for(lambda: answers(session, f"{sim}/clusters"), timeout=60, what="the sim", procs=procs)
    await wait_for(lambda: answers(session, f"{hub}/readyz"), timeout=60, what="the hub", procs=procs)
    started = time.monotonic()
    for cluster in clusters:
        (tmp / f"{cluster}.token").write_text(tokens[cluster])
        kubeconfig, token_file = str(tmp / "kc" / f"{cluster}.kubeconfig"), str(tmp / f"{cluster}.token")
        hub_url = f"grpc://127.0.0.1:{grpc_port}"
        extra = [arg.format(cluster=cluster) for arg in agent_args]
        procs.spawn(
            f"agent-{cluster}",
            "agent",
            "--kubeconfig",
            kubeconfig,
            "--cluster-id",
            cluster,
            "--hub",
            hub_url,
            "--token-file",
            token_file,
            "--types",
            "v1/Service",
            *extra,
        )

    async def all_connected() -> bool:
        items = (await get_json(session, f"{hub}/api/v1/clusters", headers=HUB_AUTH))["items"]
        return {c["name"] for c in items if c["connected"]} >= set(clusters)

    await wait_for(all_connected, timeout=300, what=f"{agents} agents connected", procs=procs, interval=0.5)
    return AgentFleet(sim, hub, db, clusters, time.monotonic() - started)


# ---- metrics and checks -----------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> metric name -> value summed over labels."""
    totals: dict[str, float] = defaultdict(float)
    for name, _, value in metric_samples(text):
        totals[name] += value
    return dict(totals)


def parse_metrics_by(text: str, name: str, label: str) -> dict[str, float]:
    """Prometheus text -> the samples of ``name`` by the value of one ``label`` (summed over the others)."""
    totals: dict[str, float] = defaultdict(float)
    for sample, labels, value in metric_samples(text):
        if sample == name:
            totals[labels.get(label, "")] += value
    return dict(totals)


async def run_check(fleetsync: Path, sim: str, hub: str, timeout: float, *extra: str) -> tuple[int, float, str]:
    """``fleetsync check``: (exit status, seconds, its output)."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(fleetsync), "check", "--sim", sim, "--hub", hub, *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, time.monotonic() - started, f"(check timed out after {timeout:.0f} s)"
    text = out.decode(errors="replace")
    return proc.returncode or 0, time.monotonic() - started, text


def divergent_rows(check_output: str) -> list[str]:
    """The rows of a check table with something missing, extra or stale."""
    rows = []
    for line in check_output.splitlines():
        cells = line.split()
        if len(cells) >= 5 and all(c.isdigit() for c in cells[-3:]) and any(int(c) for c in cells[-3:]):
            rows.append(" ".join(cells))
    return rows


# ---- figures ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / MIB:,.0f} MiB"


def core(x: float) -> str:
    return f"{x:.2f} core"


def ms(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x * 1000:,.0f} ms"


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        from fleetsync import __version__ as version
    except ImportError:
        version = "?"
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fleetsync": version,
        "loadavg_start": os.getloadavg(),
    }


Bench = Callable[[Any, "Processes", Path, dict[str, Any]], Coroutine[Any, Any, None]]


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def bench_start(name: str, args: Any) -> dict[str, Any] | None:
    """What a bench's ``main`` does first: check the fleetsync executable (None, said why, if it
    is missing), make a SIGTERM stop the bench's processes as Ctrl-C does, and start its figures
    with the configuration and the machine."""
    if not args.fleetsync.exists():
        print(f"{name}: {args.fleetsync} not found (use --fleetsync)", file=sys.stderr)
        return None
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "machine": machine()}


def run_bench(name: str, args: Any, bench: Bench, *, show_logs: int | None = None) -> int:
    """Run ``bench(args, procs, tmp, fig)`` in a temporary directory; on failure say why with the end of
    (the first ``show_logs``, default every) process's log; stop every process; write ``--json``.
    Returns the exit status: 0, 1 (failed) or 130 (interrupted)."""
    fig: dict[str, Any] = {"config": vars(args) | {"fleetsync": str(args.fleetsync), "json": str(args.json)}, "machine": machine()}
    m = fig["machine"]
    print(f"machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory'] / 2**30:.0f} GiB, Python {m['python']}", flush=True)
    status = 0
    with tempfile.TemporaryDirectory(prefix=f"fleetsync-{name}-") as tmp:
        procs = Processes(args.fleetsync, Path(tmp))
        try:
            asyncio.run(bench(args, procs, Path(tmp), fig))
        except (BenchError, aiohttp.ClientError) as exc:
            status = 1
            print(f"\nFAILED: {exc}", file=sys.stderr)
            print(f"\n{log_tails(procs.children[:show_logs], lines=30)}", file=sys.stderr)
        except KeyboardInterrupt:
            status = 130
        finally:
            procs.stop_all(20)
    if args.json:
        args.json.write_text(orjson.dumps(fig, option=orjson.OPT_INDENT_2).decode())
    return status
