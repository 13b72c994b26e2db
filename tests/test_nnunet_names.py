"""nnU-Net's conventions: a dataset named as nnU-Net's commands take it (DatasetNNN_Name, or its id, in
$nnUNet_raw), the user's nnUNet_* folders and variables left alone, the dataset's id kept, and a user's own
splits_final.json and plans used."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import HIPPOCAMPUS, assert_one_line_error, run_cli

from nnal.backend.fake import fake_backend
from nnal.config import build
from nnal.dataset import load_dataset, locate_dataset
from nnal.errors import DatasetError
from nnal.loop import run_experiment

TINY = ["--rounds", "0", "--initial", "10", "--preset", "cpu", "--device", "cpu", "--quiet"]


def nnunet_raw_hippocampus(raw: Path, n_cases: int = 8) -> Path:
    """The first cases of the bundled MSD copy laid out as nnU-Net v2's raw Dataset004_Hippocampus."""
    target = raw / "Dataset004_Hippocampus"
    meta = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    for entry in meta["training"][:n_cases]:
        case = Path(entry["label"]).name[: -len(".nii.gz")]
        for folder, source, name in (("imagesTr", entry["image"], f"{case}_0000.nii.gz"),
                                     ("labelsTr", entry["label"], f"{case}.nii.gz")):
            (target / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(HIPPOCAMPUS / source, target / folder / name)
    (target / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return target


@pytest.fixture
def user_nnunet(tmp_path, monkeypatch) -> dict[str, Path]:
    """A user's nnU-Net set-up: the three folders (with a file of theirs in each) and the variables pointing there."""
    folders = {name: tmp_path / "user" / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, folder in folders.items():
        folder.mkdir(parents=True)
        (folder / "theirs.txt").write_text(name)
        monkeypatch.setenv(name, str(folder))
    nnunet_raw_hippocampus(folders["nnUNet_raw"])
    return folders


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_a_dataset_name_or_id_is_looked_up_in_nnunet_raw(user_nnunet):
    expected = user_nnunet["nnUNet_raw"] / "Dataset004_Hippocampus"
    assert locate_dataset("Dataset004_Hippocampus") == expected.resolve()
    assert locate_dataset("4") == locate_dataset("004") == expected.resolve()
    with pytest.raises(DatasetError, match="7: no dataset named so in nnUNet_raw"):
        locate_dataset("7")


def test_without_nnunet_raw_a_name_is_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.chdir(tmp_path)
    result = run_cli(["run", "--dataset", "Dataset004_Hippocampus", "--output", tmp_path / "exp", *TINY])
    assert_one_line_error(result, ["Dataset004_Hippocampus", "nnUNet_raw is not set"])
    assert not (tmp_path / "exp").exists()


def test_an_unknown_id_is_one_line_and_writes_nothing(user_nnunet, tmp_path):
    result = run_cli(["run", "--dataset", "12", "--output", tmp_path / "exp", *TINY])
    assert_one_line_error(result, ["12", "no dataset", "nnUNet_raw"])
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
def test_run_by_dataset_name_keeps_its_id_and_leaves_the_users_nnunet_alone(user_nnunet, tmp_path):
    schedule = tmp_path / "schedule.yaml"  # a few iterations: what is checked is where files go, not the model
    schedule.write_text(yaml.safe_dump({"batch_size": 4, "iterations_per_epoch": 2, "epochs_initial": 1}))
    before = {name: snapshot(folder) for name, folder in user_nnunet.items()}
    result = run_cli(["run", "--dataset", "Dataset004_Hippocampus", "--output", tmp_path / "exp", *TINY,
                      "--config", schedule])
    assert result.exit_code == 0, result.output
    assert {name: snapshot(folder) for name, folder in user_nnunet.items()} == before
    assert {name: os.environ[name] for name in user_nnunet} == {n: str(f) for n, f in user_nnunet.items()}
    config = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert config["dataset"] == str((user_nnunet["nnUNet_raw"] / "Dataset004_Hippocampus").resolve())
    root = Path(json.loads((tmp_path / "exp" / "environment.json").read_text())["nnunet_root"])
    assert [p.name for p in (root / "preprocessed").iterdir()] == ["Dataset004_Hippocampus"]  # the id kept
    assert len(pd.read_csv(tmp_path / "exp" / "results.csv")) > 0


def test_an_msd_task_keeps_its_number():
    from nnal.backend.planning import dataset_folder_name

    assert dataset_folder_name(load_dataset(HIPPOCAMPUS)) == "Dataset004_Hippocampus"


def test_a_users_split_file_decides_pool_and_test_cases(tmp_path, toy_dataset, no_fsync):
    names = sorted(c.name for c in load_dataset(toy_dataset).cases)
    split = [{"train": names[2:], "val": names[:2]}, {"train": names[:4], "val": names[4:]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(split))
    config = build({"dataset": str(toy_dataset), "splits": str(tmp_path / "splits_final.json"), "fold": 1,
                    "rounds": 1, "initial": 3, "budget": 2, "iterations_per_epoch": 1, "epochs_initial": 1,
                    "epochs_per_round": 1, "mc_passes": 2, "device": "cpu"})
    run_experiment(config, tmp_path / "exp", progress=False, backend_factory=fake_backend)
    assert (tmp_path / "exp" / "test_cases.txt").read_text().split() == names[4:]
    assert sorted(set(pd.read_csv(tmp_path / "exp" / "pool.csv")["case"])) == names[:4]


@pytest.mark.parametrize("content, words", [
    ("not json", ["splits_final.json", "cannot read"]),
    ('[{"train": ["case_000"], "val": ["case_000"]}]', ["splits_final.json", "both train and val"]),
    ('[{"train": ["case_001"], "val": ["case_000"]}]', ["fold: 2", "1 fold"]),
])
def test_a_bad_split_file_is_one_line_before_any_work(content, words, tmp_path, toy_dataset):
    (tmp_path / "splits_final.json").write_text(content)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"dataset": str(toy_dataset), "splits": "splits_final.json", "fold": 2}))
    result = run_cli(["run", "--config", config, "--output", tmp_path / "exp", "--quiet"])
    assert_one_line_error(result, words)
    assert not (tmp_path / "exp").exists()


def test_bad_plans_are_one_line_before_any_work(tmp_path, toy_dataset):
    (tmp_path / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"dataset": str(toy_dataset), "plans": "plans.json"}))
    result = run_cli(["run", "--config", config, "--output", tmp_path / "exp", "--quiet"])
    assert_one_line_error(result, ["plans.json", "2d configuration"])
    assert not (tmp_path / "exp").exists()
