"""Strategy protocol and registry.

A strategy is a pure function ``select(scores, budget, rng, **options) -> ids``:
numpy arrays in, slice ids out, randomness only from the given Generator, no torch, no I/O.

``scores`` maps names to per-slice arrays aligned with ``scores["ids"]`` (the unlabeled pool).
Keys the scorer can provide (a strategy lists what it reads in ``needs``):

- ``ids``            (N,)   int64 slice ids of the unlabeled pool, always present
- ``entropy``        (N,)   mean pixel entropy of the softmax, dropout off
- ``bald``           (N,)   mean pixel mutual information over T MC-dropout passes
- ``std``            (N,)   mean over classes and pixels of the std across MC passes
- ``variance``       (N,)   same with the variance (the paper's code behaviour)
- ``class_uncertainty`` (N, C) per-class mean MC std, foreground classes only
- ``features``       (N, D) pooled bottleneck features
- ``badge_embeddings`` (N, E) closed-form head gradients (softmax - onehot(pseudo label)) x features, flattened
- ``labeled_features`` (L, D) pooled bottleneck features of the labeled set
- ``labeled_class_voxels`` (C,) annotated voxels per foreground class in the labeled set
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

Scores = Mapping[str, np.ndarray]
# arrays that are not one row per pool slice: USIM's query positions and the Fisher values of its parameters
UNALIGNED_KEYS = frozenset({"query", "fisher"})
SelectFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Strategy:
    """A named selection rule and the per-slice scores it reads."""

    name: str
    select: SelectFn
    needs: tuple[str, ...] = ()
    mc_dropout: bool = False
    score_key: str | None = None  # the score recorded next to each selected id
    option_needs: Callable[..., tuple[str, ...]] | None = None  # extra keys some options read

    def needs_for(self, **options: object) -> tuple[str, ...]:
        """The score keys read under ``options``: ``needs`` plus what ``option_needs(**options)`` adds."""
        extra = () if self.option_needs is None else tuple(self.option_needs(**options))
        return self.needs + tuple(key for key in extra if key not in self.needs)

    def __call__(self, scores: Scores, budget: int, rng: np.random.Generator, **options: object) -> np.ndarray:
        ids = check_scores(scores, self.needs_for(**options))
        budget = check_budget(budget, len(ids))
        if budget == 0:
            return np.empty(0, dtype=np.int64)
        chosen = np.asarray(self.select(scores, budget, rng, **options), dtype=np.int64)
        if len(chosen) != budget or len(np.unique(chosen)) != budget or not np.isin(chosen, ids).all():
            raise RuntimeError(f"strategy {self.name!r} returned an invalid selection")
        return chosen


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add a strategy to the registry under its name."""
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is already registered")
    REGISTRY[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    """Look a strategy up by name; the error lists the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown strategy {name!r}; known: {known}") from None


def check_scores(scores: Scores, needs: tuple[str, ...]) -> np.ndarray:
    """Validate that ``scores`` holds ``ids`` and every needed array, aligned; return the ids."""
    if "ids" not in scores:
        raise ValueError("scores must contain 'ids'")
    ids = np.asarray(scores["ids"])
    if ids.ndim != 1:
        raise ValueError("scores['ids'] must be one-dimensional")
    for key in needs:
        if key not in scores:
            raise ValueError(f"scores lack {key!r}")
        arr = np.asarray(scores[key])
        if key.startswith("labeled_") or key in UNALIGNED_KEYS:
            continue
        if arr.shape[0] != len(ids):
            raise ValueError(f"scores[{key!r}] has {arr.shape[0]} rows, expected {len(ids)}")
        if not np.isfinite(arr).all():
            raise ValueError(f"scores[{key!r}] contains NaN or inf")
    return ids


def check_budget(budget: int, pool_size: int) -> int:
    """A budget is a non-negative int; it is capped at the pool size."""
    if int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget!r}")
    return min(int(budget), pool_size)


def top_k(ids: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` ids of highest value; ties broken by the lower id, so the result is deterministic."""
    order = np.lexsort((ids, -np.asarray(values, dtype=np.float64)))
    return ids[order[:k]]
