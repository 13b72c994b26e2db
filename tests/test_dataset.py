"""Dataset validation: each bad input gives a one-line error naming the file, exit code 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_nnunet_dataset, run_cli, write_nifti

from nnal.dataset import DatasetError, load_dataset, validate


def _run_cli(dataset: Path, output: Path):
    return run_cli(["run", "--dataset", str(dataset), "--output", str(output), "--quiet"])


def _case_label(ds: Path, i: int = 1) -> Path:
    return ds / "labelsTr" / f"case_{i:03d}.nii.gz"


def _case_image(ds: Path, i: int = 1) -> Path:
    return ds / "imagesTr" / f"case_{i:03d}_0000.nii.gz"


def _missing_image(ds: Path) -> tuple[Path, str]:
    _case_image(ds).unlink()
    return _case_image(ds), "missing file"


def _unreadable_label(ds: Path) -> tuple[Path, str]:
    _case_label(ds).write_bytes(b"\x1f\x8b this is not a nifti")
    return _case_label(ds), "unreadable"


def _truncated_image(ds: Path) -> tuple[Path, str]:
    data = _case_image(ds).read_bytes()
    _case_image(ds).write_bytes(data[: len(data) // 2])
    return _case_image(ds), "unreadable"


def _shape_mismatch(ds: Path) -> tuple[Path, str]:
    write_nifti(_case_image(ds), np.zeros((8, 10, 11), np.float32))
    return _case_image(ds), "does not match label shape"


def _spacing_mismatch(ds: Path) -> tuple[Path, str]:
    write_nifti(_case_image(ds), np.zeros((8, 10, 12), np.float32), spacing=(1.0, 1.0, 2.5))
    return _case_image(ds), "spacing"


def _undeclared_label(ds: Path) -> tuple[Path, str]:
    seg = np.zeros((8, 10, 12), np.uint8)
    seg[0, 0, 0] = 7
    write_nifti(_case_label(ds), seg)
    return _case_label(ds), "not declared"


def _non_consecutive_labels(ds: Path) -> tuple[Path, str]:
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "a": 1, "b": 3}
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds / "dataset.json", "consecutive"


def _nan_intensity(ds: Path) -> tuple[Path, str]:
    img = np.zeros((8, 10, 12), np.float32)
    img[1, 2, 3] = np.nan
    write_nifti(_case_image(ds), img)
    return _case_image(ds), "NaN or inf"


def _inf_intensity(ds: Path) -> tuple[Path, str]:
    img = np.zeros((8, 10, 12), np.float32)
    img[1, 2, 3] = np.inf
    write_nifti(_case_image(ds), img)
    return _case_image(ds), "NaN or inf"


def _empty_dataset(ds: Path) -> tuple[Path, str]:
    for f in (ds / "labelsTr").iterdir():
        f.unlink()
    return ds / "labelsTr", "empty dataset"


def _bad_json(ds: Path) -> tuple[Path, str]:
    (ds / "dataset.json").write_text("{not json")
    return ds / "dataset.json", "unreadable JSON"


def _missing_json(ds: Path) -> tuple[Path, str]:
    (ds / "dataset.json").unlink()
    return ds / "dataset.json", "missing"


BAD = [_missing_image, _unreadable_label, _truncated_image, _shape_mismatch, _spacing_mismatch, _undeclared_label,
       _non_consecutive_labels, _nan_intensity, _inf_intensity, _empty_dataset, _bad_json, _missing_json]


@pytest.mark.parametrize("corrupt", BAD, ids=lambda f: f.__name__.strip("_"))
def test_bad_dataset_gives_one_line_error_exit_2_and_writes_nothing(tmp_path, corrupt):
    ds = make_nnunet_dataset(tmp_path / "ds")
    bad_file, problem = corrupt(ds)
    out = tmp_path / "experiment"
    result = _run_cli(ds, out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(bad_file) in lines[0] and problem in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_bad_dataset_leaves_existing_experiment_untouched(tmp_path):
    ds = make_nnunet_dataset(tmp_path / "ds")
    out = tmp_path / "experiment"
    out.mkdir()
    (out / "config.yaml").write_text(f"dataset: {ds.resolve()}\nstrategy: random\n")
    before = {p: p.read_bytes() for p in out.iterdir()}
    _nan_intensity(ds)
    result = _run_cli(ds, out)
    assert result.exit_code == 2
    assert {p: p.read_bytes() for p in out.iterdir()} == before


def test_real_process_exit_code_and_no_traceback(tmp_path):
    ds = make_nnunet_dataset(tmp_path / "ds")
    _undeclared_label(ds)
    proc = subprocess.run([sys.executable, "-m", "nnal.cli", "run", "--dataset", str(ds), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not declared" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_valid_nnunet_dataset_loads(nnunet_dataset):
    ds = load_dataset(nnunet_dataset)
    validate(ds)
    assert [c.name for c in ds.cases] == ["case_000", "case_001", "case_002"]
    assert ds.labels == {"background": 0, "a": 1, "b": 2}
    assert not ds.is_msd


def test_msd_dataset_loads_and_converts(mini_hippocampus, tmp_path):
    from nnal.dataset import write_nnunet_raw

    ds = load_dataset(mini_hippocampus)
    assert ds.is_msd and ds.labels == {"background": 0, "Anterior": 1, "Posterior": 2}
    validate(ds)
    out = write_nnunet_raw(ds, tmp_path / "raw")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"} and meta["numTraining"] == 20
    assert len(list((out / "imagesTr").iterdir())) == 20
    assert (out / "imagesTr" / f"{ds.cases[0].name}_0000.nii.gz").exists()


def test_msd_multichannel_is_split(tmp_path):
    root = tmp_path / "Task99_Multi"
    img = np.random.default_rng(0).normal(size=(6, 7, 8, 2)).astype(np.float32)
    write_nifti(root / "imagesTr" / "m_001.nii.gz", img)
    write_nifti(root / "labelsTr" / "m_001.nii.gz", np.zeros((6, 7, 8), np.uint8))
    meta = {"modality": {"0": "T1", "1": "T2"}, "labels": {"0": "background", "1": "x"},
            "training": [{"image": "./imagesTr/m_001.nii.gz", "label": "./labelsTr/m_001.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    from nnal.dataset import write_nnunet_raw

    ds = load_dataset(root)
    validate(ds)
    out = write_nnunet_raw(ds, tmp_path / "raw")
    import nibabel as nib

    c1 = np.asanyarray(nib.load(str(out / "imagesTr" / "m_001_0001.nii.gz")).dataobj)
    np.testing.assert_allclose(c1, img[..., 1])


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)
