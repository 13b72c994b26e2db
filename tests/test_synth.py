"""`nnal synth`: synthetic CT-like nnU-Net raw datasets (liver with lesions, spleen) that nnal's own checks and
nnU-Net's planner accept, CT-like in their values, deterministic per seed, refusing bad options up front."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from nnal.dataset import load_dataset, validate
from nnal.synth import synthesize
from nnal.synth.render import Blob, CaseFields, SliceGrid, paint_slice

SMALL = ["--size", "64", "--slices", "12", "20"]
_X, _Y = np.meshgrid((np.arange(64) - 31.5) / 32, (np.arange(64) - 31.5) / 32, indexing="ij")  # NIfTI's (x, y)
AIR = (np.abs(_Y) > 0.85) & (_X**2 + _Y**2 < 0.97)  # no body reaches there (its semi-axis front-back is < 0.8)


def _synth(output: Path, kind: str, cases: int, *extra: object) -> Path:
    result = run_cli(["synth", "--kind", kind, "--cases", cases, "--output", output, *SMALL, *extra])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.split("synthetic dataset: ")[1].split(" (")[0])


@pytest.fixture(scope="module")
def liver(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory.mktemp("synth"), "liver", 5)


@pytest.fixture(scope="module")
def spleen(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory.mktemp("synth") / "Dataset950_MySpleen", "spleen", 3)


def _volumes(dataset: Path) -> list[tuple[nib.Nifti1Image, np.ndarray, nib.Nifti1Image, np.ndarray]]:
    found = []
    for case in load_dataset(dataset).cases:
        image, label = nib.load(str(case.images[0])), nib.load(str(case.label))
        found.append((image, np.asanyarray(image.dataobj), label, np.asanyarray(label.dataobj)))
    return found


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_datasets_pass_nnals_checks_and_say_they_are_synthetic(liver, spleen):
    assert liver.name == "Dataset901_SyntheticLiver" and spleen.name == "Dataset950_MySpleen"
    for folder, name, labels, cases in ((liver, "SyntheticLiver", {"background": 0, "liver": 1, "cancer": 2}, 5),
                                        (spleen, "SyntheticSpleen", {"background": 0, "spleen": 1}, 3)):
        dataset = load_dataset(folder)
        validate(dataset)
        meta = json.loads((folder / "dataset.json").read_text())
        assert (meta["name"], meta["channel_names"], meta["labels"]) == (name, {"0": "CT"}, labels)
        assert (meta["numTraining"], meta["file_ending"], len(dataset.cases)) == (cases, ".nii.gz", cases)
        assert "synthetic" in meta["description"] and "not patient data" in meta["description"]
        assert "synthetic" in (folder / "README.md").read_text()


def test_image_and_label_share_a_scanner_like_geometry(liver):
    spacings = set()
    for image, voxels, label, labels in _volumes(liver):
        assert voxels.shape == labels.shape and voxels.shape[:2] == (64, 64) and 12 <= voxels.shape[2] <= 20
        assert np.array_equal(image.affine, label.affine)
        assert (voxels.dtype, labels.dtype) == (np.int16, np.uint8)
        dx, dy, dz = image.header.get_zooms()
        assert dx == dy and 0.6 <= dx <= 1.0 and 1.0 <= dz <= 5.0
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # axial slices as a DICOM series has them
        assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
        spacings.add((float(dx), float(dz)))
    assert len(spacings) > 1  # spacing varies per case


def test_labels_are_as_declared_with_empty_slices_and_some_liver_lesions(liver, spleen):
    lesion_cases = 0
    for dataset, allowed in ((liver, {0, 1, 2}), (spleen, {0, 1})):
        for *_, labels in _volumes(dataset):
            assert set(np.unique(labels).tolist()) <= allowed and (labels == 1).any()
            foreground_slices = (labels > 0).any(axis=(0, 1))
            assert foreground_slices.any() and not foreground_slices.all()  # organ on a subset of slices
            if dataset == liver:
                lesion_cases += bool((labels == 2).any())
    assert lesion_cases >= 1


def test_intensities_are_ct_like(liver, spleen):
    # the organ's median: its HU (liver 55-65, spleen 45-55), lowered at a small organ's edges by the blur
    for dataset, organ_hu in ((liver, (50, 68)), (spleen, (36, 60))):
        for _, voxels, _, labels in _volumes(dataset):
            assert voxels.min() >= -1024 and voxels.max() <= 3071
            assert voxels[0, 0, 0] == -1024  # outside the scanner's reconstruction circle
            assert organ_hu[0] <= np.median(voxels[labels == 1]) <= organ_hu[1]
            air = voxels[AIR]  # in front of and behind the body, inside the reconstruction circle
            assert -1010 <= air.mean() <= -990 and 8 <= air.std() <= 22  # scanner noise, sigma 10-20 HU
            assert (voxels > 400).sum() > 10  # bone: spine and ribs
            assert ((voxels > -130) & (voxels < -70)).mean() > 0.02  # fat
            if (labels == 2).sum() > 20:
                assert 15 <= np.median(voxels[labels == 2]) <= 45  # hypodense lesions (20-40)


def test_the_same_seed_writes_identical_files_and_another_seed_others(tmp_path):
    first = _synth(tmp_path / "a", "liver", 2, "--seed", "7")
    more = _synth(tmp_path / "b", "liver", 3, "--seed", "7")
    other = _synth(tmp_path / "c", "liver", 2, "--seed", "8")
    sums, more_sums, other_sums = _checksums(first), _checksums(more), _checksums(other)
    cases = [name for name in sums if name.endswith(".nii.gz")]
    assert len(cases) == 4
    assert all(more_sums[name] == sums[name] for name in cases)  # a case depends on the seed and its index only
    assert all(other_sums[name] != sums[name] for name in cases)
    again = _synth(tmp_path / "d", "liver", 2, "--seed", "7")
    assert _checksums(again) == sums


@pytest.mark.parametrize(("args", "words"), [
    (["--kind", "kidney"], ["--kind", "kidney", "liver, spleen"]),
    (["--kind", "liver", "--cases", "0"], ["--cases", "got 0"]),
    (["--kind", "liver", "--cases", "two"], ["--cases", "integer"]),
    (["--kind", "liver", "--size", "16"], ["--size", "got 16"]),
    (["--kind", "liver", "--slices", "30", "20"], ["--slices", "got 30 20"]),
    (["--kind", "liver", "--slices", "4", "10"], ["--slices", "got 4 10"]),
    (["--kind", "liver", "--seed", "-1"], ["--seed", "got -1"]),
    (["--kind", "liver", "--output-dir", "x"], ["--output-dir"]),
    (["--cases", "1"], ["--kind"]),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, args, words):
    result = run_cli(["synth", "--output", tmp_path / "out", *args])
    assert_one_line_error(result, words)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_refused_unless_empty(tmp_path):
    taken = tmp_path / "Dataset901_SyntheticLiver"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    for output in (tmp_path, taken):
        assert_one_line_error(run_cli(["synth", "--kind", "liver", "--output", output]),
                              ["--output", str(taken), "not empty"])
    (tmp_path / "file").write_text("keep")
    assert_one_line_error(run_cli(["synth", "--kind", "liver", "--output", tmp_path / "file" / "Dataset903_X"]),
                          ["--output", "not a folder"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["Dataset901_SyntheticLiver", "file", "mine.txt"]
    empty = tmp_path / "Dataset904_Empty"
    empty.mkdir()
    assert synthesize(kind="spleen", output=empty, cases=1, size=32, slices=(8, 8)) == empty
    assert len(list((empty / "imagesTr").iterdir())) == 1
    assert not list(tmp_path.glob(".*partial"))  # the work folder became the dataset


def test_painting_order_keeps_lesions_in_their_organ_and_vessels_clear_labels():
    n = 32
    grid = SliceGrid(n, n)

    def disc(x: float, radius: float, hu: float, **options) -> tuple[Blob, np.ndarray]:
        """A disc on a one-slice case, and each pixel's distance from its centre in radii."""
        blob = Blob(cx=np.array([x]), cy=np.array([0.0]), a=np.array([radius]), b=np.array([radius]),
                    hu=np.array([hu]), **options)
        return blob, np.sqrt((grid.x - x) ** 2 + grid.y**2) / radius

    (organ, in_organ), (lesion, in_lesion) = disc(-0.2, 0.4, 60.0, label=1), disc(0.2, 0.2, 30.0, label=2, within=1)
    vessel, in_vessel = disc(-0.5, 0.1, 45.0)
    fields = CaseFields(np.random.default_rng(0), (1, n, n)).at(0)
    hu, labels = paint_slice([organ, lesion, vessel], 0, grid, fields)
    # pixels well inside (< 0.9 radii) or outside (> 1.1) each disc, away from the edges' rounding
    for where, label, value in (((in_organ < 0.9) & (in_lesion > 1.1) & (in_vessel > 1.1), 1, 60.0),
                                ((in_lesion < 0.9) & (in_organ < 0.9), 2, 30.0),
                                ((in_lesion < 0.9) & (in_organ > 1.1), 0, -1000.0),  # a lesion only in its organ
                                (in_vessel < 0.9, 0, 45.0)):  # painted later, a vessel clears the organ's label
        assert where.any() and (labels[where] == label).all() and (hu[where] == value).all(), (label, value)




@pytest.mark.slow
def test_a_full_size_case_is_512_by_512(tmp_path):
    folder = synthesize(kind="liver", output=tmp_path, cases=1, size=512, slices=(60, 60))
    assert nib.load(str(next((folder / "imagesTr").iterdir()))).shape == (512, 512, 60)


@pytest.mark.slow
def test_nnunet_plans_it_as_ct_and_slices_it_axially(tmp_path, nnunet_cache):
    from nnal.backend.session import Backend

    folder = synthesize(kind="liver", output=tmp_path, cases=5, size=64, slices=(20, 20), seed=1)
    dataset = load_dataset(folder)
    backend = Backend(dataset, nnunet_cache, dropout="element", dropout_p=0.01, mc_dropout_p=0.1, num_processes=0,
                      device="cpu")
    assert backend.plans["configurations"]["2d"]["normalization_schemes"] == ["CTNormalization"]
    assert backend.plans["transpose_forward"] == [0, 1, 2]  # nnU-Net's 2d slices are the axial slices
    per_slice = np.concatenate(list(backend.slice_counts([case.name for case in dataset.cases]).values()))
    assert per_slice.shape == (5 * 20, 3)
    foreground = per_slice[:, 1:].sum(axis=1)
    assert (foreground == 0).any() and (foreground > 0).any()  # the pool has empty slices and organ slices
