"""``nnal synth``: synthetic CT-like datasets as nnU-Net v2 raw folders, a stand-in for MSD Liver and Spleen where
those cannot be downloaded. Results on them are results on synthetic data and must be labelled so (docs/synth.md).

Each case comes from its own generator, ``SeedSequence(seed).spawn(cases)[i]``: the same seed writes
byte-identical files, and a dataset of more cases begins with the same cases as one of fewer."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nnal.dataset import NNUNET_NAME
from nnal.errors import ConfigError, EnvironmentProblem
from nnal.preflight import existing_ancestor
from nnal.synth.case import draw_case, write_case

KINDS = {  # kind -> (dataset name, default id, cases as in MSD, labels)
    "liver": ("SyntheticLiver", 901, 131, {"background": 0, "liver": 1, "cancer": 2}),
    "spleen": ("SyntheticSpleen", 902, 41, {"background": 0, "spleen": 1}),
}
DESCRIPTION = "synthetic CT-like data made by nnal synth, not patient data"
SIZE_RANGE = (32, 2048)
SLICES_RANGE = (8, 2000)  # fewer would leave an organ one slice or none
MAX_CASES = 10_000
BYTES_PER_VOXEL = 1.1  # int16 CT with noise compresses to about a byte a voxel, its label to almost nothing


def synthesize(*, kind: str, output: Path, cases: int | None = None, size: int = 512,
               slices: tuple[int, int] = (40, 80), seed: int = 0,
               emit: Callable[[str], None] = lambda line: None) -> Path:
    """Write a synthetic dataset; return its folder (``output`` itself if named ``DatasetNNN_Name``, else
    ``output/Dataset901_SyntheticLiver`` or ``output/Dataset902_SyntheticSpleen``). Options are checked before
    anything is written; the folder appears complete or not at all (it is built beside, then renamed)."""
    cases = check_options(kind=kind, cases=cases, size=size, slices=slices, seed=seed)
    target = dataset_folder(output, kind)
    check_output(target, cases=cases, size=size, slices=slices)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        os.chmod(work, 0o777 & ~_umask())  # mkdtemp's folder is private; the dataset is not
        _write_dataset(work, kind=kind, cases=cases, size=size, slices=slices, seed=seed, emit=emit)
        os.rename(work, target)  # replaces an empty folder given as the output
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_options(*, kind: str, cases: int | None, size: int, slices: tuple[int, int], seed: int) -> int:
    """The number of cases (MSD's for the kind when None); a bad option is one ConfigError line naming it."""
    if kind not in KINDS:
        raise ConfigError(f"--kind: unknown {kind!r}; known: {', '.join(KINDS)}")
    cases = KINDS[kind][2] if cases is None else cases
    if not 1 <= cases <= MAX_CASES:
        raise ConfigError(f"--cases: must be 1 to {MAX_CASES:,}, got {cases}")
    if not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise ConfigError(f"--size: must be {SIZE_RANGE[0]} to {SIZE_RANGE[1]} voxels, got {size}")
    low, high = slices
    if not SLICES_RANGE[0] <= low <= high <= SLICES_RANGE[1]:
        raise ConfigError(f"--slices: MIN MAX must satisfy {SLICES_RANGE[0]} <= MIN <= MAX <= {SLICES_RANGE[1]}, "
                          f"got {low} {high}")
    if seed < 0:
        raise ConfigError(f"--seed: must be 0 or more, got {seed}")
    return cases


def dataset_folder(output: Path, kind: str) -> Path:
    """``output`` if it is named like an nnU-Net dataset, else the kind's default dataset folder inside it."""
    output = Path(output).expanduser().absolute()
    if NNUNET_NAME.fullmatch(output.name):
        return output
    name, number, _, _ = KINDS[kind]
    return output / f"Dataset{number:03d}_{name}"


def check_output(target: Path, *, cases: int, size: int, slices: tuple[int, int]) -> None:
    """A new or empty folder, under a writable one, on a disk with room for the dataset."""
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--output: {target} is a file, not a folder")
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError(f"--output: {target} exists and is not empty; give a new or empty folder")
    parent = existing_ancestor(target.parent)
    if not parent.is_dir():
        raise ConfigError(f"--output: cannot create {target}, {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EnvironmentProblem(f"--output: {parent} is not writable")
    need = cases * (slices[0] + slices[1]) / 2 * size * size * BYTES_PER_VOXEL
    free = shutil.disk_usage(parent).free
    if free < need:
        raise EnvironmentProblem(f"--output: the dataset needs about {need / 2**30:.2f} GiB, {parent} has "
                                 f"{free / 2**30:.2f} GiB free")


def _write_dataset(root: Path, *, kind: str, cases: int, size: int, slices: tuple[int, int], seed: int,
                   emit: Callable[[str], None]) -> None:
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(cases)):
        rng = np.random.default_rng(child)
        case = draw_case(rng, kind, size=size, slices=slices)
        name = case_name(kind, i)
        write_case(case, rng, root / "imagesTr" / f"{name}_0000.nii.gz", root / "labelsTr" / f"{name}.nii.gz")
        emit(f"synth: {name} ({i + 1}/{cases}): {case.shape[0]} slices of {size}x{size}, "
             f"{case.spacing[0]:.2f} x {case.spacing[1]:.2f} x {case.spacing[2]:.2f} mm")
    (root / "dataset.json").write_text(json.dumps(dataset_json(kind, cases=cases, size=size, slices=slices,
                                                               seed=seed), indent=1) + "\n")
    (root / "README.md").write_text(README.format(name=KINDS[kind][0], kind=kind, cases=cases, size=size,
                                                  low=slices[0], high=slices[1], seed=seed))


def case_name(kind: str, index: int) -> str:
    return f"synth_{kind}_{index:03d}"


def dataset_json(kind: str, *, cases: int, size: int, slices: tuple[int, int], seed: int) -> dict:
    name, _, _, labels = KINDS[kind]
    command = f"nnal synth --kind {kind} --cases {cases} --size {size} --slices {slices[0]} {slices[1]} --seed {seed}"
    return {"name": name, "description": DESCRIPTION, "synthetic": True, "reference": command,
            "channel_names": {"0": "CT"}, "labels": labels, "numTraining": cases, "file_ending": ".nii.gz"}


README = """# {name}: synthetic, not patient data

Synthetic CT-like volumes made by `nnal synth --kind {kind} --cases {cases} --size {size} --slices {low} {high}
--seed {seed}` (the same command writes the same files). A stand-in for the Medical Segmentation Decathlon's
{kind} task, not a copy of it: any result on this dataset is a result on synthetic data and must be labelled
so wherever it appears. See nnal's docs/synth.md.
"""
