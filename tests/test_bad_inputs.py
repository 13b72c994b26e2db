"""The corpus of bad inputs, each tried on an existing experiment: one line naming the file or field and the
problem, exit code 2, no traceback, nothing written, and the experiment byte-identical afterwards."""

from __future__ import annotations

import errno
import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_one_line_error, make_nnunet_dataset, run_cli, write_nifti

from nnal.atomic import FolderLock
from nnal.backend.fake import fake_backend
from nnal.config import build
from nnal.loop import run_experiment

SETTINGS = dict(strategy="bald", rounds=1, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1,
                epochs_per_round=1, mc_passes=3, device="cpu")


class World:
    """A small dataset, an existing experiment on it (made with the fake backend) and its config file."""

    def __init__(self, root: Path):
        self.root = root
        self.dataset = make_nnunet_dataset(root / "Dataset001_Toy", n_cases=6)
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump({"dataset": str(self.dataset), **SETTINGS}))
        self.experiment = root / "exp"
        run_experiment(build(yaml.safe_load(self.config.read_text())), self.experiment, progress=False,
                       backend_factory=fake_backend)
        # made by the fast fake model, it stands for an nnU-Net experiment: the corpus runs the real `nnal run` on it
        environment = self.experiment / "environment.json"
        environment.write_text(json.dumps({**json.loads(environment.read_text()), "backend": "nnunet"}))

    def args(self, *extra: object, config: Path | None = None, output: Path | None = None) -> list:
        return ["run", "--config", config or self.config, "--output", output or self.experiment, "--quiet", *extra]

    def yaml_with(self, **fields: object) -> Path:
        path = self.root / "bad.yaml"
        path.write_text(yaml.safe_dump({**yaml.safe_load(self.config.read_text()), **fields}))
        return path

    def label(self, i: int = 1) -> Path:
        return self.dataset / "labelsTr" / f"case_{i:03d}.nii.gz"

    def image(self, i: int = 1) -> Path:
        return self.dataset / "imagesTr" / f"case_{i:03d}_0000.nii.gz"

    def meta(self, **changes: object) -> Path:
        path = self.dataset / "dataset.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return path


def _relabel(world: World, values: np.ndarray, affine=None) -> None:
    old = nib.load(str(world.label()))
    nib.save(nib.Nifti1Image(values, old.affine if affine is None else affine), str(world.label()))


def _label_values(world: World, value: float, dtype=np.float32) -> Path:
    seg = np.asarray(nib.load(str(world.label())).dataobj).astype(dtype)
    seg[0, 0, 0] = value
    _relabel(world, seg)
    return world.label()


def _shifted_label(world: World) -> Path:
    old = nib.load(str(world.label()))
    affine = old.affine.copy()
    affine[0, 3] += 0.5
    _relabel(world, np.asarray(old.dataobj), affine)
    return world.label()


def _changed_label(world: World) -> Path:
    seg = np.asarray(nib.load(str(world.label())).dataobj).copy()
    seg[0, 0, 0] = (seg[0, 0, 0] + 1) % 3
    _relabel(world, seg)
    return world.fingerprint


def _added_case(world: World) -> Path:
    rng = np.random.default_rng(9)
    write_nifti(world.image(6), rng.normal(size=(8, 10, 12)).astype(np.float32))
    write_nifti(world.label(6), rng.integers(0, 3, size=(8, 10, 12)).astype(np.uint8))
    return world.fingerprint


def _moved_dataset(world: World) -> Path:
    shutil.move(world.dataset, world.root / "elsewhere")
    return world.dataset


def _report_of_changed_results(world: World, change: Callable[[pd.DataFrame], pd.DataFrame]) -> list:
    """``nnal report`` of a copy of the experiment whose results.csv was changed (the original stays)."""
    copy = world.root / "copy"
    shutil.copytree(world.experiment, copy)
    results = copy / "results.csv"
    change(pd.read_csv(results)).to_csv(results, index=False)
    return ["report", copy, "--output", world.root / "rep"]


def _set(column: str, value: object, rows=0) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: object})
        frame.loc[frame.index[rows] if isinstance(rows, int) else rows(frame), column] = value
        return frame

    return change


def _truncated_checkpoint(world: World) -> Path:
    path = world.experiment / "round_001" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    return path


def _pool_case(world: World) -> str:
    """A training case of fold 0 in nnU-Net's split (the real `nnal run` checks the duplicated case against it)."""
    from nnal.backend.splits import fold_splits
    from nnal.dataset import load_dataset

    return sorted(fold_splits(load_dataset(world.dataset), world.root / "no-cache")[0]["train"])[0]


def _no_space(world: World, monkeypatch) -> str:
    monkeypatch.setattr("nnal.preflight.shutil.disk_usage", lambda _: shutil._ntuple_diskusage(1, 1, 1000))
    return "GiB free"


def _after(_effect: object, args: list, words: list[str]) -> tuple[list, list[str]]:
    """``(args, words)`` once the effect (evaluated first, as the first argument) has damaged the world."""
    return args, words


# name -> (prepare(world[, monkeypatch]) -> args, words the one line must hold); a prepare returns the CLI args
Case = Callable[..., tuple[list, list[str]]]
CASES: dict[str, Case] = {
    # dataset folders
    "dataset folder moved away": lambda w: (w.args(), [str(_moved_dataset(w)), "not a directory"]),
    "dataset.json missing": lambda w: _after((w.dataset / "dataset.json").unlink(), w.args(),
                                             ["dataset.json", "missing"]),
    "dataset.json not JSON": lambda w: _after((w.dataset / "dataset.json").write_text("{labels:"), w.args(),
                                              ["dataset.json", "JSON"]),
    "labelsTr missing": lambda w: _after(shutil.rmtree(w.dataset / "labelsTr"), w.args(), ["labelsTr"]),
    # images and masks
    "image missing": lambda w: _after(w.image().unlink(), w.args(), [str(w.image()), "missing"]),
    "image not NIfTI": lambda w: _after(w.image().write_bytes(gzip.compress(b"no image")), w.args(),
                                        [str(w.image()), "unreadable"]),
    "mask truncated": lambda w: _after(w.label().write_bytes(w.label().read_bytes()[:60]), w.args(),
                                       [str(w.label())]),
    "mask of another shape": lambda w: _after(_relabel(w, np.zeros((8, 10, 11), np.uint8)), w.args(),
                                              [str(w.image()), "shape"]),
    "mask origin shifted": lambda w: (w.args(), [str(_shifted_label(w)), "origin"]),
    "mask spacing differs": lambda w: _after(_relabel(w, np.asarray(nib.load(str(w.label())).dataobj),
                                                      np.diag([1.1, 1.0, 1.0, 1.0])), w.args(),
                                             [str(w.label()), "spacing"]),
    "mask with an undeclared label": lambda w: (w.args(), [str(_label_values(w, 7, np.uint8)), "not declared"]),
    "mask with fractional labels": lambda w: (w.args(), [str(_label_values(w, 1.5)), "integer"]),
    "image with NaN": lambda w: _after(write_nifti(w.image(), np.full((8, 10, 12), np.nan, np.float32)), w.args(),
                                       [str(w.image()), "NaN"]),
    # dataset.json
    "fractional label value": lambda w: (w.args(), [str(w.meta(labels={"background": 0, "a": 1.5, "b": 2})),
                                                    "whole number"]),
    "labels not a mapping": lambda w: (w.args(), [str(w.meta(labels=["background", "a"])), "labels"]),
    "channel_names empty": lambda w: (w.args(), [str(w.meta(channel_names={})), "channel_names"]),
    "unsupported file ending": lambda w: (w.args(), [str(w.meta(file_ending=".mha")), "file_ending"]),
    # the dataset changed under an existing experiment
    "a mask changed since the start": lambda w: (w.args(), [str(_changed_label(w)), "file modified",
                                                           "labelsTr/case_001.nii.gz"]),
    "a case added since the start": lambda w: (w.args(), [str(_added_case(w)), "cases added", "case_006"]),
    # YAML configs
    "unknown config key": lambda w: (w.args(config=w.yaml_with(fodl=1)), ["bad.yaml", "fodl"]),
    "float fold in YAML": lambda w: (w.args(config=w.yaml_with(fold=1.0)), ["bad.yaml", "fold"]),
    "text seed in YAML": lambda w: (w.args(config=w.yaml_with(seed="abc")), ["bad.yaml", "seed"]),
    "budget 0 in YAML": lambda w: (w.args(config=w.yaml_with(budget=0)), ["bad.yaml", "budget"]),
    "dropout_p 1.5 in YAML": lambda w: (w.args(config=w.yaml_with(dropout_p=1.5)), ["bad.yaml", "dropout_p"]),
    "unknown preset in YAML": lambda w: (w.args(config=w.yaml_with(preset="huge")), ["bad.yaml", "preset"]),
    "YAML list, not a mapping": lambda w: _after((w.root / "bad.yaml").write_text("- 1\n"),
                                                 w.args(config=w.root / "bad.yaml"), ["bad.yaml", "mapping"]),
    "YAML syntax error": lambda w: _after((w.root / "bad.yaml").write_text("fold: [\n"),
                                          w.args(config=w.root / "bad.yaml"), ["bad.yaml"]),
    "config file missing": lambda w: (w.args(config=w.root / "none.yaml"), ["none.yaml"]),
    # CLI flags
    "--fold 1.0": lambda w: (w.args("--fold", "1.0"), ["fold", "1.0"]),
    "--seed abc": lambda w: (w.args("--seed", "abc"), ["seed", "abc"]),
    "--rounds -1": lambda w: (w.args("--rounds", "-1"), ["rounds"]),
    "--strategy bold": lambda w: (w.args("--strategy", "bold"), ["strategy", "bold"]),
    "--device tpu": lambda w: (w.args("--device", "tpu"), ["device", "tpu"]),
    "--bogus flag": lambda w: (w.args("--bogus", "1"), ["--bogus"]),
    # strategy options
    "misspelt strategy option": lambda w: (w.args(config=w.yaml_with(strategy="usimf",
                                                                       strategy_options={"etaa": 1})), ["etaa"]),
    "option of the wrong type": lambda w: (w.args(config=w.yaml_with(strategy="usimf",
                                                                       strategy_options={"eta": "high"})),
                                           ["strategy_options.eta"]),
    "option value not allowed": lambda w: (w.args(config=w.yaml_with(strategy="usimc", strategy_options={
        "query_mode": "random"})), ["query_mode"]),
    "option of another strategy": lambda w: (w.args(config=w.yaml_with(strategy_options={"eta": 1})),
                                             ["bald", "eta"]),
    # output and cache paths, resume
    "output is a file": lambda w: (w.args(output=w.config), [str(w.config), "file"]),
    "output under a file": lambda w: (w.args(output=w.config / "exp"), [str(w.config), "not a folder"]),
    "cache is a file": lambda w: (w.args("--cache", w.config), [str(w.config), "cache"]),
    "cache under a file": lambda w: (w.args("--cache", w.config / "c"), [str(w.config), "cache"]),
    "resume with another seed": lambda w: (w.args("--seed", "3"), ["config.yaml", "differs", "seed"]),
    "no space for the preprocessed data": None,  # needs monkeypatch: below
    "another process holds the folder": None,
    # an experiment folder that disagrees with its own state
    "a finished round's selection deleted": lambda w: _after((w.experiment / "round_001/selection.csv").unlink(),
                                                             w.args(), ["round_001/selection.csv", "missing"]),
    "state.json garbage": lambda w: _after((w.experiment / "state.json").write_text("{round: 1"), w.args(),
                                           ["state.json", "unreadable"]),
    "state.json of another shape": lambda w: _after((w.experiment / "state.json").write_text('{"round": "one"}'),
                                                    w.args(), ["state.json", "malformed"]),
    "the checkpoint to go on from truncated": lambda w: (w.args("--rounds", "2"), [str(_truncated_checkpoint(w)),
                                                                                  "truncated"]),
    "pool.csv garbage": lambda w: _after((w.experiment / "pool.csv").write_bytes(b"\x00\x01"), w.args(),
                                         ["pool.csv"]),
    # sizes that cannot fit in memory, refused before any work (a new output: nothing may appear)
    "a billion redundancy copies": lambda w: (w.args(config=w.yaml_with(redundancy={"case": _pool_case(w),
                                                                                    "copies": 10**9}),
                                                     output=w.root / "new"), ["redundancy.copies", "memory"]),
    "a million MC passes": lambda w: (w.args(config=w.yaml_with(mc_passes=10**6), output=w.root / "new"),
                                      ["mc_passes", "memory"]),
    # report inputs
    "report of a folder without results": lambda w: _after((w.root / "empty").mkdir(),
                                                           ["report", w.root / "empty", "--output", w.root / "rep"],
                                                           [str(w.root / "empty")]),
    "report output is a file": lambda w: (["report", w.experiment, "--output", w.config], [str(w.config)]),
    "report: dice above 1": lambda w: (_report_of_changed_results(w, _set("dice", 1.7)),
                                       ["results.csv", "outside [0, 1]"]),
    "report: negative dice": lambda w: (_report_of_changed_results(w, _set("dice", -0.2)),
                                        ["results.csv", "outside [0, 1]"]),
    "report: negative labeled count": lambda w: (_report_of_changed_results(w, _set("n_labeled", -5, lambda f: (
        f["round"] == 0))), ["results.csv", "negative"]),
    "report: labeled count decreases": lambda w: (_report_of_changed_results(w, _set("n_labeled", 1, lambda f: (
        f["round"] == 1))), ["results.csv", "decreases"]),
    "report: a round without finite dice": lambda w: (_report_of_changed_results(w, _set("dice", np.nan, lambda f: (
        f["round"] == 1))), ["results.csv", "no finite dice"]),
    "report: duplicated rows": lambda w: (_report_of_changed_results(w, lambda f: pd.concat([f, f.iloc[:1]])),
                                          ["results.csv", "duplicated"]),
    "report: non-numeric dice": lambda w: (_report_of_changed_results(w, _set("dice", "high")),
                                           ["results.csv", "non-numeric"]),
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, tmp_path, monkeypatch):
    world = World(tmp_path)
    world.fingerprint = world.experiment / "dataset_fingerprint.json"
    others_before = {p.name for p in tmp_path.iterdir()}
    if name == "no space for the preprocessed data":
        args, words = world.args("--cache", tmp_path / "fresh-cache"), [_no_space(world, monkeypatch)]
    elif name == "another process holds the folder":
        args, words = world.args(), [str(world.experiment), "another nnal process"]
    else:
        args, words = CASES[name](world)
    before = _snapshot(world.experiment)  # as the case left it: the command itself must change nothing
    if name == "another process holds the folder":
        with FolderLock(world.experiment):
            result = run_cli(args)
    else:
        result = run_cli(args)
    assert_one_line_error(result, words)
    assert _snapshot(world.experiment) == before
    new = {p.name for p in tmp_path.iterdir()} - others_before - {"bad.yaml", "empty", "elsewhere", "copy"}
    assert not new, new  # no report, cache or experiment folder appeared


def test_the_corpus_is_large():
    assert len(CASES) >= 35


def test_failed_device_request_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    world = World(tmp_path)
    before = _snapshot(world.experiment)
    result = run_cli(world.args("--device", "cuda"))
    assert result.exit_code == 2 and "cuda" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert _snapshot(world.experiment) == before


def test_disk_full_error_names_the_file(tmp_path, monkeypatch):
    """A write failing with ENOSPC is a machine problem: one line naming the file, the old file kept."""
    from nnal.atomic import atomic_write_text
    from nnal.errors import EnvironmentProblem

    target = tmp_path / "state.json"
    atomic_write_text(target, "old")

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("nnal.atomic.os.replace", full)
    with pytest.raises(EnvironmentProblem, match="state.json"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
