"""Paired comparisons of variants over repetitions matched by (fold, seed): the tests behind the pairwise penalty
matrix (Ash et al. 2020; Ji et al. 2023; the paper's Fig. 2D), the report's verdict and the differences to a
baseline.

Every function takes the table of :func:`nnal.analysis.load.load_results` (one dataset and protocol) and compares
variants (``variant``; a table without one: variant = strategy). Full-label references are never compared.
Definitions are in ``docs/report.md``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from nnal.analysis.load import FULL, VARIANT
from nnal.analysis.stats import experiment_curves
from nnal.analysis.style import order_strategies

TEST_COLUMNS = ["round", "a", "b", "n", "mean", "p", "p_holm"]


def paired_test(d: np.ndarray) -> tuple[float, float] | None:
    """Two-sided one-sample t-test of paired differences ``d`` against 0: ``(mean, p)``, or None when untestable.

    Fewer than 2 pairs: None. All differences 0 (identical results): p = 1. All equal and non-zero (zero
    variance, a constant margin): p = 0, i.e. significant.
    """
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return None
    mean = float(d.mean())
    if np.allclose(d, d[0], rtol=0.0, atol=1e-12):
        return mean, (1.0 if abs(d[0]) <= 1e-12 else 0.0)
    return mean, float(stats.ttest_1samp(d, 0.0).pvalue)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def al_curves(results: pd.DataFrame, label: str = "mean", skip_initial: bool = True) -> pd.DataFrame:
    """Per-experiment curves of the AL variants (references left out), without round 0 unless asked."""
    per = experiment_curves(results, label)
    per = per[per["strategy"] != FULL]
    return per[per["round"] > 0] if skip_initial else per


@dataclass
class PairTests:
    """``tests``: one row per (budget step, pair a < b by name) with >= 2 matched repetitions: n, mean of
    Dice_a - Dice_b, its two-sided p and the Holm-adjusted p over the pairs tested at that step.
    ``untested``: (step, pair) comparisons with fewer than 2 matched repetitions."""

    variants: list[str]
    steps: list[int]
    tests: pd.DataFrame
    untested: int


def pair_tests(results: pd.DataFrame, label: str = "mean", skip_initial: bool = True) -> PairTests:
    """Every pair of variants at every budget step, on repetitions matched by (fold, seed) (see
    :func:`paired_test`); Holm corrects over the pairs tested at one step, not across steps."""
    per = al_curves(results, label, skip_initial)
    variants = sorted(per[VARIANT].unique())
    steps = sorted(int(r) for r in per["round"].unique())
    table = per.pivot_table(index=["round", "fold", "seed"], columns=VARIANT, values="dice", aggfunc="mean")
    rows, untested = [], 0
    for step in steps:
        at = table.xs(step, level="round")
        tested = []
        for a, b in itertools.combinations(variants, 2):
            pair = at[[a, b]].dropna()
            result = paired_test(pair[a].to_numpy() - pair[b].to_numpy())
            if result is None:
                untested += 1
            else:
                tested.append({"round": step, "a": a, "b": b, "n": len(pair), "mean": result[0], "p": result[1]})
        if tested:
            adjusted = holm(np.array([t["p"] for t in tested]))
            rows += [{**t, "p_holm": float(p)} for t, p in zip(tested, adjusted, strict=True)]
    return PairTests(variants, steps, pd.DataFrame(rows, columns=TEST_COLUMNS), untested)


@dataclass
class PenaltyMatrix:
    """``matrix.loc[i, j]``: fraction of budget steps at which variant i is significantly better than j.
    ``phi[j]``: column mean over all variants (diagonal zero included), lower is better."""

    matrix: pd.DataFrame
    phi: pd.Series
    steps: list[int]
    correction: str | None
    n_tests: int = 0
    notes: list[str] = field(default_factory=list)


def penalty_matrix(results: pd.DataFrame, alpha: float = 0.05, correction: str | None = None,
                   label: str = "mean", skip_initial: bool = True) -> PenaltyMatrix:
    """Pairwise penalty matrix over budget steps (rounds) and repetitions matched by (fold, seed).

    At each step and for each pair (i, j): the paired differences Dice_i - Dice_j go into :func:`paired_test`;
    if p < alpha, the variant with the larger mean gets 1/L added to its row (L: number of steps). Pairs are
    variants (``variant``): two option settings of one strategy are compared like two strategies.
    ``correction="holm"`` adjusts the p-values of all pairs tested at a step together (Holm). Round 0 (the shared
    random initial set) is skipped unless ``skip_initial`` is False; full-label references are left out.
    """
    if correction not in (None, "holm"):
        raise ValueError(f"correction must be None or 'holm', got {correction!r}")
    found = pair_tests(results, label, skip_initial)
    names, steps = found.variants, found.steps
    matrix = pd.DataFrame(0.0, index=pd.Index(names, name="better"), columns=pd.Index(names, name="worse"))
    p_column = "p_holm" if correction == "holm" else "p"
    for test in found.tests.itertuples(index=False):
        if getattr(test, p_column) < alpha and test.mean != 0:
            winner, loser = (test.a, test.b) if test.mean > 0 else (test.b, test.a)
            matrix.loc[winner, loser] += 1.0 / len(steps)
    n_tests = len(found.tests)
    notes: list[str] = []
    if found.untested and not n_tests:
        notes.append("Fewer than 2 repetitions (fold, seed) per strategy: no paired test is possible, P stays 0")
    elif found.untested:
        notes.append(f"{found.untested} (step, pair) comparisons had fewer than 2 matched repetitions (fold, seed): "
                     "not tested, they add nothing to P")
    phi = matrix.mean(axis=0).rename("phi")
    return PenaltyMatrix(matrix, phi, steps, correction, n_tests, notes)


# --- differences to a baseline (the report's paired-difference figure) --------------------------------------------


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided t confidence interval of the mean of ``d`` (n - 1 degrees of freedom); (nan, nan) below 2
    values. Zero spread gives the mean twice."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return float(d.mean()) - half, float(d.mean()) + half


def choose_baseline(variants: list[str]) -> tuple[str, str]:
    """``random`` when present, else the first variant (in the report's order), with a note saying so."""
    ordered = order_strategies(variants)
    if "random" in ordered:
        return "random", ""
    return ordered[0], f"No random sampling here: differences are to {ordered[0]}, the first variant."


@dataclass
class PairedDifferences:
    """Dice of each variant minus the baseline's, repetition by repetition (same fold and seed).

    ``per_repetition``: variant, round, fold, seed, diff. ``summary``: per variant and round, n, mean and the 95%
    t-interval (``low``, ``high``; NaN for one repetition)."""

    baseline: str
    note: str
    per_repetition: pd.DataFrame
    summary: pd.DataFrame


def paired_differences(results: pd.DataFrame, baseline: str | None = None, label: str = "mean",
                       level: float = 0.95) -> PairedDifferences | None:
    """Differences to ``baseline`` (default: :func:`choose_baseline`) at every round, round 0 included; None with
    fewer than two AL variants."""
    per = al_curves(results, label, skip_initial=False)
    variants = sorted(per[VARIANT].unique())
    if len(variants) < 2:
        return None
    note = ""
    if baseline is None:
        baseline, note = choose_baseline(variants)
    wide = per.pivot_table(index=["round", "fold", "seed"], columns=VARIANT, values="dice", aggfunc="mean")
    diffs = wide.drop(columns=baseline).sub(wide[baseline], axis=0)
    long = diffs.stack().rename("diff").reset_index().rename(columns={VARIANT: "variant"})
    long = long[np.isfinite(long["diff"])][["variant", "round", "fold", "seed", "diff"]].reset_index(drop=True)
    rows = []
    for (variant, step), group in long.groupby(["variant", "round"]):
        low, high = t_interval(group["diff"].to_numpy(), level)
        rows.append({"variant": variant, "round": int(step), "n": len(group), "mean": float(group["diff"].mean()),
                     "low": low, "high": high})
    summary = pd.DataFrame(rows, columns=["variant", "round", "n", "mean", "low", "high"])
    return PairedDifferences(baseline, note, long, summary)
