"""nnal as a package: the wheel built from this tree, installed into a fresh venv, works away from the source tree."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

import nnal

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = "nnal/data/Task04_Hippocampus"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the tree: building in place would leave build/ and an egg-info in the clone."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path_factory.mktemp("dist")
    # without build isolation: the venv's setuptools (the test extra) builds it, nothing is downloaded
    _run([sys.executable, "-m", "pip", "wheel", tree, "--no-deps", "--no-build-isolation", "-q", "-w", dist])
    (built,) = dist.glob("nnal-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel, the project's venv behind it for the heavy dependencies (torch, nnU-Net)."""
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", "--clear", root])
    _run([sys.executable, "-m", "pip", "--python", root / "bin" / "python", "install", "-q", "--no-deps", wheel])
    # only now, so that pip does not take the project's editable nnal for this one. A plain path line: the
    # editable install's own .pth there (the source tree) is not read. (`venv --system-site-packages` would not
    # do: from a venv's python it exposes the base interpreter's packages, not the venv's.)
    (_site_packages(root) / "zz-project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def test_wheel_declares_the_licence_extras_and_an_nnunet_range(wheel):
    with zipfile.ZipFile(wheel) as whl:
        info = f"nnal-{nnal.__version__}.dist-info"
        meta = Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        assert whl.read(f"{info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
    assert meta["Version"] == nnal.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist")
    assert [r for r in requires if r.startswith("ray")] == ['ray>=2.40; extra == "grid"']
    (nnunet,) = [r for r in requires if r.startswith("nnunetv2")]
    assert ">=" in nnunet and "==" not in nnunet
    assert {"grid", "annotate"} <= set(meta.get_all("Provides-Extra"))


def test_installed_cli_runs_away_from_the_source_tree(venv, tmp_path):
    module = _python(venv, "import nnal; print(nnal.__file__)", cwd=tmp_path)
    assert Path(module).is_relative_to(venv), module
    assert _nnal(venv, "--version", cwd=tmp_path) == f"nnal {nnal.__version__}"
    assert "--output" in _nnal(venv, "demo", "--help", cwd=tmp_path)
    assert "usimf" in _nnal(venv, "strategies", cwd=tmp_path)


def test_installed_demo_finds_every_bundled_file_inside_the_venv(venv, tmp_path):
    found = Path(_python(venv, "from nnal.demo import bundled_dataset; print(bundled_dataset())", cwd=tmp_path))
    assert found == _site_packages(venv) / DEMO_DATA
    assert (found / "README.md").is_file()  # the data's licence travels with them
    listed = [line.split(maxsplit=1) for line in (found / "SHA256SUMS").read_text().splitlines()]
    assert len(listed) > 500  # 260 image/label pairs and dataset.json
    for digest, name in listed:
        assert hashlib.sha256((found / name.lstrip("*")).read_bytes()).hexdigest() == digest, name


def test_demo_without_its_data_is_one_line_exit_2(tmp_path, monkeypatch):
    import nnal.demo

    monkeypatch.setattr(nnal.demo, "BUNDLED", tmp_path / "gone" / "Task04_Hippocampus")
    result = run_cli(["demo", "--output", tmp_path / "out"])
    assert_one_line_error(result, ["gone/Task04_Hippocampus", "bundled", "missing", "reinstall"])
    assert not (tmp_path / "out").exists()


def test_run_and_demo_do_not_import_ray(venv, tmp_path):
    code = ("import sys, nnal.cli, nnal.demo, nnal.loop, nnal.backend.session; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    assert _python(venv, code, cwd=tmp_path) == "[]"


def _site_packages(venv: Path) -> Path:
    return Path(_python(venv, "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=venv))


def _python(venv: Path, code: str, cwd: Path) -> str:
    return _run([venv / "bin" / "python", "-c", code], cwd=cwd)


def _nnal(venv: Path, *args: str, cwd: Path) -> str:
    return _run([venv / "bin" / "nnal", *args], cwd=cwd)


def _run(args: list, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()
