"""A stand-in for the person in annotation mode: datasets with hidden labels, and masks written from the hidden
ground truth exactly as an annotator would save them (the presegmentation corrected on the listed slices)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd


def hide_labels(full: Path, hidden: Path, keep: set[str]) -> Path:
    """A copy of the dataset ``full`` without the label files of every case not in ``keep``."""
    shutil.copytree(full, hidden)
    for label in (hidden / "labelsTr").iterdir():
        if label.name.split(".nii")[0] not in keep:
            label.unlink()
    return hidden


def truth(full: Path, case: str) -> np.ndarray:
    files = [p for p in (full / "labelsTr").iterdir() if p.name.split(".nii")[0] == case]
    return np.asarray(nib.load(str(files[0])).dataobj)


def slab(axis: int, index: int) -> tuple:
    return tuple(index if a == axis else slice(None) for a in range(3))


def annotate_from_truth(batch: Path, full: Path) -> None:
    """Fill ``batch/masks`` from the ground truth of ``full``: every listed slice corrected in the presegmentation,
    slices empty in truth marked ``empty`` in manifest.csv."""
    manifest = pd.read_csv(batch / "manifest.csv", dtype={"case": str})
    for case, rows in manifest.groupby("case"):
        preseg = nib.load(str(batch / "presegmentation" / f"{case}.nii.gz"))
        mask = np.asarray(preseg.dataobj).copy()
        gt = truth(full, case)
        for row in rows.itertuples():
            where = slab(row.axis, row.slice)
            mask[where] = gt[where]
            manifest.loc[row.Index, "empty"] = not gt[where].any()
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), preseg.affine), str(batch / "masks" / f"{case}.nii.gz"))
    manifest.to_csv(batch / "manifest.csv", index=False)


def folder_digest(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the lock file included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
