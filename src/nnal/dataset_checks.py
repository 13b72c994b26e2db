"""The checks behind :mod:`nnal.dataset`: ``dataset.json`` entries, case lists and label/image geometry.

Each finds what would otherwise silently change results (a truncated label value, a case counted twice, a label
shifted against its image) and raises one ``DatasetError`` line, ``<file>: <problem>``, that says what the entry
should look like.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from nnal.errors import DatasetError

NIFTI_ENDINGS = (".nii.gz", ".nii")

# Geometry tolerances between a label and its image. NIfTI stores pixdim, qoffset/srow and the quaternion as
# float32, and tools round-trip them differently, so exact equality would refuse good data; the mistakes to catch
# (a resampled or cropped label, a corner-vs-centre half-voxel shift, a flipped or permuted axis) are far larger.
SPACING_RTOL, SPACING_ATOL = 1e-3, 1e-4  # relative, plus mm: a 0.1% different spacing is a resampled volume
# mm per mm of voxel size: 1/1000 of a voxel is far above float32 round-off (~6e-5 mm at 1000 mm from the origin)
# and far below any real misalignment, whatever the voxel size (0.1 mm microscopy or 5 mm CT slices)
ORIGIN_TOL_VOXELS = 1e-3
# on the unit direction cosines: float32 quaternions are good to ~1e-7 (ITK uses 1e-6); 1e-4 moves the far end of
# a 512-voxel axis by at most 0.05 voxel, while a flip or a permutation differs by 1 or more
DIRECTION_ATOL = 1e-4

LABELS_NNUNET = 'map label names to integer values 0, 1, ..., e.g. {"background": 0, "tumour": 1}'
LABELS_MSD = 'map label values "0", "1", ... to names, e.g. {"0": "background", "1": "tumour"}'
TRAINING_ENTRY = '{"image": "./imagesTr/case_001.nii.gz", "label": "./labelsTr/case_001.nii.gz"}'


def read_json_object(meta_file: Path) -> dict:
    """``dataset.json`` as a dict; a key given twice in one object is an error (JSON keeps the last, silently)."""

    def unique(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise DatasetError(f"{meta_file}: key {key!r} appears twice in one JSON object (one value would be "
                                   f"silently dropped); give each key once")
            out[key] = value
        return out

    try:
        meta = json.loads(meta_file.read_text(), object_pairs_hook=unique)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{meta_file}: unreadable JSON ({err.__class__.__name__})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_file}: must hold a JSON object")
    return meta


def whole_number(value: object) -> int | None:
    """``value`` as an int if it is a whole number (``2``, ``2.0``, ``"2"``), else None (``1.5``, ``"1.5"``, true)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return None


def parse_labels(raw: object, meta_file: Path, msd: bool) -> dict[str, int]:
    """``labels`` in nnU-Net v2 form (name -> value) from either form; values consecutive from 0, 0 = background."""
    form = LABELS_MSD if msd else LABELS_NNUNET
    if not isinstance(raw, Mapping) or not raw:
        raise DatasetError(f"{meta_file}: 'labels' is {_what(raw)}; it must {form}")
    pairs: dict[str, int] = {}
    for key, value in raw.items():
        name, number = (value, key) if msd else (key, value)
        if isinstance(number, list | tuple | Mapping):
            raise DatasetError(f"{meta_file}: label {name!r} is region-based ({json.dumps(number)}), which nnal does "
                               f"not support; 'labels' must {form}")
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{meta_file}: label name {json.dumps(name)} is not a non-empty string; "
                               f"'labels' must {form}")
        value_int = whole_number(number)
        if value_int is None:
            raise DatasetError(f"{meta_file}: label {name!r} has value {json.dumps(number)}, not a whole number; "
                               f"'labels' must {form}")
        if name in pairs:
            raise DatasetError(f"{meta_file}: label name {name!r} is given to values {pairs[name]} and {value_int}; "
                               f"each label needs its own name")
        pairs[name] = value_int
    values = sorted(pairs.values())
    if values != list(range(len(values))):
        raise DatasetError(f"{meta_file}: labels must be consecutive integers from 0, each used once, got {values}")
    if pairs.get("background") != 0:
        raise DatasetError(f"{meta_file}: label 0 must be named 'background' (nnU-Net's rule); 'labels' must {form}")
    return pairs


def parse_channels(raw: object, meta_file: Path, key: str) -> dict[str, str]:
    """``channel_names`` (nnU-Net) or ``modality`` (MSD): keys "0", "1", ... (any order) to non-empty names."""
    form = 'it must map channel indices "0", "1", ... to names, e.g. {"0": "MRI"} or {"0": "T1", "1": "T2"}'
    if not isinstance(raw, Mapping) or not raw:
        raise DatasetError(f"{meta_file}: '{key}' is {_what(raw)}; {form}")
    expected = [str(i) for i in range(len(raw))]
    if set(raw) != set(expected):
        raise DatasetError(f"{meta_file}: '{key}' has keys {json.dumps(list(raw))}, not consecutive from \"0\"; {form}")
    for index, name in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{meta_file}: '{key}' names channel {index} {json.dumps(name)}, not a non-empty "
                               f"string; {form}")
    return {k: raw[k] for k in expected}


def nnunet_label_files(label_dir: Path, ending: str) -> dict[str, Path]:
    """Case name -> label file in an nnU-Net ``labelsTr``: one file per case, all with the dataset's file ending."""
    found: dict[str, list[Path]] = {}
    for path in sorted(label_dir.iterdir()):
        end = next((e for e in NIFTI_ENDINGS if path.name.endswith(e)), None)
        if end is not None:
            found.setdefault(path.name[: -len(end)], []).append(path)
    for name, files in found.items():
        if len(files) > 1:
            raise DatasetError(f"{label_dir}: case {name!r} has {len(files)} label files "
                               f"({', '.join(f.name for f in files)}); keep exactly one, {name}{ending}")
        if not files[0].name.endswith(ending):
            raise DatasetError(f"{files[0]}: file ending differs from dataset.json's file_ending {ending!r}, so the "
                               f"case would be left out; rename it to {name}{ending} or change file_ending")
    return {name: files[0] for name, files in found.items()}


def nnunet_image_cases(image_dir: Path, ending: str) -> list[str]:
    """Case names of an nnU-Net ``imagesTr`` folder: every ``<case>_0000<ending>``, sorted."""
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: missing")
    suffix = f"_0000{ending}"
    return sorted(p.name[: -len(suffix)] for p in image_dir.iterdir() if p.name.endswith(suffix))


def msd_training(training: object, meta_file: Path, *, labels_optional: bool = False
                 ) -> list[tuple[str, str, str | None]]:
    """(case name, image, label) of each MSD ``training`` entry; each case and each image listed once.
    ``labels_optional`` (annotation mode): an entry may leave out its label (None); the case is named by its image."""
    if not isinstance(training, list) or not training:
        raise DatasetError(f"{meta_file}: empty dataset ('training' missing or empty)")
    out, by_name, by_image = [], {}, {}
    for i, entry in enumerate(training):
        paths = [entry.get(k) if isinstance(entry, dict) else None for k in ("image", "label")]
        given = [isinstance(p, str) and p.strip() for p in paths]
        if not (all(given) or (labels_optional and given[0] and paths[1] is None)):
            raise DatasetError(f"{meta_file}: training[{i}] must give 'image' and 'label' paths, e.g. {TRAINING_ENTRY}")
        image, label = paths
        name = Path(label or image).name.split(".nii")[0]
        if name in by_name:
            raise DatasetError(f"{meta_file}: training[{by_name[name]}] and training[{i}] are both case {name!r} "
                               f"(label {label}); list each case once")
        key = os.path.normpath(image)
        if key in by_image:
            raise DatasetError(f"{meta_file}: training[{by_image[key]}] and training[{i}] use the same image {image}; "
                               f"each case needs its own image")
        by_name[name], by_image[key] = i, i
        out.append((name, image, label))
    return out


def geometry(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing, origin, direction) as nnU-Net's NibabelIO reads them: header zooms and ``img.affine``, whose
    rotation part is normalised column by column (by the spacing it implies) to unit direction cosines."""
    spacing = np.asarray(img.header.get_zooms()[:3], dtype=float)
    affine = np.asarray(img.affine, dtype=float)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return spacing, affine[:3, 3], affine[:3, :3] / np.where(norms > 0, norms, 1.0)


def check_geometry(label: Path, label_geometry: tuple, image: Path, image_geometry: tuple) -> None:
    """The label lies on its image's voxel grid: same spacing, origin and direction, within the tolerances above."""
    (spacing, origin, direction), (img_spacing, img_origin, img_direction) = label_geometry, image_geometry
    if not np.allclose(img_spacing, spacing, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        raise DatasetError(f"{label}: spacing {_fmt(spacing)} differs from image {image} {_fmt(img_spacing)}")
    if not np.allclose(img_origin, origin, rtol=0.0, atol=ORIGIN_TOL_VOXELS * float(spacing.max())):
        raise DatasetError(f"{label}: origin {_fmt(origin)} mm differs from image {image} {_fmt(img_origin)} mm")
    if not np.allclose(img_direction, direction, rtol=0.0, atol=DIRECTION_ATOL):
        raise DatasetError(f"{label}: direction (rotation of the affine) {_fmt(direction)} differs from image "
                           f"{image} {_fmt(img_direction)}")


def _what(raw: object) -> str:
    """A missing, empty or wrongly typed entry, in JSON's words."""
    if raw is None:
        return "missing"
    if isinstance(raw, Mapping):
        return "empty"
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "an array"}
    return kinds.get(type(raw), f"a {type(raw).__name__}") + " instead of an object"


def _fmt(values: np.ndarray) -> str:
    if values.ndim > 1:
        return "(" + ", ".join(_fmt(row) for row in values) + ")"
    return "(" + ", ".join(repr(float(round(v, 4)) + 0.0) for v in values) + ")"


def check_splits(splits: object, case_names: list[str], source: Path) -> list[dict[str, list[str]]]:
    """A split must cover the dataset's cases, fold by fold, with no case in both training and test."""
    if not isinstance(splits, list) or not all(isinstance(f, dict) and {"train", "val"} <= set(f) for f in splits):
        raise DatasetError(f"{source}: must be a list of folds, each {{\"train\": [...], \"val\": [...]}}")
    known = set(case_names)
    for k, fold in enumerate(splits):
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            raise DatasetError(f"{source}: fold {k} has {both[0]} in both train and val (test cases would leak "
                               "into the pool)")
        unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
        if unknown:
            raise DatasetError(f"{source}: fold {k} names case {unknown[0]}, which the dataset does not have")
    return splits


def read_splits(path: Path, case_names: list[str]) -> list[dict[str, list[str]]]:
    """A user's ``splits_final.json`` (nnU-Net's format: one ``{"train": [...], "val": [...]}`` per fold), checked
    against the dataset's cases."""
    try:
        splits = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot read the split file ({type(err).__name__})") from None
    return check_splits(splits, case_names, Path(path))


def read_plans(path: Path) -> dict:
    """A user's ``nnUNetPlans.json``, checked to hold what nnal trains with: a ``2d`` configuration with its patch
    size, batch size, data identifier and architecture."""
    try:
        plans = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot read the plans file ({type(err).__name__})") from None
    config = plans.get("configurations", {}).get("2d") if isinstance(plans, dict) else None
    missing = [k for k in ("patch_size", "batch_size", "data_identifier", "architecture")
               if not isinstance(config, dict) or k not in config]
    if missing:
        raise DatasetError(f"{path}: not nnU-Net plans with a 2d configuration (missing {', '.join(missing)})")
    return plans
