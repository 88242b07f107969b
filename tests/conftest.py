from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Sim, run_sim


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
