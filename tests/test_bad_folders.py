"""The corpus of folders that disagree with themselves or with the command (grids and experiments): refused up front
in one line, or handled correctly (rebuilt where derivable), never relabelled, never mixed with a dry run's numbers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import assert_one_line_error, run_cli

from nnal.backend.fake import fake_backend
from nnal.config import build
from nnal.dataset import load_dataset
from nnal.errors import EnvironmentProblem
from nnal.grid.driver import default_output
from nnal.loop import run_experiment
from nnal.preflight import check_disk

SETTINGS = dict(rounds=1, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1, epochs_per_round=1,
                mc_passes=3, device="cpu")


def grid_file(tmp_path: Path, dataset: Path, name: str = "grid.yaml", **changes) -> Path:
    body = dict(datasets=[str(dataset)], strategies=["random", "bald"], folds=[0], seeds=[0], settings=SETTINGS)
    body.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


def dry_grid(path: Path, out: Path, *extra: object):
    return run_cli(["grid", path, "--output", out, "--executor", "local", "--dry-run", "--no-report", *extra])


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# --- grids --------------------------------------------------------------------------------------------------------


def test_a_grid_rerun_with_changed_settings_is_refused_and_relabels_nothing(tmp_path, toy_dataset):
    out = tmp_path / "out"
    assert dry_grid(grid_file(tmp_path, toy_dataset), out).exit_code == 0
    before = files(out)
    changed = grid_file(tmp_path, toy_dataset, settings={**SETTINGS, "budget": 3})
    result = dry_grid(changed, out)
    assert_one_line_error(result, [str(changed), "config.yaml", "differs in budget", "grid.yaml"])
    assert files(out) == before  # grid.yaml and grid.json still describe what was run


def test_a_grid_rerun_with_more_rounds_resumes(tmp_path, toy_dataset):
    out = tmp_path / "out"
    assert dry_grid(grid_file(tmp_path, toy_dataset), out).exit_code == 0
    result = dry_grid(grid_file(tmp_path, toy_dataset, settings={**SETTINGS, "rounds": 2}), out)
    assert result.exit_code == 0, result.output
    assert all(pd.read_csv(p)["round"].max() == 2 for p in out.glob("*/*/*/results.csv"))


def test_an_unknown_redundancy_case_in_a_grid_is_refused_up_front(tmp_path, toy_dataset):
    out = tmp_path / "out"
    path = grid_file(tmp_path, toy_dataset, settings={**SETTINGS, "redundancy": {"case": "case_999", "copies": 3}})
    assert_one_line_error(dry_grid(path, out), [str(path), "redundancy.case", "case_999"])
    assert not out.exists()


def test_a_redundancy_too_large_for_memory_in_a_grid_is_refused_up_front(tmp_path, toy_dataset):
    out = tmp_path / "out"
    path = grid_file(tmp_path, toy_dataset, settings={**SETTINGS, "redundancy": {"case": "case_001",
                                                                                 "copies": 10**10}})
    assert_one_line_error(dry_grid(path, out), [str(path), "redundancy.copies", "memory"])
    assert not out.exists()


@pytest.mark.parametrize("address", ["127.0.0.1:1", "auto"])
def test_an_unreachable_cluster_is_refused_within_seconds(address, tmp_path, toy_dataset, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "no-ray"))  # no record of a running cluster
    out = tmp_path / "out"
    start = time.monotonic()
    result = run_cli(["grid", grid_file(tmp_path, toy_dataset), "--output", out, "--address", address, "--dry-run"])
    assert_one_line_error(result, ["--address", address])
    assert time.monotonic() - start < 60  # Ray itself would retry for ever
    assert not out.exists()


def test_a_dry_run_never_becomes_the_real_grid(tmp_path, toy_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = grid_file(tmp_path, toy_dataset, name="mine.yaml")
    result = run_cli(["grid", path, "--executor", "local", "--dry-run"])
    assert result.exit_code == 0, result.output
    dry, real = default_output(path, dry_run=True), default_output(path, dry_run=False)
    assert dry == Path("runs/mine-dry-run") and real == Path("runs/mine")
    assert (tmp_path / dry / "grid.json").is_file() and not (tmp_path / real).exists()
    status = json.loads((tmp_path / dry / "grid.json").read_text())
    assert status["dry_run"] is True and status["backend"] == "fake"
    assert result.output.count("DRY RUN") >= 2  # before the progress and after the status
    before = files(tmp_path / dry)
    refused = run_cli(["grid", path, "--output", dry, "--executor", "local"])  # a real run into the dry run's folder
    assert_one_line_error(refused, [str(dry), "dry run"])
    assert files(tmp_path / dry) == before


def test_a_real_run_on_a_dry_run_experiment_is_refused(tmp_path, toy_dataset):
    folder = tmp_path / "exp"
    run_experiment(build({"dataset": str(toy_dataset), **SETTINGS}), folder, progress=False,
                   backend_factory=fake_backend)
    before = files(folder)
    result = run_cli(["run", "--output", folder, "--quiet"])
    assert_one_line_error(result, [str(folder), "fake model"])
    assert files(folder) == before


# --- experiment folders: what can be derived is rebuilt -----------------------------------------------------------


def _experiment(tmp_path: Path, dataset: Path, **changes) -> tuple[Path, dict]:
    values = {"dataset": str(dataset), "strategy": "bald", **SETTINGS, **changes}
    folder = tmp_path / "exp"
    run_experiment(build(values), folder, progress=False, backend_factory=fake_backend)
    return folder, values


def test_a_deleted_results_file_is_rebuilt_from_the_rounds(tmp_path, toy_dataset, no_fsync):
    folder, values = _experiment(tmp_path, toy_dataset)
    expected = (folder / "results.csv").read_text()
    (folder / "results.csv").unlink()
    results = run_experiment(build(values), folder, progress=False, backend_factory=fake_backend)
    assert (folder / "results.csv").read_text() == expected and len(results) > 0


def test_scores_lost_before_their_selection_are_scored_again(tmp_path, toy_dataset, no_fsync):
    folder, values = _experiment(tmp_path, toy_dataset)
    reference = (folder / "round_001" / "selection.csv").read_text()
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "round": 1, "phase": "score"}))  # killed after scoring
    for name in ("selection.csv", "metrics.csv", "checkpoint.pt"):
        (folder / "round_001" / name).unlink()
    (folder / "round_001" / "scores.npz").write_bytes(b"PK\x03\x04 truncated")
    run_experiment(build(values), folder, progress=False, backend_factory=fake_backend)
    assert (folder / "round_001" / "selection.csv").read_text() == reference


def test_a_run_killed_while_it_adopts_a_shared_round0_resumes(tmp_path, toy_dataset, no_fsync, monkeypatch):
    """A grid's experiment killed after round 0's files were copied in, before its first phase was recorded: its
    state.json already exists (nothing finished), so the rerun resumes instead of refusing a folder with round
    folders and no state (what a SIGKILL at that moment left before, and a grid test caught)."""
    import shutil

    import nnal.resume

    source, values = _experiment(tmp_path, toy_dataset)
    target = tmp_path / "bald"
    real_copytree = shutil.copytree

    def copy_then_die(*args, **kwargs):
        real_copytree(*args, **kwargs)
        raise KeyboardInterrupt("killed after the copy")

    monkeypatch.setattr(nnal.resume.shutil, "copytree", copy_then_die)
    config = build({**values, "strategy": "bald"})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, target, progress=False, backend_factory=fake_backend, share_round0=source)
    assert (target / "round_000").is_dir() and json.loads((target / "state.json").read_text())["round"] == -1
    monkeypatch.setattr(nnal.resume.shutil, "copytree", real_copytree)
    results = run_experiment(config, target, progress=False, backend_factory=fake_backend, share_round0=source)
    assert sorted(set(results["round"])) == [0, 1]


def test_the_full_reference_with_redundancy_labels_each_slice_once(tmp_path, toy_dataset, no_fsync):
    folder, _ = _experiment(tmp_path, toy_dataset, strategy="full", redundancy={"case": "case_001", "copies": 3})
    pool = pd.read_csv(folder / "pool.csv")
    originals = int((pool["copy"] == 0).sum())
    assert len(pool) > originals
    assert set(pd.read_csv(folder / "results.csv")["n_labeled"]) == {originals}
    assert sorted(pd.read_csv(folder / "round_000" / "selection.csv")["id"]) == sorted(pool["id"][pool["copy"] == 0])


def test_the_disk_check_covers_the_output_folder_too(tmp_path, toy_dataset, monkeypatch):
    import shutil

    import nnal.preflight as preflight

    output_device = os.stat(tmp_path).st_dev
    real_stat = os.stat

    def stat(path, *args, **kwargs):  # the output on a file system of its own
        result = real_stat(path, *args, **kwargs)
        if Path(path) == tmp_path / "outdisk":
            return os.stat_result((*result[:2], output_device + 1, *result[3:]))
        return result

    (tmp_path / "outdisk").mkdir()
    monkeypatch.setattr(preflight.os, "stat", stat)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(
        1, 1, 1000 if Path(p) == tmp_path / "outdisk" else 1 << 40))
    with pytest.raises(EnvironmentProblem, match="outdisk.*checkpoints"):
        check_disk(load_dataset(toy_dataset), tmp_path / "cache", cache_ready=True,
                   output=tmp_path / "outdisk" / "exp")
