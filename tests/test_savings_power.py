"""Label savings (slices to reach a share of the full-label Dice, savings against the random baselines) and the
power of the paired tests (detectable difference, repetitions needed), against hand computations; statsmodels'
TTestPower values, where its solver converges, are quoted as the oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_analysis import curve_table, write_experiment
from test_report_layout import CHROMIUM, overlapping_texts, page_layout

from nnal.analysis import ReportError, build_report
from nnal.analysis.power import detectable_effect, paired_power, power_sentence, power_table, repetitions_needed
from nnal.analysis.savings import (
    AT_LEAST,
    AT_MOST,
    EXACT,
    NO_REFERENCE,
    UNKNOWN,
    censored_median,
    label_savings,
    saving_text,
    savings_lines,
    slices_to_reach,
)
from nnal.analysis.savings_figure import plot_label_savings
from nnal.analysis.verdict import NO_DIFFERENCE, verdict

# --- slices to reach the target -----------------------------------------------------------------------------------


def test_a_curve_that_crosses_the_target_between_two_rounds_is_interpolated_linearly():
    n, dice = [10, 20, 30, 40], [0.3, 0.6, 0.8, 0.9]
    # 0.7 lies between 0.6 (20 slices) and 0.8 (30): 20 + (0.7 - 0.6) / (0.8 - 0.6) x 10 = 25
    assert slices_to_reach(n, dice, 0.7) == pytest.approx(25.0)
    assert slices_to_reach(n, dice, 0.8) == pytest.approx(30.0)  # reached exactly at a round
    assert slices_to_reach(n, dice, 0.2) == 10.0  # the initial set already reaches it
    # unsorted input and a dip: the first crossing counts, 10 + (0.7 - 0.3) / (0.75 - 0.3) x 10 = 18.89
    assert slices_to_reach([20, 10, 30, 40], [0.75, 0.3, 0.6, 0.9], 0.7) == pytest.approx(10 + 0.4 / 0.45 * 10)


def test_a_curve_that_never_gets_there_is_not_reached():
    assert np.isnan(slices_to_reach([10, 20, 30], [0.3, 0.6, 0.8], 0.85))
    assert np.isnan(slices_to_reach([], [], 0.5))
    # NaN counts as more than every reached value: the median of 30, 40 and "more" is 40
    assert censored_median(np.array([30.0, np.nan, 40.0])) == 40.0
    assert censored_median(np.array([30.0, np.nan, np.nan])) == np.inf  # half or more not reached


def test_the_reference_is_the_same_fold_and_seed_else_the_same_fold_else_all():
    table = curve_table({("full", 0, 0): [0.9], ("full", 0, 1): [0.8], ("full", 1, 0): [0.6],
                         ("random", 0, 0): [0.3, 0.9], ("random", 0, 2): [0.3, 0.9], ("random", 2, 0): [0.3, 0.9]})
    per = label_savings(table).per_repetition.set_index(["fold", "seed"])
    assert per.loc[(0, 0), "reference"] == pytest.approx(0.9)
    assert per.loc[(0, 2), "reference"] == pytest.approx(0.85)  # fold 0's two references
    assert per.loc[(2, 0), "reference"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)  # no reference of fold 2
    assert per["reference_from"].tolist() == ["same fold and seed", "same fold", "all references"]
    assert per.loc[(0, 0), "target"] == pytest.approx(0.95 * 0.9)
    # target 0.855 between 0.3 (10 slices) and 0.9 (20): 10 + 0.555 / 0.6 x 10 = 19.25
    assert per.loc[(0, 0), "slices"] == pytest.approx(19.25)
    assert label_savings(table, 0.5).per_repetition.loc[0, "target"] == pytest.approx(0.45)


def _versus_random(strategy_curve: list[float], random_curves: list[list[float]]) -> pd.DataFrame:
    """Three seeds of usimf (one curve for all) and random (one curve each), a reference of 1.0 per seed."""
    values = {("full", 0, seed): [1.0] for seed in range(3)}
    for seed, curve in enumerate(random_curves):
        values[("random", 0, seed)] = curve
        values[("usimf", 0, seed)] = strategy_curve
    return curve_table(values)


def test_savings_against_random_are_paired_by_seed_with_a_t_interval():
    # target 0.95; usimf: 20 + (0.95 - 0.9) / 0.1 x 10 = 25 slices. random reaches it between 30 and 40 slices from
    # y(30) = 0.9, 0.75, 0.9375: 30 + (0.95 - y) / (1 - y) x 10 = 35, 38, 32
    found = label_savings(_versus_random([0.5, 0.9, 1.0, 1.0], [[0.5, 0.7, y, 1.0] for y in (0.9, 0.75, 0.9375)]))
    per = found.per_repetition.set_index(["variant", "seed"])["slices"]
    assert per["random"].tolist() == pytest.approx([35.0, 38.0, 32.0])
    assert per["usimf"].tolist() == pytest.approx([25.0] * 3)
    assert found.pairs["saving"].tolist() == pytest.approx([10.0, 13.0, 7.0])
    assert (found.pairs["kind"] == EXACT).all()
    row = found.savings.iloc[0]
    # savings 10, 13, 7: mean 10, SD 3, half-width t(0.975, 2) x 3 / sqrt 3 = 4.3027 x 1.7321 = 7.4524
    assert stats.t.ppf(0.975, 2) == pytest.approx(4.302653)
    assert (row["variant"], row["baseline"], row["bound"]) == ("usimf", "random", "=")
    assert [row["mean"], row["low"], row["high"]] == pytest.approx([10.0, 10 - 7.4524, 10 + 7.4524], abs=1e-4)
    summary = found.summary.set_index("variant")
    # random: 35, 38, 32 -> mean 35, SD 3, the same half-width
    assert summary.loc["random", ["reached", "median", "mean", "low", "high"]].tolist() == pytest.approx(
        [3, 35.0, 35.0, 35 - 7.4524, 35 + 7.4524], abs=1e-4)
    assert savings_lines(found) == [
        "random: 95% of the full-label Dice reached at 35 [28, 42] (mean) slices (3 of 3 repetitions reached it)",
        "usimf: 95% of the full-label Dice reached at 25 [25, 25] (mean) slices (3 of 3 repetitions reached it); "
        "slices saved vs random: +10 [+3, +17]"]


def test_identical_strategies_save_nothing():
    curves = [[0.5, 0.7, y, 1.0] for y in (0.9, 0.75, 0.9375)]
    values = {("full", 0, seed): [1.0] for seed in range(3)}
    for seed, curve in enumerate(curves):
        values[("random", 0, seed)] = values[("usimf", 0, seed)] = curve
    row = label_savings(curve_table(values)).savings.iloc[0]
    assert [row["mean"], row["low"], row["high"]] == [0.0, 0.0, 0.0] and row[EXACT] == 3


def test_not_reached_repetitions_make_savings_bounds_not_numbers():
    # usimf reaches 0.95 at 25 slices; random never (last round 40 slices): it needs more than 40, so the saving
    # is more than 40 - 25 = 15 in every pair
    never = [0.5, 0.7, 0.8, 0.9]
    found = label_savings(_versus_random([0.5, 0.9, 1.0, 1.0], [never] * 3))
    assert found.summary.set_index("variant").loc["random", ["reached", "median"]].tolist() == [0, np.inf]
    assert np.isnan(found.summary.set_index("variant").loc["random", "mean"])
    assert (found.pairs["kind"] == AT_LEAST).all() and found.pairs["saving"].tolist() == pytest.approx([15.0] * 3)
    row = found.savings.iloc[0]
    assert (row["bound"], row[AT_LEAST]) == ("≥", 3) and row["mean"] == pytest.approx(15.0)
    assert np.isnan(row["low"]) and saving_text(row) == "≥ +15 (mean of bounds)"
    assert savings_lines(found)[0] == "random: 95% of the full-label Dice not reached (0 of 3 repetitions reached it)"
    # the other way round: random reaches it at 35, usimf never: the saving is less than 35 - 40 = -5
    reversed_ = label_savings(_versus_random(never, [[0.5, 0.7, 0.9, 1.0]] * 3))
    assert (reversed_.pairs["kind"] == AT_MOST).all()
    assert reversed_.pairs["saving"].tolist() == pytest.approx([-5.0] * 3)
    assert reversed_.savings.iloc[0]["bound"] == "≤"
    neither = label_savings(_versus_random(never, [never] * 3))
    assert (neither.pairs["kind"] == UNKNOWN).all() and neither.savings.iloc[0]["bound"] == ""
    assert saving_text(neither.savings.iloc[0]).startswith("not determined")


def test_random_fg_is_a_second_baseline_and_random_against_it_is_counted_once():
    values = {("full", 0, s): [1.0] for s in range(2)}
    for s in range(2):
        values[("random", 0, s)] = [0.5, 0.7, 0.9, 1.0]  # 35 slices
        values[("random-fg", 0, s)] = [0.5, 0.9, 1.0, 1.0]  # 25
        values[("usimf", 0, s)] = [0.9, 1.0, 1.0, 1.0]  # 10 + 0.05 / 0.1 x 10 = 15
    savings = label_savings(curve_table(values)).savings.set_index(["variant", "baseline"])["mean"]
    assert savings.to_dict() == pytest.approx({("usimf", "random"): 20.0, ("usimf", "random-fg"): 10.0,
                                               ("random-fg", "random"): 10.0})


def test_without_a_reference_there_are_no_savings_and_the_page_says_so(tmp_path):
    found = label_savings(curve_table({("random", 0, 0): [0.3, 0.5], ("usimf", 0, 0): [0.3, 0.6]}))
    assert not found.available and found.notes == [NO_REFERENCE]
    assert savings_lines(found) == [f"Label savings: {NO_REFERENCE}"]
    assert plot_label_savings(found) is None
    with pytest.raises(ValueError, match="target fraction"):
        label_savings(curve_table({("random", 0, 0): [0.3]}), fraction=1.5)
    for seed in (0, 1):
        write_experiment(tmp_path / "runs", "random", 0, seed, [0.3, 0.5, 0.6])
        write_experiment(tmp_path / "runs", "usimf", 0, seed, [0.3, 0.55, 0.65])
    page = build_report([tmp_path / "runs"], tmp_path / "report").read_text()
    assert f"Label savings skipped: {NO_REFERENCE}" in page
    with pytest.raises(ReportError, match=r"must lie in \(0, 1\], got 95"):  # a percentage where a share belongs
        build_report([tmp_path / "runs"], tmp_path / "refused", savings_fraction=95)
    assert not (tmp_path / "refused").exists()


# --- power --------------------------------------------------------------------------------------------------------


def test_paired_power_matches_statsmodels_and_is_alpha_without_an_effect():
    # statsmodels TTestPower().power(effect_size=1.0, nobs=5, alpha=0.05) = 0.4013899173717948
    assert paired_power(5, 1.0) == pytest.approx(0.4013899173717948, rel=1e-9)
    # no effect: the test rejects at its level, both tails together
    assert paired_power(5, 0.0, 0.05) == pytest.approx(0.05, rel=1e-9)
    assert paired_power(12, 0.0, 0.01) == pytest.approx(0.01, rel=1e-9)
    assert np.isnan(paired_power(1, 1.0))


def test_the_detectable_effect_and_repetitions_needed_match_statsmodels():
    # TTestPower().solve_power(effect_size=None, nobs=5, alpha=0.05, power=0.8) = 1.6819970833232674;
    # nobs=10, alpha=0.05/3: 1.2234701205496286
    assert detectable_effect(5) == pytest.approx(1.6819970833232674, rel=1e-6)
    assert detectable_effect(10, 0.05 / 3) == pytest.approx(1.2234701205496286, rel=1e-6)
    assert paired_power(5, detectable_effect(5)) == pytest.approx(0.8, abs=1e-8)
    # solve_power(effect_size=0.5, alpha=0.05, power=0.8) = 33.367 pairs (G*Power's table: 34): the smallest whole n
    assert repetitions_needed(0.5) == 34
    assert paired_power(33, 0.5) < 0.8 <= paired_power(34, 0.5)
    assert repetitions_needed(0.0) == np.inf and repetitions_needed(1e-4) == np.inf  # more than 100,000
    # two pairs detect 11.5499 SDs (solve_power(nobs=2): 11.549889754978167); two is the smallest testable number
    assert detectable_effect(2) == pytest.approx(11.549889754978167, rel=1e-6)
    assert repetitions_needed(12.0) == 2 and repetitions_needed(11.0) == 3
    for effect in (0.35, 1.0, 3.0):  # the search starts from the z-test's n: the same as counting up from 2
        for alpha in (0.05, 0.05 / 36):
            n = 2
            while paired_power(n, effect, alpha) < 0.8:
                n += 1
            assert repetitions_needed(effect, alpha) == n, (effect, alpha)


def test_the_detectable_effect_under_holm_gives_80_percent_rejections_by_simulation():
    # statsmodels' solver stops short here (solve_power(nobs=3, alpha=0.05/3) returns 4.29, whose power is 0.61):
    # simulate the paired t-test at the effect found instead
    n, alpha = 3, 0.05 / 3
    effect = detectable_effect(n, alpha)
    assert effect == pytest.approx(5.6675, abs=1e-3)
    rng = np.random.default_rng(0)
    d = rng.standard_normal((200_000, n)) + effect
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    rejected = np.mean(np.abs(t) > stats.t.ppf(1 - alpha / 2, n - 1))
    assert rejected == pytest.approx(0.8, abs=0.005)  # binomial SE 0.0009


def _finals(finals: dict[str, list[float]]) -> pd.DataFrame:
    """{variant: final Dice per seed}: rounds 0 (0.3 for all), 1 (final - 0.1) and 2 (final), 10 slices each."""
    return curve_table({(v, 0, seed): [0.3, f - 0.1, f] for v, values in finals.items()
                        for seed, f in enumerate(values)})


def _pairs(differences: list[float], others: int = 0) -> pd.DataFrame:
    """Final Dice of random and usimf (usimf - random = ``differences``) per seed, plus ``others`` variants equal
    to random."""
    base = [0.6, 0.62, 0.58, 0.61, 0.64, 0.6, 0.63][: len(differences)]
    finals = {"random": base, "usimf": [b + d for b, d in zip(base, differences, strict=True)]}
    finals.update({f"other{k}": base for k in range(others)})
    return _finals(finals)


def test_the_power_table_scales_the_detectable_effect_by_the_paired_sd():
    # usimf - random = [0.01, 0.03, 0.02, 0.04, 0.00]: mean 0.02, SD sqrt((1 + 1 + 0 + 4 + 4) e-4 / 4) = 0.015811
    table = power_table(_pairs([0.01, 0.03, 0.02, 0.04, 0.00]))
    row = table[table["metric"] == "final Dice"].iloc[0]
    sd = np.sqrt(2.5e-4)
    assert (row["a"], row["b"], row["n"], row["m"]) == ("usimf", "random", 5, 1)  # the larger mean first
    assert row["difference"] == pytest.approx(0.02) and row["sd"] == pytest.approx(sd)
    assert row["detectable"] == pytest.approx(1.6819970833232674 * sd, rel=1e-6)  # = 0.026594
    assert row["detectable_holm"] == row["detectable"]  # one pair: Holm changes nothing
    # effect 0.02 / sd = 1.2649: solve_power says 7.06 pairs -> 8; 0.01 / sd = 0.6325: 21.62 -> 22
    assert (row["n_observed"], row["n_round"]) == (8, 22)
    # AUBC over rounds at 10, 20, 30 slices of a pool of 100 with Dice 0.3, f - 0.1, f: (0.3 + 2(f - 0.1) + f) / 4,
    # so the AUBC differences are 3/4 of the final ones
    aubc = table[table["metric"] == "AUBC"].iloc[0]
    assert aubc["difference"] == pytest.approx(0.015) and aubc["sd"] == pytest.approx(0.75 * sd)


def test_holm_tightens_the_detectable_difference_to_alpha_over_m():
    table = power_table(_pairs([0.01, 0.03, 0.02, 0.04, 0.00], others=1))
    row = table[(table["metric"] == "final Dice") & (table["a"] == "usimf") & (table["b"] == "random")].iloc[0]
    assert row["m"] == 3
    # solve_power(nobs=5, alpha=0.05/3) = 2.29164920221346
    assert row["detectable_holm"] == pytest.approx(2.29164920221346 * np.sqrt(2.5e-4), rel=1e-6)
    # the tied pair (other0 = random): no spread and no difference
    tie = table[(table["metric"] == "final Dice") & (table["b"] == "random") & (table["a"] == "other0")].iloc[0]
    assert (tie["sd"], tie["detectable"], tie["n_observed"]) == (0.0, 0.0, np.inf)


def test_the_verdict_tells_no_difference_from_too_few_repetitions():
    small = verdict(_pairs([0.001, -0.001, 0.002, 0.0, -0.002]))  # SD 0.0016: 0.0027 detectable
    assert small.kind == NO_DIFFERENCE
    sd = np.std([0.001, -0.001, 0.002, 0.0, -0.002], ddof=1)
    assert (f"That reads as no difference: with 80% power (α = 0.05, n = 5, the observed paired SD) a difference "
            f"in final Dice of {1.6819970833 * sd:.3f} or more would have been found.") in small.details
    noisy = verdict(_pairs([0.05, -0.04, 0.03, -0.05, 0.02]))
    sd = np.std([0.05, -0.04, 0.03, -0.05, 0.02], ddof=1)
    needed = repetitions_needed(0.01 / sd)
    assert noisy.kind == NO_DIFFERENCE
    assert (f"That may be too few repetitions rather than no difference: with 80% power (α = 0.05, n = 5, the "
            f"observed paired SD) only a difference in final Dice of {1.6819970833 * sd:.3f} or more would be found; "
            f"detecting 0.01 Dice would need {int(needed)} repetitions.") in noisy.details
    assert power_sentence(pd.DataFrame(columns=noisy.power.columns)) == ""
    mixed = verdict(_pairs([0.05, -0.04, 0.03, -0.05, 0.02], others=1))  # other0 ties random exactly: SD 0
    assert mixed.details[0].startswith("That may be too few repetitions rather than no difference: with 80% power "
                                       "(α = 0.05/3 after Holm, n = 5,")
    assert mixed.details[0].endswith("; 1 of the 3 pairs could detect 0.01 Dice, so for that pair it does mean no "
                                     "difference.")


def test_a_significant_pair_is_left_out_of_the_power_sentence():
    clear = verdict(_pairs([0.05, 0.05, 0.06, 0.04, 0.05], others=1))  # usimf beats both, the tie does not differ
    assert clear.final["significant"].sum() == 2
    assert any(d.startswith("For the 1 pair not found different, that reads as no difference") for d in clear.details)


# --- the report ---------------------------------------------------------------------------------------------------


def _runs(root: Path) -> Path:
    """Three seeds of random, usimf and a full-label reference, 2 slices per round; reference 0.8: target 0.76."""
    runs = root / "runs"
    for seed in range(3):
        write_experiment(runs, "full", 0, seed, [0.8], selections=[list(range(10))])
        write_experiment(runs, "random", 0, seed, [0.3, 0.5, 0.6, 0.7 + 0.02 * seed])
        write_experiment(runs, "usimf", 0, seed, [0.3, 0.6, 0.75 + 0.01 * seed, 0.8])
    return runs


def test_the_report_shows_savings_and_power_with_a_figure_free_of_overlapping_text(tmp_path, monkeypatch):
    drawn = {}
    original = plot_label_savings

    def checked(savings):
        fig = original(savings)
        drawn["overlaps"] = overlapping_texts(fig)
        return fig

    monkeypatch.setattr("nnal.analysis.report_evidence.plot_label_savings", checked)
    out = tmp_path / "report"
    page = build_report([_runs(tmp_path)], out, savings_fraction=0.95).read_text()
    assert drawn["overlaps"] == []
    assert "Label savings (95% of full-label Dice)" in page and "What the tests could detect (power)" in page
    assert "not reached" in page  # random never gets to 0.76
    per = pd.read_csv(out / "tables" / "label_savings.csv").set_index(["variant", "seed"])
    # usimf seed 0: 0.6 at 4 slices, 0.75 at 6, 0.8 at 8: 6 + (0.76 - 0.75) / 0.05 x 2 = 6.4
    assert per.loc[("usimf", 0), "slices"] == pytest.approx(6.4)
    assert not per.loc["random", "reached"].any()
    vs = pd.read_csv(out / "tables" / "label_savings_vs_baseline.csv").iloc[0]
    # random's last round has 8 slices: the savings are at least 8 - slices(usimf)
    assert (vs["bound"], vs["at least"]) == ("≥", 3)
    assert vs["mean"] == pytest.approx(8 - per.loc["usimf", "slices"].mean())
    power = pd.read_csv(out / "tables" / "power.csv")
    assert set(power["metric"]) == {"final Dice", "AUBC"} and (power["n"] == 3).all()
    # another share of the reference: 0.5 x 0.8 = 0.4 lies between 0.3 (2 slices) and 0.6 or 0.5 (4)
    other = build_report([tmp_path / "runs"], tmp_path / "half", savings_fraction=0.5).read_text()
    assert "Label savings (50% of full-label Dice)" in other


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium")
def test_the_savings_and_power_tables_do_not_overlap_text_on_a_narrow_page(tmp_path):
    index = build_report([_runs(tmp_path)], tmp_path / "report")
    layout = page_layout(index, 800, tmp_path / "profile")
    assert layout["boxes"] > 100 and layout["overlaps"] == [], layout["overlaps"]
