"""The shape of phxqd/ that docs/architecture.md promises, checked on the source: no import
cycles, and nothing above the backend seam reaching below it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: modules that must know only the `Backend` interface, never the embedded backend
ABOVE_THE_SEAM = (
    "phxqd.dispatcher",
    "phxqd.handlers",
    "phxqd.streams",
    "phxqd.views",
    "phxqd.metrics",
    "phxqd.statusfile",
    "phxqd.hooks",
    "phxqd.joblogs",
    "phxqd.backend",
    "phxqd.core",
)
#: the backends: only the composition (daemon.py) picks one
BACKENDS = ("phxqd.local", "phxqd.postgres")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """phxqd modules imported when `path` is imported (not those under TYPE_CHECKING, nor
    those imported inside functions: neither runs at import time)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("phxqd"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("phxqd"):
            found.add(str(node.module))
            found.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (ROOT / "phxqd").rglob("*.py")}
    return {name: {m for m in imports(p) if m in paths and m != name} for name, p in paths.items()}


def test_phxqd_has_no_import_cycles() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(edges[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for name in sorted(edges):
        visit(name, [])


def test_nothing_above_the_seam_imports_a_backend() -> None:
    edges = graph()
    for name in ABOVE_THE_SEAM:
        below = sorted(m for m in edges[name] if m.startswith(BACKENDS))
        assert not below, f"{name} imports {below}: it must use phxqd.backend.Backend only"


def test_the_checks_see_cycles_and_imports() -> None:
    """The two tests above would pass on nothing: show they see what they look for."""
    edges = graph()
    assert "phxqd.backend" in edges["phxqd.dispatcher"]
    assert "phxqd.local.state" in edges["phxqd.local.recorder"]
    assert "phxqd.local.backend" in edges["phxqd.daemon"]
