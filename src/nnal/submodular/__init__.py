"""FLQMI (the paper's Eq. 1) and its greedy maximisers, without submodlib. See docs/submodular.md.

Modules: :mod:`~nnal.submodular.maximize` (the objective, the exact and the stochastic greedy, the non-negative
shift), :mod:`~nnal.submodular.kernel` (the numba gain kernel and the numpy helpers that sum gains in its order) and
:mod:`~nnal.submodular.checks` (argument checks, thread count, chunk size).
"""

from __future__ import annotations

from nnal.submodular.maximize import (
    backend,
    flqmi_greedy,
    flqmi_objective,
    flqmi_stochastic_greedy,
    shift_nonnegative,
)

__all__ = ["backend", "flqmi_greedy", "flqmi_objective", "flqmi_stochastic_greedy", "shift_nonnegative"]
