"""Power noising of a score ranking (Kirsch et al. 2023, "Stochastic Batch Acquisition"), with a schedule over rounds.

Ranking the pool by log(score) + Gumbel(0, 1/beta) noise and taking the top k draws k slices without replacement,
each next one with probability proportional to score^beta among those left (the Gumbel-top-k trick): beta -> inf is
the plain ranking, beta -> 0 uniform sampling. ClaSP PE (Lüth, Traub et al. 2026) lets beta grow over the rounds,
1 -> 100 on an exponential schedule, so the noise decays: diverse batches early, exploitation later (their code,
MIC-DKFZ/nnActive ``strategies/utils.py``: ``power_noising``, ``exponential_schedule``).

The round's beta is decided in the scoring phase, which knows the round (``PoolView.round``), and saved with the
scores as ``power_beta`` (a 0-d array); ``select`` draws the noise from its own Generator, so a selection stays a
pure function of the scores, reproducible per (seed, round).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from nnal.errors import ConfigError
from nnal.strategies.base import ModelLike, Option, PoolView, Scores

POWER_BETA = "power_beta"
FINAL_BETA = 100.0  # ClaSP PE's beta in the last round
Beta = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def power_options(*, power: float | None = None, schedule: str = "constant") -> tuple[Option, ...]:
    """The three options every power-noised strategy declares, with the strategy's defaults."""
    return (
        Option("power", Beta | None, power,
               "power noising's beta (first round): draws slices with probability proportional to score^beta "
               "(Kirsch et al. 2023); null: the plain ranking"),
        Option("power_schedule", Literal["constant", "exponential"], schedule,
               "beta over the rounds: constant, or exponential from power to power_final (ClaSP PE)"),
        Option("power_final", Beta, FINAL_BETA, "beta in the last round of the exponential schedule (ClaSP PE: 100)"),
    )


def check_power_options(options: Mapping[str, Any]) -> None:
    """Refuse a schedule without a beta, and a final beta that no schedule reads (it would only split variants)."""
    if options["power_schedule"] == "exponential" and options["power"] is None:
        raise ConfigError("strategy_options.power_schedule: exponential needs power (the first round's beta), "
                          "got power: null; without noise set power_schedule: constant too")
    if options["power_schedule"] == "constant" and options["power_final"] != FINAL_BETA:
        raise ConfigError(f"strategy_options.power_final: read only by power_schedule: exponential, got "
                          f"{options['power_final']!r} with power_schedule: constant")


def scheduled_beta(power: float, schedule: str, final: float, round_: int, rounds: int) -> float:
    """Beta of selection round ``round_`` (1 .. ``rounds``): ``power`` throughout, or exponential from ``power``
    (round 1) to ``final`` (round ``rounds``), power * (final / power) ** ((round - 1) / (rounds - 1)), as ClaSP PE's
    ``exponential_schedule(rounds, power, final)[round - 1]``. Rounds past ``rounds`` (an extended experiment) keep
    ``final``; a single round is ``power``."""
    if schedule == "constant" or rounds <= 1:
        return float(power)
    step = min(max(round_ - 1, 0), rounds - 1)
    return float(power * (final / power) ** (step / (rounds - 1)))


def power_prepare(model: ModelLike, pool: PoolView, scores: Scores, rng: np.random.Generator, *,
                  power: float | None = None, power_schedule: str = "constant", power_final: float = FINAL_BETA
                  ) -> dict[str, np.ndarray]:
    """This round's beta, saved with the scores (nothing when power noising is off)."""
    if power is None:
        return {}
    return {POWER_BETA: np.array(scheduled_beta(power, power_schedule, power_final, pool.round, pool.rounds))}


def round_beta(scores: Scores, power: float | None) -> float | None:
    """The beta the scoring phase saved for this round, or None when power noising is off. Scores made outside a
    scoring phase (a direct call) hold none: then ``power``, the first round's beta."""
    if power is None:
        return None
    if POWER_BETA not in scores:
        return float(power)
    beta = np.asarray(scores[POWER_BETA], dtype=np.float64)
    if beta.ndim != 0 or not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"scores[{POWER_BETA!r}] must be one positive number, got {beta!r}")
    return float(beta)


def ranking(ids: np.ndarray, values: np.ndarray, beta: float | None, rng: np.random.Generator) -> np.ndarray:
    """Pool positions, best first. Without ``beta``: by value, ties by the lower id (as ``top_k``). With ``beta``:
    by log(value) + Gumbel(0, 1/beta), one draw per slice from ``rng``.

    A value <= 0 has no probability mass (score^beta = 0; log would be -inf): such slices come after every positive
    one, among themselves in a uniformly random order (their Gumbel draws alone), so they fill a budget that the
    positive ones cannot, and no -inf ever ties.
    """
    values = np.asarray(values, dtype=np.float64)
    if beta is None:
        return np.lexsort((ids, -values))
    noise = rng.gumbel(0.0, 1.0 / beta, size=len(values))
    positive = values > 0
    keys = np.where(positive, np.log(np.where(positive, values, 1.0)) + noise, noise)
    return np.lexsort((ids, -keys, ~positive))


def power_top_k(ids: np.ndarray, values: np.ndarray, k: int, beta: float | None,
                rng: np.random.Generator) -> np.ndarray:
    """The ``k`` ids first in :func:`ranking`: the plain top-k without ``beta``, a power draw with it."""
    return ids[ranking(ids, values, beta, rng)[:k]]
