"""The report's verdict, paired differences to a baseline and the learning curves' axis and caveat, against hand
computations on hand-built result tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_analysis import curve_table, write_experiment

from nnal.analysis import build_report
from nnal.analysis.comparison import curve_caveat
from nnal.analysis.figures import dice_limits
from nnal.analysis.pairwise import paired_differences, t_interval
from nnal.analysis.verdict import (
    DIFFERENCE,
    NO_DIFFERENCE,
    ONE_REPETITION,
    ONE_VARIANT,
    UNMATCHED,
    report_verdict,
    verdict,
    verdict_lines,
)

SEEDS = range(5)


def _seeds(finals: dict[str, list[float]]) -> pd.DataFrame:
    """{variant: final Dice per seed}: rounds 0 (0.3 for all, the shared initial set), 1 (final - 0.1), 2 (final)."""
    return curve_table({(s, 0, seed): [0.3, f - 0.1, f] for s, values in finals.items()
                        for seed, f in enumerate(values)})


def test_two_identical_strategies_do_not_differ():
    finals = [0.60, 0.62, 0.58, 0.61, 0.64]
    v = verdict(_seeds({"random": finals, "usimf": finals}))
    assert v.kind == NO_DIFFERENCE
    assert v.headline == ("No significant difference in final Dice after Holm correction with n = 5 repetitions "
                          "(1 pair tested, α = 0.05).")
    assert v.final[["n", "difference", "p", "p_holm"]].iloc[0].tolist() == [5, 0.0, 1.0, 1.0]  # a tie: p = 1
    assert not v.final["significant"].any() and v.step == 2
    assert "No pair differs at any of the 2 AL rounds" in v.text


def test_one_clearly_better_strategy_over_five_seeds_differs():
    base = [0.60, 0.62, 0.58, 0.61, 0.64]
    margin = [0.04, 0.05, 0.06, 0.05, 0.05]
    v = verdict(_seeds({"random": base, "usimf": [b + m for b, m in zip(base, margin, strict=True)]}))
    # d = margin: mean 0.05, SD sqrt(2 x 0.01^2 / 4) = 0.007071, t = 0.05 / (0.007071 / sqrt 5) = 15.81, df 4
    t = 0.05 / (np.sqrt(2 * 0.01**2 / 4) / np.sqrt(5))
    assert t == pytest.approx(15.811, abs=1e-3)
    p = 2 * stats.t.sf(t, 4)  # 9.3e-5: one pair, so Holm leaves it as it is
    assert v.kind == DIFFERENCE
    row = v.final.iloc[0]
    assert (row["better"], row["worse"], row["n"]) == ("usimf", "random", 5)
    assert row["difference"] == pytest.approx(0.05) and row["p"] == pytest.approx(p) and row["p_holm"] == row["p"]
    assert v.headline == ("usimf > random (p < 0.001, Δ = +0.050, n = 5) in final Dice after Holm correction "
                          "(α = 0.05).")
    # round 1 is final - 0.1 for both: the same margin, so usimf wins both AL rounds
    assert "Over the 2 AL rounds (Holm): usimf > random at 2 of 2." in v.details


def test_a_win_that_only_the_uncorrected_test_sees_is_named_as_such():
    # three variants at one AL round: A - B = [.10, .14, .18] (p = 0.0262), A - C = [.10, .15, .20] (p = 0.0351),
    # B - C = [0, .01, .02] (p = 0.2254); Holm: 3 x 0.0262 = 0.0786, max(2 x 0.0351, 0.0786) = 0.0786, 0.2254
    a = [0.6, 0.7, 0.8]
    b = [x - d for x, d in zip(a, (0.10, 0.14, 0.18), strict=True)]
    c = [x - d for x, d in zip(a, (0.10, 0.15, 0.20), strict=True)]
    table = curve_table({(s, 0, seed): [0.3, f] for s, finals in (("A", a), ("B", b), ("C", c))
                         for seed, f in enumerate(finals)})
    v = verdict(table)
    assert v.kind == NO_DIFFERENCE
    holm = v.final.set_index(["better", "worse"])["p_holm"]
    assert holm[("A", "B")] == pytest.approx(0.0786, abs=5e-4) and holm[("A", "C")] == pytest.approx(0.0786, abs=5e-4)
    assert holm[("B", "C")] == pytest.approx(0.2254, abs=5e-4)
    assert "with n = 3 repetitions (3 pairs tested" in v.headline
    assert ("Uncorrected, A > B (p = 0.026), A > C (p = 0.035) would pass, but not after correcting for the 3 pairs "
            "tested") in v.text


def test_one_repetition_cannot_rank_strategies():
    v = verdict(curve_table({("random", 0, 0): [0.3, 0.5, 0.800], ("usimf", 0, 0): [0.3, 0.5, 0.809]}))
    assert v.kind == ONE_REPETITION and v.final.empty
    assert v.headline.startswith("n = 1: this cannot rank strategies; ")
    partly = verdict(curve_table({("random", 0, 0): [0.3, 0.5], ("random", 0, 1): [0.3, 0.6],
                                  ("usimf", 0, 0): [0.3, 0.7]}))
    assert partly.kind == ONE_REPETITION and partly.headline.startswith("n = 1 for usimf: this cannot rank")


def test_unmatched_repetitions_and_a_single_variant():
    unmatched = curve_table({("A", 0, 0): [0.3, 0.5], ("A", 0, 1): [0.3, 0.6],
                             ("B", 0, 2): [0.3, 0.7], ("B", 0, 3): [0.3, 0.8]})
    assert verdict(unmatched).kind == UNMATCHED
    alone = verdict(curve_table({("random", 0, 0): [0.3, 0.5], ("full", 0, 0): [0.9]}))
    assert alone.kind == ONE_VARIANT and alone.headline == "One active-learning variant (random): nothing to compare."
    reference = verdict(curve_table({("full", 0, 0): [0.9]}))  # a reference in a section of its own
    assert reference.kind == ONE_VARIANT and reference.headline.startswith("No active-learning variant")
    initial_only = verdict(curve_table({("A", 0, 0): [0.3], ("B", 0, 0): [0.3]}))
    assert initial_only.headline == "No active-learning round after the shared initial set: nothing to compare."


def test_the_terminal_line_is_one_line_and_flags_a_dry_run():
    v = verdict(_seeds({"random": [0.6, 0.62, 0.58], "usimf": [0.6, 0.62, 0.58]}))
    line = v.line("Toy [budget=50]", dry_run=True)
    assert "\n" not in line
    assert line == f"Verdict (Toy [budget=50]) [DRY RUN: fake model, not results]: {v.headline}"
    assert v.line() == f"Verdict: {v.headline}"


def test_verdict_lines_of_folders_match_the_written_report(tmp_path):
    for seed, shift in enumerate((0.0, 0.02)):
        write_experiment(tmp_path / "runs", "random", 0, seed, [0.3, 0.4 + shift, 0.5 + shift])
        write_experiment(tmp_path / "runs", "usimf", 0, seed, [0.3, 0.5 + shift, 0.65 + 2 * shift])
    # usimf - random at the last round: [0.15, 0.17]: t = 0.16 / (0.01414 / sqrt 2) = 16, df 1 (Cauchy):
    # p = 1 - 2 arctan(16) / pi = 0.0398
    p = 1 - 2 * np.arctan(16) / np.pi
    lines = verdict_lines([tmp_path / "runs"])
    assert lines == [f"Verdict: usimf > random (p = {p:.2g}, Δ = +0.160, n = 2) in final Dice after Holm correction "
                     "(α = 0.05)."]
    index = build_report([tmp_path / "runs"], tmp_path / "report")
    assert report_verdict(index) == lines == report_verdict(tmp_path / "report")


def test_paired_differences_to_random_with_a_t_interval():
    finals = {"random": [0.5, 0.55, 0.6], "bald": [0.6, 0.69, 0.78]}  # bald - random = [.10, .14, .18]
    diffs = paired_differences(_seeds(finals))
    assert diffs.baseline == "random" and diffs.note == ""
    last = diffs.summary[diffs.summary["round"] == 2].iloc[0]
    # mean 0.14, SD 0.04, half width t(0.975, 2) x 0.04 / sqrt 3 = 4.302653 x 0.023094 = 0.099365
    assert last["n"] == 3 and last["mean"] == pytest.approx(0.14)
    assert (last["low"], last["high"]) == (pytest.approx(0.040635, abs=1e-5), pytest.approx(0.239365, abs=1e-5))
    per = diffs.per_repetition[diffs.per_repetition["round"] == 2]
    np.testing.assert_allclose(per.sort_values("seed")["diff"], [0.10, 0.14, 0.18])
    first = diffs.summary[diffs.summary["round"] == 0].iloc[0]  # the shared initial set: no difference
    assert first["mean"] == 0.0 and (first["low"], first["high"]) == (0.0, 0.0)
    assert np.isnan(t_interval(np.array([0.1]))[0])  # one repetition: no interval


def test_without_random_the_first_variant_is_the_baseline_and_says_so():
    diffs = paired_differences(_seeds({"usimf": [0.6, 0.7], "bald": [0.5, 0.6]}))
    assert diffs.baseline == "bald"  # the paper's order: bald before usimf
    assert diffs.note == "No random sampling here: differences are to bald, the first variant."
    assert paired_differences(_seeds({"usimf": [0.6, 0.7]})) is None


def test_the_dice_axis_is_never_narrower_than_its_minimum_span():
    # a 0.009 gap: padded to 0.1, centred on 0.8045
    assert dice_limits(np.array([0.800, 0.809])) == (pytest.approx(0.7545), pytest.approx(0.8545))
    # a wide range: a 5% margin, 0.025 each side
    assert dice_limits(np.array([0.3, 0.8])) == (pytest.approx(0.275), pytest.approx(0.825))
    # near 1: 0.95-0.99 padded to 0.92-1.02, shifted down into [0, 1]
    assert dice_limits(np.array([0.95, 0.99])) == (pytest.approx(0.90), pytest.approx(1.0))


def test_the_curve_caveat_when_the_gap_is_within_the_seed_spread():
    # last round: random [0.78, 0.82] (mean 0.80, SD 0.028284), usimf [0.789, 0.829] (mean 0.809, same SD);
    # gap 0.009 < pooled SD sqrt((0.0008 + 0.0008) / 2) = 0.028
    close = curve_table({("random", 0, 0): [0.3, 0.78], ("random", 0, 1): [0.3, 0.82],
                         ("usimf", 0, 0): [0.3, 0.789], ("usimf", 0, 1): [0.3, 0.829]})
    assert curve_caveat(close) == ("At the last round the variants' means lie within 0.009 Dice of each other, less "
                                   "than the seed-to-seed SD (0.028): the lines are not separated.")
    apart = curve_table({("random", 0, 0): [0.3, 0.78], ("random", 0, 1): [0.3, 0.82],
                         ("usimf", 0, 0): [0.3, 0.88], ("usimf", 0, 1): [0.3, 0.92]})
    assert curve_caveat(apart) == ""  # gap 0.1 > 0.028
    single = curve_table({("random", 0, 0): [0.3, 0.800], ("usimf", 0, 0): [0.3, 0.809]})
    assert curve_caveat(single).startswith("One repetition per variant: no band, and the gap between the lines "
                                           "(0.009 Dice at the last round)")


def test_each_section_has_its_verdict_line_and_the_page_lists_them_first(tmp_path):
    for dataset in ("/data/Toy", "/data/Other"):
        for seed in (0, 1):
            for strategy in ("random", "usimf"):
                write_experiment(tmp_path / "runs", strategy, 0, seed, [0.3, 0.5, 0.6], dataset=dataset,
                                 tag=dataset[6:])
    lines = verdict_lines([tmp_path / "runs"])
    tie = ("No significant difference in final Dice after Holm correction with n = 2 repetitions (1 pair tested, "
           "α = 0.05).")
    assert lines == [f"Verdict (Other): {tie}", f"Verdict (Toy): {tie}"]
    page = build_report([tmp_path / "runs"], tmp_path / "report").read_text()
    top = page[:page.index("<h2")]
    assert f"<a href='#summary_Other'>Other</a>: {tie}" in top and f"<a href='#summary_Toy'>Toy</a>: {tie}" in top


def test_the_difference_axis_is_centred_on_zero_and_at_least_as_wide_as_the_dice_axis():
    from nnal.analysis.comparison import symmetric_limits

    assert symmetric_limits(np.array([-0.007, 0.0])) == (-0.05, 0.05)  # a 0.007 gap does not fill the panel
    assert symmetric_limits(np.array([0.02, -0.25, np.nan])) == (pytest.approx(-0.27), pytest.approx(0.27))
