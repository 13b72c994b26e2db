"""The human oracle, which annotation mode plugs into the loop (the seam and the simulated oracle are
:mod:`nnal.oracle`).

* :class:`HumanOracle`: the raw dataset has no labels for the pool (or some cases' labels), so
  nnU-Net's preprocessed segmentation holds only what a person has given. After each selection the loop hands
  the batch out (``DIR/annotate/round_NNN``) and stops; once ``nnal ingest`` has committed the masks, the next
  ``nnal run`` puts them where training reads labels (the backend runs nnU-Net's own preprocessing on them) and
  trains. Fed the ground truth through ingest, it trains on exactly the data of the simulated oracle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnal.annotation.batch import export_batch
from nnal.annotation.store import AnnotationStore
from nnal.config import Config
from nnal.dataset import RawDataset
from nnal.experiment import ExperimentFolder
from nnal.oracle import Oracle, SimulatedOracle
from nnal.pool import SlicePool


class HumanOracle:
    """Labels a person gives through ``nnal query`` / ``nnal ingest``."""

    def __init__(self, folder: ExperimentFolder, dataset: RawDataset, config: Config):
        self.folder = folder
        self.dataset = dataset
        self.config = config
        self.has_label = {case.name: case.label is not None for case in dataset.cases}

    @property
    def store(self) -> AnnotationStore:
        return AnnotationStore(self.folder, self.dataset)  # read afresh: `nnal ingest` commits from outside

    def initial_selection(self, pool: SlicePool) -> np.ndarray | None:
        ids = self._labeled_in_dataset(pool)
        return ids if len(ids) else None

    def _labeled_in_dataset(self, pool: SlicePool) -> np.ndarray:
        """Pool rows of cases the dataset brings labels for: labeled from the start."""
        return np.flatnonzero(pool.table["case"].map(self.has_label).to_numpy(dtype=bool)).astype(np.int64)

    def revealed(self, round_: int, pool: SlicePool) -> bool:
        if self.store.ingested(round_):
            return True
        # round 0 taken from labels already present needs nobody
        return round_ == 0 and len(self._labeled_in_dataset(pool)) > 0

    def request(self, round_: int, backend: Any, weights: Any) -> None:
        export_batch(self.folder, self.store, round_, self.config, backend, weights)

    def reveal(self, backend: Any, pool: SlicePool) -> SlicePool:
        store = self.store
        cases = [case for case in store.annotated_cases() if case in set(pool.table["case"])]
        for case in cases:
            backend.write_labels(case, store.known_labels(case), store.image(case).affine)
        if not cases:
            return pool
        updated = pool.with_counts(backend.slice_counts(cases))
        if not updated.table.equals(pool.table):
            self.folder.write_pool(updated)
        return updated

    def test_cases(self, cases: list[str]) -> list[str]:
        return [case for case in cases if self.has_label[case]]  # Dice needs labels; unlabeled ones are left out


def make_oracle(config: Config, folder: ExperimentFolder, dataset: RawDataset) -> Oracle:
    """The factory ``nnal run`` hands the loop: the oracle the config names."""
    return HumanOracle(folder, dataset, config) if config.oracle == "human" else SimulatedOracle()
