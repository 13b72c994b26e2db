"""The pure pieces of USIM (paper section 3.3, Appendix A): query set, Fisher, similarities, FLQMI selection.

Positions index the pool arrays (rows of the score arrays), not slice ids. USIMC and USIMF each own a prepare
step (query set, parameter subset, gradient embeddings from the model seam) and a select step (similarity, FLQMI).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from nnal.strategies.base import ModelLike, Option, PoolView, Scores, Strategy, register
from nnal.strategies.checks import CHUNK_ELEMENTS, row_blocks
from nnal.strategies.checks import count as _count
from nnal.strategies.checks import finite_array as _finite
from nnal.strategies.query_set import class_weights, query_set, query_size_for, weighted_uncertainty
from nnal.strategies.similarity import cosine_similarity, fisher_similarity
from nnal.strategies.usim_prefilter import PREFILTER, candidate_rows, most_uncertain
from nnal.strategies.usim_uniform import uniform_from_query

OPTIMIZERS = ("by-pool-size", "stochastic", "exact")
NEGATIVES = ("clipped", "shifted")
UNCERTAINTY_KEYS = {"variance": "class_variance", "std": "class_uncertainty"}
# the deep_supervision option and the backend's per-slice objective it names (nnal.backend.names.LOSSES)
DEEP_SUPERVISION_LOSSES = {"off": "log-likelihood", "sum": "log-likelihood-deep-supervision"}
NAIVE_BELOW = 1000  # the paper's code: NaiveGreedy below 1000 pool rows, StochasticGreedy from there


# --- Fisher and parameter subsets -----------------------------------------------------------------------------


def accumulate_fisher(chunks: Iterable[np.ndarray]) -> np.ndarray:
    """Diagonal empirical Fisher, float64 (P,): mean over all samples of squared per-sample gradients.

    ``chunks`` yields (n_i, P) blocks of per-sample gradients (a generator is fine); all samples count.
    """
    total: np.ndarray | None = None
    count = 0
    for chunk in chunks:
        g = _finite(chunk, "gradient chunk", 2)
        if total is None:
            total = np.zeros(g.shape[1], dtype=np.float64)
        elif g.shape[1] != len(total):
            raise ValueError(f"gradient chunk has {g.shape[1]} parameters, expected {len(total)}")
        g64 = g.astype(np.float64)
        total += np.einsum("ij,ij->j", g64, g64)
        count += g.shape[0]
    if total is None or count == 0:
        raise ValueError("no gradients to build the Fisher information from")
    return total / count


def diagonal_fisher(per_sample_grads: np.ndarray, chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """Paper Eq. 3: diag((1/|Q|) sum_x g(x) g(x)^T) = mean of squared per-sample gradients over ALL samples.

    (The paper's code summed the gradient of sample 0 only.)
    """
    g = _finite(per_sample_grads, "per_sample_grads", 2)
    return accumulate_fisher(g[rows] for rows in row_blocks(len(g), g.shape[1], chunk_elements))


def sample_parameters(fisher: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices (int64) of min(k, P) parameters sampled without replacement, proportional to ``fisher``.

    Successive sampling (Efraimidis-Spirakis: the k smallest Exp(1) / F_i). If fewer than k parameters have
    non-zero Fisher, all of them are taken and the rest is uniform without replacement over the zero ones.
    """
    # float64 without a copy when it is one already: the network's Fisher is 46 M entries at Liver scale
    f = np.asarray(_finite(fisher, "fisher", 1, nonnegative=True), dtype=np.float64)
    k = min(_count(k, "k"), len(f))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    nonzero = np.flatnonzero(f > 0)
    if len(nonzero) <= k:
        rest = rng.choice(np.flatnonzero(f == 0), size=k - len(nonzero), replace=False)
        return np.sort(np.concatenate((nonzero, rest))).astype(np.int64)
    keys = rng.standard_exponential(len(nonzero))
    keys /= f if len(nonzero) == len(f) else f[nonzero]  # in place: the same keys, one temporary fewer
    return np.sort(nonzero[np.argpartition(keys, k - 1)[:k]]).astype(np.int64)


def truncate_indices(n_params: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded uniform random subset of min(P, k) parameter indices, sorted, int64."""
    n_params = _count(n_params, "n_params")
    k = min(_count(k, "k"), n_params)
    return np.sort(rng.choice(n_params, size=k, replace=False)).astype(np.int64)


# --- selection ------------------------------------------------------------------------------------------------


def usim_select(
    similarity: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    eta: float = 1.0,
    optimizer: str = "by-pool-size",
    epsilon: float = 0.01,
    negatives: str = "clipped",
) -> np.ndarray:
    """Pool positions (int64) of the batch maximising FLQMI (paper Eq. 1).

    ``negatives``: "clipped" (what the paper ran through submodlib: a negative similarity counts as 0) or
    "shifted" (S minus its minimum, so negative similarities keep their order). ``optimizer``: "by-pool-size"
    (the paper's code: exact greedy, submodlib's NaiveGreedy, below ``NAIVE_BELOW`` pool rows, stochastic greedy
    with ``epsilon`` from there), "stochastic" (seeded by ``rng``) or "exact" (lazy greedy, NaiveGreedy's picks).
    """
    from nnal.submodular import flqmi_greedy, flqmi_stochastic_greedy, shift_nonnegative

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    s = np.asarray(similarity)
    if s.ndim != 2:
        raise ValueError(f"similarity must be 2-dimensional, got shape {s.shape}")
    # finiteness is checked by the FLQMI optimisers as they read S: no extra pass over a matrix of gigabytes
    budget = min(_count(budget, "budget"), s.shape[0])
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    if negatives == "shifted":
        s = shift_nonnegative(s, inplace=True)  # callers hand over a fresh similarity matrix: no second copy
    if optimizer == "by-pool-size":
        optimizer = "exact" if s.shape[0] < NAIVE_BELOW else "stochastic"
    if optimizer == "exact":
        chosen = flqmi_greedy(s, budget, eta=eta)
    else:
        chosen = flqmi_stochastic_greedy(s, budget, rng, eta=eta, epsilon=epsilon)
    return np.asarray(chosen, dtype=np.int64)


# --- the two strategies ---------------------------------------------------------------------------------------
# prepare (the scoring phase): query set, parameter subset and gradient embeddings from the model;
# select: similarity, then FLQMI. Both draw from the scoring / selection phase's own Generator.


def usim_needs(*, uncertainty: str = "variance", prefilter: int | None = None, **_: object) -> tuple[str, ...]:
    """The per-class MC uncertainty that weights the query distribution: variance (the code) or std; and USIMF's
    prefilter ranks by the mean MC variance."""
    return (UNCERTAINTY_KEYS[uncertainty], *(("variance",) if prefilter is not None else ()))


def _query(scores: Scores, pool: PoolView, rng: np.random.Generator, query_mode: str, query_size: int | str,
           query_sensitivity: float, query_floor_budgets: float, uncertainty: str,
           positions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The query set (pool positions) drawn among ``positions`` (None: the whole unlabeled pool)."""
    cu = np.asarray(scores[UNCERTAINTY_KEYS[uncertainty]])
    weighted = weighted_uncertainty(cu, class_weights(pool.labeled_class_voxels))
    among = slice(None) if positions is None else positions
    size = query_size_for(weighted[among], pool.budget, size=query_size, sensitivity=query_sensitivity,
                          floor_budgets=query_floor_budgets)
    query = query_set(cu[among], pool.labeled_class_voxels, size, rng, mode=query_mode)
    if positions is not None:
        query = positions[query]
    return {"query": query, "usim_uncertainty": weighted, "labeled_class_voxels": pool.labeled_class_voxels}


def _no_embeddings(pool: PoolView) -> np.ndarray:
    """Uniform selection reads only the query set: empty embeddings keep the declared keys, at no cost."""
    return np.zeros((len(pool.ids), 0), np.float32)


def bottleneck_subset(n_params: int, k: int, rng: np.random.Generator, how: str) -> np.ndarray | None:
    """USIMC's parameter subset: None (all) when there are at most ``k``; else a seeded uniform subset
    (``random``) or the first ``k`` entries of the flattened gradient (``first``, the paper's code)."""
    if n_params <= k:
        return None
    if how == "first":
        return np.arange(k, dtype=np.int64)
    return truncate_indices(n_params, k, rng)


def usimc_prepare(model: ModelLike, pool: PoolView, scores: Scores, rng: np.random.Generator, *,
                  query_mode: str = "weighted", query_size: int | str = "elbow", query_sensitivity: float = 10.0,
                  query_floor_budgets: float = 5.0, uncertainty: str = "variance",
                  embedding_dim: int = 10_000, selection: str = "flqmi", deep_supervision: str = "off",
                  parameter_subset: str = "random") -> dict[str, np.ndarray]:
    """Query set, then bottleneck gradient embeddings of every pool slice (``embedding_dim`` of them, chosen by
    ``parameter_subset``), of the full-resolution log-likelihood or its sum over the deep-supervision outputs."""
    out = _query(scores, pool, rng, query_mode, query_size, query_sensitivity, query_floor_budgets,
                 uncertainty)
    if selection == "uniform":
        return {**out, "grad_embeddings": _no_embeddings(pool)}
    index = bottleneck_subset(model.parameter_count("bottleneck"), embedding_dim, rng, parameter_subset)
    out["grad_embeddings"] = model.gradient_embeddings(pool.cases, group="bottleneck", index=index,
                                                       batch_size=pool.batch_size,
                                                       loss=DEEP_SUPERVISION_LOSSES[deep_supervision],
                                                       on_batch=pool.on_batch)
    return out


def usimf_prepare(model: ModelLike, pool: PoolView, scores: Scores, rng: np.random.Generator, *,
                  query_mode: str = "weighted", query_size: int | str = "elbow", query_sensitivity: float = 10.0,
                  query_floor_budgets: float = 5.0, uncertainty: str = "variance",
                  embedding_dim: int = 10_000, fisher_group: str = "network", selection: str = "flqmi",
                  deep_supervision: str = "off", fisher_estimate: str = "all-samples",
                  prefilter: int | None = PREFILTER) -> dict[str, np.ndarray]:
    """Query set, diagonal Fisher (Eq. 3) over it (``all-samples``) or over its first draw alone
    (``first-sample``: what the paper's code computed), ``embedding_dim`` parameters sampled by Fisher, then the
    pool's embeddings on them; every gradient of the same objective (``deep_supervision``). With more unlabeled
    slices than ``prefilter``, all of it happens among the ``prefilter`` most uncertain (``candidates``)."""
    kept = most_uncertain(scores, prefilter, pool.budget)
    out = _query(scores, pool, rng, query_mode, query_size, query_sensitivity, query_floor_budgets,
                 uncertainty, kept)
    if kept is not None:
        out["candidates"] = kept
    if selection == "uniform":
        return {**out, "grad_embeddings": _no_embeddings(pool), "fisher": np.zeros(0, np.float32)}
    loss = DEEP_SUPERVISION_LOSSES[deep_supervision]
    drawn = out["query"] if fisher_estimate == "all-samples" else out["query"][:1]
    unique, counts = np.unique(drawn, return_counts=True)
    fisher = model.fisher(pool.cases_of(unique), counts, group=fisher_group, batch_size=pool.batch_size, loss=loss)
    index = sample_parameters(fisher, min(embedding_dim, len(fisher)), rng)
    out["fisher"] = fisher[index].astype(np.float32)
    del fisher  # the whole network's diagonal (370 MB at Liver scale) is not needed through the pool's pass
    cases = pool.cases if kept is None else pool.cases_of(kept)
    out["grad_embeddings"] = model.gradient_embeddings(cases, group=fisher_group, index=index,
                                                       batch_size=pool.batch_size, loss=loss, on_batch=pool.on_batch)
    return out


def usimc_select(scores: Scores, budget: int, rng: np.random.Generator, *, eta: float = 1.0,
                 optimizer: str = "by-pool-size", epsilon: float = 0.01, negatives: str = "clipped",
                 selection: str = "flqmi") -> np.ndarray:
    """USIMC: cosine similarity of bottleneck gradient embeddings between pool and query set, then FLQMI."""
    ids = np.asarray(scores["ids"])
    if selection == "uniform":
        return ids[uniform_from_query(scores["query"], len(ids), budget, rng)]
    g = np.asarray(scores["grad_embeddings"])
    s = cosine_similarity(g, g[np.asarray(scores["query"])])
    return ids[usim_select(s, budget, rng, eta, optimizer, epsilon, negatives)]


def usimf_select(scores: Scores, budget: int, rng: np.random.Generator, *, eta: float = 1.0,
                 optimizer: str = "by-pool-size", epsilon: float = 0.01, negatives: str = "clipped",
                 damping: float = 1e-6, selection: str = "flqmi") -> np.ndarray:
    """USIMF: Fisher-kernel similarity g_u^T F^-1 g_q on Fisher-sampled parameters, then FLQMI."""
    ids = np.asarray(scores["ids"])
    if selection == "uniform":
        return ids[uniform_from_query(scores["query"], len(ids), budget, rng)]
    rows, query = candidate_rows(scores)  # the embeddings' rows: every unlabeled slice, or the prefilter's
    g = np.asarray(scores["grad_embeddings"])
    s = fisher_similarity(g, g[query], np.asarray(scores["fisher"]), damping=damping)
    return ids[rows[usim_select(s, budget, rng, eta, optimizer, epsilon, negatives)]]


_PositiveInt = Annotated[int, Field(ge=1)]
_COMMON = (
    Option("query_mode", Literal["weighted", "uniform", "max-uncertainty"], "weighted",
           "how the query set is drawn: the paper's uncertainty-weighted draws, or Appendix D's variants"),
    Option("query_size", Literal["elbow", "pool"] | _PositiveInt, "elbow",
           "Q: the elbow of the uncertainty curve, the unlabeled pool's size, or a size"),
    Option("query_sensitivity", Annotated[float, Field(gt=0, allow_inf_nan=False)], 10.0,
           "kneed's S for the elbow (the paper's code: 10)"),
    Option("query_floor_budgets", Annotated[float, Field(ge=0, allow_inf_nan=False)], 5.0,
           "the elbow's Q is at least this many budgets (the paper's code: 5); Q is never below one budget"),
    Option("uncertainty", Literal["variance", "std"], "variance",
           "per-class MC uncertainty weighting the query draws: variance (the paper's code) or std"),
    Option("embedding_dim", _PositiveInt, 10_000, "gradient embedding entries (parameters) kept"),
    Option("eta", Annotated[float, Field(ge=0, allow_inf_nan=False)], 1.0,
           "weight of the query-coverage term of FLQMI (Eq. 1)"),
    Option("optimizer", Literal["by-pool-size", "stochastic", "exact"], "by-pool-size",
           "FLQMI maximiser: exact greedy below 1000 pool slices, stochastic from there (the paper's code)"),
    Option("negatives", Literal["clipped", "shifted"], "clipped",
           "negative similarities count as 0 (what the paper ran) or keep their order (S - min S)"),
    Option("epsilon", Annotated[float, Field(gt=0, lt=1)], 0.01, "stochastic greedy's epsilon"),
    Option("selection", Literal["flqmi", "uniform"], "flqmi", "the batch from the query set: FLQMI (USIM), or "
           "uniform sampling from its draws (Appendix E's baseline; no gradient embeddings computed)"),
    Option("deep_supervision", Literal["off", "sum"], "off",
           "gradients of log p(y_hat|x) at full resolution (Eq. 3), or summed over every deep-supervision output "
           "(the paper's code)"),
)
_USIM_NEEDS = ()
_USIM_PROVIDES = ("labeled_class_voxels", "usim_uncertainty", "query", "grad_embeddings")
register(Strategy("usimc", usimc_select, needs=_USIM_NEEDS, option_needs=usim_needs, prepare=usimc_prepare,
                  provides=_USIM_PROVIDES,
                  options=(*_COMMON,
                           Option("parameter_subset", Literal["random", "first"], "random",
                                  "embedding_dim bottleneck entries: a seeded uniform subset, or the first ones "
                                  "(the paper's code)")),
                  score_key="usim_uncertainty",
                  help="USIMC: FLQMI on cosine similarity of bottleneck gradient embeddings"))
register(Strategy("usimf", usimf_select, needs=_USIM_NEEDS, option_needs=usim_needs, prepare=usimf_prepare,
                  provides=(*_USIM_PROVIDES, "fisher"), score_key="usim_uncertainty",
                  options=(*_COMMON,
                           Option("fisher_group", Literal["network", "decoder-convs", "decoder", "bottleneck"],
                                  "network", "parameters of the Fisher kernel: the network (Eq. 3), the decoder's "
                                  "3x3 convolutions (the paper's code) or the whole decoder"),
                           Option("fisher_estimate", Literal["all-samples", "first-sample"], "all-samples",
                                  "the Fisher over every query draw (Eq. 3), or the first draw's squared gradient "
                                  "(the paper's code, a bug)"),
                           Option("damping", Annotated[float, Field(ge=0, allow_inf_nan=False)], 1e-6,
                                  "added to the Fisher diagonal before inverting, times its mean (scale-aware; "
                                  "0: the exact inverse, as Eq. 4 and the code)"),
                           Option("prefilter", Annotated[int, Field(ge=1)] | None, PREFILTER,
                                  "only the N most uncertain unlabeled slices (unweighted mean MC variance) enter "
                                  "the query set, the Fisher and FLQMI (the paper's code: 30000); null: all")),
                  help="USIMF: FLQMI on the Fisher-kernel similarity of gradient embeddings"))
