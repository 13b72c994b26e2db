"""USIM's scoring phase: query set, parameter subset and gradient embeddings (Föllmer et al., Algorithm 1, 3-5).

The random choices come from pure functions in ``nnal.strategies.usim``; gradients from the backend. The
select phase then only builds the similarity and runs FLQMI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nnal.strategies import usim

# options read here, in the scoring phase (eta, optimizer, epsilon are read by the select phase)
DEFAULTS: dict[str, Any] = {
    "query_mode": "weighted",  # weighted (the paper) | uniform | max-uncertainty (Appendix D)
    "query_size": "elbow",  # "elbow" (the paper) or a fixed Q
    "query_floor": None,  # the paper's code floored Q at 5 * budget; off by default (the paper's text)
    "embedding_dim": 10_000,  # gradient embeddings truncated to this many parameters
    "fisher_group": "network",  # USIMF's parameter source: network (the paper's Eq. 3) | decoder (its code)
}


def usim_inputs(backend, weights, strategy_name: str, ids: np.ndarray, cases: list[tuple[str, np.ndarray]],
                scores: dict[str, np.ndarray], labeled_class_voxels: np.ndarray, options: dict[str, Any],
                rng: np.random.Generator, batch_size: int,
                on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Arrays USIMC/USIMF select from: ``query`` (pool positions, with repeats), ``grad_embeddings`` (N, d),
    ``usim_uncertainty`` (N,), and for USIMF ``fisher`` (d,) on the sampled parameters."""
    opts = {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}}
    cu = scores["class_uncertainty"]
    weighted = usim.weighted_uncertainty(cu, usim.class_weights(labeled_class_voxels))
    size = opts["query_size"]
    if size == "elbow":
        size = usim.elbow_size(weighted, floor=opts["query_floor"])
    query = usim.query_set(cu, labeled_class_voxels, int(size), rng, mode=opts["query_mode"])
    out = {"query": query, "usim_uncertainty": weighted}
    dim = int(opts["embedding_dim"])
    if strategy_name == "usimc":
        n_params = backend.parameter_count(weights, "bottleneck")
        index = usim.truncate_indices(n_params, dim, rng) if n_params > dim else None
        out["grad_embeddings"] = backend.gradient_embeddings(weights, cases, "bottleneck", index, batch_size, on_batch)
        return out
    group = opts["fisher_group"]
    unique, counts = np.unique(query, return_counts=True)
    query_cases = _cases_of(ids[unique], ids, cases)
    fisher = backend.fisher(weights, query_cases, counts, group, batch_size)
    index = usim.sample_parameters(fisher, min(dim, len(fisher)), rng)
    out["fisher"] = fisher[index].astype(np.float32)
    out["grad_embeddings"] = backend.gradient_embeddings(weights, cases, group, index, batch_size, on_batch)
    return out


def _cases_of(chosen: np.ndarray, ids: np.ndarray, cases: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """The ``(case, slices)`` list restricted to ``chosen`` ids (both in pool order)."""
    keep = set(chosen.tolist())
    out, start = [], 0
    for case, slices in cases:
        part = ids[start:start + len(slices)]
        mask = np.fromiter((i in keep for i in part), bool, len(part))
        if mask.any():
            out.append((case, np.asarray(slices)[mask]))
        start += len(slices)
    return out
