"""Hand a round's selection to the annotator: ``DIR/annotate/round_NNN/`` (``nnal query``, and ``nnal run`` when it
stops to wait for masks).

```
images/<case>_0000.nii.gz   the scan, one file per channel, as in the raw dataset (original geometry)
labels/<case>.nii.gz        the labels known so far (0 where nothing is known)
presegmentation/<case>.nii.gz  the known labels with the selected slices filled by the current model: correct this
masks/                      the corrected volumes go here, masks/<case>.nii.gz (created empty, never touched again)
manifest.csv, manifest.json one row per selected slice: case, axis, slice, world position, score, empty
README.md                   how to annotate the listed slices in ITK-SNAP, 3D Slicer or napari
```
The experiment's own copy of the slice list (``round_NNN/batch.csv``) is what ``nnal ingest`` trusts; in the
manifest only ``empty`` is the annotator's to change.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from nnal.annotation.manifest import MANIFEST_FILES, MANIFEST_READ_ERRORS, is_marked, manifest_rows, slice_key
from nnal.annotation.store import BATCH_COLUMNS, AnnotationStore, open_annotation_experiment
from nnal.annotation.volumes import as_nifti_gz, index_along, label_dtype, nifti_bytes, world_position
from nnal.annotation.writable import refuse_unwritable
from nnal.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from nnal.config import Config
from nnal.dataset import RawDataset
from nnal.errors import NnalError
from nnal.experiment import ExperimentFolder

MANIFEST_COLUMNS = ["case", "axis", "slice", "world_axis", "world_mm", "score", "empty", "id"]
README = """# Round {round}: annotate {n} slices of {cases} cases

Label values: {labels}. Annotate **only the slices listed below** (array axis and index as in `manifest.csv`);
leave every other slice exactly as it is.

1. Open `images/<case>_0000.nii.gz` and, as its segmentation, `presegmentation/<case>.nii.gz`: the labels known so
   far, with the listed slices pre-filled by the current model.
2. Correct the listed slices (paint what is missing, erase what is wrong).
3. Save the whole volume as `masks/<case>.nii.gz` (same size and geometry, integer labels).
4. A listed slice that truly holds no structure: leave it empty and set `empty` to `true` in `manifest.csv`.
5. Run `nnal ingest DIR` (DIR: the experiment folder); it checks every mask and takes all of them or none.
   Then `nnal run --output DIR` trains the next round.

- **ITK-SNAP**: File > Open Main Image (`images/...`), Segmentation > Open Segmentation (`presegmentation/...`);
  go to the slice (the cursor inspector shows voxel indices), paint, Segmentation > Save Segmentation Image As
  `masks/<case>.nii.gz`.
- **3D Slicer**: load the image and the presegmentation as a segmentation (or label map), edit in Segment Editor,
  export the segmentation as a label map on the image's geometry and save it as `masks/<case>.nii.gz`.
- **napari**: `nnal annotate DIR` opens this batch slice by slice and saves into `masks/`.

| case | axis | slice | position |
|---|---|---|---|
{listing}
"""


def pending_round(folder: ExperimentFolder, store: AnnotationStore) -> int | None:
    """The round whose selection waits for a person's masks, or None."""
    selected = [r for r in folder.rounds() if folder.selection_file(r).is_file()]
    if not selected or store.ingested(selected[-1]) or folder.done(selected[-1], "train"):
        return None
    return selected[-1]


def export_batch(folder: ExperimentFolder, store: AnnotationStore, round_: int, config: Config, backend: Any,
                 weights: Any) -> Path:
    """Write the round's batch for the annotator (``weights``: the model that fills the presegmentation, None in
    round 0). Every file atomically. Exported again, the batch keeps what the annotator did: ``masks/`` is left as
    it is, and the new manifest keeps the slices marked empty and the time the batch was first handed out."""
    out = folder.annotate_dir(round_)
    earlier = _earlier_export(out, round_)  # read before the manifest is rewritten
    batch = _write_volumes(folder, store, round_, backend, weights, out)
    atomic_write_text(folder.batch_file(round_), batch.to_csv(index=False))
    marked = [slice_key(row) in earlier.empty for row in batch.to_dict("records")]
    manifest = batch.assign(empty=marked)[MANIFEST_COLUMNS]
    atomic_write_text(out / "manifest.csv", manifest.to_csv(index=False))
    atomic_write_json(out / "manifest.json", {
        "round": round_, "strategy": config.strategy, "experiment": config.experiment,
        "labels": dict(store.dataset.labels), **(earlier.exported or _now()),
        "slices": [_json_row(r) for r in manifest.to_dict("records")]})
    atomic_write_text(out / "README.md", _readme(round_, manifest, store.dataset))
    (out / "masks").mkdir(exist_ok=True)
    return out


def _write_volumes(folder: ExperimentFolder, store: AnnotationStore, round_: int, backend: Any, weights: Any,
                   out: Path) -> pd.DataFrame:
    """Per selected case its images, known labels and presegmentation; the selected slices located in them."""
    rows = []
    for case, picked in folder.read_selection(round_).groupby("case", sort=True):
        axis, offset = backend.slice_location(case)
        pool_slices = picked["slice"].to_numpy()
        image = store.image(case)
        known = store.known_or_blank(case)
        preseg = known.copy()
        if weights is not None:
            predicted = backend.predict_raw(weights, case, pool_slices)
            where = index_along(axis, pool_slices + offset)
            preseg = preseg.astype(np.result_type(preseg.dtype, predicted.dtype))
            preseg[where] = predicted[where]
        _write_images(store.dataset, case, out / "images")
        atomic_write_bytes(out / "labels" / f"{case}.nii.gz", nifti_bytes(known.astype(label_dtype(known)), image))
        target = out / "presegmentation" / f"{case}.nii.gz"
        if not target.is_file():  # a re-export keeps it: the same model wrote it, or the annotator corrected it there
            atomic_write_bytes(target, nifti_bytes(preseg.astype(label_dtype(preseg)), image))
        for (_, row), s in zip(picked.iterrows(), pool_slices, strict=True):
            world_axis, mm = world_position(image.affine, image.shape, axis, int(s + offset))
            rows.append({"id": int(row["id"]), "case": case, "axis": axis, "slice": int(s + offset),
                         "pool_slice": int(s), "world_axis": world_axis, "world_mm": mm, "score": row["score"]})
    return pd.DataFrame(rows, columns=BATCH_COLUMNS)


@dataclass(frozen=True)
class EarlierExport:
    """What the batch folder holds of an earlier export that is not nnal's to forget."""

    empty: set[tuple[str, int, int]]  # slices the annotator marked empty, in manifest.csv or manifest.json
    exported: dict[str, Any] | None  # when the batch was first handed out (the annotator's time counts from it)


def _earlier_export(out: Path, round_: int) -> EarlierExport:
    """The marks of the manifest files in ``out``; one that cannot be read (or is another round's) is kept beside
    it as ``<name>.unreadable`` before it is rewritten, so nothing the annotator wrote is lost."""
    empty: set[tuple[str, int, int]] = set()
    exported = None
    for name in MANIFEST_FILES:
        path = out / name
        if not path.is_file():
            continue
        try:
            rows, named_round = manifest_rows(path)
            if named_round not in (None, round_):
                raise ValueError(f"the manifest of round {named_round}")
            empty |= {slice_key(row) for row in rows if is_marked(row.get("empty", False))}
        except MANIFEST_READ_ERRORS:
            atomic_write_bytes(path.with_name(f"{name}.unreadable"), path.read_bytes())
            continue
        if name.endswith(".json"):
            exported = _export_time(path)
    return EarlierExport(empty, exported)


def _export_time(manifest_json: Path) -> dict[str, Any] | None:
    meta = json.loads(manifest_json.read_text())
    if not isinstance(meta.get("exported_unix"), int | float) or isinstance(meta["exported_unix"], bool):
        return None
    return {"exported_at": meta.get("exported_at"), "exported_unix": meta["exported_unix"]}


def _now() -> dict[str, Any]:
    return {"exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "exported_unix": time.time()}


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    score = row["score"]
    return {**row, "score": None if score is None or (isinstance(score, float) and math.isnan(score)) else score}


def _write_images(dataset: RawDataset, case: str, target: Path) -> None:
    """The case's scan, one ``<case>_NNNN.nii.gz`` per channel (an MSD 4D file split), bytes as in the dataset."""
    images = next(c for c in dataset.cases if c.name == case).images
    if len(images) == 1 and len(dataset.channel_names) > 1:  # one 4D file holding every channel (MSD)
        img = nib.load(str(images[0]))
        data = np.asanyarray(img.dataobj)
        for c in range(data.shape[3]):
            atomic_write_bytes(target / f"{case}_{c:04d}.nii.gz",
                               nifti_bytes(data[..., c], nib.Nifti1Image(data[..., c], img.affine, img.header)))
        return
    for c, path in enumerate(images):
        atomic_write_bytes(target / f"{case}_{c:04d}.nii.gz", as_nifti_gz(path))


def _readme(round_: int, manifest: pd.DataFrame, dataset: RawDataset) -> str:
    listing = "\n".join(f"| {r.case} | {r.axis} | {r.slice} | {r.world_axis} = {r.world_mm} mm |"
                        for r in manifest.itertuples())
    labels = ", ".join(f"{v} = {k}" for k, v in sorted(dataset.labels.items(), key=lambda kv: kv[1]))
    return README.format(round=round_, n=len(manifest), cases=manifest["case"].nunique(),
                                     labels=labels, listing=listing)


def query(root: Path, backend_factory: Callable[[RawDataset, Path, Config], Any]) -> Path:
    """``nnal query DIR``: (re)export the pending batch with the current model's presegmentation."""
    folder, config, dataset = open_annotation_experiment(
        root, "the simulated oracle reveals labels itself, there is nothing to annotate")
    refuse_unwritable(_export_paths(folder, _waiting_round(folder, dataset)), "query")
    with folder.lock():
        store = AnnotationStore(folder, dataset)
        round_ = _waiting_round(folder, dataset)  # as it is now, under the lock
        root = folder.read_environment().get("nnunet_root")
        cache = Path(root).parent if root else folder.cache_dir
        backend = backend_factory(dataset, cache, config)
        weights = backend.load_weights(folder.checkpoint_file(round_ - 1)) if round_ > 0 else None
        return export_batch(folder, store, round_, config, backend, weights)


def _waiting_round(folder: ExperimentFolder, dataset: RawDataset) -> int:
    round_ = pending_round(folder, AnnotationStore(folder, dataset))
    if round_ is None:
        raise NnalError(f"{folder.root}: no selection waits for annotation; run 'nnal run --output {folder.root}' "
                        "to train and select the next batch")
    return round_


def _export_paths(folder: ExperimentFolder, round_: int) -> list[Path]:
    """What exporting ``round_`` writes: the lock, the round's batch.csv, the batch folder and its subfolders, and
    the lock of nnU-Net's data in the experiment (opened by the backend)."""
    out = folder.annotate_dir(round_)
    paths = [folder.root, folder.lock().path, folder.round_dir(round_), out,
             *(out / sub for sub in ("images", "labels", "presegmentation"))]
    nnunet_root = folder.read_environment().get("nnunet_root")
    if nnunet_root:
        paths += [Path(nnunet_root), Path(nnunet_root) / ".lock"]
    return paths
