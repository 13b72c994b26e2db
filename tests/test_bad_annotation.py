"""What the annotation commands do with what a person (or the machine) leaves behind: an experiment folder that
cannot be written is refused before any work, in one line naming the folder, with the folder byte-identical
afterwards; a batch exported again keeps what the annotator did (the slices marked empty, the masks saved)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from annotator import annotate_from_truth, folder_digest, hide_labels, slab
from conftest import assert_one_line_error, make_nnunet_dataset, run_cli
from conftest import run_as_nnal_run as run_experiment

from nnal.annotation.batch import query
from nnal.backend.fake import fake_backend
from nnal.config import Config
from nnal.errors import EnvironmentProblem

TEST_CASES = {"case_000", "case_005"}  # the fake backend's fold-0 test set of six cases
SETTINGS = dict(strategy="random", rounds=2, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1,
                epochs_per_round=1, mc_passes=3, oracle="human")


def run_human(dataset: Path, out: Path) -> None:
    run_experiment(Config(dataset=str(dataset), **SETTINGS), out, progress=False, backend_factory=fake_backend)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Round 0 ingested and trained; round 1's batch exported, its masks saved from the truth, not ingested."""
    root = tmp_path_factory.mktemp("bad-annotation")
    full = make_nnunet_dataset(root / "full" / "Dataset001_Toy", n_cases=6)
    hidden = hide_labels(full, root / "hidden" / "Dataset001_Toy", TEST_CASES)
    exp = root / "exp"
    run_human(hidden, exp)
    annotate_from_truth(exp / "annotate" / "round_000", full)
    assert run_cli(["ingest", exp]).exit_code == 0
    run_human(hidden, exp)
    annotate_from_truth(exp / "annotate" / "round_001", full)
    return {"root": root, "exp": exp}


@pytest.fixture
def exp(world, tmp_path) -> Path:
    copy = tmp_path / "exp"
    shutil.copytree(world["exp"], copy, symlinks=True)
    return copy


def batch(exp: Path) -> Path:
    return exp / "annotate" / "round_001"


def manifest(exp: Path) -> pd.DataFrame:
    return pd.read_csv(batch(exp) / "manifest.csv", dtype={"case": str})


def deny_writes(monkeypatch, denied: Path) -> None:
    """``denied`` reads as not writable (root, who runs these tests, writes anywhere whatever its mode)."""
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).resolve() == denied.resolve():
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def _stale_round_folder(exp: Path) -> Path:
    """annotations/round_001 as an ingest killed between its rename and its record leaves it."""
    stale = exp / "annotations" / "round_001"
    shutil.copytree(exp / "annotations" / "round_000", stale)
    return stale


# ingest writes the lock and annotations.json in the experiment folder, renames its round into annotations/,
# and replaces a round folder a killed ingest left there
INGEST_TARGETS = {
    "experiment folder": lambda e: e,
    "lock file": lambda e: e / ".lock",
    "annotations folder": lambda e: e / "annotations",
    "round folder left by a killed ingest": _stale_round_folder,
}


@pytest.mark.parametrize("name", sorted(INGEST_TARGETS))
def test_ingest_into_an_unwritable_folder_is_refused_up_front(name, exp, monkeypatch):
    denied = INGEST_TARGETS[name](exp)
    deny_writes(monkeypatch, denied)
    before = folder_digest(exp)
    result = run_cli(["ingest", exp])
    assert_one_line_error(result, [str(denied), "not writable", "nnal ingest"])
    assert folder_digest(exp) == before, "a refused ingest changed the experiment folder"
    monkeypatch.undo()
    assert run_cli(["ingest", exp]).exit_code == 0  # once writable, the same masks go in


# query writes the lock, the round's batch.csv and the batch folder
QUERY_TARGETS = {
    "experiment folder": lambda e: e,
    "round folder": lambda e: e / "round_001",
    "batch folder": batch,
    "presegmentation folder": lambda e: batch(e) / "presegmentation",
}


@pytest.mark.parametrize("name", sorted(QUERY_TARGETS))
def test_query_into_an_unwritable_folder_is_refused_up_front(name, exp, monkeypatch):
    denied = QUERY_TARGETS[name](exp)
    deny_writes(monkeypatch, denied)
    before = folder_digest(exp)
    with pytest.raises(EnvironmentProblem, match="not writable") as refused:
        query(exp, fake_backend)
    assert str(refused.value).startswith(f"{denied}: ") and "\n" not in str(refused.value)
    assert folder_digest(exp) == before, "a refused query changed the experiment folder"


def _restore_writes(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


NO_MOUNT = 97  # the read-only mount could not be made: no test, not a failure


def _ingest_on_a_read_only_mount(exp: Path) -> tuple[int, str]:
    """``nnal ingest`` in a process that sees ``exp`` on a read-only bind mount of its own (its mount namespace):
    root, who writes anywhere whatever the modes, is refused there too (EROFS)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    script = ('mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" || exit 97; shift; exec "$@"')
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(exp), sys.executable, "-c",
                           "import sys; from nnal.cli import main; main(sys.argv[1:])", "ingest", str(exp)],
                          capture_output=True, text=True, check=False)
    if done.returncode == NO_MOUNT or "unshare:" in done.stderr:
        pytest.skip(f"no read-only bind mount here: {done.stderr.strip()}")
    return done.returncode, done.stderr


def test_ingest_into_a_really_read_only_experiment(world):
    """No patching: the permission the file system enforces (chmod -R a-w; as root, a read-only mount)."""
    exp = world["root"] / f"readonly-{os.getpid()}"
    shutil.copytree(world["exp"], exp, symlinks=True)
    try:
        before = folder_digest(exp)
        if os.geteuid() == 0:
            code, stderr = _ingest_on_a_read_only_mount(exp)
        else:
            subprocess.run(["chmod", "-R", "a-w", str(exp)], check=True)
            result = run_cli(["ingest", exp])
            code, stderr = result.exit_code, result.stderr
        assert code == 2, stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in stderr, stderr
        assert lines[0].startswith(f"error: {exp}") and "not writable" in lines[0], lines[0]
        assert folder_digest(exp) == before
    finally:
        _restore_writes(exp)
        shutil.rmtree(exp)


def _leave_empty(exp: Path, row: pd.Series) -> None:
    """The annotator found nothing on the row's slice: it is empty in the saved mask."""
    path = batch(exp) / "masks" / f"{row['case']}.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[slab(int(row["axis"]), int(row["slice"]))] = 0
    nib.save(nib.Nifti1Image(data, img.affine), str(path))


def _mark_in_json(exp: Path, row: pd.Series) -> None:
    path = batch(exp) / "manifest.json"
    meta = json.loads(path.read_text())
    for entry in meta["slices"]:
        if (entry["case"], entry["axis"], entry["slice"]) == (row["case"], row["axis"], row["slice"]):
            entry["empty"] = True
    path.write_text(json.dumps(meta))


def _annotate_two_empty_slices(exp: Path) -> tuple[list[bool], int]:
    """Two listed slices left empty on purpose, one marked in manifest.csv (by hand, "yes"), one in
    manifest.json (as the viewer does); every slice's ``empty`` as the annotator left it, and the row marked in the
    JSON only."""
    rows = manifest(exp)
    expected = rows["empty"].astype(bool).tolist()  # slices the truth leaves empty are marked already
    first, second = [i for i, flag in enumerate(expected) if not flag][:2]
    for i in (first, second):
        _leave_empty(exp, rows.iloc[i])
        expected[i] = True
    _mark_in_json(exp, rows.iloc[second])
    rows["empty"] = rows["empty"].astype(object)
    rows.loc[first, "empty"] = "yes"
    rows.to_csv(batch(exp) / "manifest.csv", index=False)
    return expected, second


def test_query_again_keeps_the_annotators_empty_marks_and_masks(exp):
    expected, _ = _annotate_two_empty_slices(exp)
    (batch(exp) / "masks" / "notes.txt").write_text("case_001 was hard\n")
    masks = folder_digest(batch(exp) / "masks")
    exported = json.loads((batch(exp) / "manifest.json").read_text())["exported_unix"]
    query(exp, fake_backend)
    assert manifest(exp)["empty"].tolist() == expected
    meta = json.loads((batch(exp) / "manifest.json").read_text())
    assert [row["empty"] for row in meta["slices"]] == expected
    assert meta["exported_unix"] == exported  # the annotator's time counts from the first export
    assert folder_digest(batch(exp) / "masks") == masks
    assert run_cli(["ingest", exp]).exit_code == 0  # the kept marks are what ingest needs
    record = json.loads((exp / "annotations.json").read_text())["rounds"]["1"]
    assert len(record["empty"]) == sum(expected)


def test_query_again_keeps_an_unreadable_manifest_beside_the_new_one(exp):
    expected, marked_in_json_only = _annotate_two_empty_slices(exp)
    broken = b"{ the annotator's editor cut this short"
    (batch(exp) / "manifest.json").write_bytes(broken)
    query(exp, fake_backend)
    assert (batch(exp) / "manifest.json.unreadable").read_bytes() == broken
    expected[marked_in_json_only] = False  # its mark is in the kept file, not readable
    meta = json.loads((batch(exp) / "manifest.json").read_text())
    assert [row["empty"] for row in meta["slices"]] == manifest(exp)["empty"].tolist() == expected


def test_query_again_keeps_a_presegmentation_the_annotator_corrected_in_place(exp):
    """ITK-SNAP's plain "Save Segmentation" writes back to presegmentation/<case>.nii.gz: a re-export keeps it."""
    path = sorted((batch(exp) / "presegmentation").glob("*.nii.gz"))[0]
    image = nib.load(str(path))
    corrected = np.asarray(image.dataobj).copy()
    corrected[0] = 1
    nib.save(nib.Nifti1Image(corrected, image.affine), str(path))
    edited = path.read_bytes()
    query(exp, fake_backend)
    assert path.read_bytes() == edited
