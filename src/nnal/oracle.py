"""The oracle: who labels the slices the loop selects. The loop knows only this seam and the simulated oracle; the
person who annotates plugs in through :mod:`nnal.annotation.oracle` (``nnal run`` hands its factory to the loop).

* :class:`SimulatedOracle` (the paper's benchmark): the dataset's ground truth is in nnU-Net's preprocessed data
  from the start; training reads it on the labeled slices only, so selecting a slice is revealing it.
* the human oracle (annotation mode): labels a person gives through ``nnal query`` / ``nnal ingest``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from nnal.config import Config
from nnal.dataset import RawDataset
from nnal.errors import ConfigError
from nnal.experiment import ExperimentFolder
from nnal.pool import SlicePool


class Oracle(Protocol):
    def initial_selection(self, pool: SlicePool) -> np.ndarray | None:
        """Round 0's labeled set when the oracle decides it (labels already present), else None (a seeded draw)."""

    def revealed(self, round_: int, pool: SlicePool) -> bool:
        """Whether the labels of round ``round_``'s selection are available to training."""

    def request(self, round_: int, backend: Any, weights: Any) -> None:
        """Ask for round ``round_``'s labels (the loop stops after this until they are given)."""

    def reveal(self, backend: Any, pool: SlicePool) -> SlicePool:
        """Put every label given so far where training reads it; the pool with its class counts brought up to
        date."""

    def test_cases(self, cases: list[str]) -> list[str]:
        """The test cases Dice can be measured on."""


OracleFactory = Callable[[Config, ExperimentFolder, RawDataset], Oracle]
"""Builds the oracle a config asks for; it writes nothing, and refuses (ConfigError) an oracle it cannot serve."""


class SimulatedOracle:
    """Labels from the dataset's ground truth, revealed the moment a slice is selected."""

    def initial_selection(self, pool: SlicePool) -> np.ndarray | None:
        return None

    def revealed(self, round_: int, pool: SlicePool) -> bool:
        return True

    def request(self, round_: int, backend: Any, weights: Any) -> None:
        raise RuntimeError("the simulated oracle never waits")

    def reveal(self, backend: Any, pool: SlicePool) -> SlicePool:
        return pool

    def test_cases(self, cases: list[str]) -> list[str]:
        return cases


def simulated_oracle(config: Config, folder: ExperimentFolder, dataset: RawDataset) -> Oracle:
    """The loop's default factory: the simulated oracle only."""
    if config.oracle != "simulated":
        raise ConfigError(f"oracle: {config.oracle} is served by `nnal run` (annotation mode); this caller runs "
                          "simulations only")
    return SimulatedOracle()
