"""The experiment folder's one owner: its layout and the state of each (round, phase) (atomic writes and the lock:
:mod:`nnal.atomic`).

```
config.yaml          every setting that decides the result
dataset_fingerprint.json  the dataset's identity: case list, per file its size and a content digest
environment.json     versions, device, git commit
pool.csv             slice id, case, slice index, voxels per class
test_cases.txt       the fold's validation cases (the test set)
state.json           last finished (round, phase) and seconds per phase
results.csv          one row per (round, test case, label): RESULT_COLUMNS
round_NNN/           selection.csv, scores.npz, checkpoint.pt, metrics.csv, nnunet/ (training logs);
                     batch.csv (annotation mode: the selected slices located in the raw NIfTI arrays)
annotations.json     annotation mode: the rounds whose masks were ingested (the commit record of `nnal ingest`)
annotations/round_NNN/<case>.nii.gz  a case's known labels after round NNN's ingest (never rewritten)
annotate/round_NNN/  the batch handed to the annotator (images, labels, presegmentation, masks/, manifest)
```

Every file is written atomically (temp file, fsync, rename): a reader, or a run resumed after a kill, sees the old
file or the new one, never half of one. The loop and the report read and write the folder only through here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnal.atomic import FolderLock, atomic_file, atomic_write_bytes, atomic_write_json, atomic_write_text, is_locked
from nnal.config import RESUMABLE_CHANGES, ROUND0_FIELDS, Config, build, load_yaml, upgrade_saved
from nnal.dataset import fingerprint_changes
from nnal.errors import ConfigError, DatasetError, FolderError
from nnal.pool import SlicePool
from nnal.scores_file import read_npz, write_npz
from nnal.strategies import get_strategy

PHASES = ("score", "select", "train", "evaluate")
RESULT_COLUMNS = ["experiment", "strategy", "fold", "seed", "round", "n_labeled", "case", "label", "dice"]
SELECTION_COLUMNS = ["id", "case", "slice", "score"]


# folders under a grid's or the demo's output that hold no experiment of its own: nnU-Net caches, shared round 0s
NOT_EXPERIMENTS = frozenset({"nnunet", "nnunet-cache", "round0", "report"})


def experiment_folders(root: Path, depth: int = 3) -> list[Path]:
    """The experiment folders ``root`` stands for: itself, or those below it (a grid's output, the demo's), at most
    ``depth`` levels down, in name order; a grid's shared round 0s and nnU-Net caches are not among them."""
    root = Path(root)
    if (root / "config.yaml").is_file():
        return [root]
    if depth == 0 or not root.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in NOT_EXPERIMENTS):
        found.extend(experiment_folders(child, depth - 1))
    return found


class State:
    """The last finished (round, phase), plus seconds per phase; rewritten atomically after each phase."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, Any] = {"round": -1, "phase": PHASES[-1], "seconds": {}}
        if self.path.is_file():
            self.data = _read_state(self.path)

    def done(self, round_: int, phase: str) -> bool:
        last = (self.data["round"], PHASES.index(self.data["phase"]))
        return (round_, PHASES.index(phase)) <= last

    def finish(self, round_: int, phase: str, seconds: float) -> None:
        self.data["round"], self.data["phase"] = round_, phase
        self.data["seconds"].setdefault(str(round_), {})[phase] = round(seconds, 3)
        atomic_write_json(self.path, self.data)


def _read_state(path: Path) -> dict[str, Any]:
    """``state.json`` as written by :meth:`State.finish`; anything else is one FolderError line."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FolderError(f"{path}: unreadable ({type(err).__name__}); the record of which phases finished is "
                          "lost: restore it from a backup, or start the experiment again in another --output") from None
    valid = (isinstance(data, dict) and isinstance(data.get("round"), int) and not isinstance(data["round"], bool)
             and data["round"] >= -1 and data.get("phase") in PHASES and isinstance(data.get("seconds"), dict))
    if not valid:
        raise FolderError(f"{path}: malformed (expected round, phase and seconds as nnal writes them); restore it "
                          "from a backup, or start the experiment again in another --output")
    return data


def _setting(config: Config, field: str) -> Any:
    """A field's value as it decides the result: strategy options with their defaults filled in."""
    if field == "strategy_options":
        return get_strategy(config.strategy).resolve(config.strategy_options)
    return getattr(config, field)


class ExperimentFolder:
    """Paths and reads/writes of one experiment folder."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.config_file = self.root / "config.yaml"
        self.fingerprint_file = self.root / "dataset_fingerprint.json"
        self.environment_file = self.root / "environment.json"
        self.pool_file = self.root / "pool.csv"
        self.test_cases_file = self.root / "test_cases.txt"
        self.state_file = self.root / "state.json"
        self.results_file = self.root / "results.csv"
        self.annotations_file = self.root / "annotations.json"
        self._state: State | None = None

    # --- layout ---------------------------------------------------------------------------------------------

    def round_dir(self, round_: int) -> Path:
        return self.root / f"round_{round_:03d}"

    def selection_file(self, round_: int) -> Path:
        return self.round_dir(round_) / "selection.csv"

    def scores_file(self, round_: int) -> Path:
        return self.round_dir(round_) / "scores.npz"

    def checkpoint_file(self, round_: int) -> Path:
        return self.round_dir(round_) / "checkpoint.pt"

    def metrics_file(self, round_: int) -> Path:
        return self.round_dir(round_) / "metrics.csv"

    def training_log_dir(self, round_: int) -> Path:
        return self.round_dir(round_) / "nnunet"

    def batch_file(self, round_: int) -> Path:
        return self.round_dir(round_) / "batch.csv"

    def annotation_dir(self, round_: int) -> Path:
        return self.root / "annotations" / f"round_{round_:03d}"

    def annotation_file(self, round_: int, case: str) -> Path:
        return self.annotation_dir(round_) / f"{case}.nii.gz"

    def annotate_dir(self, round_: int) -> Path:
        return self.root / "annotate" / f"round_{round_:03d}"

    def rounds(self) -> list[int]:
        """The rounds with a folder, ascending."""
        return sorted(int(p.name[6:]) for p in self.root.glob("round_[0-9][0-9][0-9]") if p.is_dir())

    def checkpoint_rounds(self) -> list[int]:
        return [r for r in self.rounds() if self.checkpoint_file(r).is_file()]

    def holds_experiment(self) -> bool:
        return self.config_file.is_file()

    def lock(self) -> FolderLock:
        return FolderLock(self.root)

    def busy(self) -> bool:
        """Whether a process holds the experiment's lock now (it is running)."""
        return is_locked(self.root / ".lock")

    def finished(self, rounds: int) -> bool:
        """Whether the experiment has evaluated its last round (``rounds``)."""
        return self.state_file.is_file() and self.done(rounds, "evaluate")

    # --- config ---------------------------------------------------------------------------------------------

    def read_config(self) -> Config:
        return build(upgrade_saved(load_yaml(self.config_file)), str(self.config_file))

    def reconcile(self, config: Config) -> Config:
        """A new folder takes ``config``; an existing one must hold the same experiment (resume)."""
        if not self.holds_experiment():
            if self.root.exists() and any(p.name != ".lock" for p in self.root.iterdir()):
                raise ConfigError(f"{self.root}: exists, is not empty and holds no nnal experiment (config.yaml)")
            return config
        saved = self.read_config()
        differ = [f for f in saved.to_dict()
                  if f not in RESUMABLE_CHANGES and _setting(saved, f) != _setting(config, f)]
        if differ:
            raise ConfigError(f"{self.config_file}: existing experiment differs in {', '.join(differ)}; "
                              "use another --output or the same settings to resume")
        return config

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
            atomic_write_json(self.state_file, self.state.data)

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

    # --- sharing round 0 ------------------------------------------------------------------------------------

    def adopt_round0(self, source: ExperimentFolder, config: Config) -> bool:
        """Reuse ``source``'s round 0 when every field that decides it is equal (demos, grids); True if taken."""
        if not source.holds_experiment() or not source.done(0, "evaluate"):
            return False
        other = source.read_config()
        if any(getattr(other, f) != getattr(config, f) for f in ROUND0_FIELDS):
            return False
        if (other.strategy == "full") != (config.strategy == "full"):  # full's round 0 is the whole pool
            return False
        shutil.copytree(source.round_dir(0), self.round_dir(0), dirs_exist_ok=True)
        metrics = pd.read_csv(self.metrics_file(0)).assign(experiment=config.experiment, strategy=config.strategy)
        self.write_metrics(0, metrics)
        self.write_results()
        self.state.data["seconds"]["0"] = source.state.data["seconds"].get("0", {})
        digest = source.state.data.get("checkpoint_sha256", {}).get("0")
        if digest is not None:
            self.state.data.setdefault("checkpoint_sha256", {})["0"] = digest
        self.finish(0, "evaluate", 0.0)
        return True
