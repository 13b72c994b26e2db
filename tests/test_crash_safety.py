"""Crash safety: SIGKILL a tiny real run in chosen phases and resume (the harness's short run); a write that
fails (disk full, simulated) keeps the previous state and says so in one line."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from conftest import make_nnunet_dataset

from nnal.backend.fake import fake_backend
from nnal.config import Config
from nnal.errors import EnvironmentProblem
from nnal.loop import run_experiment

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "crash_harness.py"


def _harness():
    spec = importlib.util.spec_from_file_location("crash_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sigkill_in_preprocessing_scoring_and_report_then_resume(tmp_path):
    # the odd point shares its half-made cache with a 2nd experiment; a kill in training is
    # test_loop_integration's (mid-round), the harness's own runs kill every phase (results/crash-harness.json)
    targets = ["score:1", "preprocess"]
    summary = _harness().main(["--at", *targets, "--report-points", "1", "--cases", "8", "--rounds", "1",
                                "--work", str(tmp_path)])
    assert [p["hit"] for p in summary["points"]] == targets
    assert summary["identical"] == summary["of"] == 2, summary["points"]
    assert summary["points"][1]["shared_identical"] is True
    assert all(p["identical_tables"] for p in summary["report_points"])


def _config(ds: Path) -> Config:
    return Config(dataset=str(ds), strategy="bald", rounds=2, initial=5, budget=4, iterations_per_epoch=2,
                  epochs_initial=1, epochs_per_round=1, mc_passes=3)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("failing_write", ["state.json", "scores.npz", "checkpoint.pt", "results.csv"])
def test_a_failed_write_keeps_the_previous_state_and_resumes(failing_write, tmp_path, monkeypatch):
    ds = make_nnunet_dataset(tmp_path / "Dataset001_Toy", n_cases=6)
    reference = tmp_path / "reference"
    run_experiment(_config(ds), reference, progress=False, backend_factory=fake_backend)

    out = tmp_path / "exp"
    real_replace = os.replace
    hits = {"n": 0}
    nth = 3 if failing_write == "state.json" else 2  # state.json's 1st write records nothing finished yet

    def replace(src, dst):  # the disk fills up just as the nth write of this file is made durable
        if Path(dst).name == failing_write:
            hits["n"] += 1
            if hits["n"] == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr("nnal.atomic.os.replace", replace)
    with pytest.raises(EnvironmentProblem, match="No space left on device") as err:
        run_experiment(_config(ds), out, progress=False, backend_factory=fake_backend)
    assert failing_write in str(err.value) and "\n" not in str(err.value)
    before = _files(out)
    assert not [name for name in before if name.endswith(".tmp")]  # no half-written file left behind
    assert json.loads(before["state.json"])["round"] >= 0  # the previous state, whole
    monkeypatch.setattr("nnal.atomic.os.replace", real_replace)

    run_experiment(_config(ds), out, progress=False, backend_factory=fake_backend)
    after, expected = _files(out), _files(reference)
    compared = [name for name in expected if name.endswith((".csv", ".npz"))]
    assert "results.csv" in compared and "round_002/selection.csv" in compared
    for name in compared:
        assert after[name] == expected[name], name
