"""What the paired t-tests of the verdict and the penalty matrix could have found: per pair of variants, the smallest
difference in final Dice and in AUBC that the number of repetitions detects with 80% power given the observed
paired SD, and how many repetitions a given difference would need.

Power of the two-sided paired t-test (a one-sample t-test of the differences) with n pairs, effect size
delta = difference / SD and level alpha: with df = n - 1, t_c = t_{1 - alpha/2, df} and T' ~ noncentral t(df,
lambda = delta sqrt(n)),

    power(n, delta) = P(T' > t_c) + P(T' < -t_c)

(scipy.stats.nct; the same formula as statsmodels' TTestPower). The detectable difference solves
power(n, delta) = 0.8 for delta and multiplies it by the SD. Definitions are in ``docs/report.md``, "Power".
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd
from scipy import optimize, stats

from nnal.analysis.load import VARIANT
from nnal.analysis.pairwise import al_curves
from nnal.analysis.stats import aubc

ALPHA = 0.05
POWER = 0.8
ROUND_DIFFERENCE = 0.01  # Dice: a round number for "how many repetitions would this need"
MAX_REPETITIONS = 100_000  # beyond this the answer is "more than", not a number
POWER_COLUMNS = ["metric", "a", "b", "n", "m", "difference", "sd", "detectable", "detectable_holm", "n_observed",
                 "n_round"]


def paired_power(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs for the standardised effect ``effect`` (mean
    difference / SD of the differences) at level ``alpha``; NaN below 2 pairs."""
    if n < 2:
        return float("nan")
    df = n - 1
    critical = stats.t.ppf(1.0 - alpha / 2.0, df)
    shift = abs(effect) * np.sqrt(n)
    # the lower tail P(T' < -t_c) = P(nct(df, -shift) > t_c) is tiny but scipy's nct.cdf returns NaN far out in
    # it; it is bounded by P(T' < 0) = Phi(-shift), which also trims scipy's round-off there
    lower = float(stats.nct.sf(critical, df, -shift))
    lower = min(lower if np.isfinite(lower) else 0.0, float(stats.norm.cdf(-shift)))
    return float(stats.nct.sf(critical, df, shift)) + lower


@functools.lru_cache(maxsize=256)  # every pair of a section shares n and alpha: one root each
def detectable_effect(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The standardised effect that the paired t-test with ``n`` pairs finds with probability ``power``: the root
    of power(n, d) = ``power`` in d > 0 (NaN below 2 pairs)."""
    if n < 2:
        return float("nan")
    high = 1.0
    while paired_power(n, high, alpha) < power:  # power rises with d: widen until the root is bracketed
        high *= 2.0
    return float(optimize.brentq(lambda d: paired_power(n, d, alpha) - power, 0.0, high, xtol=1e-10))


def repetitions_needed(effect: float, alpha: float = ALPHA, power: float = POWER,
                       limit: int = MAX_REPETITIONS) -> float:
    """The smallest number of pairs n >= 2 with power(n, ``effect``) >= ``power``; inf for no effect or when more
    than ``limit`` would be needed."""
    if not np.isfinite(effect) or effect == 0:
        return float("inf")
    # the z-test's n, ((z_{1-alpha/2} + z_power) / effect)^2, is a lower bound (the t-test has less power at any n)
    # and usually 1-2 short of the answer: step from there instead of searching from 2
    z = stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(power)
    n = max(2, int(np.ceil((z / abs(effect)) ** 2)))
    while n <= limit and paired_power(n, effect, alpha) < power:
        n += 1
    return float(n) if n <= limit else float("inf")


def _per_repetition(results: pd.DataFrame, label: str) -> dict[str, pd.DataFrame]:
    """Per metric, a (fold, seed) x variant table: final Dice (the last AL round, as the verdict tests) and AUBC
    (over each experiment's own rounds, round 0 included, as the AUBC table)."""
    per = al_curves(results, label, skip_initial=False)
    if per.empty:
        return {}
    last = per[per["round"] == per["round"].max()]
    final = last.pivot_table(index=["fold", "seed"], columns=VARIANT, values="dice", aggfunc="mean")
    areas = pd.DataFrame([{"fold": f, "seed": s, VARIANT: v, "aubc": aubc(g["labeled_fraction"], g["dice"])}
                          for (f, s, v), g in per.groupby(["fold", "seed", VARIANT])])
    area = areas.pivot_table(index=["fold", "seed"], columns=VARIANT, values="aubc", aggfunc="mean")
    return {"final Dice": final, "AUBC": area}


def _pair_row(metric: str, a: str, b: str, d: np.ndarray, m: int, alpha: float, power: float,
              round_difference: float) -> dict:
    """One pair's power row; ``m``: pairs tested on this metric, for the Holm threshold alpha / m."""
    n, mean = len(d), float(d.mean())
    sd = float(d.std(ddof=1))
    strict = alpha / m
    if sd <= 1e-12:  # no spread: the test calls any constant non-zero margin significant (p = 0)
        return {"metric": metric, "a": a, "b": b, "n": n, "m": m, "difference": mean, "sd": 0.0, "detectable": 0.0,
                "detectable_holm": 0.0, "n_observed": 2.0 if abs(mean) > 1e-12 else float("inf"), "n_round": 2.0}
    return {"metric": metric, "a": a, "b": b, "n": n, "m": m, "difference": mean, "sd": sd,
            "detectable": detectable_effect(n, alpha, power) * sd,
            "detectable_holm": detectable_effect(n, strict, power) * sd,
            "n_observed": repetitions_needed(mean / sd, strict, power),
            "n_round": repetitions_needed(round_difference / sd, strict, power)}


def power_table(results: pd.DataFrame, alpha: float = ALPHA, power: float = POWER,
                round_difference: float = ROUND_DIFFERENCE, label: str = "mean") -> pd.DataFrame:
    """Per metric (final Dice, AUBC) and pair of AL variants with 2 or more repetitions matched by (fold, seed),
    ``a`` the one with the larger mean: n, m (pairs so tested on that metric: Holm's strictest threshold is
    alpha / m), the mean of a - b (>= 0), the SD of the differences, the difference detectable with ``power`` at
    ``alpha`` (``detectable``) and at alpha / m (``detectable_holm``), and the repetitions needed at alpha / m for
    the observed difference (``n_observed``) and for ``round_difference`` (``n_round``; inf: more than
    MAX_REPETITIONS or no difference).
    """
    rows = []
    for metric, table in _per_repetition(results, label).items():
        pairs = []
        for a, b in itertools.combinations(sorted(table.columns), 2):
            both = table[[a, b]].dropna()
            if len(both) >= 2:
                d = both[a].to_numpy() - both[b].to_numpy()
                pairs.append((a, b, d) if d.mean() >= 0 else (b, a, -d))  # larger mean first, as in the verdict
        rows += [_pair_row(metric, a, b, d, len(pairs), alpha, power, round_difference) for a, b, d in pairs]
    return pd.DataFrame(rows, columns=POWER_COLUMNS)


def _span(values: pd.Series, digits: int = 3) -> str:
    low, high = float(values.min()), float(values.max())
    return f"{low:.{digits}f}" if np.isclose(low, high) else f"{low:.{digits}f}-{high:.{digits}f}"


def _needed(values: pd.Series) -> str:
    finite = values[np.isfinite(values)]
    if finite.empty:
        return f"more than {MAX_REPETITIONS:,}"
    shown = f"{int(finite.min())}" if finite.min() == finite.max() else f"{int(finite.min())}-{int(finite.max())}"
    return shown + ("" if len(finite) == len(values) else f" (more than {MAX_REPETITIONS:,} for some)")


def power_sentence(rows: pd.DataFrame, alpha: float = ALPHA, power: float = POWER,
                   round_difference: float = ROUND_DIFFERENCE, lead: str = "That") -> str:
    """Whether pairs of final Dice that were not found different mean "no difference" or "too few repetitions".

    ``rows``: the final-Dice rows of :func:`power_table` for the pairs without a significant difference. A pair
    reads as "no difference" when its detectable difference after Holm is at most ``round_difference``, else as
    "too few repetitions"; "" without rows. ``lead`` starts the sentence (what "that" refers to)."""
    if rows.empty:
        return ""
    m, n = int(rows["m"].iloc[0]), _span(rows["n"], 0)
    level = f"α = {alpha}" if m == 1 else f"α = {alpha}/{m} after Holm"
    small = rows["detectable_holm"] <= round_difference
    what = f"with {power:.0%} power ({level}, n = {n}, the observed paired SD)"
    if small.all():
        return (f"{lead} reads as no difference: {what} a difference in final Dice of "
                f"{_span(rows['detectable_holm'])} or more would have been found.")
    large = rows[~small]
    text = (f"{lead} may be too few repetitions rather than no difference: {what} only a difference in final Dice of "
            f"{_span(large['detectable_holm'])} or more would be found; detecting {round_difference} Dice would need "
            f"{_needed(large['n_round'])} repetitions")
    if small.any():
        k = int(small.sum())
        text += (f"; {k} of the {len(rows)} pairs could detect {round_difference} Dice, so for "
                 f"{'that pair' if k == 1 else 'those'} it does mean no difference")
    return text + "."
