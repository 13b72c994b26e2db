"""Uniform sampling from USIM's query set: the paper's baseline for FLQMI in the redundancy scenario (Appendix E).

The query set is a multiset (draws with replacement), so a slice drawn k times is k times as likely to be taken
as one drawn once: that is what makes the baseline take as many duplicates as the query set holds, where FLQMI
takes one slice of a group of identical ones and moves on.
"""

from __future__ import annotations

import numpy as np

from nnal.strategies.checks import count


def uniform_from_query(query: np.ndarray, pool_size: int, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Pool positions (int64) of ``min(budget, pool_size)`` distinct slices: the query draws in a random order
    (``rng.permutation``), each slice where it first appears, the first ``budget`` of them. When the query set
    holds fewer distinct slices than the budget, the rest is drawn uniformly from the other pool positions
    (``rng.choice`` without replacement)."""
    n = count(pool_size, "pool_size")
    budget = min(count(budget, "budget"), n)
    q = np.asarray(query)
    if q.ndim != 1 or (len(q) and not np.issubdtype(q.dtype, np.integer)):
        raise ValueError(f"query must be a one-dimensional array of pool positions, got shape {q.shape}")
    q = q.astype(np.int64)
    if len(q) and (q.min() < 0 or q.max() >= n):
        raise ValueError(f"query positions must lie in [0, {n}), got {q.min()} .. {q.max()}")
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    order = q[rng.permutation(len(q))]
    _, first = np.unique(order, return_index=True)
    chosen = order[np.sort(first)][:budget]
    if len(chosen) < budget:
        rest = np.setdiff1d(np.arange(n, dtype=np.int64), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=budget - len(chosen), replace=False)])
    return chosen.astype(np.int64)
