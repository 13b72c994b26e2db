"""The typed seams: mypy proves that nnU-Net's backend and the fake conform to nnal.seams, and notices when one
stops conforming."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MYPY = [sys.executable, "-m", "mypy", "--no-incremental"]


def mypy(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MYPYPATH": str(root / "src")}
    return subprocess.run(MYPY, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_the_backends_conform_to_the_seam():
    result = mypy(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_fake_that_drops_a_method_of_the_seam_is_caught(tmp_path):
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "data", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    fake = tmp_path / "src" / "nnal" / "backend" / "fake.py"
    source = fake.read_text()
    assert "    def slice_location(self, case: str)" in source
    fake.write_text(source.replace("    def slice_location(self, case: str)", "    def slice_place(self, case: str)"))
    result = mypy(tmp_path)
    assert result.returncode != 0
    assert "fake.py" in result.stdout and "slice_location" in result.stdout, result.stdout
