"""Random sampling and the per-slice uncertainty rankings: Max Entropy, BALD, Mean STD.

The rankings take power noising as an option (:mod:`nnal.strategies.power`): off by default, the plain top-k.
"""

from __future__ import annotations

import numpy as np

from nnal.strategies.base import Option, Scores, Strategy, register
from nnal.strategies.checks import score_vector
from nnal.strategies.power import check_power_options, power_options, power_prepare, power_top_k, round_beta


def random_select(scores: Scores, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random slices, without replacement."""
    return rng.choice(np.asarray(scores["ids"]), size=budget, replace=False)


def entropy_select(scores: Scores, budget: int, rng: np.random.Generator, *, power: float | None = None
                   ) -> np.ndarray:
    """The ``budget`` slices of highest mean pixel entropy (dropout off); with ``power``, a power draw."""
    return _ranked(scores, "entropy", budget, rng, power)


def bald_select(scores: Scores, budget: int, rng: np.random.Generator, *, power: float | None = None
                ) -> np.ndarray:
    """The ``budget`` slices of highest BALD (mutual information over the MC-dropout passes); with ``power``, a
    power draw (PowerBALD)."""
    return _ranked(scores, "bald", budget, rng, power)


def meanstd_select(scores: Scores, budget: int, rng: np.random.Generator, *, use_variance: bool = False,
                   power: float | None = None) -> np.ndarray:
    """The ``budget`` slices of highest mean MC-dropout std (``use_variance=True``: variance, as the paper's code);
    with ``power``, a power draw."""
    return _ranked(scores, "variance" if use_variance else "std", budget, rng, power)


def _ranked(scores: Scores, key: str, budget: int, rng: np.random.Generator, power: float | None) -> np.ndarray:
    return power_top_k(np.asarray(scores["ids"]), score_vector(scores, key), budget, round_beta(scores, power), rng)


def meanstd_needs(*, use_variance: bool = False, **_: object) -> tuple[str, ...]:
    """Extra score keys Mean STD reads: ``variance`` when ``use_variance`` is set."""
    return ("variance",) if use_variance else ()


def full_select(scores: Scores, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Every slice: the full-label reference (the loop runs it as one round on the whole pool)."""
    return np.asarray(scores["ids"])[:budget]


register(Strategy("random", random_select, help="uniformly random slices"))
register(Strategy("full", full_select, help="every pool slice: the full-label reference (one round)",
                  single_round=True))
# the score rankings: power noising is an option of each (off by default), its beta set per round by power_prepare
_POWER = dict(prepare=power_prepare, check_together=check_power_options)
register(Strategy("entropy", entropy_select, needs=("entropy",), score_key="entropy", options=power_options(),
                  help="Max Entropy: highest mean pixel entropy, dropout off", **_POWER))
# the paper's code scores BALD with its own enable-dropout call at p = 0.01 (docs/fidelity.md); mc_dropout_p overrides
register(Strategy("bald", bald_select, needs=("bald",), score_key="bald", options=power_options(), mc_dropout_p=0.01,
                  help="BALD: highest mutual information over T MC-dropout passes (at p = 0.01)", **_POWER))
register(Strategy("meanstd", meanstd_select, needs=("std",), score_key="std", option_needs=meanstd_needs,
                  options=(Option("use_variance", bool, False,
                                  "rank by the MC variance (the paper's code) instead of the std (its text)"),
                           *power_options()),
                  help="Mean STD: highest mean std across T MC-dropout passes", **_POWER))
