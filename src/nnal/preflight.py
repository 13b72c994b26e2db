"""Checks of the machine before anything is written: the device exists, the output and cache paths are (or can
become) writable folders, and the disk holds the preprocessed data. Each problem is one EnvironmentProblem line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from nnal.dataset import RawDataset, cache_key
from nnal.errors import EnvironmentProblem

# nnU-Net's 2d preprocessing stores float32 images and int8 segmentations (Blosc2 compresses them, so this is an
# upper bound for unresampled data); the planner may resample to a finer spacing, hence the margin.
BYTES_PER_VOXEL_AND_CHANNEL = 4
SEGMENTATION_BYTES_PER_VOXEL = 1
RESAMPLING_MARGIN = 1.5
CHECKPOINT_RESERVE = 256 << 20  # checkpoints, scores and logs of a few rounds


def check_device(name: str) -> None:
    """``cuda`` must exist when asked for by name (``auto`` falls back to the CPU)."""
    if name != "cuda":
        return
    from nnal.backend.runtime import cuda_available  # torch loads only here

    if not cuda_available():
        raise EnvironmentProblem("device: 'cuda' requested but no CUDA device is available (use --device cpu or auto)")


def existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (where a new folder would be created)."""
    existing = Path(path)
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    return existing


def check_writable_folder(path: Path, what: str) -> None:
    """``path`` is a writable folder, or can be created as one under a writable existing folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EnvironmentProblem(f"{path}: the {what} path is a file, not a folder")
    existing = existing_ancestor(path)
    if not existing.is_dir():
        raise EnvironmentProblem(f"{path}: cannot create the {what} folder, {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EnvironmentProblem(f"{existing}: not writable (needed for the {what} folder {path})")


def preprocessed_bytes(dataset: RawDataset) -> int:
    """An upper estimate of nnU-Net's preprocessed data for ``dataset``, from the image headers only."""
    total = 0
    channels = len(dataset.channel_names)
    for case in dataset.cases:
        voxels = int(np.prod(nib.load(str(case.label or case.images[0])).shape[:3]))
        total += voxels * (BYTES_PER_VOXEL_AND_CHANNEL * channels + SEGMENTATION_BYTES_PER_VOXEL)
    return int(total * RESAMPLING_MARGIN)


def check_disk(dataset: RawDataset, cache: Path, cache_ready: bool) -> None:
    """Enough free space where the cache lives: the preprocessed data (unless already there) and a reserve."""
    need = CHECKPOINT_RESERVE + (0 if cache_ready else preprocessed_bytes(dataset))
    existing = existing_ancestor(cache)
    free = shutil.disk_usage(existing).free
    if free < need:
        raise EnvironmentProblem(f"{existing}: {free / 2**30:.2f} GiB free, the preprocessed data and checkpoints "
                                 f"need about {need / 2**30:.2f} GiB")


def is_preprocessed(dataset: RawDataset, cache: Path) -> bool:
    """Whether nnU-Net's preprocessed data for ``dataset`` are already in ``cache`` (the backend's layout:
    ``<cache key>/preprocessed/<dataset>/.nnal_done``)."""
    return any(Path(cache).glob(f"{cache_key(dataset)}/preprocessed/*/.nnal_done"))
