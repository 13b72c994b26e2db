"""Figures over results tables: learning curves, penalty matrix, FG-Eff fits, batch uncertainty.

Every function returns a matplotlib ``Figure`` built without pyplot (no global backend state; renders with Agg).
A line, bar or point group is a variant (``variant``: a strategy plus its non-default options). Colours are fixed
per strategy name across all figures for a strategy at its defaults; other variants take further colours
(:func:`strategy_colors`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colormaps
from matplotlib.figure import Figure

from nnal.analysis.load import FULL, VARIANT, with_variants
from nnal.analysis.stats import FgEfficiency, PenaltyMatrix, fg_curve, learning_curves

# the paper's strategy order; unknown names follow alphabetically
KNOWN_ORDER = ["random", "entropy", "meanstd", "bald", "coreset", "badge", "stochastic-batches", "usimc", "usimf"]
_PALETTE = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#d62728", "#17becf",
            "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]


def _base(name: str) -> str:
    """The strategy of a variant label (``usimf[eta=0.5]`` -> ``usimf``, see nnal.strategies.format_variant)."""
    return name.partition("[")[0]


def order_strategies(strategies: Iterable[str]) -> list[str]:
    """Strategies or variants in the paper's order of their strategy, unknown strategies after them alphabetically,
    ``full`` last; the variants of one strategy together, its default (the bare name) first."""
    def key(name: str) -> tuple[int, str, int, str]:
        base = _base(name)
        rank = KNOWN_ORDER.index(base) if base in KNOWN_ORDER else len(KNOWN_ORDER) + (base == FULL)
        return rank, base, name != base, name

    return sorted(set(strategies), key=key)


def strategy_colors(strategies: Iterable[str]) -> dict[str, str]:
    """A fixed colour per strategy: known names at their defaults keep theirs in every report, ``full`` is black;
    other strategies and variants take the remaining colours in order (tab20 after the palette)."""
    fixed = set(_PALETTE[: len(KNOWN_ORDER)]) | {"#000000"}
    spare = _PALETTE[len(KNOWN_ORDER):] + [c for c in (_hex(rgb) for rgb in colormaps["tab20"].colors)
                                           if c not in fixed]
    colors, k = {}, 0
    for s in order_strategies(strategies):
        if s == FULL:
            colors[s] = "#000000"
        elif s in KNOWN_ORDER:
            colors[s] = _PALETTE[KNOWN_ORDER.index(s)]
        else:
            colors[s] = spare[k % len(spare)]  # past 26 variants colours repeat; the legend still names each line
            k += 1
    return colors


def _hex(rgb: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(255 * v):02x}" for v in rgb[:3])


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.0, 4.2)) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _draw_curves(ax, curves: pd.DataFrame, x: str, colors: dict[str, str], full: pd.DataFrame | None) -> None:
    for s in order_strategies(curves[VARIANT]):
        if s == FULL:
            continue
        g = curves[curves[VARIANT] == s].sort_values("round")
        n = int(g["n"].max())
        ax.plot(g[x], g["dice_mean"], marker="o", ms=4, color=colors[s], label=f"{s} (n={n})")
        if n > 1:
            ax.fill_between(g[x], g["dice_mean"] - g["dice_std"], g["dice_mean"] + g["dice_std"], color=colors[s],
                            alpha=0.18, linewidth=0)
    if full is not None and len(full):
        mean, std, n = full["dice_mean"].mean(), full["dice_mean"].std(), int(full["n"].sum())
        ax.axhline(mean, color=colors.get(FULL, "black"), ls="--", lw=1.2, label=f"full labels (n={n})")
        if n > 1 and np.isfinite(std):
            ax.axhspan(mean - std, mean + std, color="black", alpha=0.06, linewidth=0)
    ax.grid(alpha=0.3)


def plot_learning_curves(results: pd.DataFrame, label: str = "mean") -> Figure:
    """Dice of ``label`` (``mean``: mean foreground Dice) against labeled slices and against % of the pool.

    Lines: mean over repetitions (folds, seeds); band: +-1 standard deviation; dashed: full-label reference.
    """
    curves = learning_curves(results, label)
    colors = strategy_colors(with_variants(results)[VARIANT].unique())
    full = curves[curves["strategy"] == FULL]
    full = full.loc[full.groupby(VARIANT)["round"].idxmax()] if len(full) else None
    fig, axes = _figure(2)
    what = "mean foreground Dice" if label == "mean" else f"Dice ({label})"
    for ax, x, xlabel in ((axes[0, 0], "n_labeled", "labeled slices"), (axes[0, 1], "pct_pool", "% of the pool")):
        _draw_curves(ax, curves, x, colors, full)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(what)
    axes[0, 1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Learning curves: {what} on the test cases")
    return fig


def plot_class_curves(results: pd.DataFrame) -> Figure | None:
    """One panel per foreground class: its Dice against labeled slices. None when there are no class rows."""
    labels = [lab for lab in pd.unique(results["label"]) if lab != "mean"]
    if not labels:
        return None
    colors = strategy_colors(with_variants(results)[VARIANT].unique())
    ncols = min(len(labels), 3)
    nrows = int(np.ceil(len(labels) / ncols))
    fig, axes = _figure(ncols, nrows, (5.0, 3.8))
    for k, lab in enumerate(labels):
        ax = axes.flat[k]
        curves = learning_curves(results, lab)
        full = curves[curves["strategy"] == FULL]
        _draw_curves(ax, curves, "n_labeled", colors, full.loc[full.groupby(VARIANT)["round"].idxmax()]
                     if len(full) else None)
        ax.set_title(str(lab))
        ax.set_xlabel("labeled slices")
        ax.set_ylabel("Dice")
    for ax in list(axes.flat)[len(labels):]:
        ax.set_visible(False)
    axes.flat[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Learning curves per class")
    return fig


def plot_penalty_matrix(pm: PenaltyMatrix, title: str = "Pairwise penalty matrix") -> Figure:
    """Annotated heatmap of P (row i beats column j, fraction of budget steps) with the column means Phi below."""
    order = order_strategies(pm.matrix.index)
    matrix = pm.matrix.loc[order, order]
    n = len(order)
    fig = Figure(figsize=(max(1.1 * n + 3.0, 6.5), 0.8 * n + 2.4), layout="constrained")
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
    for a in (ax, ax_phi):
        a.tick_params(axis="x", rotation=30)
    suffix = ", Holm-corrected" if pm.correction == "holm" else ""
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
        ax.legend(fontsize=8, loc="lower right")
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
    ax.legend(fontsize=8)
    ax.set_title("Batch uncertainty per round")
    return fig
