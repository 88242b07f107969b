"""A throwaway PostgreSQL server of one's own, for tests and benchmarks.

It runs Debian's (or any installed) PostgreSQL binaries on a free loopback port with its
data in a temporary directory, never a server that happens to be running on the
machine. As root, ``initdb`` and ``postgres`` refuse to run, so they run as the
``postgres`` system user (which the Debian package creates).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from fleetsync.errors import FleetsyncError

#: Settings for a server whose data may be lost (tests): no fsync, small and quick.
DISPOSABLE = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "on"}


class PostgresNotInstalled(FleetsyncError, RuntimeError):
    pass


def postgres_bindir() -> Path:
    """The directory of ``initdb`` and ``postgres``: ``$FLEETSYNC_PG_BINDIR``, the newest
    ``/usr/lib/postgresql/*/bin``, or wherever ``initdb`` is on ``PATH``."""
    if configured := os.environ.get("FLEETSYNC_PG_BINDIR"):
        return Path(configured)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    if initdb := shutil.which("initdb"):
        return Path(initdb).parent
    raise PostgresNotInstalled("PostgreSQL is not installed (the README's test command installs it: apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """``with PostgresServer() as pg: pg.url("mydb")`` -- started on enter, stopped and deleted on exit.

    ``settings``: ``-c`` options of the server (``DISPOSABLE`` by default; pass ``{}`` for
    PostgreSQL's durable defaults, as benchmarks should).
    """

    def __init__(self, *, settings: dict[str, str] | None = None, max_connections: int = 300) -> None:
        self.settings = {**(DISPOSABLE if settings is None else settings), "max_connections": str(max_connections)}
        self.bindir = postgres_bindir()
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def log(self) -> Path:
        assert self.dir is not None
        return self.dir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        self.dir = Path(tempfile.mkdtemp(prefix="fleetsync-pg-"))
        data = self.dir / "data"
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        initdb = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions", "--no-sync"],
            capture_output=True,
            user=self._user,
            cwd=self.dir,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr.decode(errors='replace')[-2000:]}")
        for _ in range(5):  # the port is free when picked, but someone may take it before we bind
            self.port = _free_port()
            options = self._options()
            with self.log.open("ab") as out:
                self.process = subprocess.Popen(
                    [str(self.bindir / "postgres"), "-D", str(data), *options], stdout=out, stderr=subprocess.STDOUT, user=self._user, cwd=self.dir
                )
            if self._wait_ready():
                return self
        raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def _options(self) -> list[str]:
        options = ["-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}"]
        for key, value in self.settings.items():
            options += ["-c", f"{key}={value}"]
        return options

    def restart(self, sig: int = signal.SIGINT) -> None:
        """Stop the server and start it again on the same data and port, as an operator's restart
        or a crash would: ``SIGINT`` (fast shutdown) aborts every transaction in flight and closes
        every connection; ``SIGKILL`` is a crash (the next start recovers from the WAL)."""
        assert self.process is not None and self.dir is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=30)
        options = self._options()
        for _ in range(50):  # a crashed server's shared memory and port take a moment to be released
            with self.log.open("ab") as out:
                self.process = subprocess.Popen(
                    [str(self.bindir / "postgres"), "-D", str(self.dir / "data"), *options], stdout=out, stderr=subprocess.STDOUT, user=self._user, cwd=self.dir
                )
            if self._wait_ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not start again: {self.log.read_text(errors='replace')[-2000:]}")

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # e.g. the port was taken meanwhile
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"], capture_output=True)
            if ready.returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, database: str, sql: str) -> str:
        result = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql[:80]!r}: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: SIGTERM ("smart") would wait for every client to leave
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
