"""Raw dataset input: nnU-Net v2 raw folders and MSD ``TaskNN_Name`` folders, validated before any work."""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from nnal import dataset_checks as checks
from nnal.dataset_checks import NIFTI_ENDINGS
from nnal.errors import DatasetError


@dataclass(frozen=True)
class Case:
    name: str
    images: tuple[Path, ...]  # one file per channel, or one 4D file (MSD) holding all channels
    label: Path | None  # None: not annotated yet (annotation mode only)


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


NNUNET_NAME = re.compile(r"Dataset(\d{3})_\w+")
NNUNET_ID = re.compile(r"\d{1,3}")


def locate_dataset(text: str | os.PathLike, *, base: Path | None = None) -> Path:
    """The dataset folder that ``text`` names, as an absolute path: a folder (relative to ``base``, default the
    current folder), or, as nnU-Net's own commands take it, a ``DatasetNNN_Name`` or an id ``NNN`` looked up in
    ``$nnUNet_raw`` (read only: nnal works on its own copy). A name that is neither is one DatasetError line."""
    path = Path(text).expanduser()
    path = path if path.is_absolute() else (base or Path.cwd()) / path
    given = str(text)
    if path.is_dir() or not (NNUNET_NAME.fullmatch(given) or NNUNET_ID.fullmatch(given)):
        return path.resolve()
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise DatasetError(f"{given}: no such folder, and nnUNet_raw is not set to look it up as an nnU-Net dataset "
                           "name or id")
    pattern = given if NNUNET_NAME.fullmatch(given) else f"Dataset{int(given):03d}_*"
    found = sorted(p for p in Path(raw).glob(pattern) if p.is_dir())
    if len(found) != 1:
        what = "no dataset" if not found else f"{len(found)} datasets ({', '.join(p.name for p in found)})"
        raise DatasetError(f"{given}: {what} named so in nnUNet_raw ({raw})")
    return found[0].resolve()


def nnunet_id(dataset: RawDataset) -> int | None:
    """The dataset's nnU-Net id from its folder name (``Dataset004_Hippocampus``, or MSD's ``Task04_Hippocampus`` as
    nnU-Net's converter numbers it), None when the name holds none."""
    match = re.fullmatch(r"(?:Dataset(\d{3})|Task(\d{2,3}))_.+", dataset.root.name)
    return int(match.group(1) or match.group(2)) if match else None


def load_dataset(path: str | os.PathLike, *, labels_optional: bool = False) -> RawDataset:
    """Read ``dataset.json`` and list the cases of an nnU-Net v2 raw folder or an MSD task folder.

    ``labels_optional`` (annotation mode): a case may have no label file yet; the cases are then the images
    (``imagesTr/<case>_0000``, or MSD's ``training`` entries) and ``Case.label`` is None where none exists."""
    root = Path(path)
    meta_file = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    if not meta_file.is_file():
        raise DatasetError(f"{meta_file}: missing (expected an nnU-Net v2 raw or MSD dataset folder)")
    meta = checks.read_json_object(meta_file)
    if "channel_names" in meta or "modality" not in meta:
        return _load_nnunet(root, meta, meta_file, labels_optional)
    return _load_msd(root, meta, meta_file, labels_optional)


def _load_nnunet(root: Path, meta: dict, meta_file: Path, labels_optional: bool = False) -> RawDataset:
    channels = checks.parse_channels(meta.get("channel_names"), meta_file, "channel_names")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise DatasetError(f"{meta_file}: file_ending {ending!r} not supported (NIfTI only)")
    labels = checks.parse_labels(meta.get("labels"), meta_file, msd=False)
    label_dir = root / "labelsTr"
    if labels_optional:
        labels_of = checks.nnunet_label_files(label_dir, ending) if label_dir.is_dir() else {}
        names = checks.nnunet_image_cases(root / "imagesTr", ending)
        cases = [Case(name, tuple(root / "imagesTr" / f"{name}_{i:04d}{ending}" for i in range(len(channels))),
                      labels_of.get(name)) for name in names]
        if not cases:
            raise DatasetError(f"{root / 'imagesTr'}: no '*_0000{ending}' images")
        return RawDataset(root, meta.get("name", root.name), channels, labels, tuple(cases), ending, is_msd=False)
    if not label_dir.is_dir():
        raise DatasetError(f"{label_dir}: missing")
    cases = [Case(name, tuple(root / "imagesTr" / f"{name}_{i:04d}{ending}" for i in range(len(channels))), label)
             for name, label in checks.nnunet_label_files(label_dir, ending).items()]
    if not cases:
        raise DatasetError(f"{label_dir}: empty dataset (no '*{ending}' labels)")
    return RawDataset(root, meta.get("name", root.name), channels, labels, tuple(cases), ending, is_msd=False)


def _load_msd(root: Path, meta: dict, meta_file: Path, labels_optional: bool = False) -> RawDataset:
    channels = checks.parse_channels(meta.get("modality"), meta_file, "modality")
    labels = checks.parse_labels(meta.get("labels"), meta_file, msd=True)
    entries = checks.msd_training(meta.get("training"), meta_file, labels_optional=labels_optional)
    cases = [Case(name, (root / image,), _present(root, label) if labels_optional else root / label)
             for name, image, label in entries]
    return RawDataset(root, meta.get("name", root.name), channels, labels, tuple(cases), ".nii.gz", is_msd=True)


def _present(root: Path, label: str | None) -> Path | None:
    """An MSD entry's label file, or None when the entry names none or the file is not there (not annotated)."""
    return root / label if label and (root / label).is_file() else None


# what nibabel raises for a corrupt, truncated or foreign file (gzip's errors are OSError and zlib.error)
UNREADABLE = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


def _read(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image and its voxels, read once in full: truncated or corrupt files fail here, not later."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing file")
    try:
        img = nib.load(str(path))
        return img, np.asanyarray(img.dataobj)
    except UNREADABLE as err:
        raise DatasetError(f"{path}: unreadable image ({err.__class__.__name__})") from None


def validate(dataset: RawDataset) -> None:
    """Check every case, reading each file once: files readable, labels 3D whole numbers and declared, images of
    the expected channels on the label's voxel grid (shape, spacing, origin, direction), intensities finite; and
    at least one foreground voxel in the whole dataset."""
    declared = set(dataset.labels.values())
    foreground = False
    for case in dataset.cases:
        if case.label is None:  # annotation mode: the images must agree with each other (the first is the grid)
            first, data = _read(case.images[0])
            reference, geometry_of, shape = case.images[0], checks.geometry(first), data.shape[:3]
        else:
            geometry_of, shape, has_foreground = _check_label(case.label, declared)
            reference, foreground = case.label, foreground or has_foreground
        for image in case.images:
            _check_image(image, dataset, reference, geometry_of, shape)
    if not foreground and all(case.label is not None for case in dataset.cases):
        folders = {case.label.parent for case in dataset.cases if case.label is not None}
        where = folders.pop() if len(folders) == 1 else dataset.root / "dataset.json"
        raise DatasetError(f"{where}: no foreground voxel in any of the {len(dataset.cases)} label files (every "
                           f"voxel is background, 0); a dataset to learn from needs labelled foreground")


def _check_label(label: Path, declared: set[int]) -> tuple[tuple, tuple[int, ...], bool]:
    """(geometry, shape, has a foreground voxel) of a valid label file."""
    seg_img, seg = _read(label)
    if seg.ndim != 3:
        raise DatasetError(f"{label}: label must be 3D, got shape {seg.shape}")
    if seg.dtype.kind not in "iub" and not np.array_equal(seg, np.round(seg)):
        raise DatasetError(f"{label}: label values must be integers")
    values = set(np.unique(seg).astype(int).tolist())
    undeclared = sorted(values - declared)
    if undeclared:
        raise DatasetError(f"{label}: label values {undeclared} not declared in dataset.json")
    return checks.geometry(seg_img), seg.shape, bool(values - {0})


def _check_image(image: Path, dataset: RawDataset, label: Path, label_geometry: tuple, seg_shape: tuple) -> None:
    img, data = _read(image)
    n_channels = len(dataset.channel_names)
    expected_ndim = 4 if dataset.is_msd and n_channels > 1 else 3
    if data.ndim != expected_ndim or (expected_ndim == 4 and data.shape[3] != n_channels):
        raise DatasetError(f"{image}: expected {expected_ndim}D image with {n_channels} channel(s), "
                           f"got shape {data.shape}")
    if tuple(data.shape[:3]) != tuple(seg_shape):
        raise DatasetError(f"{image}: shape {tuple(data.shape[:3])} does not match label shape {seg_shape}")
    checks.check_geometry(label, label_geometry, image, checks.geometry(img))
    if data.dtype.kind in "fc" and not np.isfinite(data).all():
        raise DatasetError(f"{image}: NaN or inf intensities")


FINGERPRINT_FORMAT = 1
HEAD_TAIL_BYTES = 1 << 20


def cache_key(dataset: RawDataset) -> str:
    """A short hash of the dataset's name, labels, channels and file names and sizes: names its preprocessing cache."""
    h = hashlib.sha256(json.dumps([dataset.name, dataset.labels, dataset.channel_names]).encode())
    for case in dataset.cases:
        for path in _files(case):
            h.update(f"{case.name}:{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()[:16]


def fingerprint(dataset: RawDataset) -> dict:
    """The dataset's identity for an experiment, JSON-serialisable: a hash of ``dataset.json``'s content (parsed,
    so reformatting is no change), the sorted case names, and per image and label file (path relative to the root)
    its case, size and a cheap content digest (:func:`file_digest`). Compare two with :func:`fingerprint_changes`;
    file times are not part of it, so touching a file changes nothing."""
    meta = json.loads((dataset.root / "dataset.json").read_text())
    files = {}
    for case in dataset.cases:
        for path in _files(case):
            files[_relative(path, dataset.root)] = {"case": case.name, "size": path.stat().st_size,
                                                    "sha256": file_digest(path)}
    return {"format": FINGERPRINT_FORMAT,
            "dataset_json": hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest(),
            "cases": sorted(case.name for case in dataset.cases), "files": dict(sorted(files.items()))}


def _files(case: Case) -> tuple[Path, ...]:
    return (*case.images, case.label) if case.label is not None else case.images


def file_digest(path: Path) -> str:
    """sha256 of a NIfTI file's first and last MiB, cheap enough for thousands of CT volumes.

    The first MiB holds the NIfTI header (the first 348 bytes of a ``.nii``, the start of the deflate stream of a
    ``.nii.gz``, which alone decides the header's bytes). A ``.nii.gz`` ends with the gzip trailer, the CRC-32 and
    length of all the uncompressed data, so a change of voxel values in the middle of a big compressed file still
    changes its last bytes and is caught (a multi-member gzip, rare for NIfTI, checks only its last member this
    way). An uncompressed ``.nii`` has no such trailer, so it is hashed whole: plain reading, no cheaper to skip
    than the full decompressing read that :func:`validate` makes of every file anyway.
    """
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if path.name.endswith(".gz") and size > 2 * HEAD_TAIL_BYTES:
            h.update(f.read(HEAD_TAIL_BYTES))
            f.seek(size - HEAD_TAIL_BYTES)
            h.update(f.read())
        else:
            for block in iter(lambda: f.read(HEAD_TAIL_BYTES), b""):
                h.update(block)
    return h.hexdigest()


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """What differs between two :func:`fingerprint` results, one readable line each (paths relative to the root),
    e.g. ``["cases added: case_007", "file modified: labelsTr/case_001.nii.gz", "dataset.json modified"]``;
    empty when they are the same dataset. Files of added or removed cases are not listed one by one."""
    if old.get("format") != new.get("format"):
        return [f"fingerprint format changed ({old.get('format')} -> {new.get('format')}); cannot compare"]
    old_cases, new_cases = set(old["cases"]), set(new["cases"])
    added, removed = sorted(new_cases - old_cases), sorted(old_cases - new_cases)
    changes = [f"cases {what}: {_names(names)}" for what, names in (("added", added), ("removed", removed)) if names]
    old_files, new_files = old["files"], new["files"]
    for rel in sorted(old_files.keys() | new_files.keys()):
        before, after = old_files.get(rel), new_files.get(rel)
        if before is None:
            changes += [] if after["case"] in added else [f"file added: {rel}"]
        elif after is None:
            changes += [] if before["case"] in removed else [f"file removed: {rel}"]
        elif (before["size"], before["sha256"]) != (after["size"], after["sha256"]):
            changes.append(f"file modified: {rel}")
    if old["dataset_json"] != new["dataset_json"]:
        changes.append("dataset.json modified")
    return changes


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _names(names: list[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def write_nnunet_raw(dataset: RawDataset, target: Path) -> Path:
    """Lay the dataset out as an nnU-Net v2 raw folder (links where possible, MSD 4D images split)."""
    (target / "imagesTr").mkdir(parents=True, exist_ok=True)
    (target / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in dataset.cases:
        if case.label is None:  # not annotated yet: all background, replaced as a person's masks come in
            write_blank_label(case.images[0], target / "labelsTr" / f"{case.name}.nii.gz")
        else:
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
    channels = len(dataset.channel_names)
    meta = {
        "name": dataset.name,
        "channel_names": dataset.channel_names,
        "labels": dataset.labels,
        "numTraining": len(dataset.cases),
        "file_ending": ".nii.gz",
        # nibabel reads NIfTI without SimpleITK, which is not available on every machine nnal runs on
        "overwrite_image_reader_writer": "NibabelIO",
        # every case's files named here: without this key nnU-Net lists imagesTr in a fork()ed multiprocessing
        # Pool, which can hang for ever inside a threaded process (a Ray worker); see docs/grids.md
        "dataset": {case.name: {"images": [f"imagesTr/{case.name}_{c:04d}.nii.gz" for c in range(channels)],
                                "label": f"labelsTr/{case.name}.nii.gz"} for case in dataset.cases},
    }
    (target / "dataset.json").write_text(json.dumps(meta, indent=1))
    return target


def write_blank_label(image: Path, dest: Path) -> None:
    """An all-zero uint8 label on ``image``'s voxel grid (first three axes)."""
    img = nib.load(str(image))
    blank = nib.Nifti1Image(np.zeros(img.shape[:3], dtype=np.uint8), img.affine)
    blank.set_qform(*img.get_qform(coded=True))
    blank.set_sform(*img.get_sform(coded=True))
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    nib.save(blank, str(dest))


def _link(source: Path, dest: Path) -> None:
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    if source.name.endswith(".nii.gz"):
        dest.symlink_to(source.resolve())
    else:  # a plain .nii: nnU-Net wants one ending for all files, so compress a copy
        img = nib.load(str(source))
        nib.save(img, str(dest))
