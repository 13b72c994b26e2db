"""NIfTI volumes in annotation mode: reading a person's files, slices along an array axis, a slice's position in
world space, and reproducible ``.nii.gz`` bytes (equal labels give equal files, so a repeated ingest is no change)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from nnal.dataset import UNREADABLE
from nnal.dataset_checks import NIFTI_ENDINGS

WORLD_AXES = "xyz"  # NIfTI world space (RAS+, mm)


class Unreadable(Exception):
    """A file nibabel cannot read in full (missing, truncated, corrupt, not NIfTI)."""


def read_volume(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image and its voxels, read in full (a truncated file fails here, not later)."""
    try:
        img = nib.load(str(path))
        return img, np.asanyarray(img.dataobj)
    except UNREADABLE as err:
        raise Unreadable(f"unreadable NIfTI ({err.__class__.__name__})") from None


def case_name(path: Path) -> str | None:
    """``case_001`` for ``case_001.nii.gz`` or ``case_001.nii``; None for any other file."""
    ending = next((e for e in NIFTI_ENDINGS if path.name.endswith(e)), None)
    return None if ending is None else path.name[: -len(ending)]


def index_along(axis: int, index: int | np.ndarray, ndim: int = 3) -> tuple:
    """The numpy index of one slice (or several) along ``axis``."""
    return tuple(index if a == axis else slice(None) for a in range(ndim))


def world_position(affine: np.ndarray, shape: tuple[int, ...], axis: int, index: int) -> tuple[str, float]:
    """(world axis, mm): the centre of slice ``index`` along array ``axis``, as its coordinate on the world axis
    that array axis runs along most (``z`` for an axial slice of an axis-aligned scan)."""
    centre = np.array([(n - 1) / 2.0 for n in shape[:3]] + [1.0])
    centre[axis] = index
    world = np.asarray(affine, dtype=float) @ centre
    along = int(np.argmax(np.abs(np.asarray(affine, dtype=float)[:3, axis])))
    return WORLD_AXES[along], round(float(world[along]), 4)


def label_dtype(values: np.ndarray) -> type:
    return np.uint8 if values.size == 0 or int(values.max()) < 256 else np.uint16


def nifti_bytes(array: np.ndarray, like: nib.Nifti1Image) -> bytes:
    """``array`` as ``.nii.gz`` bytes on ``like``'s voxel grid (its affine, qform and sform); a gzip stream without a
    time stamp, so the same labels always give the same bytes."""
    img = nib.Nifti1Image(np.asarray(array), like.affine)
    qform, qcode = like.get_qform(coded=True)
    sform, scode = like.get_sform(coded=True)
    if qform is not None:
        img.set_qform(qform, int(qcode))
    if sform is not None:
        img.set_sform(sform, int(scode))
    img.header.set_xyzt_units(*like.header.get_xyzt_units())
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def as_nifti_gz(path: Path) -> bytes:
    """A NIfTI file's content as ``.nii.gz`` bytes: a ``.nii.gz`` as it is, a ``.nii`` compressed."""
    data = Path(path).read_bytes()
    return data if path.name.endswith(".gz") else gzip.compress(data, compresslevel=6, mtime=0)
