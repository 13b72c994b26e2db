"""Shared fixtures: tiny synthetic datasets, and a mini copy of the bundled Hippocampus data."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = REPO / "data" / "Task04_Hippocampus"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def assert_one_line_error(result: CliResult, words: list[str]) -> None:
    """Exit code 2, one stderr line holding every one of ``words``, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


def run_cli(args: list) -> CliResult:
    """``nnal ARGS`` through the console entry point in this process (its error handling included)."""
    from nnal.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, np.diag([*spacing, 1.0]))
    nib.save(img, str(path))
    return path


def make_nnunet_dataset(root: Path, n_cases: int = 3, shape=(8, 10, 12), seed: int = 0) -> Path:
    """A valid nnU-Net v2 raw dataset with labels 0, 1, 2."""
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        img = rng.normal(size=shape).astype(np.float32)
        seg = rng.integers(0, 3, size=shape).astype(np.uint8)
        write_nifti(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", img)
        write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", seg)
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
            "numTraining": n_cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_mini_hippocampus(root: Path, n_cases: int) -> Path:
    """The first ``n_cases`` cases of the bundled MSD Hippocampus copy, as an MSD task folder."""
    meta = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    meta["training"] = meta["training"][:n_cases]
    meta["numTraining"] = n_cases
    for entry in meta["training"]:
        for key in ("image", "label"):
            dest = root / entry[key]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(HIPPOCAMPUS / entry[key], dest)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    return make_nnunet_dataset(tmp_path / "Dataset001_Toy")


@pytest.fixture(scope="session")
def mini_hippocampus(tmp_path_factory) -> Path:
    return make_mini_hippocampus(tmp_path_factory.mktemp("data") / "Task04_Hippocampus", 20)


@pytest.fixture(scope="session")
def nnunet_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nnunet-cache")


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    """Six small cases with labels 0, 1, 2: the fake backend's loop, grid and redundancy tests (read only)."""
    return make_nnunet_dataset(tmp_path_factory.mktemp("data") / "Dataset001_Toy", n_cases=6, shape=(8, 10, 12))


def small_unet(dropout_op=None):
    """A small nnU-Net PlainConvUNet with the planned network's block structure, seeded, in eval mode."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    return PlainConvUNet(1, 3, (8, 16, 32), torch.nn.Conv2d, 3, (1, 2, 2), (2, 2, 2), 3, (2, 2), conv_bias=True,
                         norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         dropout_op=dropout_op or torch.nn.Dropout2d, dropout_op_kwargs={"p": 0.1},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}).eval()


@pytest.fixture
def no_fsync(monkeypatch):
    """fsync is most of a fake run's time; temp file + rename (what a resumed run relies on) stays as it is."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def run_as_nnal_run(*args, **kwargs):
    """The loop as `nnal run` calls it: with annotation's oracle factory, so a human-oracle config is served."""
    from nnal.annotation.oracle import make_oracle
    from nnal.loop import run_experiment

    return run_experiment(*args, oracle_factory=make_oracle, **kwargs)


def default_sigint() -> None:
    """``preexec_fn`` of a child that a test interrupts with SIGINT: the default disposition back. A suite started in
    the background (``make test &``) runs with SIGINT ignored, children inherit that, and Python then installs no
    KeyboardInterrupt handler, so the child would never see the signal the test is about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
