"""Import rules between the modules of src/nnal, read from their syntax trees (nothing is imported).

1. No module imports a private name (one starting with ``_``, dunders such as ``__version__`` aside) from another
   nnal module: ``from nnal.x import _y``, ``from nnal.x import _y as z``, ``from ._x import y``, a package's
   ``__init__`` importing from its own submodules included. What one module uses from another is public there.
2. The import graph between nnal modules is a DAG. Every import statement counts, also those inside functions (a
   late import that dodges a cycle at run time is still a cycle). ``from nnal.pkg import name`` is an edge to the
   module ``nnal.pkg.name`` if there is one, else to ``nnal.pkg`` (its ``__init__``). A package's ``__init__`` may
   import its submodules, so a submodule must import from its siblings directly, not through its package's
   ``__init__``: that would be a cycle, and is reported as one.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "nnal"


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "nnal.bench.selection"; a package is named by its __init__: "nnal.bench"
    path: Path
    is_package: bool
    where: str  # the path to report: relative to the folder above src


@dataclass(frozen=True)
class Import:
    module: str  # the nnal module (or package) imported from, resolved to an absolute name
    names: tuple[str, ...]  # the names a ``from`` import takes from it; empty for ``import nnal.x``
    line: int


def find_modules(src: Path) -> dict[str, Module]:
    """The modules of the package ``src / PACKAGE`` by dotted name."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        out[name] = Module(name, path, is_package, str(path.relative_to(src.parent)))
    return out


MODULES = find_modules(SRC)


def _is_nnal(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _imports(mod: Module) -> list[Import]:
    """Every import of an nnal module in ``mod``, at any depth (functions, classes, ``if`` blocks)."""
    tree = ast.parse(mod.path.read_text(), filename=str(mod.path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(a.name, (), node.lineno) for a in node.names if _is_nnal(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package that holds mod (mod itself if it is a package's __init__)
                package = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
                base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if _is_nnal(base):
                found.append(Import(base, tuple(a.name for a in node.names), node.lineno))
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _edges(mod: Module, modules: dict[str, Module]) -> dict[str, int]:
    """The nnal modules ``mod`` imports, each with the line of its first import."""
    out: dict[str, int] = {}
    for imp in _imports(mod):
        targets = [f"{imp.module}.{n}" if f"{imp.module}.{n}" in modules else imp.module for n in imp.names]
        for target in targets or [imp.module]:
            if target != mod.name:
                out.setdefault(target, imp.line)
    return out


def private_imports(modules: dict[str, Module]) -> list[str]:
    """One line per import of a private name from another nnal module."""
    offenders = []
    for mod in modules.values():
        for imp in _imports(mod):
            from_elsewhere = [n for n in imp.names if imp.module != mod.name or f"{imp.module}.{n}" in modules]
            private = [n for n in from_elsewhere if _is_private(n)]
            if imp.module != mod.name:  # import nnal._x, from nnal._x import y
                private += [part for part in imp.module.split(".") if _is_private(part)]
            if private:
                offenders.append(f"{mod.where}:{imp.line}: imports {', '.join(private)} from {imp.module}")
    return offenders


def test_no_private_names_imported_across_modules() -> None:
    offenders = private_imports(MODULES)
    assert not offenders, (
        "private names imported from another nnal module (make them public in the module that defines them):\n  "
        + "\n  ".join(offenders)
    )


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (every cycle lies within one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _cycle_in(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """One cycle through the first module of ``component``: a shortest path back to it (breadth first)."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, {})):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def import_cycles(modules: dict[str, Module]) -> list[str]:
    """One report per tangle of modules that import each other: one cycle through it, import by import."""
    graph = {name: _edges(mod, modules) for name, mod in modules.items()}
    reports = []
    for component in _strongly_connected(graph):
        cycle = _cycle_in(component, graph)
        lines = [f"cycle: {' -> '.join(cycle)}  (modules in this tangle: {', '.join(component)})"]
        for a, b in zip(cycle[:-1], cycle[1:], strict=True):
            hint = ""
            if modules[b].is_package and a.startswith(b + "."):
                hint = "  <- a submodule importing from its own package's __init__: import from the sibling module"
            lines.append(f"    {modules[a].where}:{graph[a][b]}: {a} imports {b}{hint}")
        reports.append("\n".join(lines))
    return reports


def test_import_graph_has_no_cycle() -> None:
    reports = import_cycles(MODULES)
    assert not reports, "the import graph between nnal modules has cycles:\n" + "\n".join(reports)


def test_the_rules_see_what_they_should() -> None:
    """The parser finds the packages, and resolves ``from pkg import module`` to the module."""
    assert {"nnal", "nnal.bench", "nnal.bench.selection", "nnal.submodular", "nnal.submodular.maximize"} <= set(MODULES)
    assert MODULES["nnal.bench"].is_package and not MODULES["nnal.bench.selection"].is_package
    edges = _edges(MODULES["nnal.bench.selection"], MODULES)
    assert "nnal.bench.workers" in edges and "nnal.bench" not in edges


def test_the_rules_catch_offenders(tmp_path: Path) -> None:
    """On a made-up package: each kind of offence is reported, with its file and line; allowed imports are not."""
    files = {
        "__init__.py": '__version__ = "0"\n',
        "a.py": "from nnal.b import _hidden as shown\nfrom nnal import __version__\n",
        "b.py": "def f():\n    from nnal.a import shown  # late import: still a cycle\n_hidden = 1\n",
        "pkg/__init__.py": "from .core import run\nfrom . import _impl\n",
        "pkg/core.py": "from nnal.pkg import helper\nrun = 1\n",
        "pkg/_impl.py": "from ..a import shown\n",
        "pkg/leaf.py": "from nnal.pkg import core\nfrom .core import run\n",
    }
    for rel, text in files.items():
        path = tmp_path / "src" / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    modules = find_modules(tmp_path / "src")
    assert private_imports(modules) == [
        "src/nnal/a.py:1: imports _hidden from nnal.b",
        "src/nnal/pkg/__init__.py:2: imports _impl from nnal.pkg",
    ]
    reports = import_cycles(modules)
    assert len(reports) == 2, reports
    assert reports[0].startswith("cycle: nnal.a -> nnal.b -> nnal.a")
    assert "src/nnal/b.py:2: nnal.b imports nnal.a" in reports[0]
    assert reports[1].startswith("cycle: nnal.pkg -> nnal.pkg.core -> nnal.pkg")
    hint = "src/nnal/pkg/core.py:1: nnal.pkg.core imports nnal.pkg  <- a submodule importing from its own package"
    assert hint in reports[1]
    assert "nnal.pkg.leaf" not in reports[1]  # leaf imports core as a module, and from it: no cycle
