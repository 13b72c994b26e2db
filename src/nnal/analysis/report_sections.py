"""One section of the report (one dataset and protocol): its statistics, computed before the first write, and its
parts of the page: verdict and summary, learning curves, paired differences, label savings, penalty matrices, power,
FG-Eff, uncertainty."""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nnal.analysis import comparison as C
from nnal.analysis import figures as F
from nnal.analysis.admission import Admission
from nnal.analysis.load import DATASET, FULL, VARIANT, Experiment, batch_uncertainty, query_sets
from nnal.analysis.page import Page
from nnal.analysis.pairwise import PairedDifferences, PenaltyMatrix, paired_differences, penalty_matrix
from nnal.analysis.protocol import slug
from nnal.analysis.redundancy import redundancy_shares
from nnal.analysis.report_evidence import power_part, savings_part
from nnal.analysis.report_tables import final_table, round_table, summary_table
from nnal.analysis.savings import TARGET_FRACTION, LabelSavings, label_savings
from nnal.analysis.stats import FgEfficiency, fg_efficiency, reference_mismatch
from nnal.analysis.verdict import DIFFERENCE, Verdict, verdict


@dataclass
class Section:
    """One section's experiments (one dataset, one protocol) and everything computed from them, before the first
    write."""

    name: str
    tag: str  # the protocol fields that tell it from other sections of its dataset; "" when there are none
    suffix: str  # added to section ids and figure and table names; "" when the report holds one section
    experiments: list[Experiment]
    results: pd.DataFrame
    pm: PenaltyMatrix
    pm_holm: PenaltyMatrix
    verdict: Verdict
    differences: PairedDifferences | None
    fg: FgEfficiency
    batches: pd.DataFrame
    queries: pd.DataFrame
    shares: pd.DataFrame
    savings: LabelSavings

    @property
    def al(self) -> pd.DataFrame:
        return self.results[self.results["strategy"] != FULL]

    def title(self, what: str) -> str:
        return f"{self.name}: {what}" if self.suffix else what

    def intro(self) -> str:
        """The first words of the section's summary (HTML) when the report has several sections."""
        if not self.suffix:
            return ""
        text = (f"{len(self.experiments)} experiment(s) in this section; nothing here is pooled with or compared to "
                "another section. ")
        if self.tag:
            text += f"Protocol: {html.escape(self.tag)}, where the other sections of this dataset differ. "
        return text


def report_sections(admission: Admission, results: pd.DataFrame,
                    savings_fraction: float = TARGET_FRACTION) -> list[Section]:
    """The admitted experiments by section (dataset and protocol), each with its statistics; suffixes only for
    several. ``savings_fraction``: the share of the full-label Dice that label savings count slices to."""
    out, used = [], set()
    for section in admission.sections:
        suffix = ""
        if len(admission.sections) > 1:
            suffix = f"_{slug(section.name)}"
            while suffix in used:  # two names alike once reduced to letters and digits
                suffix += "_"
            used.add(suffix)
        exps = section.experiments
        res = results[results["experiment"].isin({e.name for e in exps})].reset_index(drop=True)
        out.append(Section(section.name, section.tag, suffix, exps, res, penalty_matrix(res),
                           penalty_matrix(res, correction="holm"), verdict(res), paired_differences(res),
                           fg_efficiency(res), batch_uncertainty(exps), query_sets(exps), redundancy_shares(exps),
                           label_savings(res, savings_fraction)))
    return out


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    """A loaded table as the page shows it within a dataset's section: variant next to strategy, no dataset."""
    frame = frame.drop(columns=[DATASET], errors="ignore")
    if VARIANT in frame.columns and "strategy" in frame.columns:
        cols = [c for c in frame.columns if c != VARIANT]
        cols.insert(cols.index("strategy") + 1, VARIANT)
        frame = frame[cols]
    return frame


def verdict_box(v: Verdict) -> str:
    """The verdict as the page shows it: the headline in bold, the details below."""
    kind = " difference" if v.kind == DIFFERENCE else ""
    more = f"<p class='more'>{html.escape(' '.join(v.details))}</p>" if v.details else ""
    return f"<div class='verdict{kind}'><p><b>Verdict: {html.escape(v.headline)}</b></p>{more}</div>"


def section_body(page: Page, d: Section) -> None:
    """Every part of one section, in the page's order."""
    _summary(page, d)
    _curves(page, d)
    _differences(page, d)
    savings_part(page, d.savings, d.title(f"Label savings ({d.savings.fraction:.0%} of full-label Dice)"), d.suffix)
    _penalty(page, d)
    power_part(page, d.verdict.power, d.title("What the tests could detect (power)"), d.suffix)
    _fg_efficiency(page, d)
    _uncertainty(page, d)


def _summary(page: Page, d: Section) -> None:
    x = d.suffix
    page.section(f"summary{x}", d.title("Summary"))
    page.add(verdict_box(d.verdict))
    page.add(f"<p class='note'>{d.intro()}The verdict uses the tests of the Holm-corrected penalty matrix at the last "
             f"round (tables/verdict{x}.csv). Below: mean ± SD over repetitions; AUBC and Φ exclude the full-label "
             "reference.</p>")
    page.table(f"verdict{x}", d.verdict.final, show=False)
    mismatch = reference_mismatch(d.results)
    if mismatch:
        page.note(mismatch)
    page.table(f"summary{x}", summary_table(d.results, d.pm, d.pm_holm, d.fg))


def _curves(page: Page, d: Section) -> None:
    results, x = d.results, d.suffix
    page.section(f"curves{x}", d.title("Learning curves"))
    bands = F.bands_in_one_panel(results)
    caveat = C.curve_caveat(results)
    band = ("Band: ±1 SD over repetitions" if bands else
            f"More than {F.BAND_LIMIT} variants: no bands here, each variant's ±1 SD band is in its own panel below")
    page.figure(f"learning_curves{x}", lambda: F.plot_learning_curves(results), "Mean foreground Dice (mean over "
                f"foreground classes per test case, then over cases) against labeled slices (left) and % of the pool "
                f"(right). {band}; dashed: full-label reference. The y-axis spans at least {F.MIN_SPAN} Dice and "
                f"every mean ± SD. {html.escape(caveat)}", "Learning curves")
    if not bands:
        page.figure(f"learning_curve_panels{x}", lambda: F.plot_curve_panels(results), "One panel per variant: "
                    "its mean and ±1 SD band, the other variants' means in grey, one y-axis for all.",
                    "Learning curves per variant")
    page.figure(f"class_curves{x}", lambda: F.plot_class_curves(results), "Dice per foreground class against "
                "labeled slices.", "Per-class learning curves")
    page.add("<h3>Mean foreground Dice per round</h3><p class='note'>Mean ± SD over repetitions; the full-label "
             "reference is in the summary.</p>")
    page.table(f"dice_per_round{x}", round_table(d.al))
    page.add("<h3>Final Dice per class</h3>")
    page.table(f"final_dice{x}", final_table(results))


def _differences(page: Page, d: Section) -> None:
    diffs, x = d.differences, d.suffix
    if diffs is None:
        return  # one variant: nothing to subtract
    page.section(f"differences{x}", d.title(f"Paired differences to {diffs.baseline}"))
    if diffs.note:
        page.note(diffs.note)
    if diffs.per_repetition.empty:
        page.skip("Paired differences", f"no repetition (fold, seed) of another variant matches one of "
                  f"{diffs.baseline}")
        return
    single = (diffs.summary["n"] < 2).all()
    page.figure(f"paired_differences{x}", lambda: C.plot_paired_differences(diffs), f"Each variant's Dice minus "
                f"{html.escape(diffs.baseline)}'s on the same fold and seed: dots are repetitions, diamonds their "
                "mean, bars the 95% t-interval (not corrected for multiple comparisons; the verdict is). A dot right "
                "of 0: that repetition beat the baseline." + (" One repetition: no interval." if single else ""),
                "Paired differences")
    last = diffs.summary[diffs.summary["round"] == diffs.summary["round"].max()]
    page.table(f"paired_differences{x}", diffs.per_repetition, show=False)
    page.table(f"paired_differences_final{x}", last.drop(columns="round").round(4))


def _penalty(page: Page, d: Section) -> None:
    al, pm, pm_holm, x = d.al, d.pm, d.pm_holm, d.suffix
    page.section(f"penalty{x}", d.title("Pairwise penalty matrix"), "Rows: variant i; columns: variant j; cell: "
                 "fraction of the AL rounds (round 0, the shared initial set, excluded) at which i beats j "
                 "significantly after Holm correction over the pairs tested at that round.")
    for note in pm.notes:
        page.note(note)
    if al[VARIANT].nunique() < 2:
        page.skip("Penalty matrix", "fewer than two active-learning variants")
        return
    if not pm.n_tests:
        page.skip("Penalty matrix", "no pair of variants has 2 or more matched repetitions (fold, seed)")
        return
    order = F.order_strategies(pm.matrix.index)
    page.figure(f"penalty_matrix_holm{x}", lambda: F.plot_penalty_matrix(pm_holm), "Paired t-tests, α = 0.05, "
                "Holm correction over the pairs tested at each round.", "Holm-corrected penalty matrix")
    holm_table = pm_holm.matrix.loc[order, order]
    page.table(f"penalty_matrix_holm{x}", holm_table.assign(**{"row sum": holm_table.sum(axis=1)}), index=True)
    wins = int((pm.matrix.to_numpy() > 0).sum())
    with page.collapsed(f"Uncorrected penalty matrix (no multiple-comparison correction; {wins} cell(s) with wins; "
                        "for comparison with Ash et al. only)"):
        page.note("Uncorrected: each pair is tested at α = 0.05 on its own. With many pairs per round some pass by "
                  "chance; read the Holm-corrected matrix above.")
        page.figure(f"penalty_matrix{x}", lambda: F.plot_penalty_matrix(pm), "Uncorrected paired t-tests, α = 0.05.",
                    "Uncorrected penalty matrix")
        table = pm.matrix.loc[order, order]
        page.table(f"penalty_matrix{x}", table.assign(**{"row sum": table.sum(axis=1)}), index=True)


def _fg_efficiency(page: Page, d: Section) -> None:
    fg, x = d.fg, d.suffix
    page.section(f"fgeff{x}", d.title("Foreground efficiency"), "Fit of Dice = c − a·exp(−γ (x − x0)), x = "
                 "fraction of the pool's foreground voxels annotated; the curve starts at the mean round-0 point "
                 "(x0, y0), a = c − y0." + (f" c = {fg.c:.4f} ({html.escape(fg.c_source)})." if np.isfinite(fg.c)
                                           else ""))
    for note in fg.notes:
        page.note(note)
    if fg.table.empty:
        page.skip("FG-Eff figure", "; ".join(fg.notes) or "no fit")
        return
    page.figure(f"fg_efficiency{x}", lambda: F.plot_fg_efficiency(fg), "Left: annotated foreground against "
                "labeled slices. Right: Dice against it, points per (experiment, round), lines: fits.", "FG-Eff")
    page.table(f"fg_efficiency{x}", fg.table)


def _uncertainty(page: Page, d: Section) -> None:
    al, bu, qs, shares, x = d.al, d.batches, d.queries, d.shares, d.suffix
    page.section(f"uncertainty{x}", d.title("Uncertainty analyses"))
    if bu.empty:
        page.skip("Batch uncertainty (Fig. 5)", "no selected batch has class_uncertainty or a score (random "
                  "sampling computes none)")
    else:
        missing = sorted(set(al[VARIANT]) - set(bu[VARIANT]))
        if missing:
            page.note(f"No uncertainty recorded for: {', '.join(missing)}.")
        page.figure(f"batch_uncertainty{x}", lambda: F.plot_batch_uncertainty(bu), "Sum over the selected slices "
                    "of the MC-dropout std (class_uncertainty) or variance (class_variance) summed over foreground "
                    "classes when recorded, else the strategy's own score (not comparable across strategies).",
                    "Batch uncertainty")
    if qs.empty:
        page.skip("USIM query sets", "no experiment drew a query set")
    else:
        page.titled_table(f"query_sets{x}", shown(qs).round(4), "USIM query set per round", "Q: draws (with "
                          "replacement); distinct: slices drawn at least once; share_c: fraction of draws whose slice "
                          "holds foreground class c (label value c) in the ground truth.")
    if not shares.empty:
        page.titled_table(f"redundancy{x}", shown(shares).round(4), "Redundancy scenario (Appendix E)", "Per "
                          "round: draws of the query set (Q) and slices of the selected batch that come from the "
                          "duplicated case, its copies included; distinct: different pool slices drawn. The paper: "
                          "45% of the query set, 18 of 100 selected by USIMF, 45 by uniform sampling from the query "
                          "set.")
