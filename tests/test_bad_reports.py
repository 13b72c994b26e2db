"""Reports that used to mislead: an unfinished experiment pooled with finished ones, experiments of different
protocols (redundancy, budget, rounds) pooled or compared without a word, numbers of nnal's fake model passed off
as results. Experiment folders come from the fake backend (fast); each test copies the ones it needs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_one_line_error, make_nnunet_dataset, run_cli
from test_analysis import write_experiment

from nnal.analysis import build_report
from nnal.analysis.protocol import differing
from nnal.backend.fake import fake_backend
from nnal.config import build
from nnal.loop import run_experiment

SETTINGS = dict(strategy="random", rounds=1, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1,
                epochs_per_round=1, mc_passes=3, device="cpu")
REDUNDANCY = {"case": "case_002", "copies": 2}  # a pool case of the fake split's fold 0
EXPERIMENTS = {  # folder and experiment name -> changes to SETTINGS
    "random-s0": dict(seed=0),
    "random-s1": dict(seed=1),
    "random-s1-budget3": dict(seed=1, budget=3),
    "random-s1-rounds2": dict(seed=1, rounds=2),
    "random-s1-redundancy": dict(seed=1, redundancy=REDUNDANCY),
    "full": dict(strategy="full"),
    "full-longer": dict(strategy="full", seed=1, epochs_initial=2),
}
BANNER = "DRY RUN: these numbers come from nnal&#x27;s fake model, not nnU-Net"  # as html.escape writes it


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """Every experiment of EXPERIMENTS, finished, on one small dataset (read only: tests copy them)."""
    root = tmp_path_factory.mktemp("made")
    dataset = make_nnunet_dataset(root / "Dataset001_Toy", n_cases=6)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("os.fsync", lambda fd: None)  # most of a fake run's time; the files are the same
        for name, changes in EXPERIMENTS.items():
            config = build({"dataset": str(dataset), **SETTINGS, "experiment": name, **changes})
            run_experiment(config, root / name, progress=False, backend_factory=fake_backend)
    return root


def _runs(made: Path, tmp_path: Path, *names: str) -> Path:
    runs = tmp_path / "runs"
    for name in names:
        shutil.copytree(made / name, runs / name)
    return runs


def _half_finished(folder: Path) -> None:
    """Back to where a run of one more round stands after round 0: state, round folder and result rows."""
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "round": 0, "phase": "evaluate"}))
    shutil.rmtree(folder / "round_001")
    results = pd.read_csv(folder / "results.csv")
    results[results["round"] == 0].to_csv(folder / "results.csv", index=False)


def _mean_dice(folder: Path) -> pd.Series:
    """Mean foreground Dice per round of one experiment, as the report formats one repetition."""
    results = pd.read_csv(folder / "results.csv")
    return results[results["label"] == "mean"].groupby("round")["dice"].mean().map(lambda v: f"{v:.4f}")


def _summaries(out: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_csv(p).set_index("variant") for p in sorted((out / "tables").glob("summary*.csv"))}


def test_a_half_finished_experiment_is_left_out_not_pooled(made, tmp_path):
    runs = _runs(made, tmp_path, "random-s0", "random-s1")
    _half_finished(runs / "random-s1")
    out = tmp_path / "out"
    result = run_cli(["report", runs, "--output", out])
    assert result.exit_code == 0, result.output
    assert _summaries(out)["summary"].loc["random", "repetitions"] == 1
    per_round = pd.read_csv(out / "tables" / "dice_per_round.csv", dtype={"random": str}).set_index("round")
    own = _mean_dice(runs / "random-s0")
    assert per_round["random"].tolist() == own.tolist()  # round 0 and 1 of random-s0 alone, no ± SD
    page = (out / "index.html").read_text()
    assert re.search(r'class="skipped">Left out: 1 unfinished experiment, [^<]*random-s1 \(', page)
    assert "finished round 0 evaluate, of rounds 0-1" in page


def test_a_report_of_unfinished_experiments_only_is_refused(made, tmp_path):
    runs = _runs(made, tmp_path, "random-s1")
    _half_finished(runs / "random-s1")
    result = run_cli(["report", runs, "--output", tmp_path / "out"])
    assert_one_line_error(result, ["none of the 1 experiment(s) is finished", str(runs / "random-s1")])
    assert not (tmp_path / "out").exists()


def test_a_redundancy_run_and_a_plain_one_are_never_pooled(made, tmp_path):
    runs = _runs(made, tmp_path, "random-s0", "random-s1-redundancy")
    index = build_report([runs], tmp_path / "out")
    summaries = _summaries(tmp_path / "out")
    assert sorted(summaries) == ["summary_Dataset001-Toy-redundancy-case-case-002-copies-2",
                                 "summary_Dataset001-Toy-redundancy-none"]
    assert all(s.loc["random", "repetitions"] == 1 for s in summaries.values())
    page = index.read_text()
    assert '<h2 id="summary_Dataset001-Toy-redundancy-none">Dataset001_Toy [redundancy=none]: Summary</h2>' in page
    assert "Dataset001_Toy: the experiments do not share one protocol" in page
    # the settings that differ: null against a set redundancy is a difference, not a shared setting
    differ = pd.read_csv(tmp_path / "out" / "tables" / "config_differing.csv", keep_default_na=False)
    differ = differ.set_index("experiment")
    assert differ.loc["random-s0", "redundancy"] == "null"
    assert json.loads(differ.loc["random-s1-redundancy", "redundancy"]) == REDUNDANCY
    shared = pd.read_csv(tmp_path / "out" / "tables" / "config_shared.csv")
    assert "redundancy" not in set(shared["setting"])


def test_different_budgets_get_sections_of_their_own_each_with_the_reference(made, tmp_path):
    runs = _runs(made, tmp_path, "random-s0", "random-s1-budget3", "full")
    index = build_report([runs], tmp_path / "out")
    summaries = _summaries(tmp_path / "out")
    assert sorted(summaries) == ["summary_Dataset001-Toy-budget-3", "summary_Dataset001-Toy-budget-4"]
    for summary in summaries.values():  # one repetition each; the full-label reference is drawn in both
        assert summary.loc["random", "repetitions"] == 1 and summary.loc["full", "repetitions"] == 1
    labeled = {name: s.loc["random", "labeled slices (final)"] for name, s in summaries.items()}
    assert labeled == {"summary_Dataset001-Toy-budget-3": 8, "summary_Dataset001-Toy-budget-4": 9}
    page = index.read_text()
    assert "Dataset001_Toy [budget=3]: Learning curves" in page and "Protocol: budget=4," in page


def test_different_rounds_get_sections_of_their_own(made, tmp_path):
    runs = _runs(made, tmp_path, "random-s0", "random-s1-rounds2")
    build_report([runs], tmp_path / "out")
    tables = tmp_path / "out" / "tables"
    for rounds, folder in ((1, "random-s0"), (2, "random-s1-rounds2")):
        table = tables / f"dice_per_round_Dataset001-Toy-rounds-{rounds}.csv"
        per_round = pd.read_csv(table, dtype={"random": str}).set_index("round")
        assert per_round["random"].tolist() == _mean_dice(runs / folder).tolist()  # its own rounds, alone
    assert not (tables / "summary.csv").exists()


def test_two_references_of_different_schedules_are_refused(made, tmp_path):
    runs = _runs(made, tmp_path, "random-s0", "full", "full-longer")
    result = run_cli(["report", runs, "--output", tmp_path / "out"])
    assert_one_line_error(result, [str(runs / "full"), str(runs / "full-longer"), "differ in epochs_initial (1 vs 2)"])
    assert not (tmp_path / "out").exists()


def test_none_against_a_value_and_budget_spellings_in_the_protocol():
    assert differing({"redundancy": None}, {"redundancy": REDUNDANCY}) == ["redundancy"]
    assert differing({"redundancy": None}, {}) == []  # a field one side lacks reads as None
    assert differing({"budget": 4}, {"budget": [4, 4]}) == []  # the last entry repeats: one schedule
    assert differing({"budget": [4, 2]}, {"budget": [4]}) == ["budget"]


def test_a_dry_run_says_so_on_the_page_and_in_every_table(made, tmp_path):
    runs = _runs(made, tmp_path, "random-s0", "random-s1")
    page = build_report([runs], tmp_path / "fake").read_text()
    assert page.index(BANNER) < page.index("<h1>") and "<title>nnal report (DRY RUN)</title>" in page
    tables = sorted((tmp_path / "fake" / "tables").glob("*.csv"))
    assert len(tables) >= 8
    for table in tables:
        frame = pd.read_csv(table)
        assert frame.columns[0] == "dry_run" and frame["dry_run"].all(), table.name
    # a real experiment's report has neither
    write_experiment(tmp_path / "real", "random", 0, 0, [0.3, 0.4])
    real = build_report([tmp_path / "real"], tmp_path / "real-report").read_text()
    assert "DRY RUN" not in real
    assert all("dry_run" not in pd.read_csv(t).columns for t in (tmp_path / "real-report" / "tables").glob("*.csv"))


def test_fake_and_real_experiments_are_never_reported_together(made, tmp_path):
    runs = _runs(made, tmp_path, "random-s0", "random-s1")
    environment = runs / "random-s1" / "environment.json"
    environment.write_text(json.dumps({**json.loads(environment.read_text()), "backend": "nnunet"}))
    result = run_cli(["report", runs, "--output", tmp_path / "out"])
    assert_one_line_error(result, [str(runs / "random-s0"), str(runs / "random-s1"), "fake model", "separately"])
    assert not (tmp_path / "out").exists()
