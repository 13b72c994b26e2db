"""The layout of an experiment folder, as one table: every path in it is spelled here and nowhere else (the rest of
the code asks a :class:`Layout`; tests/test_layout.py checks that).

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
.lock                held by the process that runs or changes the experiment
nnunet/              nnU-Net's raw, preprocessed and results folders, unless --cache names another place
```
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from nnal.atomic import LOCK_NAME

FILES = {"config": "config.yaml", "fingerprint": "dataset_fingerprint.json", "environment": "environment.json",
         "pool": "pool.csv", "test_cases": "test_cases.txt", "state": "state.json", "results": "results.csv",
         "annotations": "annotations.json", "lock": LOCK_NAME}
ROUND_FILES = {"selection": "selection.csv", "scores": "scores.npz", "checkpoint": "checkpoint.pt",
               "metrics": "metrics.csv", "training_log": "nnunet", "batch": "batch.csv"}
ANNOTATIONS = "annotations"  # the ingested masks, per round
ANNOTATE = "annotate"  # the batches handed to the annotator, per round
CACHE = "nnunet"  # nnU-Net's planned and preprocessed data when no other cache is given (annotation mode: always)
ROUND_FOLDER = re.compile(r"round_(\d{3,})")

# folders under a grid's or the demo's output that hold no experiment of its own: nnU-Net caches, shared round 0s
NOT_EXPERIMENTS = frozenset({"nnunet", "nnunet-cache", "round0", "report"})


def round_folder(round_: int) -> str:
    return f"round_{round_:03d}"


def numbered_rounds(parent: Path) -> list[tuple[int, Path]]:
    """The ``round_NNN`` folders in ``parent`` with their numbers, ascending."""
    found = [(int(m.group(1)), p) for p in Path(parent).glob("round_*")
             if p.is_dir() and (m := ROUND_FOLDER.fullmatch(p.name))]
    return sorted(found)


def experiment_folders(root: Path, depth: int = 3) -> list[Path]:
    """The experiment folders ``root`` stands for: itself, or those below it (a grid's output, the demo's), at most
    ``depth`` levels down, in name order; a grid's shared round 0s and nnU-Net caches are not among them."""
    root = Path(root)
    if Layout(root).holds_experiment():
        return [root]
    if depth == 0 or not root.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in NOT_EXPERIMENTS):
        found.extend(experiment_folders(child, depth - 1))
    return found


def _round_path(kind: str) -> Callable[[Layout, int], Path]:
    """A method giving round ``round_``'s file of ``kind`` (a row of ROUND_FILES)."""

    def path(self: Layout, round_: int) -> Path:
        return self.round_file(round_, kind)

    path.__name__ = path.__qualname__ = f"{kind}_path"
    return path


class Layout:
    """The paths of one experiment folder (nothing is read or written here)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.config_file = self.root / FILES["config"]
        self.fingerprint_file = self.root / FILES["fingerprint"]
        self.environment_file = self.root / FILES["environment"]
        self.pool_file = self.root / FILES["pool"]
        self.test_cases_file = self.root / FILES["test_cases"]
        self.state_file = self.root / FILES["state"]
        self.results_file = self.root / FILES["results"]
        self.annotations_file = self.root / FILES["annotations"]
        self.lock_file = self.root / FILES["lock"]
        self.annotations_root = self.root / ANNOTATIONS
        self.annotate_root = self.root / ANNOTATE
        self.cache_dir = self.root / CACHE

    def round_dir(self, round_: int) -> Path:
        return self.root / round_folder(round_)

    # a round's files, one per row of ROUND_FILES: selection_file, scores_file, checkpoint_file, metrics_file,
    # training_log_dir, batch_file
    def round_file(self, round_: int, kind: str) -> Path:
        return self.round_dir(round_) / ROUND_FILES[kind]

    selection_file = _round_path("selection")
    scores_file = _round_path("scores")
    checkpoint_file = _round_path("checkpoint")
    metrics_file = _round_path("metrics")
    training_log_dir = _round_path("training_log")
    batch_file = _round_path("batch")

    def annotation_dir(self, round_: int) -> Path:
        return self.annotations_root / round_folder(round_)

    def annotation_file(self, round_: int, case: str) -> Path:
        return self.annotation_dir(round_) / f"{case}.nii.gz"

    def annotate_dir(self, round_: int) -> Path:
        return self.annotate_root / round_folder(round_)

    def annotate_rounds(self) -> list[tuple[int, Path]]:
        """The batches handed out so far (``annotate/round_NNN``) with their rounds, ascending."""
        return numbered_rounds(self.annotate_root)

    def rounds(self) -> list[int]:
        """The rounds with a folder, ascending."""
        return [r for r, _ in numbered_rounds(self.root)]

    def checkpoint_rounds(self) -> list[int]:
        return [r for r in self.rounds() if self.checkpoint_file(r).is_file()]

    def holds_experiment(self) -> bool:
        return self.config_file.is_file()
