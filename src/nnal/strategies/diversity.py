"""Core-Set, BADGE(LL) and Stochastic Batches.

Distances are computed in row blocks of at most ``chunk_elements`` floats, so the memory beyond the inputs is
O(N) plus one block, never O(N * L) or O(N * N).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from nnal.strategies.base import ModelLike, Option, PoolView, Scores, Strategy, register
from nnal.strategies.checks import CHUNK_ELEMENTS, matrix, row_blocks, score_vector
from nnal.strategies.usim import truncate_indices

# Core-Set's feature options and the model score key each reads
FEATURE_KEYS = {"flattened": "features", "pooled": "pooled_features"}
# BADGE's loss options and the backend's per-slice objective each names (nnal.backend.names.LOSSES)
BADGE_LOSSES = {"nnunet": "nnunet", "log-likelihood": "log-likelihood"}


def sq_dist_to_point(x: np.ndarray, point: np.ndarray, chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """Squared Euclidean distance of every row of ``x`` to ``point`` (float64 out).

    Explicit differences in the inputs' float type (at least float32): no cancellation, and a duplicate of
    ``point`` is at distance exactly 0.
    """
    dtype = np.result_type(x.dtype, np.float32)
    p = np.asarray(point).astype(dtype)
    out = np.empty(len(x), dtype=np.float64)
    for rows in row_blocks(len(x), x.shape[1], chunk_elements):
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
    for rows in row_blocks(len(x), max(len(y64), x.shape[1]), chunk_elements):
        block = x[rows].astype(np.float64)
        d = np.einsum("ij,ij->i", block, block)[:, None] + y_sq[None, :] - 2.0 * (block @ y64.T)
        out[rows] = d.min(axis=1)
    return np.maximum(out, 0.0)


# --- Core-Set -------------------------------------------------------------------------------------------------


def coreset_needs(*, features: str = "flattened", **_: object) -> tuple[str, ...]:
    """The pool's bottleneck features: flattened on a fixed grid (the paper's) or globally averaged."""
    return (FEATURE_KEYS[features],)


def coreset_select(scores: Scores, budget: int, rng: np.random.Generator, *, features: str = "flattened",
                   chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """k-center greedy (Sener and Savarese) on the ``features`` (or ``pooled_features``) with Euclidean distance.

    Each pool slice starts at its distance to the nearest labeled slice; the farthest slice is picked (ties: the
    lowest pool position) and the distances are updated, ``budget`` times. With no labeled slice the first pick
    is uniform at random from ``rng``; otherwise ``rng`` is not used.
    """
    ids = np.asarray(scores["ids"])
    key = FEATURE_KEYS[features]
    x = matrix(scores[key], f"scores['{key}']", rows=len(ids))
    labeled = np.asarray(scores["labeled_features"])
    if labeled.size == 0:
        labeled = labeled.reshape(0, x.shape[1])
    labeled = matrix(labeled, "scores['labeled_features']", cols=x.shape[1])
    n = len(x)
    dist = min_sq_dist(x, labeled, chunk_elements) if len(labeled) else np.full(n, np.inf)
    chosen: list[int] = []
    for _ in range(min(budget, n)):
        i = int(rng.integers(n)) if not chosen and not len(labeled) else int(np.argmax(dist))
        chosen.append(i)
        np.minimum(dist, sq_dist_to_point(x, x[i], chunk_elements), out=dist)
        dist[i] = -np.inf  # never picked twice, even among duplicates
    return ids[np.asarray(chosen, dtype=np.int64)]


def coreset_prepare(model: ModelLike, pool: PoolView, scores: Scores, rng: np.random.Generator, *,
                    features: str = "flattened") -> dict[str, np.ndarray]:
    """The labeled set's bottleneck features under the pool's key (one dropout-free pass), the centres Core-Set
    starts from."""
    key = FEATURE_KEYS[features]
    if not pool.labeled_cases:
        return {"labeled_features": np.empty((0, np.asarray(scores[key]).shape[1]), dtype=np.float32)}
    labeled = model.scores(pool.labeled_cases, {key}, mc_passes=pool.mc_passes, batch_size=pool.batch_size,
                           seed=0)[key]
    return {"labeled_features": labeled}


# --- BADGE(LL) ------------------------------------------------------------------------------------------------


def badge_needs(*, embedding: str = "last-conv", **_: object) -> tuple[str, ...]:
    """The head's closed-form gradients come from the pool pass; the last-conv gradients from ``prepare``."""
    return ("head_embeddings",) if embedding == "head" else ()


def badge_prepare(model: ModelLike, pool: PoolView, scores: Scores, rng: np.random.Generator, *,
                  embedding: str = "last-conv", embedding_dim: int = 10_000, loss: str = "nnunet"
                  ) -> dict[str, np.ndarray]:
    """``badge_embeddings``: per-slice gradients w.r.t. the decoder's last 3x3 convolution (a seeded subset of
    ``embedding_dim`` of its parameters when it has more) of ``loss`` under pseudo labels: nnU-Net's training
    loss (Dice + cross-entropy, deep-supervision weighted; the paper's code) or the full-resolution
    log-likelihood. With ``embedding="head"``: the pool pass's closed-form log-likelihood gradients of the 1x1
    segmentation head, whatever ``loss`` says (nnal's earlier behaviour, kept as it was)."""
    if embedding == "head":
        return {"badge_embeddings": np.asarray(scores["head_embeddings"])}
    n_params = model.parameter_count("last-decoder-conv")
    index = truncate_indices(n_params, embedding_dim, rng) if n_params > embedding_dim else None
    return {"badge_embeddings": model.gradient_embeddings(pool.cases, group="last-decoder-conv", index=index,
                                                          batch_size=pool.batch_size, loss=BADGE_LOSSES[loss],
                                                          on_batch=pool.on_batch)}


def badge_select(scores: Scores, budget: int, rng: np.random.Generator, *,
                 chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """k-means++ seeding (Ash et al.) on ``badge_embeddings``.

    The first centre is the embedding of largest norm (ties: lowest position), as in BADGE's code; each next
    centre is drawn with probability proportional to D^2, the squared Euclidean distance to the nearest chosen
    centre, with one ``rng.random()`` per draw (inverse CDF over the slices with D^2 > 0). Chosen slices have
    D^2 = 0. If every unchosen slice has D^2 = 0 (duplicates of centres), the next is uniform over the unchosen.
    """
    ids = np.asarray(scores["ids"])
    x = matrix(scores["badge_embeddings"], "scores['badge_embeddings']", rows=len(ids))
    n = len(x)
    if budget <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    norms = np.zeros(n)
    for rows in row_blocks(n, x.shape[1], chunk_elements):
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


def stochastic_batches_select(scores: Scores, budget: int, rng: np.random.Generator, *, reduce: str = "sum",
                              score: str = "entropy", last_group: str = "drop") -> np.ndarray:
    """The batch of highest ``score`` (``reduce``: "sum" or "mean") among floor(N / budget) random batches.

    A permutation of the pool positions (``rng.permutation(N)``) is cut into floor(N / budget) consecutive
    batches of ``budget``; the last N mod budget positions of the permutation are in no batch (``last_group:
    drop``, the text's floor(|U|/B) batches) or form a smaller last batch that competes too (``keep``, the paper's
    code; should it win, it is filled up to ``budget`` with a uniform draw from the rest, since a round selects
    ``budget`` slices). Ties go to the lowest batch index. With N < budget the whole pool is returned.
    ``score``: per-slice ``entropy`` (the text) or the MC-dropout ``variance`` (the code, p = 0.1).
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    ids = np.asarray(scores["ids"])
    values = score_vector(scores, score)
    if budget <= 0:
        return np.empty(0, dtype=np.int64)
    perm = rng.permutation(len(ids))
    n_batches = len(ids) // budget
    if n_batches == 0:
        return ids[perm]
    batches = [perm[k * budget:(k + 1) * budget] for k in range(n_batches)]
    if last_group == "keep" and len(ids) % budget:
        batches.append(perm[n_batches * budget:])
    totals = [values[b].sum() if reduce == "sum" else values[b].mean() for b in batches]
    best = batches[int(np.argmax(totals))]
    if len(best) < budget:
        rest = np.setdiff1d(np.arange(len(ids)), best)
        best = np.concatenate([best, rng.choice(rest, size=budget - len(best), replace=False)])
    return ids[best]


def stochastic_batches_needs(*, score: str = "entropy", **_: object) -> tuple[str, ...]:
    """The MC variance when the batches are ranked by it (the code's choice)."""
    return ("variance",) if score == "variance" else ()


CHUNK_OPTION = Option("chunk_elements", Annotated[int, Field(ge=1)], CHUNK_ELEMENTS,
                      "floats per temporary distance block (memory, not the result)", affects_result=False)

register(Strategy("coreset", coreset_select, option_needs=coreset_needs, prepare=coreset_prepare,
                  provides=("labeled_features",),
                  options=(CHUNK_OPTION,
                           Option("features", Literal["flattened", "pooled"], "flattened",
                                  "the bottleneck map flattened (the paper) or globally averaged")),
                  help="Core-Set: k-center greedy on bottleneck features, distances to the labeled set first"))
register(Strategy("badge", badge_select, option_needs=badge_needs, prepare=badge_prepare,
                  provides=("badge_embeddings",),
                  options=(CHUNK_OPTION,
                           Option("embedding", Literal["last-conv", "head"], "last-conv",
                                  "gradients of the decoder's last 3x3 conv (the paper's code) or of the 1x1 head"),
                           Option("embedding_dim", Annotated[int, Field(ge=1)], 10_000,
                                  "last-conv gradient entries (parameters) kept, a seeded subset"),
                           Option("loss", Literal["nnunet", "log-likelihood"], "nnunet",
                                  "last-conv gradients of nnU-Net's Dice + CE, deep-supervision weighted (the "
                                  "paper's code), or of the full-resolution log-likelihood")),
                  help="BADGE(LL): k-means++ seeding on gradient embeddings under pseudo labels"))
register(Strategy("stochastic-batches", stochastic_batches_select, needs=("entropy",), score_key="entropy",
                  option_needs=stochastic_batches_needs,
                  options=(Option("reduce", Literal["sum", "mean"], "sum",
                                  "how a batch's score is reduced (equal batch sizes: same ranking)"),
                           Option("score", Literal["entropy", "variance"], "entropy",
                                  "per-slice score: entropy (the paper's text) or MC-dropout variance (its code)"),
                           Option("last_group", Literal["drop", "keep"], "drop",
                                  "the N mod B slices left over: in no batch (the text's floor(N/B) batches) or a "
                                  "smaller batch of their own (the code)")),
                  help="Stochastic Batches: the random batch of highest summed entropy"))
