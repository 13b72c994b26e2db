"""Dataset validation: each bad input gives a one-line error naming the file, exit code 2, nothing written."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_mini_hippocampus, make_nnunet_dataset, run_cli, write_nifti

from nnal.dataset import DatasetError, fingerprint, fingerprint_changes, load_dataset, validate


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


def _edit_meta(ds: Path, key: str, value) -> Path:
    meta = json.loads((ds / "dataset.json").read_text())
    meta[key] = value
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds / "dataset.json"


def _rewrite_label(path: Path, affine: np.ndarray | None = None, data: np.ndarray | None = None) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(path))


def _case_listed_twice(ds: Path) -> tuple[Path, str]:
    nib.save(nib.load(str(_case_label(ds))), str(ds / "labelsTr" / "case_001.nii"))
    return ds / "labelsTr", "case 'case_001' has 2 label files (case_001.nii, case_001.nii.gz); keep exactly one"


def _label_with_other_ending(ds: Path) -> tuple[Path, str]:
    nib.save(nib.load(str(_case_label(ds))), str(ds / "labelsTr" / "case_001.nii"))
    _case_label(ds).unlink()
    return ds / "labelsTr" / "case_001.nii", "file ending differs from dataset.json's file_ending '.nii.gz'"


def _label_origin_half_voxel_off(ds: Path) -> tuple[Path, str]:
    affine = np.eye(4)
    affine[0, 3] = 0.5
    _rewrite_label(_case_label(ds), affine)
    return _case_label(ds), f"origin (0.5, 0.0, 0.0) mm differs from image {_case_image(ds)} (0.0, 0.0, 0.0) mm"


def _label_direction_flipped(ds: Path) -> tuple[Path, str]:
    _rewrite_label(_case_label(ds), np.diag([-1.0, 1.0, 1.0, 1.0]))
    return _case_label(ds), f"direction (rotation of the affine) ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), " \
                            f"(0.0, 0.0, 1.0)) differs from image {_case_image(ds)}"


def _label_spacing_one_percent_off(ds: Path) -> tuple[Path, str]:
    _rewrite_label(_case_label(ds), np.diag([1.01, 1.0, 1.0, 1.0]))
    return _case_label(ds), f"spacing (1.01, 1.0, 1.0) differs from image {_case_image(ds)} (1.0, 1.0, 1.0)"


def _fractional_label_value(ds: Path) -> tuple[Path, str]:
    meta = _edit_meta(ds, "labels", {"background": 0, "a": 1, "b": 1.5})
    return meta, "label 'b' has value 1.5, not a whole number; 'labels' must map label names to integer values"


def _fractional_label_string(ds: Path) -> tuple[Path, str]:
    return _edit_meta(ds, "labels", {"background": 0, "a": 1, "b": "1.5"}), "label 'b' has value \"1.5\", not a whole"


def _boolean_label_value(ds: Path) -> tuple[Path, str]:
    return _edit_meta(ds, "labels", {"background": 0, "a": True, "b": 2}), "label 'a' has value true, not a whole"


def _region_label(ds: Path) -> tuple[Path, str]:
    meta = _edit_meta(ds, "labels", {"background": 0, "a": 1, "b": 2, "ab": [1, 2]})
    return meta, "label 'ab' is region-based ([1, 2]), which nnal does not support"


def _labels_not_a_mapping(ds: Path) -> tuple[Path, str]:
    meta = _edit_meta(ds, "labels", ["background", "a", "b"])
    return meta, "'labels' is an array instead of an object; it must map label names to integer values 0, 1, " \
                 "..., e.g. {\"background\": 0"


def _empty_label_name(ds: Path) -> tuple[Path, str]:
    return _edit_meta(ds, "labels", {"background": 0, "a": 1, "": 2}), 'label name "" is not a non-empty string'


def _label_value_twice(ds: Path) -> tuple[Path, str]:
    meta = _edit_meta(ds, "labels", {"background": 0, "a": 1, "b": 1})
    return meta, "labels must be consecutive integers from 0, each used once, got [0, 1, 1]"


def _no_background_label(ds: Path) -> tuple[Path, str]:
    return _edit_meta(ds, "labels", {"bg": 0, "a": 1, "b": 2}), "label 0 must be named 'background'"


def _channel_names_not_from_0(ds: Path) -> tuple[Path, str]:
    meta = _edit_meta(ds, "channel_names", {"1": "MRI"})
    return meta, '\'channel_names\' has keys ["1"], not consecutive from "0"; it must map channel indices "0", "1", ' \
                 '... to names, e.g. {"0": "MRI"}'


def _channel_names_a_list(ds: Path) -> tuple[Path, str]:
    meta = _edit_meta(ds, "channel_names", ["MRI"])
    return meta, "'channel_names' is an array instead of an object; it must map channel indices"


def _channel_name_empty(ds: Path) -> tuple[Path, str]:
    return _edit_meta(ds, "channel_names", {"0": ""}), "'channel_names' names channel 0 \"\", not a non-empty string"


def _duplicate_json_key(ds: Path) -> tuple[Path, str]:
    meta = ds / "dataset.json"
    meta.write_text(meta.read_text().replace('"b": 2', '"b": 2, "a": 2'))
    return meta, "key 'a' appears twice in one JSON object"


def _no_foreground(ds: Path) -> tuple[Path, str]:
    for label in (ds / "labelsTr").iterdir():
        _rewrite_label(label, data=np.zeros((8, 10, 12), np.uint8))
    return ds / "labelsTr", "no foreground voxel in any of the 3 label files"


NEW_BAD = [_case_listed_twice, _label_with_other_ending, _label_origin_half_voxel_off, _label_direction_flipped,
           _label_spacing_one_percent_off, _fractional_label_value, _fractional_label_string, _boolean_label_value,
           _region_label, _labels_not_a_mapping, _empty_label_name, _label_value_twice, _no_background_label,
           _channel_names_not_from_0, _channel_names_a_list, _channel_name_empty, _duplicate_json_key,
           _no_foreground]

BAD = [_missing_image, _unreadable_label, _truncated_image, _shape_mismatch, _spacing_mismatch, _undeclared_label,
       _non_consecutive_labels, _nan_intensity, _inf_intensity, _empty_dataset, _bad_json, _missing_json, *NEW_BAD]


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
    seg = np.zeros((6, 7, 8), np.uint8)
    seg[2, 3, 4] = 1  # a dataset without any foreground is refused
    write_nifti(root / "labelsTr" / "m_001.nii.gz", seg)
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


def _msd_case_listed_twice(ds: Path) -> tuple[Path, str]:
    meta = json.loads((ds / "dataset.json").read_text())
    return _edit_meta(ds, "training", [*meta["training"], meta["training"][0]]), \
        "training[0] and training[3] are both case 'hippocampus_001' (label ./labelsTr/hippocampus_001.nii.gz); " \
        "list each case once"


def _msd_image_used_twice(ds: Path) -> tuple[Path, str]:
    training = json.loads((ds / "dataset.json").read_text())["training"]
    training[2]["image"] = "imagesTr/hippocampus_001.nii.gz"  # the same file as training[0]'s, written otherwise
    return _edit_meta(ds, "training", training), \
        "training[0] and training[2] use the same image imagesTr/hippocampus_001.nii.gz; each case needs its own"


def _msd_training_entry_without_paths(ds: Path) -> tuple[Path, str]:
    training = json.loads((ds / "dataset.json").read_text())["training"]
    training[1]["image"] = 3
    return _edit_meta(ds, "training", training), "training[1] must give 'image' and 'label' paths, e.g. {\"image\": "


def _msd_modality_not_from_0(ds: Path) -> tuple[Path, str]:
    return _edit_meta(ds, "modality", {"0": "T1", "2": "T2"}), \
        '\'modality\' has keys ["0", "2"], not consecutive from "0"; it must map channel indices "0", "1", ...'


def _msd_label_name_not_a_string(ds: Path) -> tuple[Path, str]:
    return _edit_meta(ds, "labels", {"0": "background", "1": 1, "2": "Posterior"}), \
        "label name 1 is not a non-empty string; 'labels' must map label values \"0\", \"1\", ... to names, e.g. " \
        "{\"0\": \"background\", \"1\": \"tumour\"}"


def _msd_fractional_label_value(ds: Path) -> tuple[Path, str]:
    return _edit_meta(ds, "labels", {"0": "background", "1.5": "Anterior", "2": "Posterior"}), \
        "label 'Anterior' has value \"1.5\", not a whole number"


def _msd_label_name_twice(ds: Path) -> tuple[Path, str]:
    return _edit_meta(ds, "labels", {"0": "background", "1": "Anterior", "2": "Anterior"}), \
        "label name 'Anterior' is given to values 1 and 2; each label needs its own name"


def _msd_no_foreground(ds: Path) -> tuple[Path, str]:
    for label in (ds / "labelsTr").iterdir():
        _rewrite_label(label, data=np.zeros(nib.load(str(label)).shape, np.uint8))
    return ds / "labelsTr", "no foreground voxel in any of the 3 label files"


MSD_BAD = [_msd_case_listed_twice, _msd_image_used_twice, _msd_training_entry_without_paths, _msd_modality_not_from_0,
           _msd_label_name_not_a_string, _msd_fractional_label_value, _msd_label_name_twice, _msd_no_foreground]


@pytest.mark.parametrize("corrupt", MSD_BAD, ids=lambda f: f.__name__.strip("_"))
def test_bad_msd_dataset_gives_one_line_error_exit_2_and_writes_nothing(tmp_path, corrupt):
    ds = make_mini_hippocampus(tmp_path / "Task04_Hippocampus", 3)
    bad_file, problem = corrupt(ds)
    out = tmp_path / "experiment"
    result = _run_cli(ds, out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(bad_file) in lines[0] and problem in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_geometry_within_tolerance_and_whole_number_labels_are_accepted(tmp_path):
    """float32 round-off in a label's header is no mismatch; 2.0 and "2" are whole-number label values."""
    ds = make_nnunet_dataset(tmp_path / "ds")
    angle = 1e-6  # radians, far below DIRECTION_ATOL
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    affine[:3, :3] *= 1 + 1e-5  # spacing, relative
    affine[:3, 3] = [1e-5, -1e-5, 0.0]  # origin, mm
    _rewrite_label(_case_label(ds), affine)
    _edit_meta(ds, "labels", {"background": 0, "a": 1.0, "b": "2"})
    dataset = load_dataset(ds)
    validate(dataset)
    assert dataset.labels == {"background": 0, "a": 1, "b": 2}


def test_a_small_rotation_is_a_direction_mismatch(tmp_path):
    ds = make_nnunet_dataset(tmp_path / "ds")
    angle = np.deg2rad(1.0)
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    _rewrite_label(_case_label(ds), affine)
    with pytest.raises(DatasetError, match="direction"):
        validate(load_dataset(ds))


def test_channel_names_in_any_order_are_sorted(tmp_path):
    ds = make_nnunet_dataset(tmp_path / "ds")
    for i in range(3):
        write_nifti(ds / "imagesTr" / f"case_{i:03d}_0001.nii.gz", np.zeros((8, 10, 12), np.float32))
    _edit_meta(ds, "channel_names", {"1": "T2", "0": "T1"})
    dataset = load_dataset(ds)
    validate(dataset)
    assert list(dataset.channel_names.items()) == [("0", "T1"), ("1", "T2")]


# --- fingerprint ---------------------------------------------------------------------------------------------------


def _fingerprint(ds: Path) -> dict:
    return fingerprint(load_dataset(ds))


def test_fingerprint_is_json_and_ignores_times_and_json_formatting(tmp_path):
    ds = make_nnunet_dataset(tmp_path / "ds")
    before = _fingerprint(ds)
    assert json.loads(json.dumps(before)) == before
    assert before["cases"] == ["case_000", "case_001", "case_002"]
    assert sorted(before["files"]) == sorted([f"imagesTr/case_{i:03d}_0000.nii.gz" for i in range(3)]
                                             + [f"labelsTr/case_{i:03d}.nii.gz" for i in range(3)])
    assert before["files"]["labelsTr/case_001.nii.gz"]["size"] == _case_label(ds).stat().st_size
    for path in [*ds.rglob("*.nii.gz"), ds / "dataset.json"]:
        os.utime(path, (1e9, 1e9))  # touch: times only
    meta = ds / "dataset.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()), indent=4))  # same content, other formatting
    assert fingerprint_changes(before, _fingerprint(ds)) == []


def test_fingerprint_reports_modified_voxels_and_dataset_json(tmp_path):
    ds = make_nnunet_dataset(tmp_path / "ds")
    before = _fingerprint(ds)
    seg = np.asanyarray(nib.load(str(_case_label(ds))).dataobj).copy()
    seg[4, 5, 6] = (seg[4, 5, 6] + 1) % 3  # same shape, dtype and (most likely) size
    _rewrite_label(_case_label(ds), data=seg)
    assert fingerprint_changes(before, _fingerprint(ds)) == ["file modified: labelsTr/case_001.nii.gz"]
    _edit_meta(ds, "labels", {"background": 0, "a": 1, "renamed": 2})
    assert fingerprint_changes(before, _fingerprint(ds)) == ["file modified: labelsTr/case_001.nii.gz",
                                                             "dataset.json modified"]


def test_fingerprint_reports_added_and_removed_cases(tmp_path):
    ds = make_nnunet_dataset(tmp_path / "ds")
    before = _fingerprint(ds)
    write_nifti(ds / "imagesTr" / "case_007_0000.nii.gz", np.ones((8, 10, 12), np.float32))
    write_nifti(ds / "labelsTr" / "case_007.nii.gz", np.ones((8, 10, 12), np.uint8))
    _case_label(ds, 2).unlink()
    _case_image(ds, 2).unlink()
    assert fingerprint_changes(before, _fingerprint(ds)) == ["cases added: case_007", "cases removed: case_002"]


def test_fingerprint_catches_a_change_in_the_middle_of_a_big_file(tmp_path):
    """Only the first and last MiB of a .nii.gz are read: the gzip trailer's CRC-32 still shows a change in the
    middle (same gzip header, same first MiB). An uncompressed .nii is hashed whole."""
    ds = make_nnunet_dataset(tmp_path / "ds", n_cases=1, shape=(8, 10, 12))
    image = _case_image(ds, 0)
    rng = np.random.default_rng(1)
    write_nifti(image, rng.normal(size=(100, 100, 100)).astype(np.float32), spacing=(1.0, 1.0, 1.0))
    raw = bytearray(gzip.decompress(image.read_bytes()))
    _rewrite_label(_case_label(ds, 0), data=rng.integers(0, 3, size=(100, 100, 100)).astype(np.uint8))
    image.write_bytes(gzip.compress(bytes(raw), compresslevel=1, mtime=0))
    before = _fingerprint(ds)
    raw[len(raw) // 2] ^= 0xFF
    changed = gzip.compress(bytes(raw), compresslevel=1, mtime=0)
    assert len(changed) > 3 << 20  # the change lies between the first and the last MiB
    image_before = image.read_bytes()
    assert changed[: 1 << 20] == image_before[: 1 << 20]
    image.write_bytes(changed)
    assert fingerprint_changes(before, _fingerprint(ds)) == ["file modified: imagesTr/case_000_0000.nii.gz"]

    plain = tmp_path / "plain.nii"
    plain.write_bytes(bytes(raw))
    from nnal.dataset import file_digest

    digest = file_digest(plain)
    raw[len(raw) // 2] ^= 0xFF
    plain.write_bytes(bytes(raw))
    assert file_digest(plain) != digest


def test_fingerprint_of_msd_dataset_uses_paths_relative_to_the_root(mini_hippocampus):
    files = fingerprint(load_dataset(mini_hippocampus))["files"]
    assert len(files) == 40
    assert all(rel.startswith(("imagesTr/hippocampus_", "labelsTr/hippocampus_")) for rel in files)


def test_fingerprint_changes_lists_single_files_and_shortens_long_case_lists():
    def fp(cases, files, meta="m"):
        return {"format": 1, "dataset_json": meta, "cases": cases,
                "files": {rel: {"case": case, "size": 1, "sha256": "x"} for rel, case in files.items()}}

    old = fp(["a"], {"imagesTr/a_0000.nii.gz": "a", "labelsTr/a.nii.gz": "a"})
    new = fp(["a"], {"imagesTr/a_0001.nii.gz": "a", "labelsTr/a.nii.gz": "a"})
    assert fingerprint_changes(old, new) == ["file removed: imagesTr/a_0000.nii.gz",
                                             "file added: imagesTr/a_0001.nii.gz"]
    many = fp(["a", *(f"c{i:02d}" for i in range(12))], {"labelsTr/a.nii.gz": "a"})
    assert fingerprint_changes(fp(["a"], {"labelsTr/a.nii.gz": "a"}), many) == [
        "cases added: c00, c01, c02, c03, c04, c05, c06, c07, c08, c09 and 2 more"]
