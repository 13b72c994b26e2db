"""The batch of selected slices being corrected by a person, without any GUI: reading a round's annotation folder,
the order the slices are visited in, the progress count, and the atomic writes of masks and of the manifest.

``nnal annotate`` (``nnal.annotation.viewer``) is a thin napari view over :class:`CorrectionSession`; everything
here is tested without Qt. The folder is the one ``nnal query DIR`` writes::

    DIR/annotate/round_NNN/
      images/<case>_0000.nii.gz   one file per channel, the case's original geometry
      labels/<case>.nii.gz        the labels known so far (``nnal ingest`` refuses changes outside the batch)
      presegmentation/<case>.nii.gz   the known labels + the model's prediction on the selected slices
      masks/<case>.nii.gz          the corrected full-volume masks (written here; ``nnal ingest DIR`` reads them)
      manifest.csv, manifest.json  one row per selected slice: case, axis, slice, world_mm, score, empty, id
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from nnal.annotation.manifest import TRUE_WORDS
from nnal.annotation.volumes import Unreadable, index_along, label_dtype, nifti_bytes, read_volume
from nnal.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from nnal.dataset import UNREADABLE
from nnal.errors import NnalError
from nnal.layout import Layout


class AnnotationBatchError(NnalError, ValueError):
    """A round's annotation folder that cannot be read or holds impossible values; the message names the file."""


@dataclass(frozen=True)
class SelectedSlice:
    """One manifest row: slice ``index`` along array ``axis`` of ``case`` (nibabel's array order)."""

    row: int  # position in the manifest's slice list, the key for its ``empty`` flag
    case: str
    axis: int
    index: int


def find_round_folder(experiment: str | Path, *, round_: int | None = None) -> Path:
    """``DIR/annotate/round_NNN``: the given round, or the highest-numbered one (the pending batch)."""
    layout = Layout(experiment)
    _refuse_simulated(layout)
    if round_ is not None:
        if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
            raise AnnotationBatchError(f"--round: expected an integer >= 0, got {round_!r}")
        folder = layout.annotate_dir(round_)
        if not folder.is_dir():
            raise AnnotationBatchError(f"{folder}: no such batch (run 'nnal query {experiment}' first)")
        return folder
    rounds = layout.annotate_rounds()
    if not rounds:
        raise AnnotationBatchError(f"{layout.annotate_root}: no round_NNN batch to annotate (run 'nnal query "
                                   f"{experiment}' first)")
    ingested = _ingested_rounds(layout.annotations_file)
    pending = [(r, p) for r, p in rounds if r not in ingested]
    if not pending:
        raise AnnotationBatchError(f"{layout.annotate_root}: every batch has been ingested (run 'nnal query "
                                   f"{experiment}' for the next, or open one again with --round N)")
    return pending[-1][1]


def _refuse_simulated(layout: Layout) -> None:
    """A simulated run has no batch for a person (its oracle reads the dataset's labels): say so, rather than
    pointing at 'nnal query', which refuses it too."""
    if not layout.config_file.is_file():
        return
    try:
        oracle = (yaml.safe_load(layout.config_file.read_text()) or {}).get("oracle", "simulated")
    except (OSError, yaml.YAMLError):
        return
    if oracle != "human":
        raise AnnotationBatchError(f"{layout.root}: a simulated run (oracle: {oracle}), whose labels come from the "
                                   "dataset; nnal annotate opens the batches of an annotation experiment (start one "
                                   "with 'nnal run --oracle human')")


def _ingested_rounds(record: Path) -> set[int]:
    """The rounds ``nnal ingest`` recorded in annotations.json (``{"rounds": {"<r>": ...}}``); none if absent."""
    if not record.is_file():
        return set()
    try:
        rounds = json.loads(record.read_text()).get("rounds", {})
        return {int(r) for r in rounds}
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise AnnotationBatchError(f"{record}: not a readable annotation record ({err})") from None


def _read_flag(value: object) -> bool:
    """An ``empty`` cell read as ``nnal ingest`` reads it (true, 1, yes, y, x; anything else is false)."""
    if isinstance(value, bool | int | float):
        return value == 1
    return str(value).strip().lower() in TRUE_WORDS


def _read_int(value: object, where: str, field: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number.is_integer() or number < 0:
        raise AnnotationBatchError(f"{where}: {field} must be an integer >= 0, got {value!r}")
    return int(number)


def _read_manifest(path: Path, folder: Path) -> tuple[dict, dict[str, int]]:
    """manifest.json and its class names -> label values; one line naming the file when it is not that."""
    if not path.is_file():
        raise AnnotationBatchError(f"{path}: missing (is {folder} a batch from 'nnal query'?)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationBatchError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("slices"), list):
        raise AnnotationBatchError(f"{path}: expected an object with a 'slices' list")
    labels = manifest.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise AnnotationBatchError(f"{path}: 'labels' must map class names to values")
    return manifest, {str(name): _read_int(value, str(path), f"labels[{name!r}]") for name, value in labels.items()}


def _read_rows(manifest: dict, path: Path) -> list[SelectedSlice]:
    out = []
    for i, row in enumerate(manifest["slices"]):
        where = f"{path} row {i}"
        if not isinstance(row, dict) or not {"case", "axis", "slice"} <= row.keys():
            raise AnnotationBatchError(f"{where}: expected case, axis and slice")
        axis = _read_int(row["axis"], where, "axis")
        if axis > 2:
            raise AnnotationBatchError(f"{where}: axis must be 0, 1 or 2 (a 3D volume), got {axis}")
        out.append(SelectedSlice(i, str(row["case"]), axis, _read_int(row["slice"], where, "slice")))
    if not out:
        raise AnnotationBatchError(f"{path}: no selected slices")
    return out


def _empty_flags(manifest: dict, slices: list[SelectedSlice], manifest_csv: Path) -> list[bool]:
    """Each slice's ``empty`` flag. manifest.csv is the file a person edits by hand: a slice marked empty in either
    file is empty, as for ``nnal ingest``."""
    empty = [_read_flag(row.get("empty", False)) for row in manifest["slices"]]
    if not manifest_csv.is_file():
        return empty
    with open(manifest_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != len(slices):
        raise AnnotationBatchError(f"{manifest_csv}: {len(rows)} rows, manifest.json has {len(slices)}")
    for s, row in zip(slices, rows, strict=True):
        where = f"{manifest_csv} row {s.row}"
        if (row.get("case"), _read_int(row.get("slice"), where, "slice")) != (s.case, s.index):
            raise AnnotationBatchError(f"{where}: does not match manifest.json ({s.case}, slice {s.index})")
        empty[s.row] = empty[s.row] or _read_flag(row.get("empty", ""))
    return empty


class AnnotationBatch:
    """A round's annotation folder: its manifest (rows, class names), the volumes, and the masks written back."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest_json = self.folder / "manifest.json"
        self.manifest_csv = self.folder / "manifest.csv"
        self.manifest, self.labels = _read_manifest(self.manifest_json, self.folder)
        self.round = self.manifest.get("round")
        self.dtype = np.dtype(label_dtype(np.array(list(self.labels.values()))))
        self.slices = _read_rows(self.manifest, self.manifest_json)
        self.empty = _empty_flags(self.manifest, self.slices, self.manifest_csv)
        # visiting order: case by case, each case's slices in order, so a case is loaded once per pass
        self.order = sorted(self.slices, key=lambda s: (s.case, s.axis, s.index, s.row))
        self.cases = sorted({s.case for s in self.slices})
        self._nonempty: dict[int, bool] = {}  # manifest row -> does the saved mask hold a label on that slice
        for case in self.cases:
            if self.mask_path(case).is_file():
                self._note_saved(case, self.read_mask(case))

    # --- files -------------------------------------------------------------------------------------------------

    def channel_paths(self, case: str) -> list[Path]:
        paths = sorted((self.folder / "images").glob(f"{case}_[0-9][0-9][0-9][0-9].nii.gz"))
        if not paths:
            raise AnnotationBatchError(f"{self.folder / 'images'}: no {case}_0000.nii.gz")
        return paths

    def mask_path(self, case: str) -> Path:
        return self.folder / "masks" / f"{case}.nii.gz"

    def start_path(self, case: str) -> Path:
        """Where correcting ``case`` starts: the saved mask (work resumed) or else the pre-segmentation."""
        saved = self.mask_path(case)
        return saved if saved.is_file() else self.folder / "presegmentation" / f"{case}.nii.gz"

    def read_channels(self, case: str) -> tuple[list[np.ndarray], tuple[float, ...]]:
        """The case's channels as float32 arrays and its voxel spacing (mm, array order)."""
        paths = self.channel_paths(case)
        headers = [_load(p).header for p in paths]
        shape = headers[0].get_data_shape()
        for path, header in zip(paths, headers, strict=True):
            if header.get_data_shape() != shape or len(shape) != 3:
                raise AnnotationBatchError(f"{path}: shape {header.get_data_shape()}, expected a 3D volume like "
                                           f"channel 0 {shape}")
        spacing = tuple(float(z) for z in headers[0].get_zooms()[:3])
        return [_voxels(p, np.float32) for p in paths], spacing

    def read_mask(self, case: str) -> np.ndarray:
        """The starting mask of ``case`` (see :meth:`start_path`), checked against the image's shape and labels."""
        path = self.start_path(case)
        if not path.is_file():
            raise AnnotationBatchError(f"{path}: missing (neither a saved mask nor a pre-segmentation)")
        data = _voxels(path)
        expected = _load(self.channel_paths(case)[0]).shape
        if data.shape != expected:
            raise AnnotationBatchError(f"{path}: shape {data.shape}, the image has {expected}")
        if not np.array_equal(data, np.round(data)) or (data.size and data.min() < 0):
            raise AnnotationBatchError(f"{path}: labels must be whole numbers >= 0")
        if data.size and data.max() > np.iinfo(np.uint16).max:
            raise AnnotationBatchError(f"{path}: label value {int(data.max())} is far beyond the classes of "
                                       f"dataset.json {self.labels}")
        # a value that is no class (napari's "new label") is kept, to be seen and undone; a save warns of it
        return data.astype(self._dtype_for(data))

    def _dtype_for(self, mask: np.ndarray) -> np.dtype:
        return np.promote_types(self.dtype, label_dtype(mask))

    def save_mask(self, case: str, mask: np.ndarray) -> Path:
        """Write ``masks/<case>.nii.gz`` atomically, in the image's geometry (affine, header) as integer labels."""
        image = _load(self.channel_paths(case)[0])
        mask = np.asarray(mask)
        if mask.shape != image.shape[:3]:
            raise ValueError(f"mask of {case} has shape {mask.shape}, the image has {image.shape[:3]}")
        path = self.mask_path(case)
        # the bytes ``nnal query`` and ``nnal ingest`` write too: the image's affine, qform, sform and units
        atomic_write_bytes(path, nifti_bytes(mask.astype(self._dtype_for(mask)), image))
        self._note_saved(case, mask)
        return path

    def changed_outside_batch(self, case: str, mask: np.ndarray) -> list[int]:
        """Slices (along the case's axis) that are not in the batch yet differ from the labels known so far
        (``labels/<case>.nii.gz``): ``nnal ingest`` refuses such a mask, earlier annotations are never changed."""
        known_path = self.folder / "labels" / f"{case}.nii.gz"
        rows = [s for s in self.slices if s.case == case]
        if not known_path.is_file() or not rows:
            return []
        known = _voxels(known_path)
        if known.shape != mask.shape:
            raise AnnotationBatchError(f"{known_path}: shape {known.shape}, the image has {mask.shape}")
        changed = np.asarray(mask) != known
        for s in rows:
            changed[index_along(s.axis, s.index)] = False
        axis = rows[0].axis
        return np.flatnonzero(np.moveaxis(changed, axis, 0).reshape(changed.shape[axis], -1).any(axis=1)).tolist()

    def _note_saved(self, case: str, mask: np.ndarray) -> None:
        for s in self.slices:
            if s.case == case:
                self._nonempty[s.row] = bool(np.take(mask, s.index, axis=s.axis).any())

    # --- the manifest's empty flags and the progress ------------------------------------------------------------

    def set_empty(self, selected: SelectedSlice, value: bool) -> None:
        """Mark a slice left empty on purpose (or unmark it); manifest.csv and manifest.json are rewritten."""
        self.empty[selected.row] = bool(value)
        for row, flag in zip(self.manifest["slices"], self.empty, strict=True):
            row["empty"] = flag
        atomic_write_json(self.manifest_json, self.manifest)
        if self.manifest_csv.is_file():
            self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        with open(self.manifest_csv, newline="") as fh:
            reader = csv.DictReader(fh)
            columns, rows = list(reader.fieldnames or []), list(reader)
        if "empty" not in columns:
            columns.append("empty")
        for row, flag in zip(rows, self.empty, strict=True):
            row["empty"] = "True" if flag else "False"  # as pandas writes booleans
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.manifest_csv, text.getvalue())

    def is_done(self, selected: SelectedSlice) -> bool:
        """A slice is done when its saved mask holds a label there, or it is marked empty on purpose."""
        return self.empty[selected.row] or self._nonempty.get(selected.row, False)

    def done_count(self) -> int:
        return sum(self.is_done(s) for s in self.slices)


def _load(path: Path) -> nib.Nifti1Image:
    """The header only (the voxels stay on disk until :func:`_voxels`)."""
    if not path.is_file():
        raise AnnotationBatchError(f"{path}: missing")
    try:
        return nib.load(str(path))
    except UNREADABLE as err:
        raise AnnotationBatchError(f"{path}: not a readable NIfTI file ({err.__class__.__name__})") from None


def _voxels(path: Path, dtype=None) -> np.ndarray:
    """The voxels read in full, so a truncated file fails here with its name, not later in the view."""
    try:
        data = read_volume(path)[1]
    except Unreadable as err:
        raise AnnotationBatchError(f"{path}: {err}") from None
    return data if dtype is None else data.astype(dtype)


@dataclass
class CaseVolumes:
    """What the view shows of one case: its channels, spacing and the working copy of its mask."""

    case: str
    channels: list[np.ndarray]
    spacing: tuple[float, ...]
    mask: np.ndarray


class CorrectionSession:
    """Where the annotator is in the batch: the selected slice shown, the case loaded, and the moves between
    them. A move into another case saves the case left; the view only draws what this object says."""

    def __init__(self, batch: AnnotationBatch, *, position: int = 0):
        self.batch = batch
        if not 0 <= position < len(batch.order):
            raise ValueError(f"position must be in 0..{len(batch.order) - 1}, got {position}")
        self.position = position
        self.volumes = self._load(self.current.case)
        self._saved = self.volumes.mask.copy()  # what masks/ holds (or the starting mask): unsaved edits differ
        self.warning = ""  # about the last save: what nnal ingest would refuse in it

    @property
    def current(self) -> SelectedSlice:
        return self.batch.order[self.position]

    def _load(self, case: str) -> CaseVolumes:
        channels, spacing = self.batch.read_channels(case)
        return CaseVolumes(case, channels, spacing, self.batch.read_mask(case))

    def has_unsaved_changes(self) -> bool:
        return not np.array_equal(self.volumes.mask, self._saved)

    def save(self) -> Path:
        case, mask = self.volumes.case, self.volumes.mask
        path = self.batch.save_mask(case, mask)
        self._saved = mask.copy()
        outside = self.batch.changed_outside_batch(case, mask)
        # napari's "new label" key paints the next free value: not a class of dataset.json
        undeclared = sorted(set(np.flatnonzero(np.bincount(mask.ravel()))) - set(self.batch.labels.values()))
        problems = ([f"slice(s) {', '.join(map(str, outside))} outside the batch differ from the labels known so far"]
                    if outside else []) + ([f"label value(s) {', '.join(map(str, undeclared))} are no class of "
                                            "dataset.json"] if undeclared else [])
        self.warning = f"{case}: {'; '.join(problems)}; nnal ingest will refuse the mask" if problems else ""
        return path

    def move(self, step: int) -> bool:
        """Go ``step`` selected slices on (negative: back), stopping at the batch's ends. Returns whether another
        case was loaded (the one left is saved first)."""
        position = min(max(self.position + step, 0), len(self.batch.order) - 1)
        if position == self.position:
            return False
        self.position = position
        if self.current.case == self.volumes.case:
            return False
        self.save()
        self.volumes = self._load(self.current.case)
        self._saved = self.volumes.mask.copy()
        return True

    def toggle_empty(self) -> bool:
        """Flip the current slice's ``empty`` flag in the manifest; returns the new value."""
        value = not self.batch.empty[self.current.row]
        self.batch.set_empty(self.current, value)
        return value

    def status(self) -> str:
        """One line: the case, the slice shown, ``slice k of n, d done`` and whether edits are unsaved."""
        s, n = self.current, len(self.batch.order)
        flags = [" (marked empty)" if self.batch.empty[s.row] else "",
                 " (unsaved changes)" if self.has_unsaved_changes() else ""]
        return (f"{s.case}, axis {s.axis} index {s.index}{''.join(flags)}: slice {self.position + 1} of {n}, "
                f"{self.batch.done_count()} done")

    def legend(self) -> list[tuple[int, str]]:
        """(value, class name) pairs of dataset.json, by value."""
        return sorted((v, k) for k, v in self.batch.labels.items())
