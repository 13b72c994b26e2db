"""The loop with the fake backend (seconds, no nnU-Net): resume at every phase boundary and inside phases,
selection bookkeeping, round-0 sharing, the lock, config reconciliation, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_nnunet_dataset

from nnal.backend.fake import FakeBackend, fake_backend
from nnal.config import Config
from nnal.errors import ConfigError, LockedError
from nnal.experiment import PHASES, ExperimentFolder, FolderLock
from nnal.loop import run_experiment

ROUNDS = 3


class Crash(Exception):
    """Stands in for a kill: raised at a chosen moment, never caught by the loop."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_nnunet_dataset(tmp_path_factory.mktemp("data") / "Dataset001_Toy", n_cases=6, shape=(8, 10, 12))


def config(dataset: Path, strategy: str = "bald", **overrides) -> Config:
    values = dict(dataset=str(dataset), strategy=strategy, rounds=ROUNDS, initial=5, budget=4,
                  iterations_per_epoch=2, epochs_initial=1, epochs_per_round=1, mc_passes=3)
    return Config(**{**values, **overrides})


def run(cfg: Config, folder: Path, factory=fake_backend, **kwargs) -> pd.DataFrame:
    return run_experiment(cfg, folder, progress=False, backend_factory=factory, **kwargs)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes. environment.json holds argv and the commit, state.json seconds: both left out."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (".lock", "environment.json", "state.json")}


def outcome(folder: Path) -> dict[str, bytes]:
    """What decides a result: selections, scores, metrics and results (checkpoints too: the fake's are exact)."""
    return {k: v for k, v in snapshot(folder).items() if k.endswith((".csv", ".npz", ".pt", ".txt"))}


def selections(folder: Path) -> list[list[int]]:
    f = ExperimentFolder(folder)
    return [f.read_selection(r)["id"].tolist() for r in f.rounds()]


BOUNDARIES = [(0, p) for p in PHASES[1:]] + [(r, p) for r in range(1, ROUNDS + 1) for p in PHASES]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    out = {}
    for strategy in ("random", "bald", "usimf", "coreset"):
        folder = tmp_path_factory.mktemp("ref") / strategy
        run(config(dataset, strategy), folder)
        out[strategy] = outcome(folder)
    return out


@pytest.mark.parametrize("strategy", ["bald", "usimf"])
@pytest.mark.parametrize("boundary", BOUNDARIES, ids=[f"{r}-{p}" for r, p in BOUNDARIES])
def test_killed_after_any_phase_resumes_identical(strategy, boundary, dataset, reference, tmp_path, monkeypatch):
    real_finish = ExperimentFolder.finish

    def finish(self, round_, phase, seconds):
        real_finish(self, round_, phase, seconds)
        if (round_, phase) == boundary:
            raise Crash(boundary)

    monkeypatch.setattr(ExperimentFolder, "finish", finish)
    with pytest.raises(Crash):
        run(config(dataset, strategy), tmp_path / "exp")
    state = ExperimentFolder(tmp_path / "exp").state.data
    assert (state["round"], state["phase"]) == boundary
    monkeypatch.setattr(ExperimentFolder, "finish", real_finish)
    run(config(dataset, strategy), tmp_path / "exp")
    assert outcome(tmp_path / "exp") == reference[strategy]


# (backend call, which call dies): train 1 = round 0's training, train 3 = round 2's, evaluate 2 = round 1's;
# the model is built for round 0's evaluation (1), then per round for scoring and evaluation: 4 = round 2's scoring
INSIDE = [("train", 1), ("train", 3), ("evaluate", 2), ("model", 4)]


@pytest.mark.parametrize("step,nth", INSIDE, ids=["train-r0", "train-r2", "evaluate-r1", "score-r2"])
def test_killed_inside_a_phase_resumes_identical(step, nth, dataset, reference, tmp_path):
    """The kill lands before the phase's outputs and state are written: the phase runs again from its start."""
    calls = {"n": 0}

    class Dying(FakeBackend):
        def _maybe_die(self, name: str) -> None:
            calls["n"] += name == step
            if name == step and calls["n"] == nth:
                raise Crash(step)

        def train(self, *args, **kwargs):
            self._maybe_die("train")
            return super().train(*args, **kwargs)

        def evaluate(self, *args, **kwargs):
            self._maybe_die("evaluate")
            return super().evaluate(*args, **kwargs)

        def model(self, weights):
            self._maybe_die("model")
            return super().model(weights)

    with pytest.raises(Crash):
        run(config(dataset, "usimf"), tmp_path / "exp", factory=lambda d, c, cfg: Dying(d, c, cfg))
    run(config(dataset, "usimf"), tmp_path / "exp")
    assert outcome(tmp_path / "exp") == reference["usimf"]


def test_selection_bookkeeping(dataset, tmp_path):
    folder = tmp_path / "exp"
    results = run(config(dataset, "entropy"), folder)
    chosen = selections(folder)
    assert [len(c) for c in chosen] == [5, 4, 4, 4]
    flat = np.concatenate(chosen)
    assert len(np.unique(flat)) == len(flat)  # never a slice twice
    assert results.groupby("round")["n_labeled"].first().tolist() == [5, 9, 13, 17]
    pool = ExperimentFolder(folder).read_pool()
    test_cases = set(ExperimentFolder(folder).read_test_cases())
    assert test_cases and not test_cases & set(pool.table["case"])  # the test set never enters the pool


def test_a_budget_larger_than_the_pool_takes_what_is_left_and_stops(dataset, tmp_path):
    folder = tmp_path / "exp"
    run(config(dataset, "random", rounds=0), tmp_path / "probe")
    pool_size = len(ExperimentFolder(tmp_path / "probe").read_pool())
    budget = (pool_size - 5) // 2 + 1  # two rounds exhaust the pool, the second one smaller than the budget
    results = run(config(dataset, "random", rounds=5, budget=budget), folder)
    sizes = [len(c) for c in selections(folder)]
    assert sizes == [5, budget, pool_size - 5 - budget]
    assert sorted(np.concatenate(selections(folder))) == list(range(pool_size))
    assert sorted(results["round"].unique()) == [0, 1, 2]  # no empty rounds after the pool ran out


def test_full_reference_labels_every_pool_slice_in_one_round(dataset, tmp_path):
    results = run(config(dataset, "full"), tmp_path / "full")
    pool = ExperimentFolder(tmp_path / "full").read_pool()
    assert results["round"].unique().tolist() == [0]
    assert results["n_labeled"].unique().tolist() == [len(pool)]


def test_round0_is_shared_only_when_its_settings_agree(dataset, tmp_path):
    first = tmp_path / "bald"
    run(config(dataset, "bald"), first)
    backends: list[FakeBackend] = []

    def recording(d, c, cfg):
        backends.append(FakeBackend(d, c, cfg))
        return backends[-1]

    second = tmp_path / "entropy"
    run(config(dataset, "entropy"), second, factory=recording, share_round0=first)
    assert backends[-1].calls.count("train") == ROUNDS  # rounds 1..3 only: round 0 came from ``first``
    assert (second / "round_000" / "selection.csv").read_bytes() == (first / "round_000" / "selection.csv").read_bytes()
    a = pd.read_csv(second / "round_000" / "metrics.csv")
    b = pd.read_csv(first / "round_000" / "metrics.csv")
    assert set(a["strategy"]) == {"entropy"}
    labels = ["experiment", "strategy"]
    pd.testing.assert_frame_equal(a.drop(columns=labels), b.drop(columns=labels))

    third = tmp_path / "other-initial"
    run(config(dataset, "entropy", initial=6), third, factory=recording, share_round0=first)
    assert backends[-1].calls.count("train") == ROUNDS + 1  # its round 0 differs: trained itself
    assert len(selections(third)[0]) == 6


def test_a_locked_folder_is_refused_and_unchanged(dataset, tmp_path):
    folder = tmp_path / "exp"
    run(config(dataset, rounds=1), folder)
    before = snapshot(folder)
    with FolderLock(folder):
        with pytest.raises(LockedError, match="another nnal process"):
            run(config(dataset, rounds=2), folder)
    assert snapshot(folder) == before


@pytest.mark.parametrize("change", [{"seed": 1}, {"budget": 3}, {"strategy_options": {"use_variance": True}},
                                    {"strategy": "entropy"}])
def test_resume_with_other_settings_is_refused_and_unchanged(change, dataset, tmp_path):
    folder = tmp_path / "exp"
    run(config(dataset, "meanstd", rounds=1), folder)
    before = snapshot(folder)
    strategy = change.get("strategy", "meanstd")
    with pytest.raises(ConfigError, match="differs"):
        run(config(dataset, strategy, rounds=1, **{k: v for k, v in change.items() if k != "strategy"}), folder)
    assert snapshot(folder) == before


def test_more_rounds_extend_an_experiment_and_keep_its_first_rounds(dataset, tmp_path):
    folder = tmp_path / "exp"
    run(config(dataset, "bald", rounds=1), folder)
    first = selections(folder)
    run(config(dataset, "bald", rounds=3), folder)
    assert selections(folder)[:2] == first and len(selections(folder)) == 4


def test_a_non_empty_folder_without_an_experiment_is_refused(dataset, tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no nnal experiment"):
        run(config(dataset), folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_same_seed_same_everything_other_seed_other_start(dataset, tmp_path):
    run(config(dataset, "badge"), tmp_path / "a")
    run(config(dataset, "badge"), tmp_path / "b")
    run(config(dataset, "badge", seed=1), tmp_path / "c")
    assert outcome(tmp_path / "a") == outcome(tmp_path / "b")
    assert selections(tmp_path / "a")[0] != selections(tmp_path / "c")[0]


def test_an_option_written_out_at_its_default_resumes(dataset, tmp_path):
    """``use_variance: false`` is the default: the same experiment as no option at all."""
    run(config(dataset, "meanstd", rounds=1), tmp_path / "exp")
    run(config(dataset, "meanstd", rounds=2, strategy_options={"use_variance": False}), tmp_path / "exp")
    assert len(selections(tmp_path / "exp")) == 3


def test_a_folder_filled_by_another_process_before_the_lock_is_checked_again(dataset, tmp_path, monkeypatch):
    """Between the first check and taking the lock another run may start the same folder: checked again."""
    import nnal.loop

    real_validate = nnal.loop.validate
    started = {"done": False}

    def validate_while_another_run_starts(ds):
        if not started["done"]:
            started["done"] = True
            run(config(dataset, "bald", rounds=0), tmp_path / "exp")
        return real_validate(ds)

    monkeypatch.setattr(nnal.loop, "validate", validate_while_another_run_starts)
    with pytest.raises(ConfigError, match="differs in .*seed"):
        run(config(dataset, "bald", rounds=0, seed=1), tmp_path / "exp")
    assert ExperimentFolder(tmp_path / "exp").read_config().seed == 0
