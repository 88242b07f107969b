"""What every benchmark in ``bench/`` shares: starting and stopping processes, reading metrics, machine facts.

The scripts run from the repository root (``.venv/bin/python bench/NAME.py``), which
puts this directory on ``sys.path``: they ``import benchlib``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from fleetsync.hub.auth import new_token

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FLEETSYNC = ROOT / ".venv" / "bin" / "fleetsync"
MIB = 1024 * 1024


class BenchError(Exception):
    """A phase could not complete; the run is aborted with exit status 1."""


# ---- processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the bench dies (Linux), so nothing is left behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """A long-running process the bench started, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ps: psutil.Process
    stopped: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None


class Processes:
    """Every process the bench starts, so that all of them are stopped whatever happens."""

    def __init__(self, fleetsync: Path, tmp: Path) -> None:
        self.fleetsync = fleetsync
        self.tmp = tmp
        self.children: list[Child] = []

    def spawn(self, name: str, *args: str, executable: str | None = None) -> Child:
        """Start ``fleetsync ARGS`` (or ``executable ARGS``, e.g. a broker) as ``name``."""
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [executable or str(self.fleetsync), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal reaches only the bench, which stops them in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        child = Child(name, proc, log, psutil.Process(proc.pid))
        self.children.append(child)
        return child

    def spawn_hub(self, db: str, grpc_port: int, http_port: int, *extra: str, name: str = "hub") -> Child:
        """``fleetsync hub`` on ``db`` and loopback ports, with the bench's admin token (:func:`admin_token_file`)."""
        listen = ("--grpc", f"127.0.0.1:{grpc_port}", "--http", f"127.0.0.1:{http_port}")
        return self.spawn(name, "hub", "--db", db, *listen, "--admin-token-file", str(admin_token_file(self.tmp)), *extra)

    def of(self, prefix: str) -> list[Child]:
        return [c for c in self.children if c.name.startswith(prefix)]

    def check_alive(self, *prefixes: str) -> None:
        for child in self.children:
            if child.name.startswith(prefixes) and not child.alive():
                raise BenchError(f"{child.name} exited with status {child.proc.returncode}")

    def stop(self, children: list[Child], grace: float) -> None:
        """SIGTERM all of ``children`` at once, wait up to ``grace`` s, SIGKILL the rest."""
        started = time.monotonic()
        for child in children:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
            else:
                child.stopped = {"status": child.proc.returncode, "seconds": 0.0, "killed": False, "already_exited": True}
        for child in children:
            if child.stopped:
                continue
            killed = False
            try:
                child.proc.wait(max(0.1, grace - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.proc.wait()
            child.stopped = {"status": child.proc.returncode, "seconds": time.monotonic() - started, "killed": killed, "already_exited": False}

    def stop_all(self, grace: float) -> None:
        """Agents first (so the hub sees clean disconnects), then the hub, then the sim."""
        for prefix in ("agent-", "hub", "sim"):
            self.stop(self.of(prefix), grace)
        self.stop([c for c in self.children if not c.stopped], grace)


async def start_broker(transport: str, procs: Processes, tmp: Path) -> str:
    """A broker of the bench's own for ``transport`` (mqtt or nats) on a free loopback port,
    as tests/harness.py starts one; returns its URL once it listens."""
    port = free_port()
    if transport == "mqtt":
        data = tmp / "mosquitto"
        data.mkdir()
        config = data / "mosquitto.conf"
        # queue limits well above the default 1,000 (past them Mosquitto drops QoS 1 messages silently)
        config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {data}/\n"
            f"max_queued_messages 100000\nmax_inflight_messages 100\nuser {getpass.getuser()}\n"
        )
        procs.spawn("broker", "-c", str(config), executable=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    else:
        nats_server = Path(sys.executable).parent / "nats-server"
        procs.spawn("broker", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp / "jetstream"), executable=str(nats_server))
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


def rss(ps: psutil.Process) -> int:
    try:
        return int(ps.memory_info().rss)
    except psutil.Error:
        return 0


def cpu_seconds(ps: psutil.Process) -> float:
    try:
        t = ps.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def vm_hwm(pid: int) -> int | None:
    """Peak RSS since the process started (Linux: VmHWM in /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) or "(empty)"
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


# ---- HTTP ----------------------------------------------------------------------------------


#: The admin API token the benches provision in the hubs they start (``--admin-token-file``,
#: see :func:`admin_token_file`) and send to them (:data:`HUB_AUTH`); in the environment as
#: FLEETSYNC_TOKEN, so ``fleetsync check`` and child processes use the same one.
API_TOKEN = os.environ.setdefault("FLEETSYNC_TOKEN", new_token())
HUB_AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def admin_token_file(tmp: Path) -> Path:
    """A file holding :data:`API_TOKEN`, for a hub's ``--admin-token-file``."""
    path = tmp / "admin.token"
    path.write_text(API_TOKEN)
    path.chmod(0o600)
    return path


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
        dead = [c for c in procs.children if not c.alive()]
        raise BenchError(f"{exc}\n" + "\n".join(f"--- {c.name} (last lines) ---\n{tail(c.log, 15)}" for c in dead[:3])) from None


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

    async def up(url: str) -> bool:
        try:
            async with session.get(url) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(lambda: up(f"{sim}/clusters"), timeout=60, what="the sim", procs=procs)
    await wait_for(lambda: up(f"{hub}/readyz"), timeout=60, what="the hub", procs=procs)
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

_METRIC = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> metric name -> value summed over labels."""
    totals: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            totals[m.group(1)] += float(m.group(3))
    return dict(totals)


def parse_metrics_by(text: str, name: str, label: str) -> dict[str, float]:
    """Prometheus text -> the samples of ``name`` by the value of one ``label`` (summed over the others)."""
    totals: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and m.group(1) == name:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            totals[labels.get(label, "")] += float(m.group(3))
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


Bench = Callable[[Any, "Processes", Path, dict[str, Any]], Awaitable[None]]


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
            for child in procs.children[:show_logs]:
                print(f"\n--- {child.name} (last lines) ---\n{tail(child.log)}", file=sys.stderr)
        except KeyboardInterrupt:
            status = 130
        finally:
            procs.stop_all(20)
    if args.json:
        args.json.write_text(orjson.dumps(fig, option=orjson.OPT_INDENT_2).decode())
    return status
