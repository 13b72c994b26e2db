"""Checks of the machine before anything is written: the device exists, the output and cache paths are (or can
become) writable folders, and the disk holds the preprocessed data. Each problem is one EnvironmentProblem line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil

from nnal.cache_layout import is_prepared
from nnal.dataset import RawDataset
from nnal.errors import EnvironmentProblem

# nnU-Net's 2d preprocessing stores float32 images and int8 segmentations (Blosc2 compresses them, so this is an
# upper bound for unresampled data); the planner may resample to a finer spacing, hence the margin.
BYTES_PER_VOXEL_AND_CHANNEL = 4
SEGMENTATION_BYTES_PER_VOXEL = 1
RESAMPLING_MARGIN = 1.5
CHECKPOINT_RESERVE = 256 << 20  # checkpoints, scores and logs of a few rounds
# memory per pool slice: the pool table's row, the slice's scores and features kept for selection (generous)
BYTES_PER_POOL_SLICE = 4096
# per pixel, class and MC pass of a scoring batch: logits, softmax and the running reductions, float32
BYTES_PER_SCORED_VALUE = 12


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


def check_disk(dataset: RawDataset, cache: Path, cache_ready: bool, output: Path | None = None) -> None:
    """Enough free space where the cache lives (the preprocessed data, unless already there) and where the output
    lives (checkpoints, scores and logs of a few rounds); both needs add up on one file system."""
    needs: dict[int, tuple[Path, int, list[str]]] = {}
    wanted = [(cache, 0 if cache_ready else preprocessed_bytes(dataset), "the preprocessed data"),
              (output if output is not None else cache, CHECKPOINT_RESERVE, "checkpoints")]
    for path, need, what in wanted:
        existing = existing_ancestor(path)
        device = os.stat(existing).st_dev
        place, total, whats = needs.get(device, (existing, 0, []))
        needs[device] = (place, total + need, [*whats, what])
    for place, need, whats in needs.values():
        free = shutil.disk_usage(place).free
        if free < need:
            raise EnvironmentProblem(f"{place}: {free / 2**30:.2f} GiB free, {' and '.join(whats)} need about "
                                     f"{need / 2**30:.2f} GiB")


def check_memory(dataset: RawDataset, *, pool_cases: list[str] | None, duplicate: str | None, copies: int,
                 mc_passes: int, batch_size: int, available: int | None = None) -> None:
    """Sizes that would not fit in memory, refused before any work (they would write the experiment's files, then
    die of memory with a traceback): the slice pool (a duplicated case's copies included) and one scoring batch of
    MC-dropout probabilities. Upper estimates from the image headers: any axis may be the slicing axis."""
    available = psutil.virtual_memory().available if available is None else available
    shapes = {case.name: nib.load(str(case.label or case.images[0])).shape[:3] for case in dataset.cases}
    cases = pool_cases if pool_cases is not None else list(shapes)
    slices = sum(max(shapes[c]) for c in cases) + (copies * max(shapes[duplicate]) if duplicate in shapes else 0)
    if slices * BYTES_PER_POOL_SLICE > available:
        raise EnvironmentProblem(f"redundancy.copies: {copies} copies of {duplicate} make a pool of up to {slices:,} "
                                 f"slices, about {slices * BYTES_PER_POOL_SLICE / 2**30:,.1f} GiB for its tables "
                                 f"and scores, more than the {available / 2**30:.1f} GiB of memory available")
    pixels = max(int(np.prod(sorted(shape)[1:])) for shape in shapes.values())
    batch = batch_size * mc_passes * len(dataset.labels) * pixels * BYTES_PER_SCORED_VALUE
    if batch > available:
        raise EnvironmentProblem(f"mc_passes, score_batch_size: {mc_passes} passes x {batch_size} slices of up to "
                                 f"{pixels:,} pixels need about {batch / 2**30:,.1f} GiB per scoring batch, more "
                                 f"than the {available / 2**30:.1f} GiB of memory available; lower them")


def is_preprocessed(dataset: RawDataset, cache: Path) -> bool:
    """Whether nnU-Net's preprocessed data for ``dataset`` are already in ``cache`` (:mod:`nnal.cache_layout`)."""
    return is_prepared(cache, dataset)
