"""Figures over results tables: learning curves, penalty matrix, FG-Eff fits, batch uncertainty.

Every function returns a matplotlib ``Figure`` built without pyplot (no global backend state; renders with Agg).
A line, bar or point group is a variant (``variant``: a strategy plus its non-default options). Colours are fixed
per strategy name across all figures for a strategy at its defaults; other variants take further colours
(:func:`strategy_colors`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from nnal.analysis.load import FULL, VARIANT, with_variants
from nnal.analysis.pairwise import PenaltyMatrix
from nnal.analysis.stats import FgEfficiency, fg_curve, learning_curves
from nnal.analysis.style import order_strategies, strategy_colors


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.0, 4.2)) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


BAND_LIMIT = 3  # more AL variants than this in one panel: their ±1 SD bands merge, so they get panels of their own
MIN_SPAN = 0.1  # Dice: the least height of a curve's y-axis, so a gap of 0.01 never fills a panel


def bands_in_one_panel(results: pd.DataFrame) -> bool:
    """Whether the learning curves can carry ±1 SD bands in one panel (at most BAND_LIMIT AL variants)."""
    variants = with_variants(results)
    return variants.loc[variants["strategy"] != FULL, VARIANT].nunique() <= BAND_LIMIT


def dice_limits(values: np.ndarray, min_span: float = MIN_SPAN) -> tuple[float, float]:
    """y-limits holding ``values`` with a 5% margin, at least ``min_span`` tall (centred on the data), kept in
    [0, 1] by shifting rather than shrinking."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    pad = max(0.05 * (hi - lo), (min_span - (hi - lo)) / 2)
    lo, hi = lo - pad, hi + pad
    if lo < 0.0:
        lo, hi = 0.0, min(1.0, hi - lo)
    if hi > 1.0:
        lo, hi = max(0.0, lo - (hi - 1.0)), 1.0
    return lo, hi


def _spread_values(curves: pd.DataFrame, full: pd.DataFrame | None) -> np.ndarray:
    """Every mean and mean ± SD a panel shows or implies: the axis must hold the seed-to-seed spread too."""
    sd = curves["dice_std"].fillna(0.0)
    parts = [curves["dice_mean"], curves["dice_mean"] - sd, curves["dice_mean"] + sd]
    if full is not None and len(full):
        mean, std = full["dice_mean"].mean(), full["dice_mean"].std()
        parts.append(pd.Series([mean, mean - np.nan_to_num(std), mean + np.nan_to_num(std)]))
    return pd.concat(parts).to_numpy()


def _draw_curves(ax, curves: pd.DataFrame, x: str, colors: dict[str, str], full: pd.DataFrame | None,
                 bands: bool = True) -> None:
    for s in order_strategies(curves[VARIANT]):
        if s == FULL:
            continue
        g = curves[curves[VARIANT] == s].sort_values("round")
        n = int(g["n"].max())
        ax.plot(g[x], g["dice_mean"], marker="o", ms=4, color=colors[s], label=f"{s} (n={n})")
        if n > 1 and bands:
            ax.fill_between(g[x], g["dice_mean"] - g["dice_std"], g["dice_mean"] + g["dice_std"], color=colors[s],
                            alpha=0.18, linewidth=0)
    _draw_reference(ax, full, colors.get(FULL, "black"))
    ax.set_ylim(*dice_limits(_spread_values(curves[curves["strategy"] != FULL], full)))
    ax.grid(alpha=0.3)


def _draw_reference(ax, full: pd.DataFrame | None, color: str) -> None:
    if full is None or not len(full):
        return
    mean, std, n = full["dice_mean"].mean(), full["dice_mean"].std(), int(full["n"].sum())
    schedule = full["schedule"].iloc[0] if "schedule" in full.columns else ""
    ax.axhline(mean, color=color, ls="--", lw=1.2, label=f"full labels{schedule} (n={n})")
    if n > 1 and np.isfinite(std):
        ax.axhspan(mean - std, mean + std, color="black", alpha=0.06, linewidth=0)


def reference_schedule(full: pd.DataFrame) -> str:
    """The full-label reference's training, as its label says it (", 1,200 iterations"): it moves the line the
    curves are read against."""
    if not {"full_epochs", "iterations_per_epoch"} <= set(full.columns):
        return ""
    iterations = (pd.to_numeric(full["full_epochs"], errors="coerce")
                  * pd.to_numeric(full["iterations_per_epoch"], errors="coerce")).dropna().unique()
    return f", {int(iterations[0]):,} iterations" if len(iterations) == 1 else ""


def _reference(curves: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame | None:
    """The full-label reference's final rows of ``curves``, with its schedule (from ``results``) for the label."""
    full = curves[curves["strategy"] == FULL]
    if not len(full):
        return None
    return full.loc[full.groupby(VARIANT)["round"].idxmax()].assign(
        schedule=reference_schedule(results[results["strategy"] == FULL]))


def plot_learning_curves(results: pd.DataFrame, label: str = "mean") -> Figure:
    """Dice of ``label`` (``mean``: mean foreground Dice) against labeled slices and against % of the pool.

    Lines: mean over repetitions (folds, seeds); band: +-1 standard deviation, drawn only for up to BAND_LIMIT
    variants (more get :func:`plot_curve_panels`); dashed: full-label reference. The y-axis holds every mean ± SD
    and is at least MIN_SPAN tall.
    """
    curves = learning_curves(results, label)
    colors = strategy_colors(with_variants(results)[VARIANT].unique())
    full, bands = _reference(curves, results), bands_in_one_panel(results)
    fig, axes = _figure(2)
    what = "mean foreground Dice" if label == "mean" else f"Dice ({label})"
    for ax, x, xlabel in ((axes[0, 0], "n_labeled", "labeled slices"), (axes[0, 1], "pct_pool", "% of the pool")):
        _draw_curves(ax, curves, x, colors, full, bands)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(what)
    axes[0, 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.suptitle(f"Learning curves: {what} on the test cases" + ("" if bands else " (bands: per-variant panels)"))
    return fig


def plot_curve_panels(results: pd.DataFrame, label: str = "mean", ncols: int = 3) -> Figure | None:
    """Small multiples: one panel per AL variant with its mean and ±1 SD band over all variants' means drawn
    faintly, on one shared y-axis; the full-label reference dashed. None without AL variants."""
    curves = learning_curves(results, label)
    al = curves[curves["strategy"] != FULL]
    variants = order_strategies(al[VARIANT])
    if not variants:
        return None
    colors = strategy_colors(with_variants(results)[VARIANT].unique())
    full = _reference(curves, results)
    ncols = min(ncols, len(variants))
    nrows = int(np.ceil(len(variants) / ncols))
    fig, axes = _figure(ncols, nrows, (4.0, 2.9))
    limits = dice_limits(_spread_values(al, full))
    for ax, s in zip(axes.flat, variants, strict=False):
        for other in variants:
            g = al[al[VARIANT] == other].sort_values("round")
            ax.plot(g["n_labeled"], g["dice_mean"], color="#b8bec7", lw=0.9, zorder=1)
        _draw_curves(ax, al[al[VARIANT] == s], "n_labeled", colors, full)
        ax.set_ylim(*limits)
        ax.set_title(f"{s} (n={int(al.loc[al[VARIANT] == s, 'n'].max())})", fontsize=10, color=colors[s])
    for ax in list(axes.flat)[len(variants):]:
        ax.set_visible(False)
    fig.supxlabel("labeled slices", fontsize=10)
    fig.supylabel("mean foreground Dice" if label == "mean" else f"Dice ({label})", fontsize=10)
    fig.suptitle("One panel per variant: mean ± 1 SD over repetitions; grey: the other variants' means")
    return fig


def plot_class_curves(results: pd.DataFrame) -> Figure | None:
    """One panel per foreground class: its Dice against labeled slices (bands as in :func:`plot_learning_curves`).
    None when there are no class rows."""
    labels = [lab for lab in pd.unique(results["label"]) if lab != "mean"]
    if not labels:
        return None
    colors = strategy_colors(with_variants(results)[VARIANT].unique())
    bands = bands_in_one_panel(results)
    ncols = min(len(labels), 3)
    nrows = int(np.ceil(len(labels) / ncols))
    fig, axes = _figure(ncols, nrows, (5.0, 3.8))
    for k, lab in enumerate(labels):
        ax = axes.flat[k]
        curves = learning_curves(results, lab)
        _draw_curves(ax, curves, "n_labeled", colors, _reference(curves, results), bands)
        ax.set_title(str(lab))
        ax.set_xlabel("labeled slices")
        ax.set_ylabel("Dice")
    for ax in list(axes.flat)[len(labels):]:
        ax.set_visible(False)
    axes.flat[len(labels) - 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.suptitle("Learning curves per class")
    return fig


def plot_penalty_matrix(pm: PenaltyMatrix, title: str = "Pairwise penalty matrix") -> Figure:
    """Annotated heatmap of P (row i beats column j, fraction of budget steps) with the column means Phi below."""
    order = order_strategies(pm.matrix.index)
    matrix = pm.matrix.loc[order, order]
    n = len(order)
    fig = Figure(figsize=(max(0.95 * n + 3.0, 6.5), 0.6 * n + 2.4), layout="constrained")
    ax, ax_phi = fig.subplots(2, 1, height_ratios=[n, 1], sharex=True)
    shown = matrix.astype(float).copy()
    for s in order:
        shown.loc[s, s] = np.nan
    sns.heatmap(shown, ax=ax, annot=True, fmt=".2f", cmap="viridis", vmin=0.0, vmax=1.0, cbar=False,
                linewidths=0.5, linecolor="white", square=False)
    ax.set_ylabel("variant i (better)")
    ax.set_xlabel("")
    ax.tick_params(axis="y", rotation=0)
    phi = pm.phi.loc[order].to_frame().T
    phi.index = ["Φ"]
    sns.heatmap(phi, ax=ax_phi, annot=True, fmt=".2f", cmap="viridis", vmin=0.0, vmax=1.0, cbar=False,
                linewidths=0.5, linecolor="white")
    ax_phi.set_xlabel("variant j (worse)")
    ax_phi.set_ylabel("")
    ax_phi.tick_params(axis="y", rotation=0)
    for label in ax_phi.get_xticklabels():
        label.set(rotation=30, ha="right", rotation_mode="anchor")
    suffix = ", Holm-corrected" if pm.correction == "holm" else ", UNCORRECTED (no multiple-comparison correction)"
    ax.set_title(f"{title}{suffix}\n(cell: fraction of {len(pm.steps)} budget steps won; Φ: lower is better)",
                 fontsize=10)
    return fig


def plot_fg_efficiency(fg: FgEfficiency) -> Figure:
    """Left: annotated foreground fraction against labeled slices. Right: Dice against it, with the fitted
    curves Dice = c - a exp(-gamma (x - x0)) and gamma per variant in the legend."""
    pts = fg.points
    colors = strategy_colors(pts[VARIANT].unique())
    fig, axes = _figure(2)
    left, right = axes[0, 0], axes[0, 1]
    gammas = dict(zip(fg.table[VARIANT], fg.table["gamma"], strict=True)) if len(fg.table) else {}
    for s in order_strategies(pts[VARIANT]):
        g = pts[pts[VARIANT] == s]
        mean = g.groupby("round", as_index=False)[["n_labeled", "fg_fraction"]].mean()
        left.plot(mean["n_labeled"], 100 * mean["fg_fraction"], marker="o", ms=4, color=colors[s], label=s)
        right.scatter(100 * g["fg_fraction"], g["dice"], s=18, color=colors[s], alpha=0.8)
        gamma = gammas.get(s, np.nan)
        if np.isfinite(gamma) and np.isfinite(fg.c):
            xs = np.linspace(fg.x0, max(g["fg_fraction"].max(), fg.x0 + 1e-9), 100)
            right.plot(100 * xs, fg_curve(xs, gamma, fg.c, fg.a, fg.x0), color=colors[s], label=f"{s}: γ = {gamma:.2f}")
    if np.isfinite(fg.c):
        right.axhline(fg.c, color="black", ls="--", lw=1, label=f"c = {fg.c:.3f} ({fg.c_source})")
    left.set_xlabel("labeled slices")
    left.set_ylabel("% of the pool's foreground voxels annotated")
    right.set_xlabel("% of the pool's foreground voxels annotated")
    right.set_ylabel("mean foreground Dice")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    # outside the axes: inside, a legend of many variants covers the points (the colours are the left panel's too)
    right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Foreground efficiency (FG-Eff): higher γ reaches the full-label Dice with less foreground")
    return fig


def plot_batch_uncertainty(table: pd.DataFrame) -> Figure:
    """Grouped bars: total uncertainty of the selected batch per round and variant (mean, +-1 std over
    repetitions); hatched bars use the strategy's own score instead of class_uncertainty."""
    table = with_variants(table)
    colors = strategy_colors(table[VARIANT].unique())
    strategies = [s for s in order_strategies(table[VARIANT]) if s != FULL]
    rounds = sorted(table["round"].unique())
    agg = table.groupby([VARIANT, "round"], as_index=False).agg(
        mean=("uncertainty", "mean"), std=("uncertainty", "std"), measure=("measure", "first"))
    fig, axes = _figure(1, 1, (max(6.0, 0.45 * len(rounds) * len(strategies) + 3.0), 4.2))
    ax = axes[0, 0]
    width = 0.8 / max(len(strategies), 1)
    for k, s in enumerate(strategies):
        g = agg[agg[VARIANT] == s].set_index("round").reindex(rounds)
        xs = np.arange(len(rounds)) + (k - (len(strategies) - 1) / 2) * width
        own = (g["measure"] == "score").any()
        yerr = g["std"].to_numpy() if g["std"].notna().any() else None
        ax.bar(xs, g["mean"], width, yerr=yerr, color=colors[s], hatch="//" if own else None, edgecolor="white",
               capsize=2, label=f"{s} (own score)" if own else s)
    ax.set_xticks(np.arange(len(rounds)), [str(r) for r in rounds])
    ax.set_xlabel("sampling round")
    ax.set_ylabel("total uncertainty of the selected batch")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Batch uncertainty per round")
    return fig
