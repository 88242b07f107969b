"""The package's dependencies point one way: no import cycle, and the agent side loads nothing of the hub.

The graph is read from the source with :mod:`ast` (:mod:`fleetsync.testing.importgraph`):
module-level and function-level imports both count; imports under ``if TYPE_CHECKING:``
never run and are left out, except in :func:`test_no_cycle_even_counting_type_checking_imports`.
``python -m fleetsync.testing.importgraph`` prints the same cycles.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fleetsync.testing import importgraph

#: Modules an agent process runs: everything under agent/, and transport/'s agent side.
AGENT_SIDE_TRANSPORTS = (
    "fleetsync.transport.base",
    "fleetsync.transport.registry",
    "fleetsync.transport.connect",
    "fleetsync.transport.faults",
    "fleetsync.transport.cloudevents",
    "fleetsync.transport.broker_agent",
    "fleetsync.transport.grpc",
    "fleetsync.transport.mqtt",
    "fleetsync.transport.nats",
)
HUB_SIDE = ("fleetsync.hub", "fleetsync.store", "fleetsync.api")


@pytest.fixture(scope="module")
def graph() -> importgraph.ImportGraph:
    return importgraph.build()


def _agent_side(graph: importgraph.ImportGraph) -> list[str]:
    return sorted(m for m in graph.edges if m.startswith("fleetsync.agent")) + list(AGENT_SIDE_TRANSPORTS)


def _is_hub_side(module: str) -> bool:
    return any(module == side or module.startswith(side + ".") for side in HUB_SIDE)


def test_the_graph_sees_the_package(graph: importgraph.ImportGraph) -> None:
    # a graph that missed the imports would pass every test below
    assert "fleetsync.hub.session" in graph.edges
    assert "fleetsync.hub.core" in graph.imported_by("fleetsync.hub.session")
    assert "fleetsync.transport.grpc" in graph.imported_by("fleetsync.transport.grpc_hub")
    assert set(AGENT_SIDE_TRANSPORTS) <= set(graph.edges)


def test_no_import_cycle(graph: importgraph.ImportGraph) -> None:
    assert graph.cycles() == []


def test_no_cycle_even_counting_type_checking_imports() -> None:
    assert importgraph.build(include_type_checking=True).cycles() == []


def test_cycles_are_found_and_named(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def later():\n    from pkg.c import x\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nimport pkg.a\nif TYPE_CHECKING:\n    from pkg import d\nx = 1\n")
    (package / "d.py").write_text("from . import c\n")
    graph = importgraph.build(package)
    assert graph.cycles() == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]  # the function-level import counts; d's only way back is TYPE_CHECKING
    assert len(importgraph.build(package, include_type_checking=True).cycles()) == 1  # one component: a, b, c, d


def test_the_agent_side_imports_nothing_of_the_hub_store_or_api(graph: importgraph.ImportGraph) -> None:
    reached = {module: sorted(filter(_is_hub_side, graph.reachable_from(module))) for module in _agent_side(graph)}
    assert {module: hub for module, hub in reached.items() if hub} == {}


def test_the_model_and_the_protocol_import_only_each_other(graph: importgraph.ImportGraph) -> None:
    pure = ("fleetsync.model", "fleetsync.protocol", "fleetsync.errors")
    above = {m: sorted(t for t in graph.imported_by(m) if not t.startswith(pure)) for m in graph.edges if m.startswith(pure)}
    assert {m: targets for m, targets in above.items() if targets} == {}


def test_nothing_below_the_cli_imports_it(graph: importgraph.ImportGraph) -> None:
    entry = ("fleetsync.cli", "fleetsync.__main__")
    assert sorted(m for m in graph.edges if not m.startswith(entry) and any(t.startswith("fleetsync.cli") for t in graph.imported_by(m))) == []


def test_a_fresh_agent_process_loads_no_hub_module() -> None:
    modules = ["fleetsync.cli.agent", "fleetsync.agent.runner", *AGENT_SIDE_TRANSPORTS]
    code = textwrap.dedent(f"""
        import importlib, sys
        from fleetsync.transport import registry
        for name in {modules!r}:
            importlib.import_module(name)
        for scheme in ("grpc", "grpcs", "mqtt", "mqtts", "nats"):
            registry.connector_for(scheme)
        print("\\n".join(sorted(m for m in sys.modules if m.startswith(("fleetsync.hub", "fleetsync.store", "fleetsync.api")))))
    """)
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert loaded == []
