"""The one process table of the test harness (``tests/harness.py``) and the benchmarks
(``bench/benchlib.py``): start a long-running process with its output in a log file, stop it
(or many at once), and show the end of its log when something failed, since a CI run or a
failed benchmark leaves nothing else behind to read.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetsync.testing.services import start_logged, stop_process

if TYPE_CHECKING:
    import psutil


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of the file at ``path`` (a log may be unreadable: said so)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


@dataclass
class Proc:
    """A long-running process with its log file (its stdout and stderr)."""

    process: subprocess.Popen[bytes]
    log: Path
    #: What reports call it (default: its log file's name less ``.log``).
    name: str = ""
    #: How :meth:`Processes.stop` ended it: exit status, seconds, whether it was killed or had already exited.
    stopped: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or self.log.stem

    @property
    def pid(self) -> int:
        return self.process.pid

    @cached_property
    def ps(self) -> psutil.Process:
        """psutil's handle on the process, for resource figures (a benchmark's: psutil comes with
        the test extra). Made at the first use, which must be while the process runs: a table
        started with ``measured`` makes it at the start."""
        import psutil

        return psutil.Process(self.process.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        """The end of its log, headed by its name and command line."""
        argv = [str(a) for a in self.process.args] if isinstance(self.process.args, list) else [str(self.process.args)]
        command = " ".join([Path(argv[0]).name, *argv[1:]])
        return f"--- {self.name} (last lines) ---\n$ {command}\n{log_tail(self.log, lines)}"

    def stop(self, sig: int = signal.SIGTERM, *, grace: float = 10.0) -> None:
        """Send ``sig`` and wait up to ``grace`` seconds (then SIGKILL)."""
        stop_process(self.process, sig, grace=grace)


def log_tails(procs: Sequence[Proc], *, lines: int = 40) -> str:
    """The end of each process's log (:meth:`Proc.tail`)."""
    return "\n\n".join(proc.tail(lines) for proc in procs)


class Processes:
    """Every process a test or a benchmark started, in order, so that all of them are stopped
    whatever happens and a failure shows their logs.

    ``detach``: each runs in a session of its own and dies with the caller
    (:func:`~fleetsync.testing.services.start_logged`), as a benchmark run from a terminal
    wants. ``measured``: each gets its psutil handle (:attr:`Proc.ps`) as it starts."""

    def __init__(self, *, detach: bool = False, measured: bool = False) -> None:
        self.detach = detach
        self.measured = measured
        self.children: list[Proc] = []

    def start(self, argv: Sequence[str], log: Path, *, name: str = "", append: bool = False, env: Mapping[str, str] | None = None) -> Proc:
        """Start ``argv`` with its output in ``log`` (``append``: after a previous run's), ``env`` added to the environment."""
        proc = Proc(start_logged(argv, log, append=append, env=env, detach=self.detach), log, name)
        if self.measured:
            _ = proc.ps
        self.children.append(proc)
        return proc

    def of(self, prefix: str) -> list[Proc]:
        """The processes whose name starts with ``prefix``."""
        return [c for c in self.children if c.name.startswith(prefix)]

    def exited(self, *prefixes: str) -> list[Proc]:
        """The processes, of names starting with one of ``prefixes``, that are no longer running."""
        return [c for c in self.children if c.name.startswith(prefixes) and not c.alive()]

    def stop(self, children: Sequence[Proc], grace: float) -> None:
        """SIGTERM all of ``children`` at once, wait up to ``grace`` s, SIGKILL the rest; each one's :attr:`Proc.stopped` says how it went."""
        started = time.monotonic()
        for child in children:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
            else:
                child.stopped = {"status": child.process.returncode, "seconds": 0.0, "killed": False, "already_exited": True}
        for child in children:
            if child.stopped:
                continue
            killed = False
            try:
                child.process.wait(max(0.1, grace - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                killed = True
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                child.process.wait()
            child.stopped = {"status": child.process.returncode, "seconds": time.monotonic() - started, "killed": killed, "already_exited": False}

    def stop_all(self, grace: float) -> None:
        """Agents first (so the hub sees clean disconnects), then hubs, then sims, then the rest."""
        for prefix in ("agent-", "hub", "sim"):
            self.stop([c for c in self.of(prefix) if not c.stopped], grace)
        self.stop([c for c in self.children if not c.stopped], grace)
