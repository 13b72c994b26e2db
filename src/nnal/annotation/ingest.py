"""``nnal ingest DIR [MASKS_DIR]``: take a person's masks back, all of them or none.

Every mask is checked before anything is written: readable; the image's shape and geometry; label values declared
in dataset.json and whole numbers; every selected slice annotated (an empty one only where the manifest says
``empty``); every other slice equal to the labels known so far (earlier annotations are never overwritten). Each
problem is one line, ``<file>: <problem> (slice N)``. A batch that passes is committed by the annotation store
(new files, then one atomic record); ingesting the same masks again changes nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nnal.annotation.batch import pending_round
from nnal.annotation.manifest import MANIFEST_READ_ERRORS, is_marked, manifest_rows, slice_key
from nnal.annotation.store import AnnotationStore, open_annotation_experiment
from nnal.annotation.volumes import Unreadable, case_name, index_along, label_dtype, read_volume
from nnal.annotation.writable import refuse_unwritable
from nnal.dataset_checks import check_geometry, geometry
from nnal.errors import DatasetError, NnalError


class IngestError(NnalError):
    """Masks refused: one line per problem (the CLI prefixes each with ``error:``)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\nerror: ".join(problems))


@dataclass(frozen=True)
class Ingested:
    round: int
    slices: int
    cases: int
    changed: bool  # False: these masks were ingested before


def ingest(root: Path, masks: Path | None = None, *, on_file_written=None) -> Ingested:
    """Check the masks of the pending round (``DIR/annotate/round_NNN/masks`` unless ``masks`` names another
    folder) and commit them; raise :class:`IngestError` listing every problem, having written nothing."""
    folder, _, dataset = open_annotation_experiment(root, "a simulated experiment takes no masks")
    store = AnnotationStore(folder, dataset)
    round_ = pending_round(folder, store)
    if round_ is None:
        done = store.ingested_rounds()
        if not done:
            raise NnalError(f"{root}: no batch waits for masks; 'nnal run --output {root}' selects one")
        round_ = done[-1]
    if not folder.batch_file(round_).is_file():
        raise NnalError(f"{folder.batch_file(round_)}: missing; export the batch first with 'nnal query {root}'")
    batch_dir = folder.annotate_dir(round_)
    masks = Path(masks) if masks is not None else batch_dir / "masks"
    if not masks.is_dir():
        raise NnalError(f"{masks}: not a folder of masks")
    batch = store.batch(round_)
    if store.ingested(round_):
        return _again(store, round_, batch, masks)  # writes nothing
    refuse_unwritable(store.commit_paths(round_), "ingest")
    empty = _manifest_empty(_manifest_dir(masks, batch_dir), batch, round_)
    volumes = _checked_masks(store, batch, masks, empty)
    with folder.lock():
        store = AnnotationStore(folder, store.dataset)  # as it is now, under the lock
        if store.ingested(round_) or pending_round(folder, store) != round_:
            raise NnalError(f"{root}: round {round_} changed while its masks were checked; run ingest again")
        exported, now = _exported_unix(batch_dir), time.time()
        store.commit(round_, volumes, {
            "slices": len(batch), "empty": sorted(int(i) for i in batch["id"][batch["id"].isin(empty)]),
            "masks": str(masks.resolve()), "ingested_unix": now,
            "annotation_seconds": None if exported is None else round(now - float(exported), 1)},
            on_file_written=on_file_written)
    return Ingested(round_, len(batch), len(volumes), changed=True)


def _exported_unix(batch_dir: Path) -> float | None:
    """When the batch was handed out (for the time a person spent on it), if the manifest still says."""
    try:
        return float(json.loads((batch_dir / "manifest.json").read_text())["exported_unix"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _manifest_dir(masks: Path, batch_dir: Path) -> Path:
    """The manifest next to the masks: in a masks folder taken elsewhere with its manifest, or the round folder."""
    for where in (masks, masks.parent):
        if (where / "manifest.csv").is_file() or (where / "manifest.json").is_file():
            return where
    return batch_dir


def _manifest_empty(where: Path, batch: pd.DataFrame, round_: int) -> set[int]:
    """Pool ids of the slices marked empty on purpose (in manifest.csv or manifest.json); the manifest must list
    exactly the batch's slices."""
    keys = [(str(c), int(a), int(s)) for c, a, s in zip(batch["case"], batch["axis"], batch["slice"], strict=True)]
    expected, by_location = set(keys), dict(zip(keys, batch["id"], strict=True))
    empty: set[int] = set()
    found = False
    for name in ("manifest.csv", "manifest.json"):
        path = where / name
        if not path.is_file():
            continue
        found = True
        try:
            rows, named_round = manifest_rows(path)
            listed = {slice_key(r): r.get("empty", False) for r in rows}
        except MANIFEST_READ_ERRORS as err:
            raise IngestError([f"{path}: unreadable manifest ({err.__class__.__name__}); export it again with "
                               "'nnal query'"]) from None
        if named_round not in (None, round_):
            raise IngestError([f"{path}: the manifest of round {named_round}, but round {round_} waits for masks"])
        extra, missing = sorted(set(listed) - expected), sorted(expected - set(listed))
        if extra or missing:
            what = (f"lists case {extra[0][0]} slice {extra[0][2]}, which is not in round {round_}'s batch" if extra
                    else f"leaves out case {missing[0][0]} slice {missing[0][2]} of round {round_}'s batch")
            raise IngestError([f"{path}: {what}; only the 'empty' column is yours to change (slice "
                               f"{(extra or missing)[0][2]})"])
        empty |= {int(by_location[key]) for key, flag in listed.items() if is_marked(flag)}
    if not found:
        raise IngestError([f"{where / 'manifest.csv'}: missing; export the batch again with 'nnal query'"])
    return empty


def _mask_files(masks: Path, cases: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Case -> its mask file; problems: files of no case of the batch, cases with two files."""
    found: dict[str, list[Path]] = {}
    problems = []
    for path in sorted(masks.iterdir()):
        name = case_name(path)
        if name is None or path.name.startswith("."):
            continue  # notes, viewer workspaces, hidden files
        if name not in cases:
            problems.append(f"{path}: not a case of this batch (its cases: {', '.join(cases)}); name masks "
                            "<case>.nii.gz")
            continue
        found.setdefault(name, []).append(path)
    for name, files in found.items():
        if len(files) > 1:
            problems.append(f"{files[0]}: case {name} has {len(files)} masks ({', '.join(f.name for f in files)}); "
                            "keep one")
    return {name: files[0] for name, files in found.items()}, problems


def _checked_masks(store: AnnotationStore, batch: pd.DataFrame, masks: Path, empty: set[int]
                   ) -> dict[str, np.ndarray]:
    cases = sorted(batch["case"].unique())
    files, problems = _mask_files(masks, cases)
    volumes = {}
    for case in cases:
        rows = batch[batch["case"] == case]
        if case not in files:
            problems.append(f"{masks / (case + '.nii.gz')}: missing (slices {_listing(rows['slice'])} to annotate)")
            continue
        found = _check_one(store, case, files[case], rows, empty)
        if isinstance(found, list):
            problems += found
        else:
            volumes[case] = found
    if problems:
        raise IngestError(problems)
    return volumes


def _listing(values) -> str:
    return ", ".join(str(int(v)) for v in sorted(values))


def _check_one(store: AnnotationStore, case: str, path: Path, rows: pd.DataFrame, empty: set[int]
               ) -> np.ndarray | list[str]:
    """The mask as a label volume, or its problems (one line each)."""
    try:
        img, data = read_volume(path)
    except Unreadable as err:
        return [f"{path}: {err}"]
    image = store.image(case)
    if data.ndim != 3 or data.shape != image.shape[:3]:
        return [f"{path}: shape {data.shape} differs from the image's {image.shape[:3]}; save the whole volume on "
                "the image's grid"]
    try:
        check_geometry(path, geometry(img), store.cases[case].images[0], geometry(image))
    except DatasetError as err:
        return [str(err)]
    axis = int(rows["axis"].iloc[0])
    if data.dtype.kind not in "iub":
        if not np.isfinite(data).all():
            return [f"{path}: NaN or inf values (slice {_first_slice(~np.isfinite(data), axis)})"]
        fractional = data != np.round(data)
        if fractional.any():
            return [f"{path}: label values must be whole numbers, got {float(data[fractional][0])!r} "
                    f"(slice {_first_slice(fractional, axis)}); save the segmentation as integers"]
    declared = sorted(store.dataset.labels.values())
    undeclared = ~np.isin(data, declared)
    if undeclared.any():
        values = sorted({int(v) for v in np.unique(data[undeclared])})
        return [f"{path}: label values {values} not declared in dataset.json ({_declared(store)}) "
                f"(slice {_first_slice(undeclared, axis)})"]
    labels = data.astype(np.int64)
    known = store.known_or_blank(case).astype(np.int64)
    selected = rows["slice"].to_numpy()
    changed = labels != known
    changed[index_along(axis, selected)] = False
    problems = []
    if changed.any():
        s = _first_slice(changed, axis)
        earlier = bool(known[index_along(axis, s)].any())
        what = "changes labels given earlier, which are never overwritten" if earlier else \
            "labels a slice outside this batch"
        problems.append(f"{path}: {what} ({int(changed[index_along(axis, s)].sum())} voxels differ from the labels "
                        f"known so far); change only the listed slices (slice {s})")
    for row in rows.itertuples():
        has_labels = bool(labels[index_along(axis, int(row.slice))].any())
        if not has_labels and int(row.id) not in empty:
            problems.append(f"{path}: selected slice left empty; annotate it, or set empty to true in the manifest "
                            f"if it holds no structure (slice {row.slice})")
        elif has_labels and int(row.id) in empty:
            problems.append(f"{path}: marked empty in the manifest but holds labels (slice {row.slice})")
    return problems or labels.astype(label_dtype(labels))


def _first_slice(mask: np.ndarray, axis: int) -> int:
    return int(np.argwhere(mask)[0][axis])


def _declared(store: AnnotationStore) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(store.dataset.labels.items(), key=lambda kv: kv[1]))


def _again(store: AnnotationStore, round_: int, batch: pd.DataFrame, masks: Path) -> Ingested:
    """Masks of a round ingested before: the same ones change nothing; others are refused (never overwritten)."""
    files, problems = _mask_files(masks, sorted(batch["case"].unique()))
    for case in sorted(batch["case"].unique()):
        stored = np.asarray(read_volume(store.folder.annotation_file(round_, case))[1], dtype=np.int64)
        try:
            given = np.asarray(read_volume(files[case])[1]) if case in files else None
        except Unreadable as err:
            problems.append(f"{files[case]}: {err}")
            continue
        if given is None or given.shape != stored.shape or not np.array_equal(given, stored):
            where = files.get(case, masks / f"{case}.nii.gz")
            problems.append(f"{where}: round {round_} was ingested already with other labels; earlier annotations "
                            "are never overwritten (correct them in a later round's batch)")
    if problems:
        raise IngestError(problems)
    return Ingested(round_, len(batch), len(files), changed=False)
