"""nnal.analysis: loading experiment folders and the statistics, checked against hand-computed answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from nnal.analysis import (
    ReportError,
    aubc,
    aubc_table,
    batch_uncertainty,
    correlation,
    embed_2d,
    fg_efficiency,
    final_dice,
    holm,
    learning_curves,
    load_results,
    load_selections,
    paired_test,
    penalty_matrix,
    reference_mismatch,
)

# pool: 10 slices of two cases; class voxels (background, a, b) per slice; foreground total = 40
POOL = np.array([[90, 10, 0], [100, 0, 0], [95, 0, 5], [80, 10, 10], [100, 0, 0],
                 [100, 0, 0], [98, 2, 0], [99, 0, 1], [100, 0, 0], [98, 1, 1]])


def write_experiment(root: Path, strategy: str, fold: int, seed: int, dice: list[float],
                     selections: list[list[int]] | None = None, class_uncertainty: bool = False, *,
                     options: dict | None = None, dataset: str = "/data/Toy", tag: str = "",
                     fingerprint: dict | None = None) -> Path:
    """A synthetic experiment folder: round r has mean foreground Dice ``dice[r]`` (two test cases, classes a/b).
    ``options`` go into config.yaml's strategy_options, ``tag`` into the experiment's name, ``fingerprint`` (when
    given) into dataset_fingerprint.json."""
    name = f"toy-{strategy}{tag}-f{fold}-s{seed}"
    folder = root / name
    folder.mkdir(parents=True)
    selections = selections or [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]][: len(dice)]
    config = {"dataset": dataset, "strategy": strategy, "experiment": name, "fold": fold, "seed": seed,
              "rounds": len(dice) - 1, "initial": 2, "budget": 2, "preset": "cpu", "strategy_options": options or {}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if fingerprint is not None:
        (folder / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    (folder / "environment.json").write_text(json.dumps({"nnal": "0.1.0", "torch": "2.x", "device": "cpu"}))
    (folder / "state.json").write_text(json.dumps({"round": len(dice) - 1, "phase": "evaluate", "seconds": {
        str(r): {"train": 10.0, "evaluate": 1.0} for r in range(len(dice))}}))
    pool = pd.DataFrame(POOL, columns=["vox_0", "vox_1", "vox_2"])
    pool.insert(0, "slice", [0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    pool.insert(0, "case", ["c1"] * 5 + ["c2"] * 5)
    pool.insert(0, "id", np.arange(10))
    pool.to_csv(folder / "pool.csv", index=False)
    rows, n_labeled = [], 0
    for r, d in enumerate(dice):
        n_labeled += len(selections[r])
        for case, off in (("t1", -0.02), ("t2", 0.02)):  # case means average to d
            a, b = d + off - 0.05, d + off + 0.05
            rows += [(name, strategy, fold, seed, r, n_labeled, case, lab, v) for lab, v in
                     (("a", a), ("b", b), ("mean", (a + b) / 2))]
        rdir = folder / f"round_{r:03d}"
        rdir.mkdir()
        ids = np.array(selections[r])
        score = np.full(len(ids), np.nan) if r == 0 or strategy == "random" else ids * 0.1  # random: no score
        pool.iloc[ids][["id", "case", "slice"]].assign(score=score).to_csv(rdir / "selection.csv", index=False)
        if r > 0:
            unl = np.setdiff1d(np.arange(10), np.concatenate(selections[:r]))
            arrays = {"ids": unl}
            if class_uncertainty:
                arrays["class_uncertainty"] = np.column_stack([unl * 0.01, unl * 0.02])
            np.savez(rdir / "scores.npz", **arrays)
    pd.DataFrame(rows, columns=["experiment", "strategy", "fold", "seed", "round", "n_labeled", "case", "label",
                                "dice"]).to_csv(folder / "results.csv", index=False)
    return folder


def curve_table(values: dict[tuple[str, int, int], list[float]], pool: int = 100) -> pd.DataFrame:
    """A results table (label 'mean' only) from {(strategy, fold, seed): Dice per round}."""
    rows = []
    for (s, fold, seed), dice in values.items():
        for r, d in enumerate(dice):
            rows.append({"experiment": f"{s}-{fold}-{seed}", "strategy": s, "fold": fold, "seed": seed, "round": r,
                         "n_labeled": 10 * (r + 1), "case": "t", "label": "mean", "dice": d,
                         "labeled_fraction": 10 * (r + 1) / pool, "fg_fraction": np.nan})
    return pd.DataFrame(rows)


def test_load_results_and_selections(tmp_path):
    write_experiment(tmp_path, "random", 0, 0, [0.3, 0.5, 0.6])
    write_experiment(tmp_path, "bald", 0, 0, [0.3, 0.55, 0.7], selections=[[0, 1], [3, 9], [2, 6]])
    results = load_results([tmp_path])  # a parent folder stands for the experiments inside it
    assert len(results) == 2 * 3 * 2 * 3
    assert {"dataset", "budget", "preset", "folder", "pool_size", "labeled_fraction", "fg_fraction"} <= set(results)
    bald = results[(results["strategy"] == "bald") & (results["label"] == "mean")].groupby("round").first()
    # foreground voxels: round 0 ids 0,1 -> 10; + ids 3,9 -> 10 + 20 + 2 = 32; + ids 2,6 -> 32 + 5 + 2 = 39 of 40
    np.testing.assert_allclose(bald["fg_fraction"], [10 / 40, 32 / 40, 39 / 40])
    np.testing.assert_allclose(bald["labeled_fraction"], [0.2, 0.4, 0.6])
    np.testing.assert_allclose(bald["fg_share"], [10 / 200, 32 / 400, 39 / 600])
    curves = learning_curves(results)
    assert curves.set_index(["strategy", "round"]).loc[("bald", 2), "dice_mean"] == pytest.approx(0.7)
    sel = load_selections([tmp_path / "toy-bald-f0-s0"])
    assert sel[sel["round"] == 1][["id", "fg_voxels", "vox_1", "vox_2"]].values.tolist() == [[3, 20, 10, 10],
                                                                                          [9, 2, 1, 1]]
    assert list(sel.columns[:9]) == ["experiment", "strategy", "fold", "seed", "round", "id", "case", "slice", "score"]


def test_aubc_hand_computed():
    # x = 0.1, 0.2, 0.3; trapezoid 0.1 * (0.5 + 0.7) / 2 + 0.1 * (0.7 + 0.8) / 2 = 0.135; / range 0.2 = 0.675
    assert aubc(np.array([0.3, 0.1, 0.2]), np.array([0.8, 0.5, 0.7])) == pytest.approx(0.675)
    assert aubc(np.array([0.2]), np.array([0.4])) == pytest.approx(0.4)
    table = aubc_table(curve_table({("a", 0, 0): [0.5, 0.7, 0.8], ("a", 0, 1): [0.5, 0.5, 0.5],
                                    ("full", 0, 0): [0.9]})).set_index("strategy")
    assert list(table.index) == ["a"]  # the full-label reference has no budget curve
    assert table.loc["a", "mean"] == pytest.approx((0.675 + 0.5) / 2)
    assert table.loc["a", "n"] == 2
    fin = final_dice(curve_table({("a", 0, 0): [0.5, 0.8], ("a", 1, 0): [0.5, 0.6]})).set_index("strategy")
    assert fin.loc["a", "mean"] == pytest.approx(0.7) and fin.loc["a", "n_labeled"] == 20


REPS = [(0, 0), (0, 1), (1, 0)]


def _table(per_strategy: dict[str, list[list[float]]]) -> pd.DataFrame:
    """{strategy: [Dice per round] per repetition in REPS}."""
    return curve_table({(s, f, sd): d for s, reps in per_strategy.items()
                        for d, (f, sd) in zip(reps, REPS, strict=True)})


def test_penalty_matrix_always_winner_and_ties():
    base = [0.6, 0.65, 0.62]
    a = [[0.3, b, b + 0.1] for b in base]
    b = [[0.3, x, x + 0.1 - d] for x, d in zip(base, [0.10, 0.11, 0.12], strict=True)]  # step 1: identical to A (tie)
    w = [[0.3, x + 0.05, x + 0.15] for x in base]  # beats A and B by a constant margin at every step
    # step 2: A - B = [.10, .11, .12]: t = 0.11 / (0.01 / sqrt 3) = 19.05, df 2 -> p = 1 - t / sqrt(t^2 + 2) = 0.0027
    assert paired_test(np.array([0.10, 0.11, 0.12]))[1] == pytest.approx(1 - 19.0526 / np.sqrt(19.0526**2 + 2),
                                                                         abs=1e-4)
    pm = penalty_matrix(_table({"A": a, "B": b, "W": w}))
    assert pm.steps == [1, 2]  # round 0 (shared initial set) is not a budget step
    expected = pd.DataFrame([[0, 0.5, 0], [0, 0, 0], [1, 1, 0]], index=["A", "B", "W"], columns=["A", "B", "W"])
    np.testing.assert_allclose(pm.matrix.to_numpy(), expected.to_numpy())
    assert pm.matrix.loc["W"].sum() == pytest.approx(3 - 1)  # n_strategies - 1
    np.testing.assert_allclose(pm.phi.to_numpy(), [1 / 3, 1.5 / 3, 0.0])  # column mean over all 3 rows
    # Holm at step 2: p(W-A) = 0, p(W-B) = 0.0013 (W - B = [.15, .16, .17]), p(A-B) = 0.0027 -> all stay < 0.05
    holm_pm = penalty_matrix(_table({"A": a, "B": b, "W": w}), correction="holm")
    np.testing.assert_allclose(holm_pm.matrix.to_numpy(), expected.to_numpy())


def test_penalty_matrix_holm_and_alpha():
    # one step; A - B = [.10, .14, .18]: t = 6.062, p = 0.0262; A - C = [.10, .15, .20]: t = 5.196, p = 0.0351
    a = [[0.3, x] for x in (0.6, 0.7, 0.8)]
    b = [[0.3, x - d] for x, d in zip((0.6, 0.7, 0.8), (0.10, 0.14, 0.18), strict=True)]
    c = [[0.3, x - d] for x, d in zip((0.6, 0.7, 0.8), (0.10, 0.15, 0.20), strict=True)]
    b_vs_c = np.array([y[1] for y in b]) - np.array([y[1] for y in c])  # [0, .01, .02]: t = 1.732, p = 0.2254
    for d, p in (([0.10, 0.14, 0.18], 0.0262), ([0.10, 0.15, 0.20], 0.0351), (b_vs_c, 0.2254)):
        assert paired_test(np.array(d))[1] == pytest.approx(p, abs=5e-4)
    table = _table({"A": a, "B": b, "C": c})
    plain = penalty_matrix(table)
    assert plain.matrix.loc["A"].tolist() == [0.0, 1.0, 1.0] and plain.matrix.to_numpy().sum() == 2.0
    # Holm over the 3 pairs: 3 x 0.0262 = 0.079, 2 x 0.0351 = 0.070 -> 0.079, 0.2254 -> all above 0.05
    assert penalty_matrix(table, correction="holm").matrix.to_numpy().sum() == 0.0
    loose = penalty_matrix(table, alpha=0.25)  # now C's loss to B (p = 0.2254) counts too
    assert loose.matrix.loc["B", "C"] == 1.0


def test_penalty_matrix_single_repetition_no_test():
    pm = penalty_matrix(curve_table({("A", 0, 0): [0.3, 0.9], ("B", 0, 0): [0.3, 0.1]}))
    assert pm.matrix.to_numpy().sum() == 0.0 and pm.notes  # fewer than 2 repetitions: untested, says so


def test_paired_test_edge_cases_and_holm():
    assert paired_test(np.array([0.2])) is None
    assert paired_test(np.zeros(4)) == (0.0, 1.0)  # identical results: a tie
    assert paired_test(np.full(3, -0.05)) == (pytest.approx(-0.05), 0.0)  # constant margin: significant
    d = np.array([0.1, 0.3, 0.2, 0.25])
    assert paired_test(d)[1] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    # sorted p .005, .01, .03, .04 -> x4, x3, x2, x1 = .02, .03, .06, .04 -> monotone .02, .03, .06, .06
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03, 0.005])), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm(np.array([0.5, 0.6])), [1.0, 1.0])


def test_correlation_matches_numpy_and_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 2 * x + rng.normal(size=50)
    r, p = correlation(x, y)
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert p == pytest.approx(stats.pearsonr(x, y).pvalue)
    x[3] = np.nan  # non-finite pairs are dropped
    assert correlation(x, y)[0] == pytest.approx(np.corrcoef(np.delete(x, 3), np.delete(y, 3))[0, 1])
    assert np.isnan(correlation(np.ones(5), np.arange(5))[0])
    with pytest.raises(ValueError):
        correlation(np.ones(3), np.ones(4))


def _fg_table(gammas: dict[str, float], c: float, with_full: bool) -> pd.DataFrame:
    x0, y0 = 0.1, 0.4
    rows = []
    for s, g in gammas.items():
        for seed, xs in enumerate(([0.1, 0.2, 0.3, 0.45], [0.1, 0.15, 0.35, 0.5])):
            for r, x in enumerate(xs):
                rows.append({"experiment": f"{s}{seed}", "strategy": s, "fold": 0, "seed": seed, "round": r,
                             "n_labeled": r, "case": "t", "label": "mean", "labeled_fraction": r / 10,
                             "fg_fraction": x, "dice": c - (c - y0) * np.exp(-g * (x - x0))})
    if with_full:
        rows.append({"experiment": "full", "strategy": "full", "fold": 0, "seed": 0, "round": 0, "n_labeled": 99,
                     "case": "t", "label": "mean", "labeled_fraction": 1.0, "fg_fraction": 1.0, "dice": c})
    return pd.DataFrame(rows)


def test_fg_efficiency_recovers_gamma():
    fg = fg_efficiency(_fg_table({"random": 3.0, "usimf": 7.5}, c=0.85, with_full=True))
    assert fg.c == pytest.approx(0.85) and fg.c_source == "full-label experiments"
    assert fg.x0 == pytest.approx(0.1) and fg.a == pytest.approx(0.45)
    np.testing.assert_allclose(fg.table.set_index("strategy")["gamma"].loc[["random", "usimf"]], [3.0, 7.5],
                               rtol=1e-6)
    # no full-label experiment: c is fitted jointly (shared), noiseless data give it back
    fitted = fg_efficiency(_fg_table({"random": 3.0, "usimf": 7.5}, c=0.85, with_full=False))
    assert fitted.c == pytest.approx(0.85, abs=1e-4) and fitted.c_source.startswith("fitted")
    np.testing.assert_allclose(fitted.table.set_index("strategy")["gamma"].loc[["random", "usimf"]], [3.0, 7.5],
                               rtol=1e-3)


def test_fg_efficiency_leaves_gamma_blank_for_curves_above_the_full_reference():
    table = _fg_table({"random": 3.0, "usimf": 7.5}, c=0.85, with_full=True)
    # an under-trained reference: 0.75 lies below usimf's later rounds (0.4 + 0.45 (1 - exp(-7.5 dx))) and above
    # random's mean curve in every round
    table.loc[table["strategy"] == "full", "dice"] = 0.75
    random_curve = table[table["strategy"] == "random"].groupby("round")["dice"].mean()
    usimf_curve = table[table["strategy"] == "usimf"].groupby("round")["dice"].mean()
    assert random_curve.max() < 0.75 < usimf_curve.max()
    fg = fg_efficiency(table)
    gamma = fg.table.set_index("strategy")["gamma"]
    assert np.isnan(gamma["usimf"]) and np.isfinite(gamma["random"])
    assert any("usimf rises above c = 0.7500" in note and "not identified" in note for note in fg.notes)
    assert not any("random" in note for note in fg.notes)


def test_a_full_reference_scored_on_other_test_cases_is_flagged():
    table = _fg_table({"random": 3.0, "usimf": 7.5}, c=0.85, with_full=True)
    assert reference_mismatch(table) is None
    assert not any("test cases" in note for note in fg_efficiency(table).notes)
    # seed 1 drew its own test subset; the reference (seed 0) never saw case "u"
    table.loc[(table["seed"] == 1) & (table["strategy"] != "full"), "case"] = "u"
    note = reference_mismatch(table)
    assert note is not None and "1 of the AL experiments' test cases" in note
    assert note in fg_efficiency(table).notes
    assert reference_mismatch(table[table["strategy"] != "full"]) is None  # no reference, nothing to compare


def test_batch_uncertainty(tmp_path):
    write_experiment(tmp_path, "usimf", 0, 0, [0.3, 0.5, 0.6], class_uncertainty=True)
    write_experiment(tmp_path, "bald", 0, 0, [0.3, 0.5, 0.6])
    write_experiment(tmp_path, "random", 0, 0, [0.3, 0.5])
    table = batch_uncertainty([tmp_path]).set_index(["strategy", "round"])
    assert "random" not in table.index.get_level_values(0)  # random sampling records no uncertainty
    # usimf round 1 selects ids 2, 3: class_uncertainty rows (0.02, 0.04) and (0.03, 0.06) -> 0.15
    assert table.loc[("usimf", 1), "uncertainty"] == pytest.approx(0.15)
    assert table.loc[("usimf", 1), "measure"] == "class_uncertainty"
    assert table.loc[("bald", 2), "uncertainty"] == pytest.approx(0.4 + 0.5)  # its own score (id x 0.1)
    assert table.loc[("bald", 2), "measure"] == "score"


def test_embed_2d_tsne_and_pca():
    x = np.random.default_rng(0).normal(size=(30, 8))
    coords, method = embed_2d(x)
    assert coords.shape == (30, 2) and method == "tsne"
    coords, method = embed_2d(x, method="pca")
    assert method == "pca"
    np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs((x - x.mean(0)) @ np.linalg.svd(x - x.mean(0))[2][0]))


@pytest.mark.parametrize("case", ["not_experiment", "missing", "empty_file", "header_only", "missing_column",
                                  "non_numeric", "garbage"])
def test_unreadable_folders_raise_report_error(tmp_path, case):
    from nnal.analysis import build_report

    folder = write_experiment(tmp_path / "runs", "random", 0, 0, [0.3, 0.5])
    target = folder / "results.csv"
    header = "experiment,strategy,fold,seed,round,n_labeled,case,label,dice\n"
    if case == "not_experiment":
        folder = tmp_path / "stuff"
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
        target = folder
    elif case == "missing":
        target.unlink()
    else:
        target.write_text({"empty_file": "", "header_only": header,
                           "missing_column": "experiment,strategy,round\nx,random,0\n",
                           "non_numeric": header + "x,random,0,0,0,2,t1,mean,high\n",
                           "garbage": 'a,"b\n1,2,3,4\n\x00\x00'}[case])
    with pytest.raises(ReportError) as err:
        build_report([folder], tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message and str(target) in message
