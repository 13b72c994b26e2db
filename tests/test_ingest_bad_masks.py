"""Bad masks at ``nnal ingest``: each is one line ``error: <file>: <problem> (slice N)``, exit code 2, and the
experiment folder (every file, the lock and the batch folder included) is byte-identical afterwards. Good masks
go in once; the same masks again change nothing; other masks for an ingested round are refused."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from annotator import annotate_from_truth, folder_digest, hide_labels, slab
from conftest import assert_one_line_error, make_nnunet_dataset, run_cli
from conftest import run_as_nnal_run as run_experiment

from nnal.backend.fake import fake_backend
from nnal.config import Config

TEST_CASES = {"case_000", "case_005"}  # the fake backend's fold-0 test set of six cases
SETTINGS = dict(strategy="random", rounds=2, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1,
                epochs_per_round=1, mc_passes=3, oracle="human")


def run_human(dataset: Path, out: Path) -> None:
    run_experiment(Config(dataset=str(dataset), **SETTINGS), out, progress=False, backend_factory=fake_backend)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Round 0 annotated and trained; round 1's batch exported and its masks saved from the truth, not ingested."""
    root = tmp_path_factory.mktemp("ingest")
    full = make_nnunet_dataset(root / "full" / "Dataset001_Toy", n_cases=6)
    hidden = hide_labels(full, root / "hidden" / "Dataset001_Toy", TEST_CASES)
    exp = root / "exp"
    run_human(hidden, exp)
    annotate_from_truth(exp / "annotate" / "round_000", full)
    assert run_cli(["ingest", exp]).exit_code == 0
    run_human(hidden, exp)
    annotate_from_truth(exp / "annotate" / "round_001", full)
    return {"full": full, "hidden": hidden, "exp": exp}


@pytest.fixture
def exp(world, tmp_path) -> Path:
    copy = tmp_path / "exp"
    shutil.copytree(world["exp"], copy, symlinks=True)
    return copy


def batch(exp: Path) -> Path:
    return exp / "annotate" / "round_001"


def manifest(exp: Path) -> pd.DataFrame:
    return pd.read_csv(batch(exp) / "manifest.csv", dtype={"case": str})


def first(exp: Path) -> tuple[str, int]:
    """(case, slice) of the batch's first listed slice."""
    row = manifest(exp).iloc[0]
    return str(row["case"]), int(row["slice"])


def mask_path(exp: Path, case: str | None = None) -> Path:
    return batch(exp) / "masks" / f"{case or first(exp)[0]}.nii.gz"


def load(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj).copy()


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, nib.load(str(path)).affine if affine is None else affine), str(path))


def unlisted_slice(exp: Path, case: str) -> int:
    """A slice of ``case`` in neither round's batch: nothing known of it."""
    listed = set()
    for name in ("round_000", "round_001"):
        rows = pd.read_csv(exp / "annotate" / name / "manifest.csv", dtype={"case": str})
        listed |= set(rows[rows["case"] == case]["slice"])
    return min(set(range(8)) - listed)


def earlier_slice(exp: Path) -> tuple[str, int]:
    """(case, slice) annotated in round 0, whose mask is part of round 1's batch."""
    r0 = pd.read_csv(exp / "annotate" / "round_000" / "manifest.csv", dtype={"case": str})
    cases = set(manifest(exp)["case"])
    row = r0[r0["case"].isin(cases)].iloc[0]
    return str(row["case"]), int(row["slice"])


def _edit(exp: Path, change: Callable[[np.ndarray], np.ndarray | None], dtype=None, affine=None) -> None:
    path = mask_path(exp)
    img, data = load(path)
    data = data.astype(dtype) if dtype is not None else data
    changed = change(data)
    save(path, data if changed is None else changed, img.affine if affine is None else affine(img.affine))


def _set(data: np.ndarray, where: tuple, value) -> None:
    data[where] = value


def _listed(exp: Path) -> tuple:
    return slab(0, first(exp)[1])


def _shift(affine: np.ndarray, column: int, row: int, by: float) -> np.ndarray:
    out = affine.copy()
    out[row, column] += by
    return out


def _manifest_edit(exp: Path, column: str, value) -> None:
    rows = manifest(exp)
    rows.loc[0, column] = value
    rows.to_csv(batch(exp) / "manifest.csv", index=False)


def _wrong_case(exp: Path, name: str) -> None:
    shutil.copy(mask_path(exp), batch(exp) / "masks" / f"{name}.nii.gz")


def _gzip_garbage(exp: Path) -> None:
    mask_path(exp).write_bytes(gzip.compress(b"not a nifti file at all" * 20))


def _two_files(exp: Path) -> None:
    img = nib.load(str(mask_path(exp)))
    nib.save(img, str(mask_path(exp)).replace(".nii.gz", ".nii"))


def _missing(exp: Path) -> None:
    mask_path(exp).unlink()


# name -> (break the batch, words the one error line must hold besides the mask's file name, file named)
CASES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "wrong shape": (lambda e: _edit(e, lambda d: d[:-1]), ["shape (7, 10, 12)", "(8, 10, 12)"], "mask"),
    "wrong spacing": (lambda e: _edit(e, lambda d: None, affine=lambda a: a @ np.diag([1.5, 1, 1, 1])),
                      ["spacing"], "mask"),
    "wrong origin": (lambda e: _edit(e, lambda d: None, affine=lambda a: _shift(a, 3, 0, 2.0)), ["origin"], "mask"),
    "flipped axis": (lambda e: _edit(e, lambda d: None, affine=lambda a: a @ np.diag([1, -1, 1, 1])),
                     ["direction"], "mask"),
    "undeclared label": (lambda e: _edit(e, lambda d: _set(d, (*_listed(e)[:1], 0, 0), 7)),
                         ["label values [7] not declared", "(slice"], "mask"),
    "float labels": (lambda e: _edit(e, lambda d: _set(d, (*_listed(e)[:1], 0, 0), 0.5), dtype=np.float32),
                     ["whole numbers", "0.5", "(slice"], "mask"),
    "NaN label": (lambda e: _edit(e, lambda d: _set(d, (*_listed(e)[:1], 0, 0), np.nan), dtype=np.float32),
                  ["NaN", "(slice"], "mask"),
    "selected slice left empty": (lambda e: _edit(e, lambda d: _set(d, _listed(e), 0)),
                                  ["selected slice left empty", "(slice"], "mask"),
    "slice outside the batch changed": (
        lambda e: _edit(e, lambda d: _set(d, slab(0, unlisted_slice(e, first(e)[0])), 1)),
        ["labels a slice outside this batch", "(slice"], "mask"),
    "earlier annotation overwritten": (lambda e: _overwrite_slice(e, *earlier_slice(e)),
                                       ["given earlier", "never overwritten", "(slice"], "earlier"),
    "unreadable file": (lambda e: mask_path(e).write_bytes(b"\x00\x01 not nifti"), ["unreadable NIfTI"], "mask"),
    "truncated file": (lambda e: mask_path(e).write_bytes(mask_path(e).read_bytes()[:200]), ["unreadable"], "mask"),
    "gzip of garbage": (_gzip_garbage, ["unreadable"], "mask"),
    "wrong case name": (lambda e: _wrong_case(e, "case_999"), ["case_999.nii.gz", "not a case of this batch"],
                        "none"),
    "a test case's name": (lambda e: _wrong_case(e, "case_000"), ["case_000.nii.gz", "not a case of this batch"],
                           "none"),
    "mask missing": (_missing, ["missing", "slices"], "mask"),
    "4D mask": (lambda e: _edit(e, lambda d: d[..., None]), ["shape (8, 10, 12, 1)"], "mask"),
    "two masks for one case": (_two_files, ["2 masks", "keep one"], "none"),
    "manifest lists another slice": (lambda e: _manifest_edit(e, "slice", 99), ["manifest.csv", "slice 99"],
                                     "none"),
    "manifest marks a labeled slice empty": (lambda e: _manifest_edit(e, "empty", True),
                                             ["marked empty", "(slice"], "mask"),
    "manifest unreadable": (lambda e: (batch(e) / "manifest.json").write_text("{not json"),
                            ["manifest.json", "unreadable manifest"], "none"),
}


def _overwrite_slice(exp: Path, case: str, s: int) -> None:
    path = mask_path(exp, case)
    img, data = load(path)
    data[slab(0, s)] = np.where(data[slab(0, s)] == 1, 2, 1)
    save(path, data.astype(np.uint8))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_masks_are_refused_in_one_line_and_change_nothing(name, exp):
    spoil, words, named = CASES[name]
    target = {"mask": mask_path(exp), "earlier": mask_path(exp, earlier_slice(exp)[0])}.get(named)
    spoil(exp)
    before = folder_digest(exp)
    result = run_cli(["ingest", exp])
    assert_one_line_error(result, words + ([str(target)] if target is not None else []))
    assert result.stderr.startswith("error: ")
    assert folder_digest(exp) == before, "a refused ingest changed the experiment folder"


def test_there_are_at_least_fifteen_bad_mask_cases():
    assert len(CASES) >= 15


def test_every_problem_is_its_own_line(exp):
    _edit(exp, lambda d: _set(d, _listed(exp), 0))
    _wrong_case(exp, "case_999")
    before = folder_digest(exp)
    result = run_cli(["ingest", exp])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert folder_digest(exp) == before


def test_good_masks_go_in_once_and_again_change_nothing(exp, world):
    result = run_cli(["ingest", exp])
    assert result.exit_code == 0, result.output
    assert "round 1: ingested 4 slices" in result.stdout
    record = json.loads((exp / "annotations.json").read_text())
    assert sorted(record["rounds"]) == ["0", "1"]
    after = folder_digest(exp)
    again = run_cli(["ingest", exp])
    assert again.exit_code == 0 and "nothing changed" in again.stdout
    assert folder_digest(exp) == after
    # other masks for the ingested round: refused, never overwritten
    _overwrite_slice(exp, first(exp)[0], first(exp)[1])
    before = folder_digest(exp)
    refused = run_cli(["ingest", exp])
    assert_one_line_error(refused, ["ingested already", "never overwritten"])
    assert folder_digest(exp) == before


def test_masks_from_another_folder_with_their_manifest(exp, tmp_path):
    elsewhere = tmp_path / "from-the-annotator"
    shutil.copytree(batch(exp) / "masks", elsewhere / "masks")
    shutil.copy(batch(exp) / "manifest.csv", elsewhere / "manifest.csv")
    for path in (batch(exp) / "masks").iterdir():
        path.unlink()
    result = run_cli(["ingest", exp, elsewhere / "masks"])
    assert result.exit_code == 0, result.output


def test_a_simulated_experiment_takes_no_masks(tmp_path):
    ds = make_nnunet_dataset(tmp_path / "Dataset001_Toy", n_cases=6)
    out = tmp_path / "sim"
    run_experiment(Config(dataset=str(ds), **{**SETTINGS, "oracle": "simulated"}), out, progress=False,
                   backend_factory=fake_backend)
    before = folder_digest(out)
    assert_one_line_error(run_cli(["ingest", out]), ["oracle is simulated"])
    assert folder_digest(out) == before
