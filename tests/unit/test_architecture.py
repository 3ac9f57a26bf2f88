"""The dependency rules of the design: the import-linter contracts in pyproject.toml, and no
import loop between the package's modules (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " broken" in done.stdout and "0 broken" in done.stdout


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool, modules: Collection[str]) -> Iterator[str]:
    """Every module of ``modules`` a module's code names in an import statement, wherever it
    stands (a function's body and an ``if TYPE_CHECKING:`` block too: a loop in the types is a
    loop in the design). ``from package import name`` names ``package.name`` when that is a
    module, else ``package`` itself."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    yield submodule
                elif source in modules:
                    yield source


def import_graph(root: Path, top: str) -> dict[str, set[str]]:
    """Module -> the modules of ``top`` it imports (migration revisions left out: Alembic loads
    them, nothing imports them)."""
    files = [p for p in (root / top).rglob("*.py") if "versions" not in p.relative_to(root / top).parts]
    modules = {module_name(p, root): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        found = imported(tree, name, path.name == "__init__.py", modules)
        graph[name] = {dep for dep in found if dep != name}
    return graph


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of the graph with more than one module (Tarjan), each as one
    cycle through it, for a readable message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                part.append(member)
                if member == node:
                    break
            if len(part) > 1:
                found.append(cycle_through(graph, set(part), min(part)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def cycle_through(graph: dict[str, set[str]], part: set[str], start: str) -> list[str]:
    """A shortest path from ``start`` back to itself inside one strongly connected part."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for dep in sorted(graph[node] & part):
                if dep == start:
                    return paths[node] + [start]
                if dep not in paths:
                    paths[dep] = paths[node] + [dep]
                    nxt.append(dep)
        frontier = nxt
    raise AssertionError(f"{start} is in a loop with no way back")  # pragma: no cover


def test_the_package_has_no_import_loop() -> None:
    found = loops(import_graph(ROOT, "app"))
    assert not found, "import loops: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_a_loop_is_found_and_named(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n")
    (pkg / "d.py").write_text("from . import c\n")
    (pkg / "sub" / "e.py").write_text("from pkg.sub import b\n")  # a package's submodules: no loop
    (pkg / "sub" / "__init__.py").write_text("def f():\n    from pkg.sub import e\n")
    found = loops(import_graph(tmp_path, "pkg"))
    assert found == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
