from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleetsync.store.contract import Store
from fleetsync.store.postgres import PostgresStore
from fleetsync.store.sqlite import SQLiteStore
from fleetsync.testing.postgres import PostgresServer
from tests.harness import GRPC, SPAWNED, Sim, Transport, log_tails, run_sim, start_broker

TRANSPORTS = ("grpc", "mqtt", "nats")
_DATABASES = itertools.count(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    SPAWNED.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report ends with the logs of the hubs, agents and sims it started."""
    outcome = yield
    report = outcome.get_result()
    if call.when == "call" and report.failed and SPAWNED:
        report.sections.append(("fleetsync processes (last lines of each log)", log_tails(SPAWNED)))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """Three small clusters, no churn until a test turns it on (and off again)."""
    with run_sim(tmp_path_factory.mktemp("sim"), "--clusters", "3", "--pods", "120", "--bookmark-interval", "0.5") as s:
        yield s


@pytest.fixture
def quiet_sim(sim: Sim) -> Iterator[Sim]:
    """The module's sim with churn paused again after the test."""
    yield sim
    sim.set_churn(0)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Transport]:
    """Each transport in turn (the conformance suite): gRPC, or a broker of the test's own."""
    if request.param == "grpc":
        yield GRPC
        return
    broker = start_broker(tmp_path, request.param)
    try:
        yield Transport(request.param, broker)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test run's own (one per xdist worker), on a free port."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A new, empty database on the run's PostgreSQL server."""
    return postgres.create_database(f"t{next(_DATABASES)}")


@pytest.fixture(params=["sqlite", "postgres"])
async def each_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open, empty store of each engine in turn: SQLite in ``tmp_path``, and a database of the run's PostgreSQL server."""
    s: Store = SQLiteStore(tmp_path / "hub.db") if request.param == "sqlite" else PostgresStore(request.getfixturevalue("pg_url"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()
