"""What the test harness (``tests/harness.py``) and the benchmarks (``bench/benchlib.py``) share
to start fleetsync's services and read them: one place, so a test and a benchmark of the
same thing run the same broker with the same configuration, on ports picked the same way,
and read metrics alike.

Both keep the processes they start in one process table (:mod:`.processes`). Each caller
keeps only what is its own: the harness its synchronous deadlines, the benchmarks their
asynchronous waits and resource measurements.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from fleetsync.hub.auth import new_token

#: The admin API token of every hub a test or benchmark starts (``--admin-token-file``). It is
#: in the environment as FLEETSYNC_TOKEN, so client commands (check, get, events, ...) and
#: child processes send the same one.
API_TOKEN = os.environ.setdefault("FLEETSYNC_TOKEN", new_token())
#: Where the virtualenv's executables are (fleetsync, nats-server and kubectl come as wheels).
BIN = Path(sys.executable).parent


#: Ports :func:`free_port` handed out in this process: a port chosen for a process that has not
#: bound it yet is free to the kernel, which may offer it again (two agents of one test got the same
#: metrics port once).
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before by this process (the process it is for
    binds it later: see the callers' retries)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def admin_token_file(path: Path) -> Path:
    """``path`` holding :data:`API_TOKEN` (owner-only), for a hub's ``--admin-token-file``."""
    path.write_text(API_TOKEN)
    path.chmod(0o600)
    return path


# ---- processes -----------------------------------------------------------------------------------


def start_logged(
    argv: Sequence[str], log: Path, *, append: bool = False, env: Mapping[str, str] | None = None, detach: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output (stdout and stderr) in ``log`` (``append``: after what a
    previous run of it wrote), with ``env`` added to the environment. ``detach``: in a session of
    its own (Ctrl-C in a terminal reaches only the caller, which stops its children in order),
    with no stdin, and (on Linux) sent SIGTERM if the caller dies, so nothing is left behind."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env} if env else None,
            stdin=subprocess.DEVNULL if detach else None,
            start_new_session=detach,
            preexec_fn=die_with_parent if detach and sys.platform == "linux" else None,
        )


def die_with_parent() -> None:
    """In the child (before exec, or first thing in a multiprocessing child): get SIGTERM when the
    parent dies (Linux's PR_SET_PDEATHSIG), so that a killed caller leaves nothing behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, *, grace: float = 10.0) -> None:
    """Send ``sig`` (if it still runs) and wait; SIGKILL after ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- brokers -------------------------------------------------------------------------------------


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise RuntimeError("mosquitto is not installed (the README's test command installs it: apt-get install mosquitto)")
    return found


def mosquitto_config(port: int, data: Path, *, anonymous: bool = True, extra: str = "") -> str:
    """A Mosquitto configuration listening on loopback ``port``, persisting in ``data``.

    The queue limits are raised well above the default 1,000: past them Mosquitto drops
    QoS 1 messages silently (the protocol would heal that, but a test or a benchmark
    should not measure it). ``extra``: more lines (e.g. a password file and ACL)."""
    lines = [
        f"listener {port} 127.0.0.1",
        "persistence true",
        f"persistence_location {data}/",
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        f"user {getpass.getuser()}",
        "log_dest stdout",
    ]
    if anonymous:
        lines.append("allow_anonymous true")
    return "\n".join(lines) + "\n" + extra


def broker_argv(kind: str, port: int, data: Path, *, config: Path | None = None, nats_args: tuple[str, ...] = ()) -> list[str]:
    """The command line of a broker of ``kind``: Mosquitto with ``config`` (mqtt), or
    nats-server with JetStream in ``data`` (nats) and ``nats_args`` (e.g. --user/--pass)."""
    if kind == "mqtt":
        if config is None:
            raise ValueError("an MQTT broker needs its configuration file (mosquitto_config)")
        return [mosquitto_binary(), "-c", str(config)]
    if kind == "nats":
        return [str(BIN / "nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data / "jetstream"), *nats_args]
    raise ValueError(f"no broker of kind {kind!r} (mqtt or nats)")


# ---- metrics -------------------------------------------------------------------------------------

_METRIC = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> (name, labels, value) of each sample (comments skipped)."""
    for line in text.splitlines():
        if m := _METRIC.match(line):
            yield m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(value for sample, have, value in metric_samples(text) if sample == name and all(have.get(k) == v for k, v in labels.items()))
