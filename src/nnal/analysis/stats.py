"""Statistics over results tables: learning curves, AUBC, final Dice, FG-Eff, correlation (the pairwise tests are
in :mod:`nnal.analysis.pairwise`).

Every function takes the table of :func:`nnal.analysis.load.load_results` (or one with the same columns) and
groups by its ``variant`` column wherever a strategy is a group (a table without one: variant = strategy); the
tables returned carry ``variant`` and, next to it, its ``strategy``. Callers pass one dataset at a time.
Definitions are in ``docs/report.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, stats

from nnal.analysis.load import FULL, KEYS, VARIANT, with_variants

GROUP = [VARIANT, "strategy"]  # a variant names its strategy, so the pair groups as the variant alone does
CURVE_COLUMNS = [*KEYS, VARIANT, "round", "n_labeled", "labeled_fraction", "fg_fraction", "dice"]


def experiment_curves(results: pd.DataFrame, label: str = "mean") -> pd.DataFrame:
    """One row per (experiment, round): Dice of ``label`` averaged over the test cases (NaN cases skipped)."""
    rows = with_variants(results[results["label"] == label])
    extra = [c for c in ("labeled_fraction", "fg_fraction") if c in rows.columns]
    frame = rows.groupby([*KEYS, VARIANT, "round", "n_labeled", *extra], as_index=False, dropna=False)["dice"].mean()
    for col in ("labeled_fraction", "fg_fraction"):
        if col not in frame.columns:
            frame[col] = np.nan
    return frame[CURVE_COLUMNS].sort_values([*KEYS, "round"], ignore_index=True)


def learning_curves(results: pd.DataFrame, label: str = "mean") -> pd.DataFrame:
    """Mean and spread over repetitions (folds, seeds) per (variant, round).

    Columns: variant, strategy, round, n_labeled, pct_pool (100 x labeled fraction), dice_mean, dice_std (ddof 1;
    NaN for one repetition), n (repetitions).
    """
    per = experiment_curves(results, label)
    grouped = per.groupby([*GROUP, "round"], as_index=False)
    return grouped.agg(n_labeled=("n_labeled", "mean"), pct_pool=("labeled_fraction", lambda v: 100 * v.mean()),
                       dice_mean=("dice", "mean"), dice_std=("dice", "std"), n=("dice", "count"))


def aubc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under the budget curve normalised to [0, 1]: trapezoid of y over x divided by (max x - min x).

    Points are sorted by x; one point gives its y; NaN points are dropped.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) == 0:
        return float("nan")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if x[-1] == x[0]:
        return float(y.mean())
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def _summary(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    return frame.groupby(GROUP, as_index=False).agg(mean=(value, "mean"), std=(value, "std"), n=(value, "count"))


def aubc_table(results: pd.DataFrame, label: str = "mean") -> pd.DataFrame:
    """AUBC per experiment over its labeled-fraction axis, then mean/std/n per variant (full-label references,
    a single point, are left out)."""
    per = experiment_curves(results, label)
    per = per[per["strategy"] != FULL]
    values = [{VARIANT: v, "strategy": s, "aubc": aubc(g["labeled_fraction"], g["dice"])} for (_, v, s), g in
              per.groupby(["experiment", *GROUP])]
    return _summary(pd.DataFrame(values, columns=[*GROUP, "aubc"]), "aubc")


def final_dice(results: pd.DataFrame, label: str = "mean") -> pd.DataFrame:
    """Dice of each experiment's last round, then mean/std/n per variant, with the mean labeled slices."""
    per = experiment_curves(results, label)
    last = per.loc[per.groupby("experiment")["round"].idxmax()]
    table = _summary(last, "dice")
    return table.merge(last.groupby(GROUP, as_index=False)["n_labeled"].mean(), on=GROUP)


# --- foreground efficiency (nnActive, Lüth et al.) --------------------------------------------------------------


def fg_curve(x: np.ndarray, gamma: float, c: float, a: float, x0: float) -> np.ndarray:
    """Dice(x) = c - a * exp(-gamma * (x - x0))."""
    return c - a * np.exp(-gamma * (np.asarray(x, dtype=np.float64) - x0))


@dataclass
class FgEfficiency:
    """Fitted FG-Eff curves: ``table`` has variant, strategy, gamma, gamma_se, n (points); shared c, a, x0."""

    table: pd.DataFrame
    c: float
    c_source: str
    a: float
    x0: float
    points: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def fit_gamma(points: pd.DataFrame, c: float | None, x0: float, y0: float) -> tuple[pd.DataFrame, float]:
    """Fit gamma per variant to ``points`` (variant, x, dice) with the curve through (x0, y0).

    With ``c`` given, a = c - y0 is fixed and one gamma per variant is fitted (scipy curve_fit). Without, c is
    fitted jointly, shared by all variants and bounded to [max observed Dice, 1]. Returns (table of variant, gamma,
    gamma_se, n; c).
    """
    groups = {s: g for s, g in points.groupby(VARIANT) if g["x"].nunique() >= 2}
    rows = []
    if not groups:
        return pd.DataFrame(columns=[VARIANT, "gamma", "gamma_se", "n"]), float("nan") if c is None else c
    if c is None:
        names = sorted(groups)
        xs = [groups[s]["x"].to_numpy() for s in names]
        ys = [groups[s]["dice"].to_numpy() for s in names]
        lo = max(float(np.max(np.concatenate(ys))), y0 + 1e-6)
        if lo >= 1.0:
            return pd.DataFrame(columns=[VARIANT, "gamma", "gamma_se", "n"]), float("nan")

        def residual(theta: np.ndarray) -> np.ndarray:
            return np.concatenate([fg_curve(x, g, theta[0], theta[0] - y0, x0) - y
                                   for x, y, g in zip(xs, ys, theta[1:], strict=True)])

        span = max(float(np.mean(np.concatenate(xs)) - x0), 1e-6)
        start = np.array([min(lo + 0.5 * (1.0 - lo), 1.0 - 1e-9)] + [1.0 / span] * len(names))
        bounds = ([lo] + [-np.inf] * len(names), [1.0] + [np.inf] * len(names))
        fit = optimize.least_squares(residual, start, bounds=bounds)
        se = _standard_errors(fit.jac, fit.fun, len(fit.x))
        for k, s in enumerate(names):
            rows.append({VARIANT: s, "gamma": float(fit.x[1 + k]), "gamma_se": se[1 + k], "n": len(groups[s])})
        return pd.DataFrame(rows), float(fit.x[0])
    for s in sorted(groups):
        g = groups[s]
        x, y = g["x"].to_numpy(dtype=np.float64), g["dice"].to_numpy(dtype=np.float64)
        span = max(float(np.mean(x) - x0), 1e-6)
        try:
            popt, pcov = optimize.curve_fit(lambda x, gamma: fg_curve(x, gamma, c, c - y0, x0), x, y,
                                            p0=[1.0 / span], maxfev=10000)
            gamma, se = float(popt[0]), float(np.sqrt(pcov[0, 0])) if np.isfinite(pcov[0, 0]) else np.nan
        except (RuntimeError, ValueError):
            gamma, se = np.nan, np.nan
        rows.append({VARIANT: s, "gamma": gamma, "gamma_se": se, "n": len(g)})
    return pd.DataFrame(rows, columns=[VARIANT, "gamma", "gamma_se", "n"]), float(c)


def _standard_errors(jac: np.ndarray, residuals: np.ndarray, n_params: int) -> np.ndarray:
    dof = len(residuals) - n_params
    if dof <= 0:
        return np.full(n_params, np.nan)
    try:
        cov = np.linalg.pinv(jac.T @ jac) * float(residuals @ residuals) / dof
    except np.linalg.LinAlgError:
        return np.full(n_params, np.nan)
    return np.sqrt(np.clip(np.diag(cov), 0.0, None))


def fg_efficiency(results: pd.DataFrame, c: float | None = None, label: str = "mean") -> FgEfficiency:
    """Foreground efficiency per variant (nnActive): fit Dice(x) = c - a exp(-gamma (x - x0)).

    x: fraction of the pool's foreground voxels that are annotated (``fg_fraction``), one point per (experiment,
    round). x0, y0: mean x and Dice of round 0 over all AL experiments; a = c - y0. c: the given value, else the
    mean final Dice of the ``full`` experiments, else fitted (see :func:`fit_gamma`).
    """
    per = experiment_curves(results, label)
    notes: list[str] = []
    full = per[per["strategy"] == FULL]
    al = per[(per["strategy"] != FULL) & per["fg_fraction"].notna() & per["dice"].notna()]
    c_source = "given"
    if c is None and len(full):
        c = float(full.loc[full.groupby("experiment")["round"].idxmax(), "dice"].mean())
        c_source = "full-label experiments"
    elif c is None:
        c_source = "fitted (no full-label experiment)"
    start = al[al["round"] == 0]
    empty = pd.DataFrame(columns=[*GROUP, "gamma", "gamma_se", "n"])
    if start.empty:
        notes.append("No round-0 points with annotated-voxel counts: no fit")
        return FgEfficiency(empty, np.nan if c is None else c, c_source, np.nan, np.nan, al, notes)
    x0, y0 = float(start["fg_fraction"].mean()), float(start["dice"].mean())
    if c is not None and c <= y0:
        notes.append(f"c = {c:.4f} is not above the initial Dice {y0:.4f}: no fit")
        return FgEfficiency(empty, c, c_source, c - y0, x0, al, notes)
    points = al.rename(columns={"fg_fraction": "x"})[[VARIANT, "x", "dice"]]
    table, c_fit = fit_gamma(points, c, x0, y0)
    mismatch = reference_mismatch(results) if c_source == "full-label experiments" else None
    if mismatch:
        notes.append(mismatch)
    above = _curves_above(al, c) if c is not None else []
    if above:
        # the curve never exceeds c, so points above it push gamma to whatever value the optimiser stops at
        table.loc[table[VARIANT].isin(above), ["gamma", "gamma_se"]] = np.nan
        notes.append(f"The mean Dice of {', '.join(above)} rises above c = {c:.4f} ({c_source}), which the curve "
                     "cannot reach past: their gamma is not identified and is left blank. A full-label reference "
                     "trained for fewer iterations than the AL rounds in total can cause this.")
    strategy_of = dict(zip(al[VARIANT], al["strategy"], strict=True))
    table.insert(1, "strategy", table[VARIANT].map(strategy_of))
    if c is None and np.isfinite(c_fit) and (c_fit >= 1.0 - 1e-6 or c_fit <= points["dice"].max() + 1e-6):
        notes.append(f"The fitted c = {c_fit:.4f} lies on its bound [max observed Dice, 1]: the curves do not "
                     "saturate yet, so gamma is only a rough summary; add a full-label experiment")
    if table.empty:
        notes.append("No strategy has points at 2 or more annotated-foreground fractions: no fit")
    return FgEfficiency(table, c_fit, c_source, c_fit - y0, x0, al, notes)


def reference_mismatch(results: pd.DataFrame) -> str | None:
    """Why the full-label reference is not comparable with the AL experiments, if its test cases differ; else None.

    Experiments with a subset of the cases (``pool_cases``, ``test_cases``) draw it by seed: a reference of one
    seed is scored on other test cases than another seed's experiments, which moves Dice more than the strategies do.
    """
    full, al = results[results["strategy"] == FULL], results[results["strategy"] != FULL]
    if full.empty or al.empty:
        return None
    covered = set(zip(full["fold"], full["case"], strict=True))
    missing = {(f, c) for f, c in zip(al["fold"], al["case"], strict=True)} - covered
    if not missing:
        return None
    return (f"The full-label reference was not evaluated on {len(missing)} of the AL experiments' test cases (a "
            "seed that draws its own test subset?): its Dice and c compare different test sets. Run the reference "
            "with every seed (a grid does when pool_cases or test_cases is set).")


def _curves_above(al: pd.DataFrame, c: float) -> list[str]:
    """Variants whose mean Dice (over repetitions) exceeds c in some round."""
    curve = al.groupby([VARIANT, "round"])["dice"].mean()
    return sorted({variant for (variant, _), dice in curve.items() if dice > c})


def correlation(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson r and its two-sided p-value over the finite pairs; (nan, nan) below 3 pairs or for constant data."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    result = stats.pearsonr(x, y)
    return float(result.statistic), float(result.pvalue)
