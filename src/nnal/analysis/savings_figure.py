"""The label-savings figure: slices each variant needs to reach the target (left) and the paired savings against
the random baselines (right), repetition by repetition, with the not-reached ones drawn as bounds."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nnal.analysis.load import VARIANT
from nnal.analysis.savings import AT_LEAST, AT_MOST, EXACT, LabelSavings
from nnal.analysis.style import order_strategies, strategy_colors

JITTER = 0.12  # rows units: keeps equal values of several repetitions apart


def _row(ax, y: float, values: np.ndarray, marker: str, color: str, rng: np.random.Generator, filled: bool) -> None:
    if len(values):
        ax.scatter(values, y + rng.uniform(-JITTER, JITTER, len(values)), s=22, marker=marker, alpha=0.8, zorder=2,
                   color=color if filled else "none", edgecolors=color)


def _summary_marks(ax, y: float, centre: float, low: float, high: float, color: str, bound: bool = False) -> None:
    """The diamond at ``centre`` (open for a mean of bounds) and the interval bar when there is one."""
    if np.isfinite(low) and np.isfinite(high):
        ax.hlines(y, low, high, color=color, lw=2.2, zorder=3)
    if np.isfinite(centre):
        ax.scatter([centre], [y], marker="D", s=42, color="white" if bound else color, edgecolors="black", zorder=4)


def _slices_panel(ax, savings: LabelSavings, variants: list[str], colors: dict[str, str]) -> None:
    """Reached repetitions as dots; not reached as open triangles at their last round's slices (they need more);
    diamond and bar: the mean and its t-interval when all reached, else the diamond alone at the median
    (not-reached counted as more; none when half or more did not reach)."""
    rng = np.random.default_rng(0)
    per, summary = savings.per_repetition, savings.summary.set_index(VARIANT)
    for k, v in enumerate(variants):
        y, rows = len(variants) - 1 - k, per[per[VARIANT] == v]
        _row(ax, y, rows.loc[rows["reached"], "slices"].to_numpy(), "o", colors[v], rng, True)
        _row(ax, y, rows.loc[~rows["reached"], "last_labeled"].to_numpy(), ">", colors[v], rng, False)
        row = summary.loc[v]
        centre = row["mean"] if np.isfinite(row["mean"]) else row["median"]  # the median has no interval here
        _summary_marks(ax, y, centre if np.isfinite(centre) else np.nan, row["low"], row["high"], colors[v])
    ax.set_yticks(range(len(variants)), list(reversed(variants)))
    ax.set_ylim(-0.6, len(variants) - 0.4)
    ax.set_xlim(0.0, 1.05 * float(np.nanmax(per[["slices", "last_labeled"]].to_numpy(dtype=np.float64))))
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel(f"labeled slices to {savings.fraction:.0%} of full-label Dice")
    ax.set_title("Slices needed (open ▷: not reached)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")


def _savings_panel(ax, savings: LabelSavings, colors: dict[str, str]) -> None:
    """One row per (variant, baseline): exact savings as dots, bounds as triangles pointing where the true value
    lies; diamond and bar: the mean and t-interval when all are exact, an open diamond for a mean of bounds."""
    rng = np.random.default_rng(0)
    rows = savings.savings
    for k, row in enumerate(rows.itertuples(index=False)):
        y = len(rows) - 1 - k
        mine = savings.pairs[(savings.pairs[VARIANT] == row.variant) & (savings.pairs["baseline"] == row.baseline)]
        for kind, marker, filled in ((EXACT, "o", True), (AT_LEAST, ">", False), (AT_MOST, "<", False)):
            _row(ax, y, mine.loc[mine["kind"] == kind, "saving"].to_numpy(), marker, colors[row.variant], rng, filled)
        _summary_marks(ax, y, row.mean, row.low, row.high, colors[row.variant], bound=row.bound in ("≥", "≤"))
    ax.axvline(0.0, color="black", lw=1)
    values = np.concatenate([savings.pairs["saving"], rows["low"], rows["high"]]).astype(np.float64)
    values = values[np.isfinite(values)]
    half = max(1.08 * float(np.abs(values).max()) if len(values) else 0.0, 1.0)
    ax.set_xlim(-half, half)
    ax.set_yticks(range(len(rows)), [f"{v}\nvs {b}" for v, b in zip(rows[VARIANT][::-1], rows["baseline"][::-1],
                                                                     strict=True)])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel("slices saved (baseline − variant)")
    ax.set_title("Saving per fold and seed (▷ ◁: bounds)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")


def plot_label_savings(savings: LabelSavings) -> Figure | None:
    """Left: slices needed per variant; right, when a random baseline is present: savings against it. None
    without a full-label reference or AL experiments."""
    if not savings.available:
        return None
    variants = order_strategies(savings.per_repetition[VARIANT])
    colors = strategy_colors(variants)
    both = not savings.savings.empty
    height = max(3.4, max(0.42 * len(variants), 0.55 * len(savings.savings)) + 2.2)  # two-line labels right
    fig = Figure(figsize=(12.0 if both else 6.5, height), layout="constrained")
    axes = fig.subplots(1, 2 if both else 1, squeeze=False)[0]
    _slices_panel(axes[0], savings, variants, colors)
    if both:
        _savings_panel(axes[1], savings, colors)
    fig.suptitle(f"Label savings: slices to reach {savings.fraction:.0%} of the full-label reference's Dice")
    return fig

