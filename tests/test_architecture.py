"""House rules that the code base must keep."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nnal"
IMPORT = re.compile(r"^\s*(import|from)\s+nnunetv2", re.MULTILINE)


def test_nnunetv2_is_imported_only_under_backend():
    offenders = [p for p in SRC.rglob("*.py") if IMPORT.search(p.read_text()) and "backend" not in p.parts]
    assert offenders == []


def test_strategies_do_not_import_torch():
    torch_import = re.compile(r"^\s*(import|from)\s+torch", re.MULTILINE)
    assert [p for p in (SRC / "strategies").rglob("*.py") if torch_import.search(p.read_text())] == []


def test_torch_is_imported_only_under_backend():
    torch_import = re.compile(r"^\s*(import|from)\s+torch", re.MULTILINE)
    assert [p for p in SRC.rglob("*.py") if torch_import.search(p.read_text()) and "backend" not in p.parts] == []
