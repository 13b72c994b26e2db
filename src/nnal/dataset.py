"""Raw dataset input: nnU-Net v2 raw folders and MSD ``TaskNN_Name`` folders, validated before any work."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from nnal.errors import DatasetError

NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Case:
    name: str
    images: tuple[Path, ...]  # one file per channel, or one 4D file (MSD) holding all channels
    label: Path


@dataclass(frozen=True)
class RawDataset:
    root: Path
    name: str
    channel_names: dict[str, str]
    labels: dict[str, int]  # nnU-Net v2 form: name -> value
    cases: tuple[Case, ...]
    file_ending: str
    is_msd: bool

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def load_dataset(path: str | os.PathLike) -> RawDataset:
    """Read ``dataset.json`` and list the cases of an nnU-Net v2 raw folder or an MSD task folder."""
    root = Path(path)
    meta_file = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    if not meta_file.is_file():
        raise DatasetError(f"{meta_file}: missing (expected an nnU-Net v2 raw or MSD dataset folder)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{meta_file}: unreadable JSON ({err.__class__.__name__})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_file}: must hold a JSON object")
    if "channel_names" in meta or "modality" not in meta:
        return _load_nnunet(root, meta, meta_file)
    return _load_msd(root, meta, meta_file)


def _labels(raw: object, meta_file: Path, msd: bool) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{meta_file}: 'labels' missing or empty")
    try:
        pairs = {str(v): int(k) for k, v in raw.items()} if msd else {str(k): int(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise DatasetError(f"{meta_file}: 'labels' values must be integers (region labels are not supported)") from None
    values = sorted(pairs.values())
    if values != list(range(len(values))):
        raise DatasetError(f"{meta_file}: labels must be consecutive integers from 0, got {values}")
    return pairs


def _load_nnunet(root: Path, meta: dict, meta_file: Path) -> RawDataset:
    channels = meta.get("channel_names")
    if not isinstance(channels, dict) or not channels:
        raise DatasetError(f"{meta_file}: 'channel_names' missing or empty")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise DatasetError(f"{meta_file}: file_ending {ending!r} not supported (NIfTI only)")
    labels = _labels(meta.get("labels"), meta_file, msd=False)
    label_dir = root / "labelsTr"
    if not label_dir.is_dir():
        raise DatasetError(f"{label_dir}: missing")
    cases = []
    for label in sorted(label_dir.iterdir()):
        if not label.name.endswith(ending):
            continue
        name = label.name[: -len(ending)]
        images = tuple(root / "imagesTr" / f"{name}_{i:04d}{ending}" for i in range(len(channels)))
        cases.append(Case(name, images, label))
    if not cases:
        raise DatasetError(f"{label_dir}: empty dataset (no '*{ending}' labels)")
    return RawDataset(root, meta.get("name", root.name), {str(k): str(v) for k, v in channels.items()},
                      labels, tuple(cases), ending, is_msd=False)


def _load_msd(root: Path, meta: dict, meta_file: Path) -> RawDataset:
    modality = meta.get("modality")
    if not isinstance(modality, dict) or not modality:
        raise DatasetError(f"{meta_file}: 'modality' missing or empty")
    labels = _labels(meta.get("labels"), meta_file, msd=True)
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DatasetError(f"{meta_file}: empty dataset ('training' missing or empty)")
    cases = []
    for entry in training:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetError(f"{meta_file}: each 'training' entry needs 'image' and 'label'")
        image, label = root / entry["image"], root / entry["label"]
        name = label.name.split(".nii")[0]
        cases.append(Case(name, (image,), label))
    channels = {str(k): str(v) for k, v in sorted(modality.items(), key=lambda kv: int(kv[0]))}
    return RawDataset(root, meta.get("name", root.name), channels, labels, tuple(cases), ".nii.gz", is_msd=True)


def _read(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise DatasetError(f"{path}: missing file")
    try:
        img = nib.load(str(path))
        img.get_fdata(dtype=np.float32)  # force a full read: truncated files fail here, not later
        return img
    except Exception as err:  # nibabel raises many types for corrupt files
        raise DatasetError(f"{path}: unreadable image ({err.__class__.__name__})") from None


def validate(dataset: RawDataset) -> None:
    """Check every case: files readable, shapes and spacings agree, labels declared, intensities finite."""
    declared = set(dataset.labels.values())
    n_channels = len(dataset.channel_names)
    for case in dataset.cases:
        seg_img = _read(case.label)
        seg = np.asanyarray(seg_img.dataobj)
        if seg.ndim != 3:
            raise DatasetError(f"{case.label}: label must be 3D, got shape {seg.shape}")
        if not np.array_equal(seg, np.round(seg)):
            raise DatasetError(f"{case.label}: label values must be integers")
        undeclared = sorted(set(np.unique(seg).astype(int).tolist()) - declared)
        if undeclared:
            raise DatasetError(f"{case.label}: label values {undeclared} not declared in dataset.json")
        spacing = np.asarray(seg_img.header.get_zooms()[:3], dtype=float)
        for image in case.images:
            img = _read(image)
            shape = img.shape
            expected_ndim = 4 if dataset.is_msd and n_channels > 1 else 3
            if len(shape) != expected_ndim or (expected_ndim == 4 and shape[3] != n_channels):
                raise DatasetError(f"{image}: expected {expected_ndim}D image with {n_channels} channel(s), "
                                   f"got shape {shape}")
            if tuple(shape[:3]) != tuple(seg.shape):
                raise DatasetError(f"{image}: shape {tuple(shape[:3])} does not match label shape {seg.shape}")
            img_spacing = np.asarray(img.header.get_zooms()[:3], dtype=float)
            if not np.allclose(img_spacing, spacing, rtol=1e-3, atol=1e-4):
                raise DatasetError(f"{image}: spacing {tuple(img_spacing.round(4))} does not match label spacing "
                                   f"{tuple(spacing.round(4))}")
            if not np.isfinite(img.get_fdata(dtype=np.float32)).all():
                raise DatasetError(f"{image}: NaN or inf intensities")


def write_nnunet_raw(dataset: RawDataset, target: Path) -> Path:
    """Lay the dataset out as an nnU-Net v2 raw folder (links where possible, MSD 4D images split)."""
    (target / "imagesTr").mkdir(parents=True, exist_ok=True)
    (target / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in dataset.cases:
        _link(case.label, target / "labelsTr" / f"{case.name}.nii.gz")
        if dataset.is_msd and len(dataset.channel_names) > 1:
            img = nib.load(str(case.images[0]))
            data = np.asanyarray(img.dataobj)
            for c in range(data.shape[3]):
                out = target / "imagesTr" / f"{case.name}_{c:04d}.nii.gz"
                nib.save(nib.Nifti1Image(data[..., c], img.affine, img.header), str(out))
        else:
            for c, image in enumerate(case.images):
                _link(image, target / "imagesTr" / f"{case.name}_{c:04d}.nii.gz")
    meta = {
        "name": dataset.name,
        "channel_names": dataset.channel_names,
        "labels": dataset.labels,
        "numTraining": len(dataset.cases),
        "file_ending": ".nii.gz",
        # nibabel reads NIfTI without SimpleITK, which is not available on every machine nnal runs on
        "overwrite_image_reader_writer": "NibabelIO",
    }
    (target / "dataset.json").write_text(json.dumps(meta, indent=1))
    return target


def _link(source: Path, dest: Path) -> None:
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    if source.name.endswith(".nii.gz"):
        dest.symlink_to(source.resolve())
    else:  # a plain .nii: nnU-Net wants one ending for all files, so compress a copy
        img = nib.load(str(source))
        nib.save(img, str(dest))
