"""The report's evidence that separates strategies, one section at a time: label savings (slices to reach a share of
the full-label Dice, and savings against the random baselines) and what the paired tests could detect (power)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nnal.analysis.load import VARIANT
from nnal.analysis.page import Page
from nnal.analysis.power import ALPHA, MAX_REPETITIONS, POWER, ROUND_DIFFERENCE
from nnal.analysis.savings import LabelSavings, saving_text, slices_text
from nnal.analysis.savings_figure import plot_label_savings


def _slices_shown(savings: LabelSavings) -> pd.DataFrame:
    summary = savings.summary
    reference = savings.per_repetition.groupby(VARIANT)["reference_from"].agg(lambda v: ", ".join(sorted(set(v))))
    return pd.DataFrame({"variant": summary[VARIANT], "repetitions": summary["n"],
                         "reached": [f"{r} of {n}" for r, n in zip(summary["reached"], summary["n"], strict=True)],
                         "slices needed": [slices_text(row) for _, row in summary.iterrows()],
                         "reference": summary[VARIANT].map(reference)})


def _savings_shown(savings: LabelSavings) -> pd.DataFrame:
    table = savings.savings
    return pd.DataFrame({"variant": table[VARIANT], "baseline": table["baseline"], "pairs": table["pairs"],
                         "both reached": table["exact"], "only the variant": table["at least"],
                         "only the baseline": table["at most"], "neither": table["unknown"],
                         "saving (slices)": [saving_text(row) for _, row in table.iterrows()]})


def savings_part(page: Page, savings: LabelSavings, title: str, suffix: str) -> None:
    """The label-savings section: figure, the slices needed per variant and the savings against the baselines."""
    share = f"{savings.fraction:.0%}"
    page.section(f"savings{suffix}", title, f"Labeled slices each repetition needs to reach {share} of the "
                 "full-label reference's Dice (the reference of the same fold and seed, else of the same fold, else "
                 "the mean of all references in this section), interpolated linearly between the two rounds that "
                 "bracket it. Definitions: docs/report.md, \"Label savings\".")
    for note in savings.notes:
        page.note(note)
    if not savings.available:
        page.skip("Label savings", savings.notes[0] if savings.notes else "no data")
        return
    page.figure(f"label_savings{suffix}", lambda: plot_label_savings(savings), "Left: slices needed per repetition "
                "(dots; open triangles: not reached by the last round, drawn at its slices); diamond and bar: mean "
                "and 95% t-interval when every repetition reached, else the median alone. Right: slices(baseline) − "
                "slices(variant) on the same fold and seed (positive: the variant needs fewer); triangles are bounds "
                "where one of the two never reached the target, an open diamond the mean of such bounds.",
                "Label savings")
    page.add(f"<h3>Slices to reach {share} of the full-label Dice</h3><p class='note'>Mean and 95% t-interval over "
             "repetitions when all reached the target; otherwise the median, counting a repetition that never "
             "reached it as needing more than any that did (it is censored at its last round), and \"not reached\" "
             "when half or more never did.</p>")
    page.show(_slices_shown(savings))
    page.table(f"label_savings{suffix}", savings.per_repetition, show=False)
    page.table(f"label_savings_summary{suffix}", savings.summary, show=False)
    if savings.savings.empty:
        return
    page.add("<h3>Savings against the random baselines</h3><p class='note'>Per fold and seed: slices(baseline) − "
             "slices(variant). Mean and 95% t-interval when both reached the target in every pair; when only one of "
             "them did in some pairs, its last round's slices bound the other's, and the mean of those bounds is "
             "shown as ≥ or ≤ without an interval; neither reached, or bounds both ways: not determined.</p>")
    page.show(_savings_shown(savings))
    page.table(f"label_savings_pairs{suffix}", savings.pairs, show=False)
    page.table(f"label_savings_vs_baseline{suffix}", savings.savings, show=False)


def _repetitions_text(n: float, difference: float) -> str:
    if np.isfinite(n):
        return f"{int(n)}"
    return "never (no difference)" if abs(difference) <= 1e-12 else f"more than {MAX_REPETITIONS:,}"


def _power_shown(power: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "metric": power["metric"], "pair (a − b)": power["a"] + " − " + power["b"], "n": power["n"],
        "difference": power["difference"].round(4), "paired SD": power["sd"].round(4),
        f"detectable (α = {ALPHA})": power["detectable"].round(4),
        "detectable (Holm, α/m)": power["detectable_holm"].round(4),
        "repetitions for the observed difference": [_repetitions_text(n, d) for n, d in
                                                    zip(power["n_observed"], power["difference"], strict=True)],
        f"repetitions for {ROUND_DIFFERENCE}": [_repetitions_text(n, 1.0) for n in power["n_round"]]})


def power_part(page: Page, power: pd.DataFrame, title: str, suffix: str) -> None:
    """The power section: per pair, the smallest difference the repetitions could detect, and how many a
    difference would need."""
    m = int(power["m"].max()) if len(power) else 0
    page.section(f"power{suffix}", title, "Whether \"no significant difference\" means no difference or too few "
                 f"repetitions: per pair of variants, the smallest difference in final Dice and in AUBC that a "
                 f"two-sided paired t-test over these repetitions finds with {POWER:.0%} power, given the observed SD "
                 f"of the paired differences, at α = {ALPHA} and at Holm's strictest threshold α/m (m = {m}, the "
                 "pairs tested: what the verdict and the Holm penalty matrix use), and the repetitions a difference "
                 "would need at "
                 f"α/m. Noncentral t; definitions: docs/report.md, \"Power\".")
    if power.empty:
        page.skip("Power table", "no pair of variants has 2 or more repetitions with the same fold and seed")
        return
    page.show(_power_shown(power))
    page.table(f"power{suffix}", power, show=False)
