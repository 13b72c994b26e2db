"""Grids: expansion and checks of the grid file, and runs on the fake model through the local executor and a real
local Ray instance (equal results), a grid killed midway and rerun, and one failing experiment among others."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import assert_one_line_error, run_cli

from nnal.errors import ConfigError
from nnal.experiment import ExperimentFolder
from nnal.grid import expand, load_grid, run_grid
from nnal.grid.progress import Progress

SETTINGS = dict(rounds=2, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1, epochs_per_round=1,
                mc_passes=3)


@pytest.fixture(scope="module")
def dataset(toy_dataset) -> Path:
    return toy_dataset


def grid_file(tmp_path: Path, dataset: Path, **changes) -> Path:
    body = dict(datasets=[str(dataset)], strategies=["random", "bald"], folds=[0], seeds=[0, 1], settings=SETTINGS)
    body.update(changes)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def quiet(_line: str) -> None:
    pass


def results_of(output: Path) -> dict[str, pd.DataFrame]:
    return {str(p.parent.relative_to(output)): pd.read_csv(p) for p in sorted(output.glob("*/*/*/results.csv"))}


# --- the grid file ------------------------------------------------------------------------------------------------


def test_expansion_variants_sweep_folds_seeds_and_the_full_reference(tmp_path, dataset):
    path = grid_file(tmp_path, dataset, strategies=["random", "usimf", {"strategy": "usimc", "options": {"eta": 2.0}}],
                     folds=[0, 1], seeds=[0, 1, 2], sweep={"query_mode": ["weighted", "uniform"]},
                     full_reference=True)
    experiments = expand(load_grid(path), str(path))
    # random: 6; usimf and usimc: 2 query modes x 6; full: one per fold
    assert len(experiments) == 6 + 12 + 12 + 2
    labels = {e.label for e in experiments}
    assert labels == {"random", "usimf", "usimf[query_mode=uniform]", "usimc[eta=2]", "usimc[eta=2,query_mode=uniform]",
                      "full"}
    assert len({e.folder for e in experiments}) == len(experiments)
    groups = {(e.config.fold, e.config.seed): set() for e in experiments}
    for e in experiments:
        if e.config.strategy != "full":
            groups[(e.config.fold, e.config.seed)].add(e.round0_group)
    assert all(len(g) == 1 for g in groups.values())  # every strategy of a fold and seed shares one round 0
    assert len({e.round0_group for e in experiments if e.round0_group}) == 6
    assert all(e.round0_group is None for e in experiments if e.config.strategy == "full")


def test_the_full_reference_runs_with_every_seed_that_draws_its_own_test_cases(tmp_path, dataset):
    def full_seeds(**settings) -> list[tuple[int, int]]:
        path = grid_file(tmp_path, dataset, folds=[0, 1], seeds=[3, 4, 5], full_reference=True,
                         settings={**SETTINGS, **settings})
        return sorted((e.config.fold, e.config.seed) for e in expand(load_grid(path), str(path))
                      if e.config.strategy == "full")

    assert full_seeds() == [(0, 3), (1, 3)]  # the whole fold: every seed has the same test cases
    every = [(f, s) for f in (0, 1) for s in (3, 4, 5)]
    assert full_seeds(test_cases=2) == every
    assert full_seeds(pool_cases=3) == every


def test_the_full_reference_takes_settings_of_its_own(tmp_path, dataset):
    path = grid_file(tmp_path, dataset, full_reference={"epochs_initial": 7, "initial_lr": 0.02})
    experiments = {e.label: e for e in expand(load_grid(path), str(path)) if e.config.seed == 0}
    full, random = experiments["full"].config, experiments["random"].config
    assert (full.epochs_initial, full.initial_lr) == (7, 0.02)
    assert random.epochs_initial == SETTINGS["epochs_initial"] and random.resolved().initial_lr != 0.02
    assert full.iterations_per_epoch == random.iterations_per_epoch == SETTINGS["iterations_per_epoch"]
    # an empty mapping is the reference with the grid's settings, as ``true`` is
    plain = expand(load_grid(grid_file(tmp_path, dataset, full_reference={})), str(path))
    assert [e.config.epochs_initial for e in plain if e.config.strategy == "full"] == [SETTINGS["epochs_initial"]]


BAD_GRIDS = {
    "unknown setting of the full reference": ({"full_reference": {"epochs_intial": 5}}, ["grid.yaml", "epochs_intial"]),
    "seed of the full reference": ({"full_reference": {"seed": 2}}, ["grid.yaml", "full_reference", "seed"]),
    "unknown key": ({"fodls": [0]}, ["grid.yaml", "fodls"]),
    "unknown strategy": ({"strategies": ["random", "usimx"]}, ["grid.yaml", "usimx"]),
    "misspelt option of a variant": ({"strategies": [{"strategy": "usimf", "options": {"etaa": 1.0}}]},
                                     ["grid.yaml", "etaa"]),
    "sweep of an option no strategy has": ({"sweep": {"eta": [0.0, 1.0]}}, ["grid.yaml", "eta"]),
    "seed in settings": ({"settings": {**SETTINGS, "seed": 3}}, ["grid.yaml", "seed"]),
    "bad setting type": ({"settings": {**SETTINGS, "rounds": "two"}}, ["grid.yaml", "rounds"]),
    "fold out of range": ({"folds": [5]}, ["grid.yaml", "folds"]),
    "no strategies": ({"strategies": []}, ["grid.yaml", "strategies"]),
    "a strategy twice": ({"strategies": ["random", "random"]}, ["grid.yaml", "twice"]),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_a_bad_grid_is_one_line_exit_2_and_writes_nothing(case, tmp_path, dataset):
    changes, words = BAD_GRIDS[case]
    out = tmp_path / "out"
    result = run_cli(["grid", grid_file(tmp_path, dataset, **changes), "--output", out, "--executor", "local",
                      "--dry-run"])
    assert_one_line_error(result, words)
    assert not out.exists()


def test_a_missing_dataset_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    result = run_cli(["grid", grid_file(tmp_path, tmp_path / "nowhere"), "--output", out, "--dry-run"])
    assert_one_line_error(result, ["nowhere"])
    assert not out.exists()


# --- running it ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, dataset) -> Path:
    base = tmp_path_factory.mktemp("local")
    out = base / "out"
    status = run_grid(grid_file(base, dataset), out, executor="local", backend="fake", report=True, emit=quiet)
    assert status["failed"] == 0
    return out


def test_local_grid_runs_every_experiment_sharing_round0(local_run):
    status = json.loads((local_run / "grid.json").read_text())
    assert [e["status"] for e in status["experiments"]] == ["done"] * 4
    assert status["environment"]["git_commit"]
    results = results_of(local_run)
    assert len(results) == 4 and all(r["round"].max() == 2 for r in results.values())
    holders = sorted((local_run / "round0").iterdir())
    assert len(holders) == 2  # one per seed, shared by random and bald
    for exp in status["experiments"]:
        own = pd.read_csv(local_run / exp["folder"] / "round_000" / "selection.csv")
        holder = [h for h in holders if f"-s{exp['seed']}-" in h.name][0]
        assert own["id"].tolist() == pd.read_csv(holder / "round_000" / "selection.csv")["id"].tolist()


def test_the_grid_writes_its_report_with_one_curve_per_variant(local_run):
    page = (local_run / "report" / "index.html").read_text()
    assert "random" in page and "bald" in page


def test_progress_counts_done_running_failed_waiting(local_run, tmp_path, dataset):
    path = local_run / "grid.yaml"
    experiments = expand(load_grid(path), str(path))
    done = Progress(experiments, local_run, {}, parallel=1, emit=quiet).text()
    assert done.startswith("[") and "4 done, 0 running, 0 failed, 0 waiting" in done
    fresh = Progress(experiments, tmp_path / "none", {experiments[0].folder: {"status": "failed"}}, parallel=1,
                     emit=quiet).text()
    assert "0 done, 0 running, 1 failed, 3 waiting" in fresh
    folder = ExperimentFolder(tmp_path / "none" / experiments[1].folder)
    with folder.lock():  # a process working on it: running, with the round and phase it is in
        running = Progress(experiments, tmp_path / "none", {}, parallel=1, emit=quiet).text()
    assert "0 done, 1 running, 0 failed, 3 waiting" in running
    assert "running: " not in done and f"running: {experiments[1].folder} (round 0, select)" in running


def test_a_finished_grid_is_skipped_on_rerun(local_run, tmp_path, dataset):
    before = {p: p.stat().st_mtime_ns for p in local_run.glob("*/*/*/state.json")}
    status = run_grid(local_run / "grid.yaml", local_run, executor="local", backend="fake", report=False, emit=quiet)
    assert status["failed"] == 0
    assert {p: p.stat().st_mtime_ns for p in local_run.glob("*/*/*/state.json")} == before


def test_the_plan_runs_seed_by_seed_after_each_round0(tmp_path, dataset):
    from nnal.grid.run import GridRun, plan

    path = grid_file(tmp_path, dataset, strategies=["random", "bald", "usimc"], seeds=[0, 1, 2])
    experiments = expand(load_grid(path), str(path))
    steps = plan(experiments, GridRun(output=tmp_path / "out"), threads=1)
    order = [s.key for s in steps if s.kind == "experiment"]
    seeds = [int(k.rsplit("-s", 1)[1]) for k in order]
    assert seeds == sorted(seeds) and len(order) == 9  # whole comparisons first
    for i, step in enumerate(steps):  # every step after what it needs
        assert all(n in {s.key for s in steps[:i]} for n in step.needs)


def test_a_grid_changing_only_later_rounds_reuses_its_trained_round0(local_run, tmp_path, dataset):
    out = tmp_path / "out"
    shutil.copytree(local_run / "round0", out / "round0")
    def trained(root: Path) -> dict[Path, bytes]:  # the round-0 outputs (environment.json is rewritten per run)
        return {p: p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name not in ("environment.json", ".lock")}

    before = trained(out / "round0")
    longer = {**SETTINGS, "epochs_per_round": 2, "mc_passes": 4, "budget": 3}  # none of them decides round 0
    status = run_grid(grid_file(tmp_path, dataset, settings=longer), out, executor="local", backend="fake",
                      report=False, emit=quiet)
    assert status["failed"] == 0
    assert trained(out / "round0") == before  # not trained again, its config untouched
    for name, frame in results_of(out).items():
        own = frame[frame["round"] == 0].drop(columns=["experiment", "strategy"]).reset_index(drop=True)
        seed = int(name.rsplit("-s", 1)[1])
        holder = [h for h in (out / "round0").iterdir() if f"-s{seed}-" in h.name][0]
        shared = pd.read_csv(holder / "results.csv").drop(columns=["experiment", "strategy"])
        pd.testing.assert_frame_equal(own, shared)


def test_ray_grid_on_a_real_local_instance_equals_the_local_executor(local_run, tmp_path, dataset, monkeypatch):
    """And no finished task is cancelled: in Ray 2.60 a cancel that meets a task's completion aborts the driver
    (exit code 1, "Tried to complete task that was not pending"), which ended a whole pytest run."""
    ray = pytest.importorskip("ray")
    cancelled: list = []
    real_cancel = ray.cancel
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: (cancelled.append(ref), real_cancel(ref, **kw)))
    out = tmp_path / "ray"
    status = run_grid(grid_file(tmp_path, dataset), out, executor="ray", max_parallel=2, backend="fake",
                      report=False, emit=quiet)
    assert status["failed"] == 0 and cancelled == []
    ray_results, local_results = results_of(out), results_of(local_run)
    assert sorted(ray_results) == sorted(local_results)
    for key, frame in local_results.items():
        pd.testing.assert_frame_equal(ray_results[key], frame)
        for r in range(3):
            sel = f"{key}/round_{r:03d}/selection.csv"
            assert (out / sel).read_text() == (local_run / sel).read_text()


def _grid_process(path: Path, out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nnal.cli", "grid", str(path), "--output", str(out),
                             "--executor", "local", "--dry-run", "--no-report"],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_grid_killed_midway_finishes_only_what_was_left(tmp_path, dataset, local_run):
    path = grid_file(tmp_path, dataset)
    out = tmp_path / "out"
    proc = _grid_process(path, out, {"NNAL_FAKE_DELAY": "0.3"})
    deadline = time.monotonic() + 120
    first = None
    while time.monotonic() < deadline and proc.poll() is None:
        finished = [f for f in out.glob("*/*/*") if (f / "state.json").is_file() and ExperimentFolder(f).finished(2)]
        if finished:
            first = finished[0]
            break
        time.sleep(0.05)
    assert first is not None, proc.stderr.read().decode() if proc.poll() is not None else "no experiment finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*/*/state.json")
              if ExperimentFolder(p.parent).finished(2)}
    assert 1 <= len(before) < 4
    rerun = _grid_process(path, out, {})
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # finished experiments were not run again
    results = results_of(out)
    assert len(results) == 4
    for key, frame in results_of(local_run).items():  # and the grid ends as an uninterrupted one
        pd.testing.assert_frame_equal(results[key], frame)


def test_a_failing_experiment_is_retried_reported_and_the_others_finish(tmp_path, dataset, monkeypatch):
    monkeypatch.setenv("NNAL_FAKE_FAIL_SEED", "1")
    out = tmp_path / "out"
    lines: list[str] = []
    status = run_grid(grid_file(tmp_path, dataset, strategies=["random", "bald"], seeds=[0, 2, 1],
                                retries=2), out, executor="local", backend="fake", report=False, emit=lines.append)
    assert status["failed"] == 2  # seed 1's round 0 fails, so both of its experiments do
    rows = json.loads((out / "grid.json").read_text())["experiments"]
    by_seed = {}
    for row in rows:
        by_seed.setdefault(row["seed"], set()).add(row["status"])
    assert by_seed == {0: {"done"}, 2: {"done"}, 1: {"failed"}}
    assert all("NNAL_FAKE_FAIL_SEED" in row["error"] for row in rows if row["status"] == "failed")
    assert any(line.startswith("failed: ") for line in lines)
    assert len(results_of(out)) == 4


def test_config_errors_name_the_grid_and_the_experiment(tmp_path, dataset):
    path = grid_file(tmp_path, dataset, settings={**SETTINGS, "budget": [4, 0]})
    with pytest.raises(ConfigError, match="grid.yaml"):
        expand(load_grid(path), str(path))
