"""The backend seam, typed: what the loop, annotation, export and the report ask of a segmentation backend, and
of the factory that builds one. nnU-Net's backend (``nnal.backend.session.Backend``) and the fake
(``nnal.backend.fake.FakeBackend``) both implement it; ``nnal.backend.factories`` registers their factories, and
mypy (``make test``) checks that both conform. Weights are the backend's own (torch tensors, numpy arrays): the
core only hands them back, so they are ``Any`` here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nnal.config import Config
from nnal.dataset import RawDataset
from nnal.strategies.base import ModelLike

Split = dict[str, list[str]]  # one fold: {"train": cases, "val": cases}


class SegmentationBackend(Protocol):
    """A dataset prepared for training (nnU-Net: planned and preprocessed), and everything done with it."""

    root: Path  # its cache folder
    labels: list[int]  # the label values, background first
    splits: list[Split]  # the fold splits it trains on

    def slice_counts(self, cases: list[str]) -> dict[str, np.ndarray]:
        """Per case, (slices, classes) voxel counts of the labels training sees."""
        ...

    def train(self, fold: int, labeled: Mapping[str, np.ndarray], config: Any, epochs: int, init_weights: Any,
              log_dir: Path, seed: int, on_step: Callable[[float], None] | None = None) -> Any:
        """Weights trained for ``epochs`` on the labeled slices (per case, the slice indices), from
        ``init_weights`` (None: a fresh network)."""
        ...

    def model(self, weights: Any) -> ModelLike:
        """One round's model, as the strategies' preparation steps see it."""
        ...

    def evaluate(self, weights: Any, cases: list[str], batch_size: int,
                 on_case: Callable[[], None] | None = None) -> list[tuple[str, int, float]]:
        """(case, label, Dice) rows of the test cases."""
        ...

    def slice_location(self, case: str) -> tuple[int, int]:
        """(axis, offset) of the backend's slices in the raw NIfTI array."""
        ...

    def write_labels(self, case: str, labels: np.ndarray, affine: np.ndarray) -> bool:
        """A person's labels put where training reads them; whether they changed."""
        ...

    def predict_raw(self, weights: Any, case: str, slices: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Predictions of ``slices`` in the raw array's geometry."""
        ...

    def environment(self) -> dict[str, str]:
        """What ``environment.json`` records about the backend (its name, device, cache)."""
        ...

    @staticmethod
    def checkpoint_bytes(weights: Any, **meta: object) -> bytes: ...

    @staticmethod
    def load_weights(path: Path) -> Any: ...


class BackendFactory(Protocol):
    """Builds the backend for a dataset in a cache; tells its fold split without building anything."""

    name: str  # recorded in environment.json: a folder never mixes backends

    def __call__(self, dataset: RawDataset, cache: Path, config: Config) -> SegmentationBackend: ...

    def splits(self, dataset: RawDataset, cache: Path) -> list[Split] | None:
        """The fold splits, or None when only the built backend can tell them (checked once it is built)."""
        ...
