"""USIM's query set (paper section 3.1, Appendix D): per-class weights, uncertainty-weighted draws of Q pool rows,
and Q itself from the elbow of the sorted uncertainty (kneed's Kneedle, as the paper's code).

Positions index the pool arrays (rows of the score arrays), not slice ids.
"""

from __future__ import annotations

import numpy as np

from nnal.strategies.checks import count as _count
from nnal.strategies.checks import finite_array as _finite

QUERY_MODES = ("weighted", "uniform", "max-uncertainty")


def class_weights(labeled_class_voxels: np.ndarray) -> np.ndarray:
    """w_c = 1 / (annotated voxels of foreground class c); float64, shape (C,).

    A class with no annotated voxel gets the largest weight of the annotated classes (it is at least as rare as
    the rarest one), never inf; if no class has a voxel yet, every weight is 1.
    """
    counts = _finite(labeled_class_voxels, "labeled_class_voxels", 1, nonnegative=True).astype(np.float64)
    present = counts > 0
    if not present.any():
        return np.ones_like(counts)
    weights = np.empty_like(counts)
    weights[present] = 1.0 / counts[present]
    weights[~present] = weights[present].max()
    return weights


def weighted_uncertainty(class_uncertainty: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_c w_c * U[:, c] per pool slice, float64, shape (N,)."""
    u = _finite(class_uncertainty, "class_uncertainty", 2, nonnegative=True)
    w = _finite(weights, "weights", 1, nonnegative=True)
    if u.shape[1] != len(w):
        raise ValueError(f"class_uncertainty has {u.shape[1]} classes, weights {len(w)}")
    return u.astype(np.float64) @ w.astype(np.float64)


def query_probabilities(class_uncertainty: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sampling probabilities proportional to ``weighted_uncertainty``; uniform when it is zero everywhere."""
    return _normalise(weighted_uncertainty(class_uncertainty, weights))


def _normalise(score: np.ndarray) -> np.ndarray:
    total = score.sum()
    if len(score) and total <= 0:
        return np.full(len(score), 1.0 / len(score))
    return score / total if len(score) else score


def query_set(
    class_uncertainty: np.ndarray,
    labeled_class_voxels: np.ndarray,
    size: int,
    rng: np.random.Generator,
    mode: str = "weighted",
) -> np.ndarray:
    """Pool positions (int64) of the query set X_Q.

    ``weighted`` (the paper): ``size`` draws with replacement, p proportional to the class-weighted uncertainty;
    ``uniform``: ``size`` uniform draws with replacement; ``max-uncertainty``: the min(size, N) positions of
    highest weighted uncertainty (ties: lowest position), no repeats. Repeats are kept, in draw order.
    """
    if mode not in QUERY_MODES:
        raise ValueError(f"mode must be one of {QUERY_MODES}, got {mode!r}")
    size = _count(size, "size")
    score = weighted_uncertainty(class_uncertainty, class_weights(labeled_class_voxels))
    n = len(score)
    if size and not n:
        raise ValueError("cannot draw a query set from an empty pool")
    if size == 0:
        return np.empty(0, dtype=np.int64)
    if mode == "uniform":
        return rng.integers(0, n, size=size).astype(np.int64)
    if mode == "weighted":
        return rng.choice(n, size=size, replace=True, p=_normalise(score)).astype(np.int64)
    return np.argsort(-score, kind="stable")[:size].astype(np.int64)


def _kneedle_convex_decreasing(y: np.ndarray, sensitivity: float = 1.0) -> int | None:
    """Offline Kneedle exactly as kneed's ``KneeLocator(x=1..N, y, curve="convex", direction="decreasing")``.

    Returns the 1-based x of the first knee, or None. Vectorised: kneed's loop is O(N * maxima).
    """
    n = len(y)
    x = np.arange(1, n + 1, dtype=float)
    x_norm = (x - x.min()) / (x.max() - x.min())
    y_norm = (y - y.min()) / (y.max() - y.min())
    y_norm = y_norm.max() - y_norm
    diff = y_norm - x_norm
    prev = np.concatenate(([diff[0]], diff[:-1]))
    nxt = np.concatenate((diff[1:], [diff[-1]]))
    is_max = (diff >= prev) & (diff >= nxt)
    is_min = (diff <= prev) & (diff <= nxt)
    if not is_max.any():
        return None
    step = sensitivity * np.abs(np.diff(x_norm)).mean()
    positions = np.arange(n)
    last_max = np.maximum.accumulate(np.where(is_max, positions, -1))
    last_min = np.maximum.accumulate(np.where(is_min, positions, -1))
    i = positions[:-1]  # kneed stops before the last point
    active = (i >= np.flatnonzero(is_max)[0]) & (last_max[:-1] > last_min[:-1])
    hit = active & (diff[1:] < diff[np.maximum(last_max[:-1], 0)] - step)
    if not hit.any():
        return None
    return int(x[last_max[int(np.argmax(hit))]])


def elbow_size(uncertainty: np.ndarray, *, sensitivity: float = 10.0, floor: int | None = None) -> int:
    """Query set size Q from the elbow of the descending-sorted uncertainty curve, as the paper's code ran it:
    kneed's ``KneeLocator(x=0..N-1, y, S=sensitivity, curve="convex", direction="decreasing").knee``, raised to
    ``floor`` (the code: 5 * budget) and capped at N.

    No elbow (fewer than 3 slices, a flat curve, or Kneedle finds none) gives Q = N, the whole pool.
    """
    u = _finite(uncertainty, "uncertainty", 1).astype(np.float64)
    n = len(u)
    q = None
    if n >= 3 and u.max() > u.min():
        knee = _kneedle_convex_decreasing(np.sort(u)[::-1], sensitivity)
        q = None if knee is None else knee - 1  # kneed's x starts at 0 in the code: the knee's 0-based position
    q = n if q is None else q
    if floor is not None:
        q = max(q, _count(floor, "floor"))
    return min(q, n)


def query_size_for(uncertainty: np.ndarray, budget: int, *, size: int | str = "elbow", sensitivity: float = 10.0,
                   floor_budgets: float = 5.0) -> int:
    """Q for a round: the elbow rule with the floor ``ceil(floor_budgets * budget)``, ``"pool"`` (Q = N, the
    unlabeled pool's size: Appendix D's Q = U), or a fixed size; never below the budget (a query set smaller than
    the batch saturates FLQMI's coverage term), at most N for the elbow."""
    budget = _count(budget, "budget")
    if size == "pool":
        return max(len(uncertainty), budget)
    if size == "elbow":
        q = elbow_size(uncertainty, sensitivity=sensitivity, floor=int(np.ceil(floor_budgets * budget)))
        return max(q, min(budget, len(uncertainty)))
    return max(_count(size, "size"), budget)
