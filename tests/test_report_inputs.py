"""``nnal report`` refuses impossible experiment folders and outputs: one line, exit code 2, nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from test_analysis import write_experiment

DICE = [0.3, 0.5, 0.6]  # rounds 0, 1, 2; n_labeled 2, 4, 6; cases t1, t2; labels a, b, mean


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _change(folder: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    results = folder / "results.csv"
    change(pd.read_csv(results)).to_csv(results, index=False)
    return results


def _set(col: str, value, where: Callable[[pd.DataFrame], pd.Series] | None = None):
    """Set ``col`` to ``value`` in the rows ``where`` selects (default: the first row of round 1)."""
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({col: object})
        mask = where(frame) if where is not None else frame.index == frame.index[frame["round"] == 1][0]
        frame.loc[mask, col] = value
        return frame
    return change


def _round(r: int) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda f: f["round"] == r


# name -> (setup(runs, exp, tmp) -> (argv without --output, output, offending path), words in the message)
Setup = Callable[[Path, Path, Path], tuple[list, Path, Path]]


def _results_case(change) -> Setup:
    def setup(runs: Path, exp: Path, tmp: Path):
        return [runs], tmp / "out", _change(exp, change)
    return setup


def _no_results(runs: Path, exp: Path, tmp: Path):
    (exp / "results.csv").unlink()
    return [runs], tmp / "out", exp / "results.csv"


def _header_only(runs: Path, exp: Path, tmp: Path):
    results = exp / "results.csv"
    results.write_text(results.read_text().splitlines()[0] + "\n")
    return [runs], tmp / "out", results


def _holds_none(runs: Path, exp: Path, tmp: Path):
    stuff = tmp / "stuff"
    (stuff / "sub").mkdir(parents=True)
    (stuff / "notes.txt").write_text("hello\n")
    return [runs, stuff], tmp / "out", stuff


def _same_name(runs: Path, exp: Path, tmp: Path):
    other = write_experiment(tmp / "runs2", "random", 0, 0, [0.3, 0.4])
    return [runs, tmp / "runs2"], tmp / "out", other


def _output_is_file(runs: Path, exp: Path, tmp: Path):
    out = tmp / "out.html"
    out.write_text("not a folder\n")
    return [runs], out, out


def _output_under_file(runs: Path, exp: Path, tmp: Path):
    blocker = tmp / "blocker"
    blocker.write_text("a file\n")
    return [runs], blocker / "out", blocker


def _truncated_scores(runs: Path, exp: Path, tmp: Path):
    npz = exp / "round_001" / "scores.npz"
    npz.write_bytes(npz.read_bytes()[:40])
    return [runs], tmp / "out", npz


CASES: dict[str, tuple[Setup, list[str]]] = {
    "dice above 1": (_results_case(_set("dice", 1.7)), ["dice 1.7 outside [0, 1]", "round 1, case t1"]),
    "dice below 0": (_results_case(_set("dice", -0.25)), ["dice -0.25 outside [0, 1]"]),
    "dice infinite": (_results_case(_set("dice", "inf")), ["dice inf outside [0, 1]"]),
    "negative n_labeled": (_results_case(_set("n_labeled", -2, _round(0))), ["negative n_labeled -2", "round 0"]),
    "n_labeled decreases": (_results_case(_set("n_labeled", 1, _round(2))),
                            ["n_labeled decreases from 4 in round 1 to 1 in round 2"]),
    "two n_labeled in one round": (_results_case(_set("n_labeled", 5)), ["round 1 has more than one n_labeled"]),
    "round without finite dice": (_results_case(_set("dice", np.nan, _round(1))), ["round 1 has no finite dice"]),
    "config.yaml but no results.csv": (_no_results, ["missing", "no results"]),
    "header-only results.csv": (_header_only, ["no result rows"]),
    "folder that holds no experiment": (_holds_none, ["not an nnal experiment folder", "holds none"]),
    "rounds not starting at 0": (_results_case(lambda f: f.assign(round=f["round"] + 1)),
                                 ["rounds start at 1, not 0"]),
    "negative round": (_results_case(_set("round", -1, _round(0))), ["negative round -1"]),
    "duplicated row": (_results_case(lambda f: pd.concat([f, f.iloc[[4]]])),
                       ["duplicated row for round 0, case t2, label b", "line 20"]),
    "two seeds in one results.csv": (_results_case(_set("seed", 1)), ["column seed takes 2 values (0, 1)"]),
    "two strategies in one results.csv": (_results_case(_set("strategy", "bald")),
                                          ["column strategy takes 2 values ('random', 'bald')"]),
    "two experiment names in one results.csv": (_results_case(_set("experiment", "other")),
                                                ["column experiment takes 2 values"]),
    "non-numeric dice": (_results_case(_set("dice", "high")), ["non-numeric dice 'high' on line 8"]),
    "non-numeric round": (_results_case(_set("round", "two")), ["non-numeric round 'two' on line 8"]),
    "fractional round": (_results_case(_set("round", 0.5)), ["round 0.5 is not an integer on line 8"]),
    "missing n_labeled": (_results_case(_set("n_labeled", np.nan)), ["missing n_labeled on line 8"]),
    "two experiments with the same name": (_same_name, ["experiment 'toy-random-f0-s0' is also in"]),
    "output is a file": (_output_is_file, ["the report output is a file, not a folder"]),
    "output under a file": (_output_under_file, ["is a file, not a folder"]),
    "truncated scores.npz": (_truncated_scores, ["malformed"]),
}


def _refused(tmp_path: Path, setup: Setup, words: list[str], existing_report: bool = False) -> None:
    runs = tmp_path / "runs"
    exp = write_experiment(runs, "random", 0, 0, DICE, class_uncertainty=True)
    dirs, out, offending = setup(runs, exp, tmp_path)
    if existing_report:
        out.mkdir()
        (out / "index.html").write_text("<p>an earlier report</p>\n")
        (out / "tables").mkdir()
        (out / "tables" / "summary.csv").write_text("strategy\nrandom\n")
    before = _snapshot(tmp_path)
    result = run_cli(["report", *dirs, "--output", out])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert str(offending) in lines[0], (str(offending), lines[0])
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _snapshot(tmp_path) == before  # nothing written: no output folder, no change anywhere
    if not existing_report and out.name == "out":
        assert not out.exists()


@pytest.mark.parametrize("name", list(CASES))
def test_impossible_input_is_refused_in_one_line_and_nothing_is_written(name, tmp_path):
    setup, words = CASES[name]
    _refused(tmp_path, setup, words)


@pytest.mark.parametrize("name", ["dice above 1", "config.yaml but no results.csv",
                                  "two experiments with the same name"])
def test_refused_report_leaves_an_existing_output_folder_byte_identical(name, tmp_path):
    setup, words = CASES[name]
    _refused(tmp_path, setup, words, existing_report=True)


def test_valid_folder_is_reported(tmp_path):
    runs = tmp_path / "runs"
    exp = write_experiment(runs, "random", 0, 0, DICE)
    # NaN Dice is possible: a class absent from both prediction and truth (the round keeps finite values)
    _change(exp, _set("dice", np.nan, lambda f: (f["round"] == 1) & (f["case"] == "t2") & (f["label"] == "b")))
    out = tmp_path / "report"
    result = run_cli(["report", runs, exp, "--output", out])  # the same experiment twice is read once
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file() and str(out / "index.html") in result.stdout
    assert (out / "tables" / "summary.csv").is_file()
