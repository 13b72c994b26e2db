"""The house's size rules, read from the syntax trees: no function over 60 lines (numba kernels aside), no class
over 150, no module over 400."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nnal"
NUMBA_KERNELS = {("submodular/kernel.py", "_nb_eval")}  # compiled by numba: one loop nest, split only at a cost


def _sizes():
    for path in sorted(SRC.rglob("*.py")):
        where = str(path.relative_to(SRC))
        tree = ast.parse(path.read_text())
        yield "module", where, where, len(path.read_text().splitlines())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield "function", where, node.name, node.end_lineno - node.lineno + 1
            elif isinstance(node, ast.ClassDef):
                yield "class", where, node.name, node.end_lineno - node.lineno + 1


def test_functions_classes_and_modules_stay_small():
    limits = {"function": 60, "class": 150, "module": 400}
    too_long = [f"{kind} {where}:{name} has {lines} lines (limit {limits[kind]})"
                for kind, where, name, lines in _sizes()
                if lines > limits[kind] and (where, name) not in NUMBA_KERNELS]
    assert too_long == []
