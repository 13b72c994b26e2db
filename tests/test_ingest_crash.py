"""An ingest killed midway (an exception, or SIGKILL between two written files) leaves the experiment as it was:
every file byte-identical, the round still pending; only uncommitted files of the round under annotations/, which
nothing reads. Running ingest again completes it, ending where an uninterrupted ingest ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from annotator import annotate_from_truth, folder_digest, hide_labels
from conftest import make_nnunet_dataset, run_cli
from conftest import run_as_nnal_run as run_experiment

from nnal.annotation.ingest import ingest
from nnal.backend.fake import fake_backend
from nnal.config import Config

SETTINGS = dict(strategy="random", rounds=2, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1,
                epochs_per_round=1, mc_passes=3, oracle="human")
UNCOMMITTED = "annotations/round_001/"


@pytest.fixture(scope="module")
def waiting(tmp_path_factory) -> tuple[Path, Path]:
    """(experiment with round 1's masks saved, not ingested; its dataset)."""
    root = tmp_path_factory.mktemp("crash")
    full = make_nnunet_dataset(root / "full" / "Dataset001_Toy", n_cases=6)
    hidden = hide_labels(full, root / "hidden" / "Dataset001_Toy", {"case_000", "case_005"})
    exp = root / "exp"
    config = Config(dataset=str(hidden), **SETTINGS)
    run_experiment(config, exp, progress=False, backend_factory=fake_backend)
    annotate_from_truth(exp / "annotate" / "round_000", full)
    ingest(exp)
    run_experiment(config, exp, progress=False, backend_factory=fake_backend)
    annotate_from_truth(exp / "annotate" / "round_001", full)
    return exp, hidden


def _copy(exp: Path, target: Path) -> Path:
    shutil.copytree(exp, target, symlinks=True)
    return target


def _committed(folder: Path) -> dict[str, bytes]:
    """What an ingest leaves that matters: the round's files and the record, without the time stamps."""
    files = {k: v for k, v in folder_digest(folder).items() if k.startswith("annotations/")}
    record = json.loads((folder / "annotations.json").read_text())
    for entry in record["rounds"].values():
        entry.pop("ingested_unix"), entry.pop("annotation_seconds"), entry.pop("masks")
    return {**files, "annotations.json": json.dumps(record, sort_keys=True).encode()}


def _as_before(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """Byte-identical but for the lock file, which names the last process that held it."""
    def kept(files: dict[str, bytes]) -> dict[str, bytes]:
        return {k: v for k, v in files.items() if k != ".lock"}

    assert kept(after) == kept(before)


def _ingested_reference_and_copy(exp: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """An uninterrupted ingest to compare with, and an untouched copy with its digest."""
    reference = _copy(exp, tmp_path / "reference")
    assert run_cli(["ingest", reference]).exit_code == 0
    out = _copy(exp, tmp_path / "exp")
    return reference, out, folder_digest(out)


def test_an_ingest_failing_midway_changes_nothing_and_a_rerun_completes(waiting, tmp_path):
    reference, out, before = _ingested_reference_and_copy(waiting[0], tmp_path)

    def fail_after_first(case: str) -> None:
        raise OSError("the machine went away")

    with pytest.raises(OSError):
        ingest(out, on_file_written=fail_after_first)
    _as_before(before, folder_digest(out))
    assert json.loads(run_cli(["status", out, "--json"]).stdout)["pending"]["round"] == 1

    result = run_cli(["ingest", out])
    assert result.exit_code == 0, result.output
    assert _committed(out) == _committed(reference)


def test_sigkill_between_two_written_masks_then_rerun(waiting, tmp_path):
    reference, out, before = _ingested_reference_and_copy(waiting[0], tmp_path)
    script = ("import os, signal, sys\n"
              "from nnal.annotation.ingest import ingest\n"
              "written = []\n"
              "def hook(case):\n"
              "    written.append(case)\n"
              "    if len(written) == 2:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "ingest(sys.argv[1], on_file_written=hook)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    after = folder_digest(out)
    _as_before(before, after)
    assert not any(k.startswith(UNCOMMITTED) for k in after)  # the two masks written went to the staging folder
    assert len([p for p in out.parent.glob(".nnal-ingest-*") if p.is_dir()]) == 1  # left beside it, cleared below

    result = run_cli(["ingest", out])
    assert result.exit_code == 0 and "round 1: ingested" in result.stdout, result.output
    assert _committed(out) == _committed(reference)
    assert not list(out.parent.glob(".nnal-ingest-*"))
    again = folder_digest(out)
    assert run_cli(["ingest", out]).exit_code == 0  # and once more: nothing changes
    assert folder_digest(out) == again
