"""How far apart the variants are, against the seed-to-seed spread: the paired-difference figure (each variant
minus the baseline, repetition by repetition) and the learning curves' caveat when their gap is within noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nnal.analysis.figures import MIN_SPAN
from nnal.analysis.load import FULL, VARIANT
from nnal.analysis.pairwise import PairedDifferences
from nnal.analysis.stats import learning_curves
from nnal.analysis.style import order_strategies, strategy_colors


def curve_caveat(results: pd.DataFrame, label: str = "mean") -> str:
    """A warning for the learning curves' caption when the gap between the AL variants at the last round cannot be
    told from seed-to-seed noise; "" when it can, or with fewer than two variants.

    Gap: largest minus smallest mean at the last round. Noise: the pooled SD over repetitions at that round,
    sqrt(mean of the variances of the variants with 2 or more repetitions). One repetition everywhere: no noise
    estimate at all."""
    curves = learning_curves(results, label)
    al = curves[curves["strategy"] != FULL]
    if al[VARIANT].nunique() < 2:
        return ""
    last = al[al["round"] == al["round"].max()]
    gap = float(last["dice_mean"].max() - last["dice_mean"].min())
    repeated = last[last["n"] >= 2]
    if repeated.empty:
        return (f"One repetition per variant: no band, and the gap between the lines ({gap:.3f} Dice at the last "
                "round) cannot be told from seed-to-seed noise.")
    sd = float(np.sqrt(np.mean(np.square(repeated["dice_std"]))))
    if gap < sd:
        return (f"At the last round the variants' means lie within {gap:.3f} Dice of each other, less than the "
                f"seed-to-seed SD ({sd:.3f}): the lines are not separated.")
    return ""


def symmetric_limits(values: np.ndarray, min_span: float = MIN_SPAN) -> tuple[float, float]:
    """Limits around 0 that hold ``values`` with an 8% margin and span at least ``min_span``: a difference of
    0.007 Dice must not fill the panel, and the side of 0 a variant lies on must stay in view."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    half = max(1.08 * float(np.abs(values).max()) if len(values) else 0.0, min_span / 2)
    return -half, half


def _final_panel(ax, diffs: PairedDifferences, variants: list[str], colors: dict[str, str]) -> None:
    """One row per variant: its differences at the last round (dots), their mean (diamond) and 95% interval."""
    last = int(diffs.per_repetition["round"].max())
    rng = np.random.default_rng(0)  # the dots' vertical jitter only keeps equal values apart
    for k, s in enumerate(variants):
        d = diffs.per_repetition[(diffs.per_repetition["variant"] == s) & (diffs.per_repetition["round"] == last)]
        row = diffs.summary[(diffs.summary["variant"] == s) & (diffs.summary["round"] == last)]
        y = len(variants) - 1 - k
        ax.scatter(d["diff"], y + rng.uniform(-0.12, 0.12, len(d)), s=16, color=colors[s], alpha=0.7, zorder=2)
        if len(row) and np.isfinite(row["low"].iloc[0]):
            ax.hlines(y, row["low"].iloc[0], row["high"].iloc[0], color=colors[s], lw=2.2, zorder=3)
        if len(row):
            ax.scatter(row["mean"], [y], marker="D", s=42, color=colors[s], edgecolors="black", zorder=4)
    ax.axvline(0.0, color="black", lw=1)
    shown = diffs.summary[diffs.summary["round"] == last]
    ax.set_xlim(*symmetric_limits(np.concatenate([diffs.per_repetition["diff"], shown["low"], shown["high"]])))
    ax.set_yticks(range(len(variants)), list(reversed(variants)))
    ax.set_ylim(-0.6, len(variants) - 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel(f"final Dice − {diffs.baseline}")
    ax.set_title(f"Last round (round {last})", fontsize=10)
    ax.grid(alpha=0.3, axis="x")


def _rounds_panel(ax, diffs: PairedDifferences, variants: list[str], colors: dict[str, str]) -> None:
    """Mean difference per round with its 95% interval, variants side by side within a round."""
    width = 0.6 / max(len(variants), 1)
    for k, s in enumerate(variants):
        rows = diffs.summary[diffs.summary["variant"] == s].sort_values("round")
        x = rows["round"].to_numpy() + (k - (len(variants) - 1) / 2) * width
        err = np.vstack([rows["mean"] - rows["low"], rows["high"] - rows["mean"]])
        ax.errorbar(x, rows["mean"], yerr=None if np.isnan(err).all() else err, marker="o", ms=4, lw=1.2,
                    capsize=2, color=colors[s], label=s)
    ax.axhline(0.0, color="black", lw=1)
    ax.set_ylim(*symmetric_limits(diffs.summary[["mean", "low", "high"]].to_numpy().ravel()))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(f"Dice − {diffs.baseline}")
    ax.set_title("Every round", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)


def plot_paired_differences(diffs: PairedDifferences) -> Figure | None:
    """Left: each variant's final Dice minus the baseline's per repetition (same fold and seed), mean and 95%
    t-interval. Right: the mean difference and interval at every round. None when no repetition is matched."""
    if diffs.per_repetition.empty:
        return None
    variants = order_strategies(diffs.per_repetition["variant"])
    colors = strategy_colors([*variants, diffs.baseline])
    fig = Figure(figsize=(12.0, max(3.4, 0.42 * len(variants) + 2.2)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.0, 1.25])
    _final_panel(left, diffs, variants, colors)
    _rounds_panel(right, diffs, variants, colors)
    fig.suptitle(f"Paired differences to {diffs.baseline} (same fold and seed): mean and 95% interval")
    return fig
