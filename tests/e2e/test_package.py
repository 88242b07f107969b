"""fleetsync as a user installs it: a wheel built from the checkout, the lower bounds of
pyproject.toml installed exactly (``==``) in fresh virtualenvs, agent-only and hub-only
installs that leave out what the other part, PostgreSQL, the brokers and the simulator
need, and pipx.

Virtualenvs holding the pinned dependencies are kept outside the clone, under
``$FLEETSYNC_TEST_CACHE`` (default ``~/.cache/fleetsync-tests``), one per set of pins (the
directory's name carries their hash): a run downloads them once, later runs only reinstall
the freshly built wheel. A lock file keeps parallel runs from building the same one twice.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import fleetsync
from fleetsync.extras import EXTRA_OF_MODULE
from tests.harness import API_TOKEN, SPAWNED, Hub, Proc, Sim, free_port, http, stop_process, wait_converged, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CACHE = Path(os.environ.get("FLEETSYNC_TEST_CACHE") or Path.home() / ".cache" / "fleetsync-tests")
#: Seconds a pip or pipx install may take (a cold cache downloads every pinned wheel).
INSTALL_TIMEOUT = 600
#: The version the source declares (pyproject.toml takes it from fleetsync.__version__).
SOURCE_VERSION = fleetsync.__version__
LOWER_BOUND = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)>=(?P<version>[0-9]+(\.[0-9]+)*)")
#: What an agent-only install must not bring: the hub's stores, the brokers' clients, the simulator's and the demo's libraries.
NOT_FOR_AGENTS = {
    "asyncpg",
    "aiosqlite",
    "pysimdjson",
    "uvloop",
    "aiomqtt",
    "paho-mqtt",
    "nats-py",
    "sortedcontainers",
    "jsonpatch",
    "jsonpointer",
    "cryptography",
}
#: What a hub-only install (SQLite) must not bring: the agent's Kubernetes client, PostgreSQL's driver, the simulator's libraries.
NOT_FOR_HUBS = {"kubernetes-asyncio", "asyncpg", "aiomqtt", "nats-py", "sortedcontainers", "jsonpatch", "jsonpointer", "cryptography"}


def requirements(extra: str = "") -> list[str]:
    """The requirements of the base package (``""``) or of one extra, without the extras it includes."""
    declared = PYPROJECT["dependencies"] if not extra else PYPROJECT["optional-dependencies"][extra]
    return [r for r in declared if not r.startswith("fleetsync[")]


def declared_names(extra: str = "") -> set[str]:
    """The distributions the base package (``""``) or one extra declares (the test extra's
    type stubs have no lower bound: any requirement's name counts)."""
    return {canonical(Requirement(r).name) for r in requirements(extra)}


def minimum_pins(*extras: str) -> list[str]:
    """``name==lower-bound`` for the base package and ``extras``: the oldest install pyproject.toml allows."""
    pins = []
    for requirement in [r for extra in ("", *extras) for r in requirements(extra)]:
        bound = LOWER_BOUND.fullmatch(requirement)
        assert bound, f"{requirement!r}: every runtime dependency needs a plain lower bound (NAME>=VERSION) the package is tested with"
        pins.append(f"{bound['name']}=={bound['version']}")
    return sorted(pins)


RUNTIME_EXTRAS = tuple(sorted(set(PYPROJECT["optional-dependencies"]) - {"test", "all", "demo"}))


def pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Held by one test process at a time, across pytest workers and parallel runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_venv(name: str, packages: list[str]) -> Path:
    """A virtualenv with exactly ``packages`` installed (built once per set; see the module's docstring)."""
    key = hashlib.sha256("\n".join([sys.version, *packages]).encode()).hexdigest()[:16]
    venv = CACHE / f"{name}-{key}"
    if not (venv / "ready").exists():  # never built, or a build was interrupted: (re)build it
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        result = pip(venv / "bin" / "python", "install", "--quiet", *packages)
        # A yanked release is no bound to promise: pip installs it when pinned, but warns.
        assert "yanked" not in result.stderr, f"a lower bound is a yanked release:\n{result.stderr[-2000:]}"
        (venv / "ready").touch()
        for stale in CACHE.glob(f"{name}-*"):  # built for pins that changed since: not kept forever
            if stale != venv and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    return venv


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout (so no build/ is left in it), as a release would be."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip(Path(sys.executable), "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp / "dist"), str(source))
    (built,) = (tmp / "dist").glob("fleetsync-*.whl")
    return built


class MinimumVenvs(NamedTuple):
    """Virtualenvs with the lower bounds installed exactly, and the wheel."""

    full: Path  # the base package and every extra
    hub: Path  # fleetsync[hub] only
    agent: Path  # fleetsync[agent] only


#: The extras of each of MinimumVenvs's installs.
MINIMUM_EXTRAS: dict[str, tuple[str, ...]] = {"full": (*RUNTIME_EXTRAS, "demo"), "hub": ("hub",), "agent": ("agent",)}


@pytest.fixture(scope="module")
def minimum_venvs(wheel: Path) -> MinimumVenvs:
    """The lower bounds installed exactly, the wheel in each.
    The wheel is reinstalled only when its content changed: tests on other pytest workers may
    be running fleetsync from the same venvs."""
    digest = wheel_digest(wheel)
    with locked(CACHE / "minimum.lock"):
        venvs = MinimumVenvs(**{kind: cached_venv(f"minimum-{kind}", minimum_pins(*extras)) for kind, extras in MINIMUM_EXTRAS.items()})
        for venv in venvs:
            marker = venv / "fleetsync-wheel.sha256"
            if not marker.exists() or marker.read_text() != digest:
                pip(venv / "bin" / "python", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel))
                marker.write_text(digest)
    return venvs


def wheel_digest(wheel: Path) -> str:
    """A hash of what the wheel holds (names and contents, not the zip's timestamps)."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            digest.update(name.encode() + b"\0" + archive.read(name))
    return digest.hexdigest()


def canonical(name: str) -> str:
    """A distribution's name as PyPI compares them (``kubernetes_asyncio`` is ``kubernetes-asyncio``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(venv: Path) -> dict[str, Version]:
    """Canonical distribution name -> version of what ``venv`` holds (one quick interpreter, not pip)."""
    listing = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from importlib import metadata\nfor d in metadata.distributions(): print(d.metadata['Name'], d.version)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return {canonical(name): Version(version) for name, version in (line.split() for line in listing.splitlines())}


def spawn_from(venv: Path, tmp: Path, name: str, *args: str) -> Proc:
    """``fleetsync ARGS`` of ``venv``, its output in ``tmp/NAME.log`` (shown when a test fails)."""
    log = tmp / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen([str(venv / "bin" / "fleetsync"), *args], stdout=out, stderr=subprocess.STDOUT)
    proc = Proc(process, log)
    SPAWNED.append(proc)
    return proc


def run_from(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "fleetsync"), *args], capture_output=True, text=True, timeout=60)


def generated_versions() -> tuple[str, str]:
    """(protobuf, grpcio): the versions the checked-in generated code demands at least."""
    protocol = ROOT / "src" / "fleetsync" / "protocol"
    protobuf = re.search(r"# Protobuf Python Version: ([0-9.]+)", (protocol / "fleetsync_pb2.py").read_text())
    grpc = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", (protocol / "fleetsync_pb2_grpc.py").read_text())
    assert protobuf and grpc, "the generated code no longer states its versions where this test looks"
    return protobuf[1], grpc[1]


def test_lower_bounds_are_no_older_than_the_generated_code_demands() -> None:
    pins = dict(pin.split("==") for pin in minimum_pins())
    protobuf, grpc = generated_versions()
    assert pins["protobuf"] == protobuf, f"protobuf>={pins['protobuf']}: the generated code needs {protobuf} (exactly that as the bound, or regenerate)"
    assert pins["grpcio"] == grpc, f"grpcio>={pins['grpcio']}: the generated code needs {grpc}"


def test_every_optional_library_has_the_extra_the_error_names() -> None:
    extras = set(PYPROJECT["optional-dependencies"])
    assert {"agent", "hub", "postgres", "mqtt", "nats", "sim", "demo", "all", "test"} <= extras
    for module, (_, extra) in EXTRA_OF_MODULE.items():
        assert extra in extras, f"{module}: the error names fleetsync[{extra}], which pyproject.toml does not declare"
    (everything,) = PYPROJECT["optional-dependencies"]["all"]
    assert set(everything.removeprefix("fleetsync[").removesuffix("]").split(",")) == extras - {"all", "test"}, everything


def test_every_library_the_code_imports_is_declared_where_its_error_says() -> None:
    """A module imported by fleetsync is a base dependency, or belongs to the extra that
    src/fleetsync/extras.py names for it (so the one-line error tells the truth)."""
    imported: set[str] = set()
    for path in (ROOT / "src" / "fleetsync").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.partition(".")[0])
    distributions = metadata.packages_distributions()
    base = declared_names()
    for module in sorted(imported - set(sys.stdlib_module_names) - {"fleetsync", "__future__"}):
        provided_by = {canonical(d) for d in distributions.get(module, [])}
        assert provided_by, f"{module}: imported by fleetsync, installed by no distribution here"
        needed = EXTRA_OF_MODULE.get(module)
        declared = base if needed is None else declared_names(needed[1])
        assert provided_by & declared, (
            f"{module} (from {', '.join(sorted(provided_by))}): not declared in {'the base dependencies' if needed is None else f'fleetsync[{needed[1]}]'}"
        )


@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_minimum_versions_run_a_sim_a_hub_and_an_agent(minimum_venvs: MinimumVenvs, tmp_path: Path) -> None:
    full, hub_only, agent = minimum_venvs
    # Exactly the lower bounds, and pip agrees they satisfy what the wheel declares.
    for venv, extras in zip(minimum_venvs, MINIMUM_EXTRAS.values(), strict=True):
        versions = installed(venv)
        for pin in minimum_pins(*extras):
            name, version = pin.split("==")
            assert versions.get(canonical(name)) == Version(version), f"{pin} wanted, {versions.get(canonical(name))} installed"
        pip(venv / "bin" / "python", "check")
    assert not NOT_FOR_AGENTS & set(installed(agent)), "an agent install pulls the hub's, brokers' or simulator's libraries"
    assert not NOT_FOR_HUBS & set(installed(hub_only)), "a hub install pulls the agent's, PostgreSQL's, brokers' or simulator's libraries"
    # Every module imports with the oldest versions (PostgreSQL, MQTT and NATS included).
    imports = subprocess.run(
        [
            str(full / "bin" / "python"),
            "-c",
            "import importlib, pkgutil, fleetsync; [importlib.import_module(m.name) for m in pkgutil.walk_packages(fleetsync.__path__, 'fleetsync.') if not m.name.endswith('__main__')]",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imports.returncode == 0, imports.stderr[-3000:]

    # A sim of the oldest full install, a hub of the oldest hub-only install; an agent of the oldest agent-only install syncs a cluster to it.
    sim_port, grpc_port, http_port = free_port(), free_port(), free_port()
    sim = Sim(
        spawn_from(
            full, tmp_path, "sim", "sim", "--clusters", "1", "--pods", "20", "--port", str(sim_port), "--kubeconfig-dir", str(tmp_path / "kube")
        ).process,
        sim_port,
        tmp_path / "kube",
    )
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    (tmp_path / "admin.token").write_text(API_TOKEN)
    token = run_from(hub_only, "token", "create", "c1", "--role", "agent", "--db", db)
    assert token.returncode == 0, token.stderr
    (tmp_path / "agent.token").write_text(token.stdout.strip())
    listen = ("--grpc", f"127.0.0.1:{grpc_port}", "--http", f"127.0.0.1:{http_port}", "--admin-token-file", str(tmp_path / "admin.token"))
    hub = Hub(spawn_from(hub_only, tmp_path, "hub", "hub", "--db", db, *listen), db, grpc_port, http_port)
    try:
        wait_until(
            lambda: _answers(f"{sim.url}/healthz") and _answers(f"{hub.url}/healthz"), timeout=60, what="the sim and hub of the oldest versions to answer"
        )
        spawn_from(
            agent,
            tmp_path,
            "agent",
            "agent",
            "--kubeconfig",
            str(sim.kubeconfig("c1")),
            "--cluster-id",
            "c1",
            "--hub",
            hub.grpc_url,
            "--token-file",
            str(tmp_path / "agent.token"),
        )
        wait_converged(sim, hub, "c1", timeout=60, what="the agent of the oldest versions to sync c1 to the hub")
    finally:
        for proc in reversed(SPAWNED):  # the agent first: a sim with watches open waits for them to end
            stop_process(proc.process)


def _answers(url: str) -> bool:
    try:
        return http("GET", url, timeout=1)[0] == 200
    except OSError:
        return False


def test_agent_install_names_the_extra_a_command_needs(minimum_venvs: MinimumVenvs, tmp_path: Path) -> None:
    agent = minimum_venvs.agent
    assert run_from(agent, "--version").stdout.strip() == f"fleetsync {SOURCE_VERSION}"
    (tmp_path / "token").write_text("x" * 32)
    agent_of = ("agent", "--cluster-id", "c1", "--kubeconfig", "/dev/null", "--token-file", str(tmp_path / "token"), "--hub")
    expected = {
        ("hub", "--db", f"sqlite:///{tmp_path / 'hub.db'}"): "fleetsync[hub]",
        ("hub", "--db", "postgresql://fleetsync@127.0.0.1:5432/fleetsync"): "The hub and PostgreSQL support need `pip install 'fleetsync[hub,postgres]'`",
        ("sim", "--port", "0"): "fleetsync[sim]",
        ("demo",): "fleetsync[demo]",
        (*agent_of, "mqtt://127.0.0.1:1883"): "fleetsync[mqtt]",
        (*agent_of, "nats://127.0.0.1:4222"): "fleetsync[nats]",
    }
    # All at once: each is a Python start-up and an early exit.
    running = {
        args: subprocess.Popen([str(agent / "bin" / "fleetsync"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in expected
    }
    for args, process in running.items():
        try:
            stdout, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        assert process.returncode != 0, (args, stdout)
        assert expected[args] in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1, f"fleetsync {' '.join(args)}: one line, no traceback:\n{stderr}"


@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_wheel_installs_with_pipx_and_reports_its_version(wheel: Path, tmp_path: Path) -> None:
    # pipx's shared venv (its pip) is kept with the cache too; the app's venv is new every time.
    env = {
        **os.environ,
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "bin"),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
        "PIPX_SHARED_LIBS": str(CACHE / "shared-libs-of-pipx"),
    }
    with locked(CACHE / "pipx.lock"):
        pipx = cached_venv("pipx", ["pipx"]) / "bin" / "pipx"
        result = subprocess.run([str(pipx), "install", str(wheel)], capture_output=True, text=True, env=env, timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    version = subprocess.run([str(tmp_path / "bin" / "fleetsync"), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"fleetsync {SOURCE_VERSION}"
