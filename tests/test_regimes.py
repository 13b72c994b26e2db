"""``nnal regimes``: Random's curve as a grid, the regimes read off it (hand computations), the proposed grid files
accepted by ``nnal grid``, and bad input refused in one line with nothing written."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml
from conftest import assert_one_line_error, make_nnunet_dataset, run_cli

from nnal.errors import ConfigError
from nnal.regimes import Regime, doubling_sizes, propose, random_curve, size_at


def curve(sizes, fractions, reference=0.8) -> pd.DataFrame:
    return pd.DataFrame({"n_labeled": sizes, "dice_mean": [f * reference for f in fractions], "dice_std": 0.0,
                         "n": 3, "reference": reference, "fraction": fractions})


def test_doubling_sizes_end_at_the_pool():
    assert doubling_sizes(8, 100) == [8, 16, 32, 64, 100]
    assert doubling_sizes(8, 64) == [8, 16, 32, 64]
    with pytest.raises(ConfigError, match="more than the fold's pool"):
        doubling_sizes(200, 100)


def test_the_size_where_random_reaches_a_fraction_is_interpolated_in_log_slices():
    c = curve([10, 40, 160], [0.5, 0.8, 0.9])
    # 0.85 lies half way between 40 and 160 in fraction: exp of the mean of the logs, sqrt(40 * 160) = 80
    assert math.isclose(size_at(c, 0.85), 80.0)
    assert size_at(c, 0.4) == 10.0  # reached at the first size
    assert size_at(c, 0.95) is None  # never reached


def test_regimes_by_hand():
    c = curve([10, 40, 160, 640], [0.5, 0.8, 0.9, 0.99])
    low, medium, high = propose(c, rounds=4)
    # low: from 50% (10 slices) to 85% (80 slices): 4 rounds of ceil(70 / 4) = 18
    assert (low.initial, low.budget, low.reached) == (10, 18, True)
    # medium: 70% between 10 and 40: exp(log 10 + 2/3 log 4) = 25.2 -> 25; 95% between 160 and 640:
    # exp(log 160 + 5/9 log 4) = 346.3 -> 347
    assert medium.initial == 25 and medium.budget == math.ceil((347 - 25) / 4)
    assert high.initial == 160 and high.reached  # 98% is reached before 640


def test_a_regime_random_never_reaches_runs_to_the_pool():
    regimes = propose(curve([10, 40, 160], [0.5, 0.8, 0.9]), rounds=2)
    medium = {r.name: r for r in regimes}["medium"]
    assert not medium.reached and medium.initial + 2 * medium.budget >= 160


def test_the_curve_is_randoms_mean_against_the_reference():
    rows = []
    for seed, dices in ((0, [0.2, 0.6]), (1, [0.4, 0.8])):
        for r, (n, d) in enumerate(zip([8, 16], dices, strict=True)):
            rows.append({"strategy": "random", "seed": seed, "round": r, "n_labeled": n, "label": "mean",
                         "case": "c", "dice": d})
        rows.append({"strategy": "full", "seed": seed, "round": 0, "n_labeled": 30, "label": "mean", "case": "c",
                     "dice": 0.8 + 0.1 * seed})
    c = random_curve(pd.DataFrame(rows))
    assert c["dice_mean"].tolist() == pytest.approx([0.3, 0.7])
    assert c["fraction"].tolist() == pytest.approx([0.3 / 0.85, 0.7 / 0.85])


def test_regimes_on_the_fake_model_writes_the_curve_and_grids_nnal_grid_accepts(tmp_path, toy_dataset):
    out = tmp_path / "regimes"
    result = run_cli(["regimes", toy_dataset, "--output", out, "--dry-run", "--executor", "local", "--start", "4",
                      "--seed", "0", "--seed", "1", "--strategy", "random", "--strategy", "bald"])
    assert result.exit_code == 0, result.output
    for name in ("curve.csv", "curve.png", "regimes.json", "curve-grid.yaml"):
        assert (out / name).is_file(), name
    grids = sorted(out.glob("regime-*-grid.yaml"))
    assert [g.name for g in grids] == ["regime-high-grid.yaml", "regime-low-grid.yaml", "regime-medium-grid.yaml"]
    spec = yaml.safe_load(grids[2].read_text())
    assert spec["strategies"] == ["random", "bald"] and spec["seeds"] == [0, 1, 2, 3, 4]
    dry = run_cli(["grid", grids[2], "--output", tmp_path / "g", "--dry-run", "--executor", "local", "--no-report"])
    assert dry.exit_code == 0, dry.output
    assert run_cli(["regimes", toy_dataset, "--output", out, "--dry-run", "--executor", "local", "--start", "4",
                    "--seed", "0", "--seed", "1", "--strategy", "random", "--strategy", "bald"]).exit_code == 0


@pytest.mark.parametrize("case", ["unknown dataset", "sizes larger than the pool", "a fold without a pool",
                                  "unknown strategy"])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, toy_dataset):
    out = tmp_path / "out"
    args = ["regimes", toy_dataset, "--output", out, "--dry-run", "--executor", "local"]
    if case == "unknown dataset":
        args[1], words = tmp_path / "nowhere", ["nowhere", "not a directory"]
    elif case == "sizes larger than the pool":
        args += ["--size", "4", "--size", "100000"]
        words = ["--sizes", "100000", "more than the fold's pool"]
    elif case == "a fold without a pool":
        args[1] = make_nnunet_dataset(tmp_path / "Dataset002_One", n_cases=1)
        words = ["--fold", "no pool"]
    else:
        args += ["--strategy", "usimx"]
        words = ["strategy", "usimx"]
    assert_one_line_error(run_cli(args), words)
    assert not out.exists()


def test_the_regime_record_says_which_thresholds():
    regime = Regime("medium", 0.85, 0.95, 80, 67, 4, True)
    assert regime.initial + regime.rounds * regime.budget >= 347
