"""``nnal export``: one round of an experiment handed back to nnU-Net.

```
OUTPUT/nnUNet_raw/DatasetNNN_Name/       the labeled set after the round: imagesTr/, labelsTr/, dataset.json
OUTPUT/nnUNet_results/DatasetNNN_Name/   the round's model: nnUNetTrainer__nnUNetPlans__2d/ (plans.json,
                                         dataset.json, dataset_fingerprint.json, fold_F/checkpoint_final.pth)
OUTPUT/export.json                       what was exported from where (round, cases, slices, checkpoint digest)
```

The two trees are named after nnU-Net's path variables and kept apart, so that training on the exported labels
(``nnUNet_results`` pointed elsewhere or at the same tree) can never write over the exported model's fold. A label
volume holds the labels nnal trained on, on the slices labeled up to the round, and nnU-Net's ignore label on every
other voxel, on the raw image's grid. Everything is written into a staging folder beside OUTPUT and moved into
place with one rename: an export that fails or is killed leaves no half-written OUTPUT.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from nnal import __version__
from nnal.annotation.volumes import index_along, label_dtype, nifti_bytes
from nnal.config import Config
from nnal.consistency import check_checkpoint, file_sha256
from nnal.dataset import fingerprint, load_dataset
from nnal.errors import ConfigError, EnvironmentProblem, FolderError
from nnal.experiment import ExperimentFolder

WHAT = ("labels", "model", "both")
RAW, RESULTS = "nnUNet_raw", "nnUNet_results"
MAX_DATASET_ID = 999  # nnU-Net names datasets DatasetNNN_: three digits
STAGING_PREFIX = ".nnal-export-"


@dataclass(frozen=True)
class ExportPlan:
    """Everything an export reads, checked before any work."""

    folder: ExperimentFolder
    config: Config
    round_: int
    output: Path
    labels: bool
    model: bool
    cache_root: Path
    dataset_name: str
    labeled: dict[str, np.ndarray]  # case -> distinct pool slice indices labeled up to the round
    label_files: dict[str, Path]  # case -> the volume holding its known labels


@dataclass(frozen=True)
class ExportResult:
    output: Path
    round_: int
    dataset_name: str
    fold: int
    raw_folder: Path | None
    model_folder: Path | None
    cases: int
    slices: int


def export_experiment(experiment: Path, *, round_: int | None, output: Path, what: str = "both",
                      dataset_id: int | None = None) -> ExportResult:
    """Export round ``round_`` (None: the last trained one) of ``experiment`` into the new or empty ``output``."""
    plan = check_request(Path(experiment), round_=round_, output=Path(output), what=what, dataset_id=dataset_id)
    from nnal.backend import export as nnunet_export

    config = plan.config
    backend = nnunet_export.open_cache(plan.cache_root, dropout=config.dropout, dropout_p=config.dropout_p,
                                       mc_dropout_p=config.mc_dropout_p)
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=plan.output.parent, prefix=f"{STAGING_PREFIX}{plan.output.name}-"))
    try:
        raw_folder = _write_labels(plan, backend, staging / RAW) if plan.labels else None
        model_folder = _write_model(plan, backend, staging / RESULTS) if plan.model else None
        (staging / "export.json").write_text(json.dumps(_manifest(plan, backend), indent=1) + "\n")
        _publish(staging, plan.output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    output = plan.output.resolve()
    return ExportResult(output, plan.round_, plan.dataset_name, config.fold, _moved(raw_folder, staging, output),
                        _moved(model_folder, staging, output), len(plan.labeled),
                        sum(len(s) for s in plan.labeled.values()))


def _moved(path: Path | None, staging: Path, output: Path) -> Path | None:
    return None if path is None else output / path.relative_to(staging)


# --- checks: every refusal before any work -------------------------------------------------------------------------

def check_request(experiment: Path, *, round_: int | None, output: Path, what: str,
                  dataset_id: int | None) -> ExportPlan:
    """The request checked against the experiment folder; a user's mistake is one line naming the file or flag."""
    if what not in WHAT:
        raise ConfigError(f"--what: unknown {what!r}; known: {', '.join(WHAT)}")
    if dataset_id is not None and not 1 <= dataset_id <= MAX_DATASET_ID:
        raise ConfigError(f"--dataset-id: {dataset_id} is out of range (nnU-Net dataset ids are 1 to "
                          f"{MAX_DATASET_ID})")
    folder = ExperimentFolder(experiment)
    if not folder.holds_experiment():
        raise FolderError(f"{experiment}: not an nnal experiment (no config.yaml)")
    _check_output(output, folder)
    round_ = _trained_round(folder, round_)
    labels, model = what in ("labels", "both"), what in ("model", "both")
    if model:
        _check_model_round(folder, round_)
    config = folder.read_config()
    cache_root = _cache_root(folder)
    labeled = labeled_slices(folder, round_)
    label_files = known_label_files(folder, config, round_, sorted(labeled)) if labels else {}
    return ExportPlan(folder, config, round_, output, labels=labels, model=model, cache_root=cache_root,
                      dataset_name=_dataset_name(cache_root, dataset_id), labeled=labeled, label_files=label_files)


def _check_output(output: Path, folder: ExperimentFolder) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FolderError(f"{output}: exists and is not an empty folder; export into a new or empty one")
    if output.resolve() == folder.root.resolve():
        raise FolderError(f"{output}: is the experiment folder itself; export into a new or empty one")
    parent = next(p for p in [output.parent, *output.parent.parents] if p.exists())
    if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise EnvironmentProblem(f"{parent}: not a writable folder; cannot create {output} in it")


def _trained_round(folder: ExperimentFolder, round_: int | None) -> int:
    """The round asked for (None: the last trained one), refused unless state.json records it as trained."""
    if round_ is not None and round_ < 0:
        raise ConfigError(f"--round: {round_} is negative; rounds count from 0")
    if not folder.state_file.is_file():
        raise FolderError(f"{folder.state_file}: missing; no round of this experiment has been trained")
    state = folder.state.data
    trained = [r for r in range(state["round"] + 1) if folder.done(r, "train")]
    if round_ is None:
        if not trained:
            raise FolderError(f"{folder.state_file}: no round has been trained yet")
        return trained[-1]
    if round_ not in trained:
        last = f"round {state['round']}, phase {state['phase']}" if state["round"] >= 0 else "nothing"
        raise FolderError(f"{folder.state_file}: round {round_} has not been trained (last finished: {last}); "
                          f"trained rounds: {_listed(trained)}")
    return round_


def _listed(rounds: list[int]) -> str:
    return f"0 to {rounds[-1]}" if rounds else "none"


def _check_model_round(folder: ExperimentFolder, round_: int) -> None:
    path = folder.checkpoint_file(round_)
    if not path.is_file():
        raise FolderError(f"{path}: missing (results committed without their checkpoints hold no model); export "
                          "--what labels, or restore the checkpoint")
    check_checkpoint(folder, round_)  # the file that was written, not a truncated or replaced one


def _cache_root(folder: ExperimentFolder) -> Path:
    """nnU-Net's planned and preprocessed data the experiment ran on (``environment.json``'s ``nnunet_root``)."""
    environment = folder.read_environment()
    if environment.get("backend") == "fake":
        raise FolderError(f"{folder.environment_file}: a dry run on nnal's fake model; it holds no nnU-Net model or "
                          "data to export")
    root = environment.get("nnunet_root")
    if not root:
        raise FolderError(f"{folder.environment_file}: missing or without nnunet_root; cannot find nnU-Net's data")
    root = Path(root)
    if not sorted(root.glob("preprocessed/Dataset*/nnUNetPlans.json")):
        raise FolderError(f"{root}: holds no nnU-Net plans (was the experiment's cache removed?); the export reads "
                          "the raw images and the plans from it")
    return root


def _dataset_name(cache_root: Path, dataset_id: int | None) -> str:
    """The cache's ``DatasetNNN_Name``, with ``NNN`` replaced by ``dataset_id`` when one is given."""
    name = sorted(cache_root.glob("preprocessed/Dataset*/nnUNetPlans.json"))[0].parent.name
    return name if dataset_id is None else f"Dataset{dataset_id:03d}_{name.split('_', 1)[1]}"


def labeled_slices(folder: ExperimentFolder, round_: int) -> dict[str, np.ndarray]:
    """``{case: distinct pool slices}`` selected in rounds 0..round_: a duplicated slice (redundancy scenario) counts
    once; a test case among them is refused, as it would be exported as training data."""
    for r in range(round_ + 1):
        if not folder.selection_file(r).is_file():
            raise FolderError(f"{folder.selection_file(r)}: missing, though state.json records round {r} as "
                              "selected; restore it from a backup")
    pool = folder.read_pool()
    ids = folder.labeled_before(round_ + 1)
    if len(ids) and (ids.min() < 0 or ids.max() >= len(pool)):
        raise FolderError(f"{folder.pool_file}: the selections name slice ids outside the pool (0..{len(pool) - 1})")
    labeled = pool.by_case(ids)
    leaked = sorted(set(labeled) & set(folder.read_test_cases()))
    if leaked:
        raise FolderError(f"{folder.test_cases_file}: test cases {', '.join(leaked)} are among the labeled slices; "
                          "the experiment folder is inconsistent, nothing exported")
    return labeled


def known_label_files(folder: ExperimentFolder, config: Config, round_: int, cases: list[str]) -> dict[str, Path]:
    """The file holding each case's known labels after ``round_``: the dataset's ground truth (simulated oracle), or
    the case's mask from the last ingest up to the round (annotation mode), else the labels the dataset brought."""
    dataset = load_dataset(config.dataset, labels_optional=config.oracle == "human")
    folder.check_dataset(fingerprint(dataset))  # labels read from a changed dataset are not the ones trained on
    given = {case.name: case.label for case in dataset.cases}
    ingested = folder.read_annotations()["rounds"] if config.oracle == "human" else {}
    rounds = sorted((int(r) for r in ingested if int(r) <= round_), reverse=True)
    files = {}
    for case in cases:
        latest = next((r for r in rounds if case in ingested[str(r)]["cases"]), None)
        files[case] = folder.annotation_file(latest, case) if latest is not None else given.get(case)
        if files[case] is None or not files[case].is_file():
            raise FolderError(f"{files[case] or folder.annotations_file}: no labels of case {case}, though slices of "
                              f"it are labeled up to round {round_}")
    return files


# --- work ----------------------------------------------------------------------------------------------------------

def _write_labels(plan: ExportPlan, backend: Any, target: Path) -> Path:
    """imagesTr/ (the raw images nnU-Net read, per channel), labelsTr/ and dataset.json of the labeled cases."""
    from nnal.backend.export import ignore_label, raw_dataset_json

    dataset_dir = target / plan.dataset_name
    (dataset_dir / "imagesTr").mkdir(parents=True)
    (dataset_dir / "labelsTr").mkdir()
    ignore = ignore_label(backend.dataset_json)
    raw = backend.layout.raw_dir(backend.folder_name)
    channels = len(backend.dataset_json["channel_names"])
    for case, slices in plan.labeled.items():
        for c in range(channels):
            name = f"{case}_{c:04d}.nii.gz"
            shutil.copyfile(raw / "imagesTr" / name, dataset_dir / "imagesTr" / name)  # a link's target's bytes
        image = nib.load(str(dataset_dir / "imagesTr" / f"{case}_0000.nii.gz"))
        axis, offset = backend.slice_location(case)
        volume = partial_label_volume(_read_labels(plan.label_files[case], image.shape[:3], ignore), axis,
                                      offset + slices, ignore)
        (dataset_dir / "labelsTr" / f"{case}.nii.gz").write_bytes(nifti_bytes(volume, image))
    (dataset_dir / "dataset.json").write_text(json.dumps(raw_dataset_json(backend.dataset_json, len(plan.labeled)),
                                                         indent=1) + "\n")
    return dataset_dir


def _read_labels(path: Path, shape: tuple[int, ...], ignore: int) -> np.ndarray:
    """A case's known labels, on the image's grid, every value a class (below the ignore label)."""
    labels = np.asanyarray(nib.load(str(path)).dataobj)
    if labels.shape[:3] != tuple(shape) or labels.ndim != 3:
        raise FolderError(f"{path}: shape {labels.shape} is not the image's {tuple(shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= ignore):
        raise FolderError(f"{path}: label value {int(labels.max())} is no class of the dataset (0..{ignore - 1})")
    return np.asarray(labels)


def partial_label_volume(labels: np.ndarray, axis: int, indices: np.ndarray, ignore: int) -> np.ndarray:
    """``labels`` on the slices ``indices`` along array ``axis``, ``ignore`` everywhere else."""
    out = np.full(labels.shape, ignore, dtype=label_dtype(np.array([ignore])))
    where = index_along(axis, np.asarray(indices, dtype=np.int64), labels.ndim)
    out[where] = labels[where]
    return out


def _write_model(plan: ExportPlan, backend: Any, target: Path) -> Path:
    from nnal.backend.export import write_model_folder

    weights = backend.load_weights(plan.folder.checkpoint_file(plan.round_))
    provenance = {"experiment": str(plan.folder.root.resolve()), "round": plan.round_,
                  "strategy": plan.config.strategy, "nnal": __version__}
    return write_model_folder(target, backend, weights, fold=plan.config.fold, dataset_name=plan.dataset_name,
                              augmentation=bool(plan.config.augmentation), provenance=provenance)


def _manifest(plan: ExportPlan, backend: Any) -> dict[str, Any]:
    """export.json: the provenance of the export and where each case's labeled slices lie in its raw arrays."""
    cases = {}
    for case, slices in plan.labeled.items():
        axis, offset = backend.slice_location(case)
        cases[case] = {"array_axis": axis, "array_indices": (offset + slices).tolist(), "pool_slices": slices.tolist()}
    checkpoint = plan.folder.checkpoint_file(plan.round_)
    return {"nnal": __version__, "experiment": str(plan.folder.root.resolve()), "round": plan.round_,
            "strategy": plan.config.strategy,
            "oracle": plan.config.oracle, "fold": plan.config.fold, "dataset_name": plan.dataset_name,
            "labels": plan.labels, "model": plan.model,
            "checkpoint_sha256": file_sha256(checkpoint) if plan.model else None,
            "labeled_slices": int(sum(len(s) for s in plan.labeled.values())), "cases": cases}


def _publish(staging: Path, output: Path) -> None:
    """Move the finished export into place with one rename (onto an empty folder too)."""
    try:
        os.replace(staging, output)
    except OSError as err:
        raise FolderError(f"{output}: cannot be replaced by the export ({os.strerror(err.errno or 0)}); was it "
                          "written to meanwhile?") from None
