"""Mean STD, Core-Set, BADGE(LL) and Stochastic Batches.

Distances are computed in row blocks of at most ``chunk_elements`` floats, so the memory beyond the inputs is
O(N) plus one block, never O(N * L) or O(N * N).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from nnal.strategies.base import Scores, Strategy, register, top_k

CHUNK_ELEMENTS = 1 << 22  # floats per temporary block (32 MiB in float64)


def _blocks(n: int, cols: int, chunk_elements: int) -> Iterator[slice]:
    """Row slices covering ``range(n)`` with at most ``chunk_elements`` floats per block (at least one row)."""
    step = max(1, int(chunk_elements) // max(1, cols))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _matrix(arr: object, name: str, rows: int | None = None, cols: int | None = None) -> np.ndarray:
    """A finite, real 2-d array, with the expected rows/columns where given."""
    out = np.asarray(arr)
    if out.ndim != 2:
        raise ValueError(f"{name} must be two-dimensional, got shape {out.shape}")
    if not (np.issubdtype(out.dtype, np.floating) or np.issubdtype(out.dtype, np.integer)):
        raise ValueError(f"{name} must be real-valued, got dtype {out.dtype}")
    if rows is not None and out.shape[0] != rows:
        raise ValueError(f"{name} has {out.shape[0]} rows, expected {rows}")
    if cols is not None and out.shape[1] != cols:
        raise ValueError(f"{name} has {out.shape[1]} columns, expected {cols}")
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or inf")
    return out


def _vector(scores: Scores, key: str) -> np.ndarray:
    out = np.asarray(scores[key], dtype=np.float64)
    if out.ndim != 1:
        raise ValueError(f"scores[{key!r}] must be one-dimensional, got shape {out.shape}")
    return out


def sq_dist_to_point(x: np.ndarray, point: np.ndarray, chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """Squared Euclidean distance of every row of ``x`` to ``point`` (float64 out).

    Explicit differences in the inputs' float type (at least float32): no cancellation, and a duplicate of
    ``point`` is at distance exactly 0.
    """
    dtype = np.result_type(x.dtype, np.float32)
    p = np.asarray(point).astype(dtype)
    out = np.empty(len(x), dtype=np.float64)
    for rows in _blocks(len(x), x.shape[1], chunk_elements):
        diff = x[rows].astype(dtype, copy=False) - p
        out[rows] = np.einsum("ij,ij->i", diff, diff)
    return out


def min_sq_dist(x: np.ndarray, y: np.ndarray, chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """For each row of ``x`` the squared Euclidean distance to its nearest row of ``y`` (float64, >= 0).

    Uses ||x||^2 + ||y||^2 - 2 x.y in float64 (BLAS speed for many ``y``), blocks of rows x len(y).
    """
    y64 = np.asarray(y, dtype=np.float64)
    y_sq = np.einsum("ij,ij->i", y64, y64)
    out = np.empty(len(x), dtype=np.float64)
    for rows in _blocks(len(x), max(len(y64), x.shape[1]), chunk_elements):
        block = x[rows].astype(np.float64)
        d = np.einsum("ij,ij->i", block, block)[:, None] + y_sq[None, :] - 2.0 * (block @ y64.T)
        out[rows] = d.min(axis=1)
    return np.maximum(out, 0.0)


# --- Mean STD -------------------------------------------------------------------------------------------------


def meanstd_select(scores: Scores, budget: int, rng: np.random.Generator, use_variance: bool = False) -> np.ndarray:
    """The ``budget`` slices of highest mean MC-dropout std (``use_variance=True``: variance, as the paper's code)."""
    key = "variance" if use_variance else "std"
    return top_k(np.asarray(scores["ids"]), _vector(scores, key), budget)


def meanstd_needs(use_variance: bool = False, **_: object) -> tuple[str, ...]:
    """Extra score keys Mean STD reads: ``variance`` when ``use_variance`` is set."""
    return ("variance",) if use_variance else ()


# --- Core-Set -------------------------------------------------------------------------------------------------


def coreset_select(
    scores: Scores, budget: int, rng: np.random.Generator, chunk_elements: int = CHUNK_ELEMENTS
) -> np.ndarray:
    """k-center greedy (Sener and Savarese) on ``features`` with Euclidean distance.

    Each pool slice starts at its distance to the nearest labeled slice; the farthest slice is picked (ties: the
    lowest pool position) and the distances are updated, ``budget`` times. With no labeled slice the first pick
    is uniform at random from ``rng``; otherwise ``rng`` is not used.
    """
    ids = np.asarray(scores["ids"])
    x = _matrix(scores["features"], "scores['features']", rows=len(ids))
    labeled = np.asarray(scores["labeled_features"])
    if labeled.size == 0:
        labeled = labeled.reshape(0, x.shape[1])
    labeled = _matrix(labeled, "scores['labeled_features']", cols=x.shape[1])
    n = len(x)
    dist = min_sq_dist(x, labeled, chunk_elements) if len(labeled) else np.full(n, np.inf)
    chosen: list[int] = []
    for _ in range(min(budget, n)):
        i = int(rng.integers(n)) if not chosen and not len(labeled) else int(np.argmax(dist))
        chosen.append(i)
        np.minimum(dist, sq_dist_to_point(x, x[i], chunk_elements), out=dist)
        dist[i] = -np.inf  # never picked twice, even among duplicates
    return ids[np.asarray(chosen, dtype=np.int64)]


# --- BADGE(LL) ------------------------------------------------------------------------------------------------


def badge_select(
    scores: Scores, budget: int, rng: np.random.Generator, chunk_elements: int = CHUNK_ELEMENTS
) -> np.ndarray:
    """k-means++ seeding (Ash et al.) on ``badge_embeddings``.

    The first centre is the embedding of largest norm (ties: lowest position), as in BADGE's code; each next
    centre is drawn with probability proportional to D^2, the squared Euclidean distance to the nearest chosen
    centre, with one ``rng.random()`` per draw (inverse CDF over the slices with D^2 > 0). Chosen slices have
    D^2 = 0. If every unchosen slice has D^2 = 0 (duplicates of centres), the next is uniform over the unchosen.
    """
    ids = np.asarray(scores["ids"])
    x = _matrix(scores["badge_embeddings"], "scores['badge_embeddings']", rows=len(ids))
    n = len(x)
    if budget <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    norms = np.zeros(n)
    for rows in _blocks(n, x.shape[1], chunk_elements):
        block = x[rows].astype(np.float64)
        norms[rows] = np.einsum("ij,ij->i", block, block)
    first = int(np.argmax(norms))
    chosen = [first]
    taken = np.zeros(n, dtype=bool)
    taken[first] = True
    d2 = sq_dist_to_point(x, x[first], chunk_elements)
    d2[first] = 0.0
    for _ in range(min(budget, n) - 1):
        positive = np.flatnonzero(d2 > 0)
        if len(positive):
            cdf = np.cumsum(d2[positive])
            k = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            i = int(positive[min(k, len(positive) - 1)])
        else:
            i = int(rng.choice(np.flatnonzero(~taken)))
        chosen.append(i)
        taken[i] = True
        np.minimum(d2, sq_dist_to_point(x, x[i], chunk_elements), out=d2)
        d2[i] = 0.0
    return ids[np.asarray(chosen, dtype=np.int64)]


# --- Stochastic Batches ---------------------------------------------------------------------------------------


def stochastic_batches_select(scores: Scores, budget: int, rng: np.random.Generator, reduce: str = "sum") -> np.ndarray:
    """The batch of highest ``entropy`` (``reduce``: "sum" or "mean") among floor(N / budget) random batches.

    A permutation of the pool positions (``rng.permutation(N)``) is cut into floor(N / budget) consecutive
    batches of ``budget``; the last N mod budget positions of the permutation are in no batch. Ties go to the
    lowest batch index. With N < budget the whole pool is returned. All batches have the same size, so "sum"
    and "mean" rank them identically.
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    ids = np.asarray(scores["ids"])
    entropy = _vector(scores, "entropy")
    if budget <= 0:
        return np.empty(0, dtype=np.int64)
    perm = rng.permutation(len(ids))
    n_batches = len(ids) // budget
    if n_batches == 0:
        return ids[perm]
    batches = perm[: n_batches * budget].reshape(n_batches, budget)
    values = entropy[batches]
    totals = values.sum(axis=1) if reduce == "sum" else values.mean(axis=1)
    return ids[batches[int(np.argmax(totals))]]


register(
    Strategy(
        "meanstd",
        meanstd_select,
        needs=("std",),
        mc_dropout=True,
        score_key="std",
        option_needs=meanstd_needs,
    )
)
register(Strategy("coreset", coreset_select, needs=("features", "labeled_features")))
register(Strategy("badge", badge_select, needs=("badge_embeddings",)))
register(Strategy("stochastic-batches", stochastic_batches_select, needs=("entropy",), score_key="entropy"))
