"""Random sampling and the per-slice uncertainty rankings: Max Entropy, BALD, Mean STD."""

from __future__ import annotations

import numpy as np

from nnal.strategies.base import Option, Scores, Strategy, register
from nnal.strategies.checks import score_vector, top_k


def random_select(scores: Scores, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random slices, without replacement."""
    return rng.choice(np.asarray(scores["ids"]), size=budget, replace=False)


def entropy_select(scores: Scores, budget: int, rng: np.random.Generator) -> np.ndarray:
    """The ``budget`` slices of highest mean pixel entropy (dropout off)."""
    return top_k(np.asarray(scores["ids"]), score_vector(scores, "entropy"), budget)


def bald_select(scores: Scores, budget: int, rng: np.random.Generator) -> np.ndarray:
    """The ``budget`` slices of highest BALD (mutual information over the MC-dropout passes)."""
    return top_k(np.asarray(scores["ids"]), score_vector(scores, "bald"), budget)


def meanstd_select(scores: Scores, budget: int, rng: np.random.Generator, *, use_variance: bool = False
                   ) -> np.ndarray:
    """The ``budget`` slices of highest mean MC-dropout std (``use_variance=True``: variance, as the paper's code)."""
    key = "variance" if use_variance else "std"
    return top_k(np.asarray(scores["ids"]), score_vector(scores, key), budget)


def meanstd_needs(*, use_variance: bool = False) -> tuple[str, ...]:
    """Extra score keys Mean STD reads: ``variance`` when ``use_variance`` is set."""
    return ("variance",) if use_variance else ()


def full_select(scores: Scores, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Every slice: the full-label reference (the loop runs it as one round on the whole pool)."""
    return np.asarray(scores["ids"])[:budget]


register(Strategy("random", random_select, help="uniformly random slices"))
register(Strategy("full", full_select, help="every pool slice: the full-label reference (one round)"))
register(Strategy("entropy", entropy_select, needs=("entropy",), score_key="entropy",
                  help="Max Entropy: highest mean pixel entropy, dropout off"))
register(Strategy("bald", bald_select, needs=("bald",), score_key="bald",
                  help="BALD: highest mutual information over T MC-dropout passes"))
register(Strategy("meanstd", meanstd_select, needs=("std",), score_key="std", option_needs=meanstd_needs,
                  options=(Option("use_variance", bool, False,
                                  "rank by the MC variance (the paper's code) instead of the std (its text)"),),
                  help="Mean STD: highest mean std across T MC-dropout passes"))
