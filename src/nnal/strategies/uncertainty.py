"""Random sampling and the per-slice uncertainty rankings (Max Entropy, BALD)."""

from __future__ import annotations

import numpy as np

from nnal.strategies.base import Scores, Strategy, register, top_k


def random_select(scores: Scores, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random slices, without replacement."""
    return rng.choice(np.asarray(scores["ids"]), size=budget, replace=False)


def _ranking(key: str):
    def select(scores: Scores, budget: int, rng: np.random.Generator) -> np.ndarray:
        return top_k(np.asarray(scores["ids"]), np.asarray(scores[key]), budget)

    select.__doc__ = f"The ``budget`` slices of highest ``{key}``."
    return select


entropy_select = _ranking("entropy")
bald_select = _ranking("bald")

def full_select(scores: Scores, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Every slice: the full-label reference (the loop runs it as one round on the whole pool)."""
    return np.asarray(scores["ids"])[:budget]


register(Strategy("random", random_select))
register(Strategy("full", full_select))
register(Strategy("entropy", entropy_select, needs=("entropy",), score_key="entropy"))
register(Strategy("bald", bald_select, needs=("bald",), mc_dropout=True, score_key="bald"))
