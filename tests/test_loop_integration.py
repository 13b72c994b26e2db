"""Real rounds through nnU-Net's trainer on a few Hippocampus cases (tiny schedule), resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli

from nnal.atomic import FolderLock
from nnal.config import Config
from nnal.experiment import RESULT_COLUMNS
from nnal.loop import run_experiment

pytestmark = pytest.mark.slow

TINY = dict(rounds=2, initial=20, budget=10, pool_cases=4, test_cases=2, batch_size=8, iterations_per_epoch=5,
            epochs_initial=2, epochs_per_round=2, mc_passes=3, score_batch_size=64, device="cpu")


def tiny_config(dataset: Path, strategy: str, **overrides) -> Config:
    return Config(dataset=str(dataset), strategy=strategy, **{**TINY, **overrides})


def selections(folder: Path) -> list[list[int]]:
    return [pd.read_csv(p)["id"].tolist() for p in sorted(folder.glob("round_*/selection.csv"))]


@pytest.fixture(scope="module")
def bald_run(mini_hippocampus, nnunet_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bald") / "exp"
    run_experiment(tiny_config(mini_hippocampus, "bald"), out, cache=nnunet_cache, progress=False)
    return out


def test_two_real_rounds_write_every_artifact(bald_run):
    results = pd.read_csv(bald_run / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    assert sorted(results["round"].unique()) == [0, 1, 2]
    assert results.groupby("round")["n_labeled"].first().tolist() == [20, 30, 40]
    assert set(results["label"]) == {"Anterior", "Posterior", "mean"}
    assert results["dice"].between(0, 1).all()
    assert results["case"].nunique() == 2
    chosen = np.concatenate(selections(bald_run))
    assert len(chosen) == 40 and len(np.unique(chosen)) == 40
    for r in range(3):
        rdir = bald_run / f"round_{r:03d}"
        assert (rdir / "checkpoint.pt").is_file() and (rdir / "metrics.csv").is_file()
        assert (rdir / "nnunet" / "training_log.txt").is_file()  # nnU-Net's own trainer wrote its log
    scores = np.load(bald_run / "round_001" / "scores.npz")
    assert set(scores.files) == {"ids", "bald"}
    sel = pd.read_csv(bald_run / "round_001" / "selection.csv")
    top = np.sort(scores["bald"])[::-1][:10]
    np.testing.assert_allclose(np.sort(sel["score"].to_numpy())[::-1], top)  # BALD picks the top scores
    for name in ("config.yaml", "environment.json", "pool.csv", "state.json", "test_cases.txt"):
        assert (bald_run / name).is_file()


def test_test_cases_never_enter_the_pool(bald_run):
    pool_cases = set(pd.read_csv(bald_run / "pool.csv")["case"])
    test_cases = set((bald_run / "test_cases.txt").read_text().split())
    assert pool_cases and test_cases and not pool_cases & test_cases


def test_sigkill_mid_round_then_resume_equals_uninterrupted(bald_run, mini_hippocampus, nnunet_cache, tmp_path):
    out = tmp_path / "killed"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in TINY.items()}))
    cmd = [sys.executable, "-m", "nnal.cli", "run", "--dataset", str(mini_hippocampus), "--output", str(out),
           "--strategy", "bald", "--config", str(cfg), "--cache", str(nnunet_cache), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "round_001" / "selection.csv"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run ended before round 1 was selected"
    state = yaml.safe_load((out / "state.json").read_text())
    assert (state["round"], state["phase"]) < (2, "evaluate")  # killed mid-experiment

    result = run_cli(cmd[3:])
    assert result.exit_code == 0, result.output
    assert selections(out) == selections(bald_run)
    chosen = np.concatenate(selections(out))
    assert len(np.unique(chosen)) == len(chosen)
    a = pd.read_csv(out / "results.csv").drop(columns="experiment")
    b = pd.read_csv(bald_run / "results.csv").drop(columns="experiment")
    pd.testing.assert_frame_equal(a, b)


def test_same_seed_same_selection_and_dice_other_strategies_share_round0(bald_run, mini_hippocampus, nnunet_cache,
                                                                        tmp_path):
    for strategy in ("random", "entropy"):
        out = tmp_path / strategy
        run_experiment(tiny_config(mini_hippocampus, strategy), out, cache=nnunet_cache, share_round0=bald_run,
                       progress=False)
        assert selections(out)[0] == selections(bald_run)[0]  # the same initial set
        results = pd.read_csv(out / "results.csv")
        assert sorted(results["round"].unique()) == [0, 1, 2]
        r0 = results[results["round"] == 0]["dice"].to_numpy()
        bald = pd.read_csv(bald_run / "results.csv")
        np.testing.assert_array_equal(r0, bald[bald["round"] == 0]["dice"].to_numpy())
        chosen = np.concatenate(selections(out))
        assert len(np.unique(chosen)) == len(chosen) == 40


def test_second_process_is_refused_while_locked(bald_run, mini_hippocampus, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(dict(TINY)))
    with FolderLock(bald_run):
        result = run_cli(["run", "--dataset", str(mini_hippocampus), "--output", str(bald_run),
                                          "--strategy", "bald", "--config", str(cfg), "--quiet"])
    assert result.exit_code == 2
    assert "another nnal process" in result.stderr


def test_resume_with_other_settings_is_refused(bald_run, mini_hippocampus):
    before = (bald_run / "results.csv").read_bytes()
    result = run_cli(["run", "--dataset", str(mini_hippocampus), "--output", str(bald_run),
                                      "--strategy", "random", "--quiet"])
    assert result.exit_code == 2 and "differs" in result.stderr
    assert (bald_run / "results.csv").read_bytes() == before


@pytest.mark.parametrize("strategy", ["meanstd", "coreset", "badge", "stochastic-batches", "usimc", "usimf"])
def test_every_strategy_runs_two_real_rounds(strategy, bald_run, mini_hippocampus, nnunet_cache, tmp_path):
    out = tmp_path / strategy
    options = {"embedding_dim": 500} if strategy.startswith("usim") else {}
    run_experiment(tiny_config(mini_hippocampus, strategy, strategy_options=options), out, cache=nnunet_cache,
                   share_round0=bald_run, progress=False)
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["round"].unique()) == [0, 1, 2]
    chosen = np.concatenate(selections(out))
    assert len(np.unique(chosen)) == len(chosen) == 40
    scores = np.load(out / "round_001" / "scores.npz")
    expected = {"meanstd": {"std"}, "coreset": {"features", "labeled_features"}, "badge": {"badge_embeddings"},
                "stochastic-batches": {"entropy"},
                "usimc": {"class_variance", "query", "grad_embeddings", "usim_uncertainty"},
                "usimf": {"class_variance", "query", "grad_embeddings", "usim_uncertainty", "fisher"}}[strategy]
    assert expected <= set(scores.files)
    if strategy.startswith("usim"):
        assert scores["grad_embeddings"].shape == (len(scores["ids"]), 500)
        assert scores["query"].max() < len(scores["ids"])
        assert len(scores["query"]) >= 10  # Q is never below the budget


def test_full_reference_trains_on_every_pool_slice(bald_run, mini_hippocampus, nnunet_cache, tmp_path):
    out = tmp_path / "full"
    run_experiment(tiny_config(mini_hippocampus, "full"), out, cache=nnunet_cache, progress=False)
    results = pd.read_csv(out / "results.csv")
    pool = pd.read_csv(out / "pool.csv")
    assert results["round"].unique().tolist() == [0]
    assert results["n_labeled"].unique().tolist() == [len(pool)]


def test_report_cli_on_real_experiments_draws_the_prediction_figures(bald_run, mini_hippocampus, nnunet_cache,
                                                                     tmp_path):
    usimc = tmp_path / "usimc"
    run_experiment(tiny_config(mini_hippocampus, "usimc", strategy_options={"embedding_dim": 300}), usimc,
                   cache=nnunet_cache, share_round0=bald_run, progress=False)
    result = run_cli(["report", str(bald_run), str(usimc), "--output", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    figures = {p.stem for p in (tmp_path / "rep" / "figures").glob("*.png")}
    assert {"learning_curves", "correlation", "embedding", "segmentation_0"} <= figures, figures
    assert (tmp_path / "rep" / "index.html").stat().st_size > 10_000


@pytest.mark.parametrize("content", [None, "", "experiment,strategy\nx,y\n", "not,a,csv\n\x00\x01"])
def test_report_cli_rejects_bad_folders_with_exit_2(tmp_path, content):
    folder = tmp_path / "exp"
    folder.mkdir()
    if content is not None:
        (folder / "config.yaml").write_text("dataset: x\nstrategy: random\n")
        (folder / "results.csv").write_text(content)
    result = run_cli(["report", str(folder), "--output", str(tmp_path / "rep")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(folder) in lines[0]


def test_bench_scoring_times_a_real_round_against_its_floor(bald_run, tmp_path):
    from nnal.bench.scoring import bench_scoring, format_scoring

    result = bench_scoring(bald_run, round_=1, device="cpu")
    assert result["variant"] == "bald" and result["mc_passes"] == 3
    assert result["pool_slices"] == len(np.setdiff1d(pd.read_csv(bald_run / "pool.csv")["id"],
                                                     pd.read_csv(bald_run / "round_000" / "selection.csv")["id"]))
    for key in ("plain_forward_s", "mc_stacked_s", "mc_single_s", "embedding_s", "scoring_phase_s"):
        assert result[key] > 0
    assert result["floor_s"] == pytest.approx((3 + 3) * result["plain_forward_s"], rel=1e-2)
    assert result["environment"]["git_commit"] and "scoring phase" in format_scoring(result)
    for args, words in (([str(tmp_path)], ["not an nnal experiment"]), ([str(bald_run), "--round", "9"],
                                                                       ["no checkpoint of round 8"])):
        outcome = run_cli(["bench", "scoring", "--experiment", args[0], *args[1:]])
        assert outcome.exit_code == 2 and "error:" in outcome.stderr and "Traceback" not in outcome.stderr
        assert all(w in outcome.stderr for w in words)
