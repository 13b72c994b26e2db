"""The house's layers (pyproject.toml, [tool.importlinter]) hold, and the contracts catch an offender."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"], cwd=config.parent, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_contract_is_kept():
    result = lint(ROOT / "src", ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("strategies/baselines.py", "import torch", "strategies are numpy functions"),
    ("loop.py", "from nnal.annotation.oracle import make_oracle", "the loop and the core know no feature package"),
    ("analysis/tables.py", "from nnal.backend.session import Backend", "analysis draws predictions"),
    ("config.py", "import nnunetv2", "torch and nnU-Net are imported only by the backend"),
    ("run_checks.py", "from nnal.backend.runtime import check_device", "reach the backend only through its door"),
])
def test_an_offending_import_breaks_its_contract(tmp_path, module, line, contract):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "nnal", copy / "nnal", ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = copy / "nnal" / module
    target.write_text(target.read_text() + f"\n\ndef _offender():\n    {line}\n")
    result = lint(copy, tmp_path / "pyproject.toml")
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in " ".join(broken.split())


def test_the_torch_contract_names_every_module_outside_the_backend():
    """A new module outside backend/ is under the torch contract from its first commit."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    torch_rule = next(c for c in contracts if c["forbidden_modules"] == ["torch", "nnunetv2"])
    src = ROOT / "src" / "nnal"
    present = {f"nnal.{p.stem}" for p in src.glob("*.py") if p.stem != "__init__"}
    present |= {f"nnal.{p.name}" for p in src.iterdir() if (p / "__init__.py").is_file() and p.name != "backend"}
    assert set(torch_rule["source_modules"]) == present
