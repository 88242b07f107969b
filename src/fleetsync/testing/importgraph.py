"""The import graph of a package, read from its source with :mod:`ast`, and its cycles.

Why a static graph: importing the code to watch ``sys.modules`` only shows what one
entry point happens to load; the rule "dependencies point one way" is about every
``import`` statement in the tree. Both module-level and function-level imports count (a
lazy import still couples the two modules); imports under ``if TYPE_CHECKING:`` are left
out, because they never run and exist only to name a type.

Run ``python -m fleetsync.testing.importgraph`` to print the cycles of ``src/fleetsync``
(one per line, ``a -> b -> a``; nothing but a summary line on stderr when there are none;
exit status 1 if there is one), ``--with-type-checking`` to count those imports too, or
``--edges`` to print every arrow. ``tests/unit/test_import_graph.py`` asserts on it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fleetsync

PACKAGE_DIR = Path(fleetsync.__file__).resolve().parent


@dataclass(frozen=True)
class ImportGraph:
    """``edges[a]`` holds the package's modules that module ``a`` imports."""

    edges: dict[str, set[str]] = field(default_factory=dict)

    def imported_by(self, module: str) -> set[str]:
        return self.edges.get(module, set())

    def reachable_from(self, module: str) -> set[str]:
        """Every module ``module`` loads, directly or through others (without itself)."""
        seen: set[str] = set()
        todo = [module]
        while todo:
            for target in self.edges.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        seen.discard(module)
        return seen

    def cycles(self) -> list[list[str]]:
        """One cycle per strongly connected component with more than one module (or a self-import),
        as a path ``[a, b, ..., a]``: enough to name what to untangle."""
        return [_one_cycle(component, self.edges) for component in _strongly_connected(self.edges) if _is_cyclic(component, self.edges)]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def build(root: Path = PACKAGE_DIR, *, include_type_checking: bool = False) -> ImportGraph:
    """The graph of ``root`` (a package directory): only arrows between its own modules.
    ``include_type_checking``: count the imports under ``if TYPE_CHECKING:`` too."""
    modules = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph = ImportGraph({name: set() for name in modules})
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target in _imports(tree, importer=name, is_package=is_package, include_type_checking=include_type_checking):
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != name:
                graph.edges[name].add(resolved)
    return graph


def _imports(tree: ast.Module, *, importer: str, is_package: bool, include_type_checking: bool) -> Iterator[str]:
    """Every module named by an import in ``tree`` (``from a import b`` names ``a.b`` and ``a``)."""
    for node in ast.walk(tree) if include_type_checking else _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, importer=importer, is_package=is_package)
            for alias in node.names:
                yield f"{base}.{alias.name}"
            yield base


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """All nodes except those under ``if TYPE_CHECKING:`` (their imports never run)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for orelse in child.orelse:
                yield orelse
                yield from _runtime_nodes(orelse)
            continue
        yield child
        yield from _runtime_nodes(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(node: ast.ImportFrom, *, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    if not is_package:
        package.pop()
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, node.module] if node.module else package)


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``target`` that is one of the package's modules."""
    parts = target.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (a deep package must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _is_cyclic(component: list[str], edges: dict[str, set[str]]) -> bool:
    return len(component) > 1 or component[0] in edges.get(component[0], ())


def _one_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(edges.get(node, ())):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetsync.testing.importgraph", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--edges", action="store_true", help="print every arrow (importer -> imported) instead of the cycles")
    parser.add_argument("--with-type-checking", action="store_true", help="count the imports under `if TYPE_CHECKING:` too")
    args = parser.parse_args(argv)
    graph = build(include_type_checking=args.with_type_checking)
    if args.edges:
        for importer in sorted(graph.edges):
            for imported in sorted(graph.edges[importer]):
                print(f"{importer} -> {imported}")
        return 0
    cycles = graph.cycles()
    for cycle in cycles:
        print(" -> ".join(cycle))
    arrows = sum(len(targets) for targets in graph.edges.values())
    print(f"{len(graph.edges)} modules, {arrows} imports, {len(cycles)} cycles", file=sys.stderr)
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
