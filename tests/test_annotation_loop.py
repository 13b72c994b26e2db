"""Annotation mode end to end: the loop stops after each selection, `nnal query` hands the batch out, masks written
from the hidden ground truth come back through `nnal ingest`, and the run ends where the simulated oracle ends —
the same selections and the same Dice (fake backend in seconds; real nnU-Net on a small Hippocampus copy)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from annotator import annotate_from_truth, hide_labels, slab, truth
from conftest import make_mini_hippocampus, make_nnunet_dataset, run_cli
from conftest import run_as_nnal_run as run_experiment

from nnal.backend.fake import fake_backend
from nnal.config import Config

TOY_TEST_CASES = {"case_000", "case_005"}
FAKE = dict(strategy="bald", rounds=2, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1,
            epochs_per_round=1, mc_passes=3)


def selections(folder: Path) -> list[list[int]]:
    return [pd.read_csv(p)["id"].tolist() for p in sorted(folder.glob("round_*/selection.csv"))]


def human_rounds(config: Config, out: Path, full: Path, rounds: int, query: bool = False, **run) -> pd.DataFrame:
    """Run, annotate the exported batch from the truth, ingest; ``rounds + 1`` times; then the last run.
    ``query``: export each batch once more through ``nnal query`` (nnU-Net's backend) before annotating it."""
    for r in range(rounds + 1):
        results = run_experiment(config, out, progress=False, **run)
        assert (out / "annotate" / f"round_{r:03d}" / "manifest.csv").is_file()
        if query:
            result = run_cli(["query", out])
            assert result.exit_code == 0 and f"round_{r:03d}" in result.stdout, result.output
        assert not (out / f"round_{r:03d}" / "checkpoint.pt").exists()  # stopped before training round r
        annotate_from_truth(out / "annotate" / f"round_{r:03d}", full)
        result = run_cli(["ingest", out])
        assert result.exit_code == 0, result.output
    results = run_experiment(config, out, progress=False, **run)
    assert not (out / "annotate" / f"round_{rounds + 1:03d}").exists()
    return results


@pytest.fixture
def toy(tmp_path) -> tuple[Path, Path]:
    full = make_nnunet_dataset(tmp_path / "full" / "Dataset001_Toy", n_cases=6)
    return full, hide_labels(full, tmp_path / "hidden" / "Dataset001_Toy", TOY_TEST_CASES)


def test_fake_human_loop_equals_the_simulated_oracle(toy, tmp_path, no_fsync):
    full, hidden = toy
    simulated = run_experiment(Config(dataset=str(full), **FAKE), tmp_path / "sim", progress=False,
                               backend_factory=fake_backend)
    human = human_rounds(Config(dataset=str(hidden), oracle="human", **FAKE), tmp_path / "human", full, 2,
                         backend_factory=fake_backend)
    assert selections(tmp_path / "human") == selections(tmp_path / "sim")
    pd.testing.assert_frame_equal(human.drop(columns="experiment"), simulated.drop(columns="experiment"))


def test_query_exports_the_batch_layout(toy, tmp_path, no_fsync):
    full, hidden = toy
    out = tmp_path / "human"
    config = Config(dataset=str(hidden), oracle="human", **FAKE)
    run_experiment(config, out, progress=False, backend_factory=fake_backend)
    annotate_from_truth(out / "annotate" / "round_000", full)
    assert run_cli(["ingest", out]).exit_code == 0
    run_experiment(config, out, progress=False, backend_factory=fake_backend)
    batch = out / "annotate" / "round_001"
    rows = pd.read_csv(batch / "manifest.csv", dtype={"case": str})
    assert list(rows.columns[:7]) == ["case", "axis", "slice", "world_axis", "world_mm", "score", "empty"]
    assert len(rows) == 4 and not rows["empty"].any() and rows["score"].notna().all()  # BALD's scores
    meta = json.loads((batch / "manifest.json").read_text())
    assert meta["round"] == 1 and meta["strategy"] == "bald"
    assert meta["labels"] == {"background": 0, "a": 1, "b": 2} and len(meta["slices"]) == 4
    assert "ITK-SNAP" in (batch / "README.md").read_text() and "nnal annotate" in (batch / "README.md").read_text()
    assert (batch / "masks").is_dir()
    for case, picked in rows.groupby("case"):
        image = nib.load(str(batch / "images" / f"{case}_0000.nii.gz"))
        assert (batch / "images" / f"{case}_0000.nii.gz").read_bytes() == \
            (hidden / "imagesTr" / f"{case}_0000.nii.gz").read_bytes()  # the raw image, untouched
        known = np.asarray(nib.load(str(batch / "labels" / f"{case}.nii.gz")).dataobj)
        preseg = nib.load(str(batch / "presegmentation" / f"{case}.nii.gz"))
        np.testing.assert_allclose(preseg.affine, image.affine)
        preseg = np.asarray(preseg.dataobj)
        listed = np.zeros(known.shape[0], dtype=bool)
        listed[picked["slice"].to_numpy()] = True
        np.testing.assert_array_equal(preseg[~listed], known[~listed])  # known labels kept elsewhere
        assert not known[listed].any()  # nothing known yet of the listed slices...
        assert preseg[listed].any()  # ...which the model filled in
        r0 = pd.read_csv(out / "annotate" / "round_000" / "manifest.csv", dtype={"case": str})
        for s in r0[r0["case"] == case]["slice"]:  # what round 0's person gave is what is known now
            np.testing.assert_array_equal(known[slab(0, s)], truth(full, case)[slab(0, s)])
        hidden_rows = ~listed
        hidden_rows[r0[r0["case"] == case]["slice"].to_numpy()] = False
        assert not known[hidden_rows].any()  # no hidden ground truth anywhere else


def test_status_and_run_say_what_waits(toy, tmp_path, no_fsync):
    full, hidden = toy
    out = tmp_path / "human"
    config = Config(dataset=str(hidden), oracle="human", **FAKE)
    run_experiment(config, out, progress=False, backend_factory=fake_backend)
    result = run_cli(["status", out])
    assert result.exit_code == 0, result.output
    assert "pending: round 0, 5 slices to annotate" in result.stdout
    assert "labeled slices: 0" in result.stdout and "last Dice: none" in result.stdout
    annotate_from_truth(out / "annotate" / "round_000", full)
    assert run_cli(["ingest", out]).exit_code == 0
    status = json.loads(run_cli(["status", out, "--json"]).stdout)
    assert status["pending"] is None and status["labeled_slices"] == 5
    assert set(status["labeled_slices_per_class"]) == {"a", "b"}
    assert status["seconds_per_round"]["0"]["annotation"] is not None
    run_experiment(config, out, progress=False, backend_factory=fake_backend)
    status = json.loads(run_cli(["status", out, "--json"]).stdout)
    assert status["pending"]["round"] == 1 and status["pending"]["slices"] == 4
    assert status["last_dice"]["round"] == 0 and status["last_dice"]["test_cases"] == 2
    assert "machine" in status["seconds_per_round"]["0"]


def test_labels_already_present_are_round_0(tmp_path, no_fsync):
    full = make_nnunet_dataset(tmp_path / "full" / "Dataset001_Toy", n_cases=6)
    hidden = hide_labels(full, tmp_path / "hidden" / "Dataset001_Toy", TOY_TEST_CASES | {"case_001"})
    out = tmp_path / "human"
    run_experiment(Config(dataset=str(hidden), oracle="human", **FAKE), out, progress=False,
                   backend_factory=fake_backend)
    pool = pd.read_csv(out / "pool.csv")
    r0 = pd.read_csv(out / "round_000" / "selection.csv")
    assert set(r0["case"]) == {"case_001"} and len(r0) == (pool["case"] == "case_001").sum()
    assert (out / "round_000" / "checkpoint.pt").is_file()  # trained without waiting for anyone
    assert (out / "annotate" / "round_001" / "manifest.csv").is_file()  # round 1 waits
    unknown = pool[pool["case"] != "case_001"]
    assert (unknown[["vox_1", "vox_2"]] == 0).all().all()  # no hidden foreground leaks into the pool's counts


def test_annotation_mode_refuses_a_shared_cache(toy, tmp_path):
    _, hidden = toy
    result = run_cli(["run", "--dataset", hidden, "--oracle", "human", "--output", tmp_path / "h", "--cache",
                      tmp_path / "shared", "--quiet"])
    assert result.exit_code == 2 and "leave --cache unset" in result.stderr


# --- real nnU-Net ---------------------------------------------------------------------------------------------

REAL = dict(strategy="bald", rounds=2, initial=20, budget=10, pool_cases=3, test_cases=2, batch_size=8,
            iterations_per_epoch=5, epochs_initial=2, epochs_per_round=2, mc_passes=3, score_batch_size=64,
            device="cpu")


@pytest.mark.slow
def test_real_nnunet_human_loop_equals_the_simulated_oracle(tmp_path):
    """Must-hold 1: two human-in-the-loop rounds after round 0, masks from the hidden truth: the selections and
    Dice of the simulated oracle with the same seed, and no hidden label in nnU-Net's preprocessed data."""
    full = make_mini_hippocampus(tmp_path / "full" / "Task04_Hippocampus", 10)
    simulated = run_experiment(Config(dataset=str(full), **REAL), tmp_path / "sim", cache=tmp_path / "cache",
                               progress=False)
    test_cases = set((tmp_path / "sim" / "test_cases.txt").read_text().split())
    hidden = hide_labels(full, tmp_path / "hidden" / "Task04_Hippocampus", test_cases)
    out = tmp_path / "human"
    human = human_rounds(Config(dataset=str(hidden), oracle="human", **REAL), out, full, 2, query=True)
    assert selections(out) == selections(tmp_path / "sim")
    pd.testing.assert_frame_equal(human.drop(columns="experiment"), simulated.drop(columns="experiment"))

    # nnU-Net's preprocessed segmentation holds labels on the annotated slices only
    from nnal.backend.inference import load_volume

    folder = next(out.glob("nnunet/*/preprocessed/*/nnUNetPlans_2d"))
    pool = pd.read_csv(out / "pool.csv", dtype={"case": str})
    labeled = pd.concat([pd.read_csv(p, dtype={"case": str}) for p in out.glob("round_*/selection.csv")])
    for case in sorted(set(pool["case"])):
        _, seg = load_volume(folder, case)
        unlabeled = np.setdiff1d(np.arange(seg.shape[0]), labeled[labeled["case"] == case]["slice"])
        assert not seg[unlabeled].any(), case
    # the model's presegmentation of round 2's slices lies on the image's grid and marks some foreground
    batch = out / "annotate" / "round_002"
    rows = pd.read_csv(batch / "manifest.csv", dtype={"case": str})
    predicted = [np.asarray(nib.load(str(batch / "presegmentation" / f"{c}.nii.gz")).dataobj) for c in rows["case"]]
    assert all(p.shape == nib.load(str(batch / "images" / f"{c}_0000.nii.gz")).shape
               for p, c in zip(predicted, rows["case"], strict=True))
    status = run_cli(["status", out])
    assert status.exit_code == 0 and "last Dice" in status.stdout and "pending: nothing" in status.stdout


@pytest.mark.slow
def test_real_nnunet_plans_and_trains_a_dataset_without_any_label(tmp_path):
    """No label anywhere (a lab's first scans): nnU-Net plans (its intensity statistics from the body), round 0's
    random slices are handed out, trained on once ingested, and round 1 waits; no test labels, no Dice."""
    full = make_mini_hippocampus(tmp_path / "full" / "Task04_Hippocampus", 6)
    hidden = hide_labels(full, tmp_path / "hidden" / "Task04_Hippocampus", set())
    out = tmp_path / "human"
    config = Config(dataset=str(hidden), oracle="human", **{**REAL, "rounds": 1, "pool_cases": 2, "initial": 10})
    run_experiment(config, out, progress=False)
    annotate_from_truth(out / "annotate" / "round_000", full)
    assert run_cli(["ingest", out]).exit_code == 0
    result = run_cli(["run", "--output", out, "--quiet"])  # the saved settings
    assert result.exit_code == 0, result.output
    assert "round 1: 10 slices" in result.stdout and "wait for annotation" in result.stdout
    assert (out / "round_000" / "checkpoint.pt").is_file() and not (out / "results.csv").read_text().split()[1:]
