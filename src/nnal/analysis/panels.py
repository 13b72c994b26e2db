"""Figures over plain arrays (the caller supplies the data): uncertainty/error correlation (paper Fig. 6), 2-D
embedding of gradient embeddings (Fig. 3), example segmentations (Figs. 10-12)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nnal.analysis.stats import correlation

STATUS_STYLE = {  # status -> (colour, marker, zorder)
    "unlabeled": ("#c7c7c7", "o", 1),
    "labeled": ("#1f77b4", "o", 2),
    "query": ("#ff7f0e", "o", 3),
    "selected": ("#d62728", "*", 4),
}
LABEL_COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c"]


def plot_correlations(error: np.ndarray, predictors: Mapping[str, np.ndarray],
                      error_label: str = "misclassified pixels") -> Figure:
    """One scatter panel per predictor (e.g. {"predictive uncertainty": u, "gradient length": g}) against the
    segmentation error, with Pearson r and p in the title (:func:`nnal.analysis.stats.correlation`)."""
    n = max(len(predictors), 1)
    fig = Figure(figsize=(4.8 * n, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, values) in zip(axes, predictors.items(), strict=False):
        x, y = np.asarray(values, dtype=np.float64).ravel(), np.asarray(error, dtype=np.float64).ravel()
        r, p = correlation(x, y)
        ax.scatter(x, y, s=10, alpha=0.6, color="#1f77b4", edgecolors="none")
        keep = np.isfinite(x) & np.isfinite(y)
        if np.isfinite(r) and keep.sum() >= 2:
            slope, icept = np.polyfit(x[keep], y[keep], 1)
            xs = np.linspace(x[keep].min(), x[keep].max(), 2)
            ax.plot(xs, slope * xs + icept, color="#d62728", lw=1.2)
        # a long predictor name in one line runs into the next panel's title: wrap it, numbers on a line of their own
        ax.set_title(f"{_wrapped(name)}\nr = {r:.2f}, p = {p:.2g} (n = {int(keep.sum())})", fontsize=10)
        ax.set_xlabel(_wrapped(name))
        ax.set_ylabel(error_label)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(6))
        ax.grid(alpha=0.3)
    fig.suptitle("Correlation of slice uncertainty with segmentation error")
    return fig


def _wrapped(text: str, width: int = 36) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def pca_2d(features: np.ndarray) -> np.ndarray:
    """First two principal components of ``features`` (N, d), by SVD of the centred data."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    x = x - x.mean(axis=0)
    if x.shape[1] == 1:
        return np.column_stack([x[:, 0], np.zeros(len(x))])
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :2] * s[:2]


def embed_2d(features: np.ndarray, method: str = "tsne", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``features`` (N, d): t-SNE (scikit-learn; reduced to 50 PCA dimensions first when wider)
    or PCA. Falls back to PCA without scikit-learn or below 5 points. Returns (coords, method used)."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    if method == "pca" or len(x) < 5:
        return pca_2d(x), "pca"
    from sklearn.decomposition import PCA  # declared; imported when a t-SNE is drawn (seconds to load)
    from sklearn.manifold import TSNE
    if x.shape[1] > 50:
        x = PCA(n_components=min(50, len(x)), random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return coords, "tsne"


def plot_embedding(coords: np.ndarray, status: np.ndarray, uncertainty: np.ndarray | None = None,
                   title: str = "t-SNE of gradient embeddings") -> Figure:
    """Scatter of 2-D ``coords`` (N, 2) coloured by ``status`` (labeled / unlabeled / query / selected), marker
    area proportional to ``uncertainty`` when given."""
    coords = np.asarray(coords, dtype=np.float64)
    status = np.asarray(status).astype(str)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(status):
        raise ValueError(f"coords must be (N, 2) and status (N,), got {coords.shape} and {status.shape}")
    unknown = sorted(set(status) - set(STATUS_STYLE))
    if unknown:
        raise ValueError(f"unknown status value(s) {', '.join(unknown)}; use {', '.join(STATUS_STYLE)}")
    sizes = np.full(len(coords), 14.0)
    if uncertainty is not None:
        u = np.nan_to_num(np.asarray(uncertainty, dtype=np.float64).ravel(), nan=0.0)
        span = np.ptp(u)
        sizes = 6.0 + 80.0 * ((u - u.min()) / span if span > 0 else np.zeros_like(u))
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    for name, (color, marker, z) in STATUS_STYLE.items():
        m = status == name
        if m.any():
            ax.scatter(coords[m, 0], coords[m, 1], s=sizes[m] * (2.5 if marker == "*" else 1.0), c=color,
                       marker=marker, alpha=0.75, edgecolors="none", zorder=z, label=f"{name} ({int(m.sum())})")
    ax.set_xlabel("dimension 1")
    ax.set_ylabel("dimension 2")
    ax.legend(fontsize=8, markerscale=1.2)
    ax.set_title(title + ("" if uncertainty is None else " (size: uncertainty)"))
    return fig


def _overlay(ax, image: np.ndarray, seg: np.ndarray | None, n_labels: int, title: str) -> None:
    ax.imshow(image, cmap="gray", interpolation="nearest")
    if seg is not None:
        seg = np.asarray(seg)
        masked = np.ma.masked_where(seg == 0, seg)
        cmap = ListedColormap(LABEL_COLORS[: max(n_labels, 1)])
        ax.imshow(masked, cmap=cmap, vmin=1, vmax=max(n_labels, 1) + 1e-9, alpha=0.5, interpolation="nearest")
    ax.set_title(_wrapped(title, 28), fontsize=9)
    ax.set_axis_off()


def dice_2d(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean Dice over the foreground labels present in ``gt`` or ``pred``; NaN when both are empty."""
    labels = sorted((set(np.unique(gt)) | set(np.unique(pred))) - {0})
    if not labels:
        return float("nan")
    scores = [2.0 * np.sum((gt == k) & (pred == k)) / (np.sum(gt == k) + np.sum(pred == k)) for k in labels]
    return float(np.mean(scores))


def plot_segmentations(image: np.ndarray, gt: np.ndarray, predictions: Mapping[str, np.ndarray],
                       per_row: int = 4, title: str = "Example segmentations") -> Figure:
    """Image, ground truth and predictions overlaid on the image: the first row holds the image, the ground truth
    and any prediction whose label contains "full"; the others follow ``per_row`` per row in the given order
    (e.g. {"random, round 1": p1, "random, round 5": p5, "usimf, round 1": ...}), each titled with its Dice."""
    image, gt = np.asarray(image, dtype=np.float64), np.asarray(gt)
    if image.shape != gt.shape:
        raise ValueError(f"image {image.shape} and ground truth {gt.shape} differ in shape")
    for name, pred in predictions.items():
        if np.shape(pred) != gt.shape:
            raise ValueError(f"prediction {name!r} has shape {np.shape(pred)}, expected {gt.shape}")
    n_labels = int(max([gt.max(), *(np.max(p) for p in predictions.values())], default=1))
    top = [k for k in predictions if "full" in k.lower()]
    rest = [k for k in predictions if k not in top]
    ncols = max(2 + len(top), per_row)
    nrows = 1 + int(np.ceil(len(rest) / per_row))
    fig = Figure(figsize=(2.6 * ncols, 2.7 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    _overlay(axes[0, 0], image, None, n_labels, "image")
    _overlay(axes[0, 1], image, gt, n_labels, "ground truth")
    for k, name in enumerate(top):
        _overlay(axes[0, 2 + k], image, predictions[name], n_labels,
                 f"{name} (Dice {dice_2d(gt, np.asarray(predictions[name])):.2f})")
    for k, name in enumerate(rest):
        pred = np.asarray(predictions[name])
        _overlay(axes[1 + k // per_row, k % per_row], image, pred, n_labels, f"{name} (Dice {dice_2d(gt, pred):.2f})")
    fig.suptitle(title)
    return fig
