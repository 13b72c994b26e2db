"""`nnal export`: a round's labeled set goes back to nnU-Net as a raw dataset (ignore label elsewhere) that
nnU-Net's own commands plan, preprocess and train; its model as a results folder that `nnUNetv2_predict` loads and
predicts with as nnal does. Refusals are one line and touch nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import blosc2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from annotator import annotate_from_truth, folder_digest, hide_labels
from conftest import assert_one_line_error, make_nnunet_dataset, run_cli
from conftest import run_as_nnal_run as run_experiment

from nnal.backend.fake import fake_backend
from nnal.config import Config

BIN = Path(sys.executable).parent
# NIfTI axis 0 has the coarsest spacing, so nnU-Net slices along it (transpose_forward [2, 0, 1] after NibabelIO's
# reversal) and not along the usual axis 2; its first BORDER slices are empty, so nnU-Net's crop shifts pool slice
# indices against the array's: an export that took the wrong axis or forgot the offset puts labels on wrong slices
SHAPE, SPACING, BORDER = (10, 20, 24), (3.0, 1.0, 1.0), 2
DUPLICATED = "case_000"
REAL = dict(strategy="random", rounds=1, initial=12, budget=10, batch_size=2, iterations_per_epoch=3,
            epochs_initial=1, epochs_per_round=1, device="cpu", score_batch_size=64, seed=0)
# nnU-Net's own trainer, one short epoch, found by nnUNetv2_train through nnU-Net's extension path (nnUNet_extTrainer)
SHORT_TRAINER = '''
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_nnalExportCheck(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2
'''


def make_slab_dataset(root: Path, n_cases: int = 8, seed: int = 0) -> Path:
    """Cases whose labels threshold the image (learnable in a few steps), anisotropic, with empty border slices."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*SPACING, 1.0])
    for i in range(n_cases):
        image = rng.normal(size=SHAPE).astype(np.float32)
        labels = np.where(image > 0.7, 1, np.where(image < -0.7, 2, 0)).astype(np.uint8)
        image[:BORDER], labels[:BORDER] = 0, 0
        for folder, name, array in (("imagesTr", f"case_{i:03d}_0000", image), ("labelsTr", f"case_{i:03d}", labels)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), str(root / folder / f"{name}.nii.gz"))
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": n_cases,
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def nnunet_env(tmp: Path, raw: Path, *, workers: int = 0) -> dict[str, str]:
    """nnU-Net's folders for one command, nothing shared with nnal's cache; augmentation in-process."""
    (tmp / "trainers").mkdir(parents=True, exist_ok=True)
    (tmp / "trainers" / "short_trainer.py").write_text(SHORT_TRAINER)
    return {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(tmp / "preprocessed"),
            "nnUNet_results": str(tmp / "results"), "nnUNet_compile": "f", "nnUNet_n_proc_DA": str(workers),
            "nnUNet_def_n_proc": "1", "nnUNet_extTrainer": str(tmp / "trainers"), "OMP_NUM_THREADS": "2"}


def nnunet(command: str, *args, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / command), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def labeled_rows(folder: Path, last_round: int) -> pd.DataFrame:
    rows = [pd.read_csv(folder / f"round_{r:03d}" / "selection.csv", dtype={"case": str})
            for r in range(last_round + 1)]
    return pd.concat(rows, ignore_index=True)


# --- refusals: one line, exit code 2, nothing written (nnal's fake model: seconds) ----------------------------------

FAKE = dict(strategy="random", rounds=2, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1,
            epochs_per_round=1)


@pytest.fixture
def fake_experiment(tmp_path, no_fsync) -> Path:
    data = make_nnunet_dataset(tmp_path / "Dataset001_Toy", n_cases=6)
    run_experiment(Config(dataset=str(data), **FAKE), tmp_path / "exp", progress=False, backend_factory=fake_backend)
    return tmp_path / "exp"


def break_checkpoint(exp: Path, how: str) -> None:
    checkpoint = exp / "round_001" / "checkpoint.pt"
    if how == "delete":
        checkpoint.unlink()
    else:
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])


def point_at_removed_cache(exp: Path) -> None:
    environment = json.loads((exp / "environment.json").read_text())
    environment.update(backend="nnunet", nnunet_root=str(exp.parent / "removed-cache"))
    (exp / "environment.json").write_text(json.dumps(environment))


REFUSALS = {
    "not an experiment": (None, [], ["elsewhere", "not an nnal experiment"]),
    "round not trained": (None, ["--round", 3], ["state.json", "round 3 has not been trained", "0 to 2"]),
    "negative round": (None, ["--round", -1], ["--round"]),
    "missing checkpoint": (lambda exp: break_checkpoint(exp, "delete"), ["--round", 1, "--what", "model"],
                           ["round_001/checkpoint.pt", "missing", "--what labels"]),
    "truncated checkpoint": (lambda exp: break_checkpoint(exp, "truncate"), ["--round", 1],
                             ["round_001/checkpoint.pt", "changed or truncated"]),
    "dataset id 0": (None, ["--dataset-id", 0], ["--dataset-id", "0 is out of range"]),
    "dataset id 1000": (None, ["--dataset-id", 1000], ["--dataset-id", "1000 is out of range"]),
    "unknown what": (None, ["--what", "weights"], ["--what", "unknown 'weights'"]),
    "a dry run": (None, [], ["environment.json", "fake model"]),
    "removed cache": (point_at_removed_cache, [], ["removed-cache", "no nnU-Net plans"]),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refusals_are_one_line_and_write_nothing(fake_experiment, tmp_path, name):
    prepare, args, words = REFUSALS[name]
    if prepare is not None:
        prepare(fake_experiment)
    target = tmp_path / "elsewhere" if name == "not an experiment" else fake_experiment
    (tmp_path / "elsewhere").mkdir()
    before = folder_digest(fake_experiment)
    result = run_cli(["export", target, "--output", tmp_path / "out", *args])
    assert_one_line_error(result, words)
    assert folder_digest(fake_experiment) == before
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".nnal-export-*"))


@pytest.mark.parametrize("existing", ["folder with a file", "file"])
def test_an_existing_output_is_refused_and_left_as_it_was(fake_experiment, tmp_path, existing):
    out = tmp_path / "out"
    if existing == "file":
        out.write_text("mine\n")
    else:
        out.mkdir()
        (out / "mine.txt").write_text("mine\n")
    before = folder_digest(tmp_path)
    result = run_cli(["export", fake_experiment, "--output", out])
    assert_one_line_error(result, [str(out), "not an empty folder"])
    assert folder_digest(tmp_path) == before


def test_an_experiment_without_a_trained_round_is_refused(tmp_path, no_fsync):
    data = make_nnunet_dataset(tmp_path / "Dataset001_Toy", n_cases=6)
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(Config(dataset=str(data), **FAKE).to_yaml())
    result = run_cli(["export", exp, "--output", tmp_path / "out"])
    assert_one_line_error(result, ["state.json", "missing", "no round"])
    assert not (tmp_path / "out").exists()


# --- annotation mode: the masks ingested up to the round, else the labels the dataset brought ----------------------

def test_annotation_mode_takes_the_masks_ingested_up_to_the_round(tmp_path, no_fsync):
    from nnal.experiment import ExperimentFolder
    from nnal.export import known_label_files, labeled_slices, partial_label_volume

    full = make_nnunet_dataset(tmp_path / "full" / "Dataset001_Toy", n_cases=6)
    hidden = hide_labels(full, tmp_path / "hidden" / "Dataset001_Toy", {"case_001"})  # its labels: round 0
    out = tmp_path / "human"
    config = Config(dataset=str(hidden), oracle="human", **FAKE)
    for r in (1, 2):
        run_experiment(config, out, progress=False, backend_factory=fake_backend)
        annotate_from_truth(out / "annotate" / f"round_{r:03d}", full)
        assert run_cli(["ingest", out]).exit_code == 0
    run_experiment(config, out, progress=False, backend_factory=fake_backend)
    folder = ExperimentFolder(out)
    chosen = {r: set(pd.read_csv(folder.selection_file(r), dtype={"case": str})["case"]) for r in (0, 1, 2)}
    assert chosen[0] == {"case_001"} and chosen[1] & chosen[2], "no case annotated twice: the rule is not exercised"
    for round_ in (0, 1, 2):
        labeled = labeled_slices(folder, round_)
        files = known_label_files(folder, folder.read_config(), round_, sorted(labeled))
        assert set(files) == set().union(*(chosen[r] for r in range(round_ + 1)))
        for case, path in files.items():
            if case == "case_001":  # labeled by the dataset itself
                assert path == hidden / "labelsTr" / "case_001.nii.gz"
            else:  # the mask of its last ingest up to the round, not a later one
                assert path == folder.annotation_file(max(r for r in range(round_ + 1) if case in chosen[r]), case)
            truth = np.asarray(nib.load(str(full / "labelsTr" / f"{case}.nii.gz")).dataobj)
            volume = partial_label_volume(np.asarray(nib.load(str(path)).dataobj), 0, labeled[case], 3)
            assert np.array_equal(volume[labeled[case]], truth[labeled[case]]), (round_, case)  # the fake: axis 0
            assert (np.delete(volume, labeled[case], axis=0) == 3).all()


# --- real nnU-Net: its own commands on the export -------------------------------------------------------------------

@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """Two real rounds (round 0 and 1), one pool case's slices in the pool five more times (Appendix E)."""
    root = tmp_path_factory.mktemp("export")
    data = make_slab_dataset(root / "Dataset007_Slab")
    config = Config(dataset=str(data), redundancy={"case": DUPLICATED, "copies": 5}, **REAL)
    run_experiment(config, root / "exp", progress=False)
    return root / "exp"


@pytest.fixture(scope="module")
def exported(experiment) -> Path:
    """The last trained round (1) under another dataset id, into an existing empty folder."""
    out = experiment.parent / "out"
    out.mkdir()
    result = run_cli(["export", experiment, "--output", out, "--dataset-id", 123])
    assert result.exit_code == 0, result.output
    assert "nnUNetv2_train 123 2d 0" in result.stdout and "nnUNetv2_predict" in result.stdout
    return out


def cache_folder(experiment: Path) -> Path:
    return next(experiment.glob("nnunet/*/preprocessed/Dataset007_Slab/nnUNetPlans_2d"))


@pytest.mark.slow
def test_exported_labels_hold_the_labeled_slices_and_ignore_elsewhere(experiment, exported):
    raw = exported / "nnUNet_raw" / "Dataset123_Slab"
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "a": 1, "b": 2, "ignore": 3}
    labeled = labeled_rows(experiment, 1)
    distinct = labeled.drop_duplicates(["case", "slice"])
    assert len(distinct) < len(labeled), "no duplicate was selected: the redundancy case is not exercised"
    test_cases = (experiment / "test_cases.txt").read_text().split()
    cases = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").iterdir())
    assert cases == sorted(set(labeled["case"])) and meta["numTraining"] == len(cases)
    assert not set(cases) & set(test_cases)
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in cases]
    data = experiment.parent / "Dataset007_Slab"
    for case in cases:
        image = nib.load(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
        exported_labels = nib.load(str(raw / "labelsTr" / f"{case}.nii.gz"))
        assert exported_labels.shape == image.shape and np.array_equal(exported_labels.affine, image.affine)
        volume = np.asarray(exported_labels.dataobj)
        truth = np.asarray(nib.load(str(data / "labelsTr" / f"{case}.nii.gz")).dataobj)
        on = BORDER + np.sort(distinct[distinct["case"] == case]["slice"].to_numpy())  # NIfTI axis 0, cropped border
        off = np.setdiff1d(np.arange(SHAPE[0]), on)
        assert np.array_equal(volume[on], truth[on]) and (volume[off] == 3).all(), case
    manifest = json.loads((exported / "export.json").read_text())
    assert manifest["labeled_slices"] == len(distinct) and manifest["round"] == 1


@pytest.mark.slow
def test_nnunet_plans_preprocesses_and_trains_the_exported_labels(experiment, exported, tmp_path):
    """nnU-Net's own commands on the export: the dataset passes its integrity check, its preprocessed labels are
    exactly what nnal trained on (labeled slices, the ignore label elsewhere), and nnUNetv2_train trains on them."""
    env = nnunet_env(tmp_path, exported / "nnUNet_raw", workers=1)  # the planner needs >= 1 worker
    nnunet("nnUNetv2_plan_and_preprocess", "-d", 123, "-c", "2d", "-np", 1, "-npfp", 1, "--verify_dataset_integrity",
           env=env)
    ours, theirs = cache_folder(experiment), tmp_path / "preprocessed" / "Dataset123_Slab" / "nnUNetPlans_2d"
    for case, rows in labeled_rows(experiment, 1).groupby("case"):
        seg = blosc2.open(urlpath=str(theirs / f"{case}_seg.b2nd"), mode="r")[:][0]
        truth = blosc2.open(urlpath=str(ours / f"{case}_seg.b2nd"), mode="r")[:][0]
        assert seg.shape == truth.shape, case
        on = np.unique(rows["slice"].to_numpy())
        assert np.array_equal(seg[on], truth[on]), case
        assert (np.delete(seg, on, axis=0) == 3).all(), case

    env["nnUNet_n_proc_DA"] = "0"
    done = nnunet("nnUNetv2_train", 123, "2d", 0, "-tr", "nnUNetTrainer_nnalExportCheck", "-device", "cpu", env=env)
    fold = tmp_path / "results" / "Dataset123_Slab" / "nnUNetTrainer_nnalExportCheck__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file(), done.stdout[-2000:]
    losses = [float(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines() if "train_loss" in line]
    assert losses and np.isfinite(losses).all(), losses


@pytest.mark.slow
def test_nnunet_predict_with_the_exported_model_equals_nnal(experiment, exported, tmp_path):
    """nnUNetv2_predict on the test cases' images with the exported round-1 model gives nnal's own prediction of the
    same weights (nnU-Net accumulates logits in fp16: a few voxels may differ); round 0's weights differ far more."""
    from nnal.backend.model import load_weights
    from nnal.backend.session import Backend

    model_dir = exported / "nnUNet_results" / "Dataset123_Slab" / "nnUNetTrainer__nnUNetPlans__2d"
    plans = json.loads((model_dir / "plans.json").read_text())
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["dropout_op"] == "torch.nn.Dropout"
    test_cases = (experiment / "test_cases.txt").read_text().split()
    images = tmp_path / "images"
    images.mkdir()
    raw = next(experiment.glob("nnunet/*/raw/Dataset007_Slab"))
    for case in test_cases:
        (images / f"{case}_0000.nii.gz").write_bytes((raw / "imagesTr" / f"{case}_0000.nii.gz").read_bytes())
    env = {**nnunet_env(tmp_path, tmp_path / "no-raw"), "nnUNet_results": str(exported / "nnUNet_results")}
    nnunet("nnUNetv2_predict", "-i", images, "-o", tmp_path / "pred", "-d", 123, "-c", "2d", "-f", 0, "-tr",
           "nnUNetTrainer", "-p", "nnUNetPlans", "-chk", "checkpoint_final.pth", "-device", "cpu", "--disable_tta",
           "-npp", 0, "-nps", 0, env=env)

    root = Path(json.loads((experiment / "environment.json").read_text())["nnunet_root"])
    backend = Backend.reopen(root, dropout="element", dropout_p=0.01, mc_dropout_p=0.1)
    weights = {r: load_weights(experiment / f"round_{r:03d}" / "checkpoint.pt") for r in (0, 1)}
    tolerance = 5
    for case in test_cases:
        theirs = np.asarray(nib.load(str(tmp_path / "pred" / f"{case}.nii.gz")).dataobj)
        ours = {r: backend.predict_raw(w, case, np.arange(SHAPE[0] - BORDER)) for r, w in weights.items()}
        assert theirs.shape == ours[1].shape == SHAPE
        assert len(np.unique(ours[1][BORDER:])) >= 2, "a constant prediction would hide a wrong weight mapping"
        assert int((theirs != ours[1]).sum()) <= tolerance, case
        assert int((theirs != ours[0]).sum()) > 10 * tolerance, "round 0 and 1 alike: a wrong round would pass"
