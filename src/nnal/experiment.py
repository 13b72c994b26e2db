"""One experiment folder's reads and writes (its paths: :mod:`nnal.layout`; its progress: :mod:`nnal.state`;
atomic writes and the lock: :mod:`nnal.atomic`; resuming and round-0 sharing: :mod:`nnal.resume`).

Every file is written atomically (temp file, fsync, rename): a reader, or a run resumed after a kill, sees the old
file or the new one, never half of one. The loop and the report read and write the folder only through here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnal.atomic import FolderLock, atomic_file, atomic_write_bytes, atomic_write_json, atomic_write_text, is_locked
from nnal.config import Config, build, load_yaml, upgrade_saved
from nnal.dataset import fingerprint_changes
from nnal.errors import DatasetError
from nnal.layout import Layout
from nnal.pool import SlicePool
from nnal.scores_file import read_npz, write_npz
from nnal.state import State

RESULT_COLUMNS = ["experiment", "strategy", "fold", "seed", "round", "n_labeled", "case", "label", "dice"]
SELECTION_COLUMNS = ["id", "case", "slice", "score"]


class ExperimentFolder(Layout):
    """Reads and writes of one experiment folder."""

    def __init__(self, root: Path | str):
        super().__init__(root)
        self._state: State | None = None

    def lock(self) -> FolderLock:
        return FolderLock(self.root)

    def busy(self) -> bool:
        """Whether a process holds the experiment's lock now (it is running)."""
        return is_locked(self.lock_file)

    def finished(self, rounds: int) -> bool:
        """Whether the experiment has evaluated its last round (``rounds``)."""
        return self.state_file.is_file() and self.done(rounds, "evaluate")

    # --- config ---------------------------------------------------------------------------------------------

    def read_config(self) -> Config:
        return build(upgrade_saved(load_yaml(self.config_file)), str(self.config_file))

    def write_config(self, config: Config) -> None:
        atomic_write_text(self.config_file, config.to_yaml())

    def write_environment(self, environment: Mapping[str, Any]) -> None:
        atomic_write_text(self.environment_file, json.dumps(dict(environment), indent=1) + "\n")

    def read_environment(self) -> dict[str, Any]:
        return json.loads(self.environment_file.read_text()) if self.environment_file.is_file() else {}

    def check_dataset(self, fingerprint: Mapping[str, Any]) -> None:
        """Resuming on changed data is refused, naming what changed (the fingerprint is written once)."""
        if not self.fingerprint_file.is_file():
            return
        changes = fingerprint_changes(json.loads(self.fingerprint_file.read_text()), dict(fingerprint))
        if changes:
            raise DatasetError(f"{self.fingerprint_file}: the dataset changed since this experiment started "
                               f"({'; '.join(changes)}); restore it, or start a new experiment in another --output")

    def write_fingerprint(self, fingerprint: Mapping[str, Any]) -> None:
        if not self.fingerprint_file.is_file():
            atomic_write_json(self.fingerprint_file, dict(fingerprint))

    # --- state ----------------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        if self._state is None:
            self._state = State(self.state_file)
        return self._state

    def done(self, round_: int, phase: str) -> bool:
        return self.state.done(round_, phase)

    def finish(self, round_: int, phase: str, seconds: float) -> None:
        self.state.finish(round_, phase, seconds)

    def begin(self) -> None:
        """Write state.json (nothing finished yet) before any round folder exists: a run killed while it writes
        its first round then leaves a folder whose state says so, which resumes, instead of round folders without
        a state, which are refused as a deleted record."""
        if not self.state_file.is_file():
            self.state.save()

    # --- pool and test set ----------------------------------------------------------------------------------

    def has_pool(self) -> bool:
        return self.pool_file.is_file()

    def read_pool(self) -> SlicePool:
        return SlicePool.load(self.pool_file)

    def write_pool(self, pool: SlicePool) -> None:
        atomic_write_text(self.pool_file, pool.save_csv())

    def write_split(self, pool: SlicePool, test_cases: list[str]) -> None:
        """``pool.csv`` and ``test_cases.txt``, written once: a resume checks them and never rewrites them."""
        if not self.has_pool():
            self.write_pool(pool)
        if not self.test_cases_file.is_file():
            atomic_write_text(self.test_cases_file, "\n".join(test_cases) + "\n")

    def check_split(self, train_cases: list[str], test_cases: list[str]) -> None:
        """The saved split must be the one the dataset and config give now (a changed split is refused)."""
        if self.test_cases_file.is_file() and self.read_test_cases() != list(test_cases):
            raise DatasetError(f"{self.test_cases_file}: the test set differs from the fold's split now; "
                               "the split changed, start a new experiment in another --output")
        if self.has_pool() and sorted(set(self.read_pool().table["case"])) != sorted(train_cases):
            raise DatasetError(f"{self.pool_file}: the pool's cases differ from the fold's training cases now; "
                               "the split changed, start a new experiment in another --output")

    def read_test_cases(self) -> list[str]:
        return self.test_cases_file.read_text().split()

    # --- rounds ---------------------------------------------------------------------------------------------

    def write_scores(self, round_: int, scores: Mapping[str, np.ndarray]) -> None:
        """The scoring phase's arrays as ``scores.npz``, streamed into the file member by member (never its bytes
        in memory: at Liver scale an array is gigabytes; :mod:`nnal.scores_file`)."""
        with atomic_file(self.scores_file(round_)) as fh:
            write_npz(fh, scores)

    def read_scores(self, round_: int) -> dict[str, np.ndarray]:
        """``scores.npz`` by key; its large arrays read-only memory maps of the file."""
        return read_npz(self.scores_file(round_))

    def write_selection(self, round_: int, table: pd.DataFrame) -> None:
        atomic_write_text(self.selection_file(round_), table[SELECTION_COLUMNS].to_csv(index=False))

    def read_selection(self, round_: int) -> pd.DataFrame:
        return pd.read_csv(self.selection_file(round_))

    def labeled_before(self, round_: int) -> np.ndarray:
        """Ids selected in rounds ``0 .. round_-1`` (the labeled set when round ``round_`` starts), sorted."""
        ids = [self.read_selection(r)["id"].to_numpy() for r in range(round_) if self.selection_file(r).is_file()]
        return np.sort(np.concatenate(ids)) if ids else np.empty(0, dtype=np.int64)

    def read_annotations(self) -> dict[str, Any]:
        """The annotation record: ``{"rounds": {"<r>": {...}}}``, one entry per ingested round."""
        if not self.annotations_file.is_file():
            return {"rounds": {}}
        return json.loads(self.annotations_file.read_text())

    def write_annotations(self, record: Mapping[str, Any]) -> None:
        atomic_write_json(self.annotations_file, dict(record))

    def write_checkpoint(self, round_: int, data: bytes) -> None:
        """The round's weights; their digest goes into the state with the phase's end, so that a changed or
        truncated file is recognised before a run goes on from it."""
        atomic_write_bytes(self.checkpoint_file(round_), data)
        self.state.data.setdefault("checkpoint_sha256", {})[str(round_)] = hashlib.sha256(data).hexdigest()

    def write_metrics(self, round_: int, frame: pd.DataFrame) -> None:
        atomic_write_text(self.metrics_file(round_), frame[RESULT_COLUMNS].to_csv(index=False))

    def write_results(self) -> None:
        """``results.csv``: every round's metrics, in round order."""
        parts = [pd.read_csv(self.metrics_file(r)) for r in self.rounds() if self.metrics_file(r).is_file()]
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RESULT_COLUMNS)
        atomic_write_text(self.results_file, frame[RESULT_COLUMNS].to_csv(index=False))

    def read_results(self) -> pd.DataFrame:
        return pd.read_csv(self.results_file)
