"""The labels a person has given: per case a NIfTI volume on the raw image's grid, 0 where nothing is known.

A case's known labels are its file from the latest ingested round that touched it, else its label file in the
dataset (labels already present), else none. Each ingest writes the round's files in a staging folder
beside the experiment, moves it to ``annotations/round_NNN/`` with one rename and then commits by rewriting
``annotations.json`` atomically: a killed ingest leaves the experiment as it was (at most a folder that nothing
reads, replaced by the rerun), and a committed round's files are never written again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from nnal.annotation.volumes import nifti_bytes
from nnal.atomic import atomic_write_bytes
from nnal.config import Config
from nnal.dataset import RawDataset, load_dataset
from nnal.errors import NnalError
from nnal.experiment import ExperimentFolder

# beside the experiment folder, on its filesystem: a killed ingest leaves the experiment itself byte-identical
STAGING_PREFIX = ".nnal-ingest-"

BATCH_COLUMNS = ["id", "case", "axis", "slice", "pool_slice", "world_axis", "world_mm", "score"]


class AnnotationStore:
    """Known labels per case, and which rounds' masks were ingested."""

    def __init__(self, folder: ExperimentFolder, dataset: RawDataset):
        self.folder = folder
        self.dataset = dataset
        self.cases = {case.name: case for case in dataset.cases}
        self.record = folder.read_annotations()

    def ingested_rounds(self) -> list[int]:
        return sorted(int(r) for r in self.record["rounds"])

    def ingested(self, round_: int) -> bool:
        return str(round_) in self.record["rounds"]

    def entry(self, round_: int) -> dict[str, Any]:
        return self.record["rounds"][str(round_)]

    def known_file(self, case: str) -> Path | None:
        """The file holding the case's labels known now, or None when nothing is known of it."""
        for r in reversed(self.ingested_rounds()):
            if case in self.entry(r)["cases"]:
                return self.folder.annotation_file(r, case)
        return self.cases[case].label

    def annotated_cases(self) -> list[str]:
        """Cases with labels from an ingest (not those whose labels the dataset brought)."""
        return sorted({case for r in self.ingested_rounds() for case in self.entry(r)["cases"]})

    def known_labels(self, case: str) -> np.ndarray | None:
        path = self.known_file(case)
        return None if path is None else np.asarray(nib.load(str(path)).dataobj)

    def image(self, case: str) -> nib.Nifti1Image:
        """The case's (first) image: the grid every label volume of the case lies on."""
        return nib.load(str(self.cases[case].images[0]))

    def known_or_blank(self, case: str) -> np.ndarray:
        known = self.known_labels(case)
        return np.zeros(self.image(case).shape[:3], dtype=np.uint8) if known is None else known

    def batch(self, round_: int) -> pd.DataFrame:
        """The round's selected slices located in the raw arrays (written when the batch was exported)."""
        return pd.read_csv(self.folder.batch_file(round_), dtype={"case": str})

    def commit_paths(self, round_: int) -> list[Path]:
        """What committing ``round_`` writes: the lock, ``annotations.json`` (in the experiment folder),
        ``annotations/`` and a round folder a killed ingest left in it (replaced). The staging folder needs none
        of them beyond these: beside the experiment where its parent is writable, else in ``annotations/``."""
        root = self.folder.root
        return [root, self.folder.lock_file, self.folder.annotations_root, self.folder.annotation_dir(round_)]

    def commit(self, round_: int, volumes: Mapping[str, np.ndarray], entry: Mapping[str, Any],
               on_file_written=None) -> None:
        """Write the round's volumes into a staging folder beside the experiment, move it in with one rename, then
        record the round (the record's atomic rewrite is the commit). Call under the folder's lock."""
        if self.ingested(round_):
            raise RuntimeError(f"round {round_} is ingested already; its annotations are never rewritten")
        target = self.folder.annotation_dir(round_)
        for stale in self.folder.root.parent.glob(f"{STAGING_PREFIX}{self.folder.root.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed ingest (we hold the lock: none runs)
        staging = _staging_folder(self.folder)
        try:
            for case in sorted(volumes):
                atomic_write_bytes(staging / f"{case}.nii.gz", nifti_bytes(volumes[case], self.image(case)))
                if on_file_written is not None:
                    on_file_written(case)
            if target.exists():  # moved in by an ingest killed before its record: never read, so replaced
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        record = {"rounds": {**self.record["rounds"], str(round_): {**entry, "cases": sorted(volumes)}}}
        self.folder.write_annotations(record)
        self.record = record


def _staging_folder(folder: ExperimentFolder) -> Path:
    """A fresh folder on the experiment's filesystem, outside it when its parent is writable, else inside."""
    try:
        return Path(tempfile.mkdtemp(dir=folder.root.parent, prefix=f"{STAGING_PREFIX}{folder.root.name}-"))
    except OSError:
        folder.annotations_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=folder.annotations_root, prefix=STAGING_PREFIX))


def open_annotation_experiment(root: Path, refusal: str) -> tuple[ExperimentFolder, Config, RawDataset]:
    """The experiment in ``root`` with its config and dataset, if it runs with a human oracle; else one line naming
    the file (``refusal`` says why a simulated experiment cannot do what was asked)."""
    folder = ExperimentFolder(root)
    if not folder.holds_experiment():
        raise NnalError(f"{root}: not an nnal experiment (no config.yaml)")
    config = folder.read_config()
    if config.oracle != "human":
        raise NnalError(f"{folder.config_file}: oracle is {config.oracle}, not human; {refusal}")
    return folder, config, load_dataset(config.dataset, labels_optional=True)
