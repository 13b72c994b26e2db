"""The active-learning loop end to end on the fake backend (no nnU-Net, no torch), in seconds: resume after a crash
at every phase boundary and inside phases, selection bookkeeping, round-0 sharing, the lock, config reconciliation
and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnal.atomic import FolderLock
from nnal.backend.fake import FakeBackend, FakeFactory, FakeModel, fake_backend
from nnal.config import Config
from nnal.errors import ConfigError, LockedError
from nnal.experiment import ExperimentFolder
from nnal.loop import run_experiment

ROUNDS = 3
BOUNDARIES = [(r, p) for r in range(ROUNDS + 1)
              for p in (("select", "train", "evaluate") if r == 0 else ("score", "select", "train", "evaluate"))]
POOL = 32  # 6 cases; fold 0 keeps 2 as the test set: 4 pool cases x 8 slices


class Crash(Exception):
    """A simulated kill of the process."""


pytestmark = pytest.mark.usefixtures("no_fsync")


@pytest.fixture(scope="module")
def dataset(toy_dataset) -> Path:
    return toy_dataset


def config(dataset: Path, strategy: str = "bald", **changes) -> Config:
    values = dict(dataset=str(dataset), strategy=strategy, rounds=ROUNDS, initial=5, budget=4, iterations_per_epoch=2,
                  epochs_initial=1, epochs_per_round=1, mc_passes=3)
    return Config(**{**values, **changes})


class Recorder(FakeFactory):
    """A backend factory that keeps every FakeBackend it makes; ``calls`` is the last one's list of operations."""

    def __init__(self):
        self.backends: list[FakeBackend] = []

    def __call__(self, dataset, cache, cfg):
        self.backends.append(fake_backend(dataset, cache, cfg))
        return self.backends[-1]

    @property
    def calls(self) -> list[str]:
        return self.backends[-1].calls


def run(cfg: Config, folder: Path, factory=fake_backend, **kwargs) -> pd.DataFrame:
    return run_experiment(cfg, folder, progress=False, backend_factory=factory, **kwargs)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, .lock and environment.json included: for before/after comparisons of ONE folder."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def artifacts(folder: Path) -> dict:
    """What decides the result, comparable ACROSS folders: every file but .lock (a pid), environment.json (argv and
    the folder's own cache path) and state.json (wall-clock seconds; see ``finished``); .npz and .pt files
    (scores, checkpoints) by their arrays, since zip members carry a timestamp."""
    out: dict = {}
    for rel, data in snapshot(folder).items():
        if rel in (".lock", "environment.json", "state.json"):
            continue
        if rel.endswith((".npz", ".pt")):
            with np.load(Path(folder) / rel) as z:
                data = {k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files}
        out[rel] = data
    return out


def finished(folder: Path) -> tuple:
    """state.json without the seconds: the last finished (round, phase) and the phases timed in each round."""
    state = json.loads((Path(folder) / "state.json").read_text())
    return state["round"], state["phase"], {r: sorted(p) for r, p in state["seconds"].items()}


def assert_same_experiment(folder: Path, expected: Path) -> None:
    got, want = artifacts(folder), artifacts(expected)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []  # the names of the files that differ
    assert finished(folder) == finished(expected)


def selections(folder: Path) -> list[np.ndarray]:
    return [pd.read_csv(p)["id"].to_numpy() for p in sorted(Path(folder).glob("round_*/selection.csv"))]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """Uninterrupted runs, one per (strategy, changes), made on first use."""
    made: dict[str, Path] = {}

    def get(strategy: str = "bald", **changes) -> Path:
        key = repr((strategy, sorted(changes.items())))
        if key not in made:
            made[key] = tmp_path_factory.mktemp("reference") / "exp"
            run(config(dataset, strategy, **changes), made[key])
        return made[key]

    return get


def crash_after_finish(mp: pytest.MonkeyPatch, at: tuple[int, str]) -> None:
    """The real finish (state.json written), then a kill when it was (round, phase) ``at``."""
    real = ExperimentFolder.finish

    def finish(self, round_, phase, seconds):
        real(self, round_, phase, seconds)
        if (round_, phase) == at:
            raise Crash(at)

    mp.setattr(ExperimentFolder, "finish", finish)


def crash_on_call(mp: pytest.MonkeyPatch, owner: type, name: str, n: int, after: bool) -> None:
    """A kill at the ``n``-th call of ``owner.name``: before it runs, or after it returned (its file written)."""
    real, count = getattr(owner, name), [0]

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] == n and not after:
            raise Crash(name)
        out = real(*args, **kwargs)
        if count[0] == n:
            raise Crash(name)
        return out

    mp.setattr(owner, name, wrapper)


# --- 1. resume ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("at", BOUNDARIES, ids=[f"{r}-{p}" for r, p in BOUNDARIES])
def test_kill_after_each_state_write_then_resume_equals_uninterrupted(at, dataset, reference, tmp_path):
    cfg, folder = config(dataset, "bald"), tmp_path / "exp"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Crash):
        crash_after_finish(mp, at)
        run(cfg, folder)
    assert finished(folder)[:2] == at
    recorder = Recorder()
    run(cfg, folder, recorder)
    assert_same_experiment(folder, reference("bald"))
    later = BOUNDARIES[BOUNDARIES.index(at) + 1:]  # the resumed run redoes no finished phase
    for phase, call in (("score", "scores"), ("train", "train"), ("evaluate", "evaluate")):
        assert recorder.calls.count(call) == sum(p == phase for _, p in later)


@pytest.mark.parametrize("strategy", ["usimf"])  # bald: one folder per boundary, above
def test_kill_at_every_boundary_in_turn_on_one_folder(strategy, dataset, reference, tmp_path):
    cfg, folder = config(dataset, strategy), tmp_path / "exp"
    for at in BOUNDARIES[:-1]:  # each run resumes the previous one's kill and runs one phase
        with pytest.MonkeyPatch.context() as mp, pytest.raises(Crash):
            crash_after_finish(mp, at)
            run(cfg, folder)
    run(cfg, folder)
    assert_same_experiment(folder, reference(strategy))


INSIDE = [  # (strategy, owner, method, n-th call, after the call returned)
    ("bald", FakeBackend, "train", 3, False),  # round 2 training, nothing written
    ("bald", FakeBackend, "evaluate", 2, False),  # round 1 evaluation, nothing written
    ("bald", FakeModel, "scores", 3, False),  # round 3 model pass
    ("usimf", FakeModel, "gradient_embeddings", 4, False),  # round 2, inside the strategy's prepare step
    ("usimf", ExperimentFolder, "write_scores", 1, True),  # round 1: scores.npz written, state not
    ("random", ExperimentFolder, "write_selection", 2, True),  # round 1: selection.csv written, state not
    ("bald", ExperimentFolder, "write_checkpoint", 3, True),  # round 2: checkpoint written, state not
    ("bald", ExperimentFolder, "write_metrics", 4, True),  # round 3: metrics.csv written, results.csv not
    ("bald", ExperimentFolder, "write_results", 1, True),  # round 0: results.csv written, state not
]


@pytest.mark.parametrize("strategy,owner,name,n,after", INSIDE, ids=[f"{s}-{m}-{n}" for s, _, m, n, _ in INSIDE])
def test_kill_inside_a_phase_then_resume_equals_uninterrupted(strategy, owner, name, n, after, dataset, reference,
                                                              tmp_path):
    cfg, folder = config(dataset, strategy), tmp_path / "exp"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Crash):
        crash_on_call(mp, owner, name, n, after)
        run(cfg, folder)
    assert not any(p.name.endswith(".tmp") for p in folder.rglob("*"))
    run(cfg, folder)
    assert_same_experiment(folder, reference(strategy))


# --- 2. selection bookkeeping -------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy,initial,budget,rounds,sizes", [
    ("random", 5, 4, 3, [5, 4, 4, 4]),
    ("usimf", 5, 10, 5, [5, 10, 10, 7]),  # the last round takes the 7 left; rounds 4 and 5 have nothing to select
    ("bald", 5, 100, 3, [5, 27]),  # a budget beyond the pool takes the rest
    ("bald", 40, 4, 3, [32]),  # an initial set beyond the pool is the whole pool
])
def test_selection_sizes_disjoint_and_stop_when_pool_exhausted(strategy, initial, budget, rounds, sizes, dataset,
                                                               tmp_path):
    cfg, folder = config(dataset, strategy, initial=initial, budget=budget, rounds=rounds), tmp_path / "exp"
    results = run(cfg, folder)
    chosen = selections(folder)
    assert [len(c) for c in chosen] == sizes
    everything = np.concatenate(chosen)
    assert len(np.unique(everything)) == len(everything) and set(everything) <= set(range(POOL))
    assert sorted(p.name for p in folder.glob("round_*")) == [f"round_{r:03d}" for r in range(len(sizes))]
    assert results.groupby("round")["n_labeled"].first().tolist() == np.cumsum(sizes).tolist()
    assert finished(folder)[:2] == (len(sizes) - 1, "evaluate")
    pool = pd.read_csv(folder / "pool.csv").set_index("id")
    for r, c in enumerate(chosen):
        sel = pd.read_csv(folder / f"round_{r:03d}" / "selection.csv")
        assert sel[["case", "slice"]].values.tolist() == pool.loc[c, ["case", "slice"]].values.tolist()
        assert sel["score"].isna().all() == (r == 0 or strategy == "random")
    before = snapshot(folder)
    run(cfg, folder)  # rerunning a finished (or exhausted) experiment changes nothing
    assert snapshot(folder) == before


def test_full_trains_once_on_every_pool_slice(dataset, tmp_path):
    recorder, folder = Recorder(), tmp_path / "exp"
    results = run(config(dataset, "full"), folder, recorder)
    assert recorder.calls == ["train", "evaluate"]
    assert sorted(selections(folder)[0]) == list(range(POOL)) and len(selections(folder)) == 1
    assert results["round"].unique().tolist() == [0] and results["n_labeled"].unique().tolist() == [POOL]
    assert ExperimentFolder(folder).read_config().rounds == 0


@pytest.mark.parametrize("fold", [0, 3])
def test_test_cases_never_enter_the_pool(fold, dataset, tmp_path):
    recorder, folder = Recorder(), tmp_path / "exp"
    results = run(config(dataset, "random", fold=fold, rounds=1), folder, recorder)
    split = recorder.backends[0].splits[fold]
    pool_cases = set(pd.read_csv(folder / "pool.csv")["case"])
    assert pool_cases == set(split["train"]) and not pool_cases & set(split["val"])
    assert (folder / "test_cases.txt").read_text().split() == sorted(split["val"])
    assert set(results["case"]) == set(split["val"])


# --- 3. round-0 sharing -------------------------------------------------------------------------------------------


def test_round0_is_shared_between_strategies_without_training(dataset, reference, tmp_path):
    source, folder, recorder = reference("bald"), tmp_path / "exp", Recorder()
    results = run(config(dataset, "entropy", rounds=1, budget=6), folder, recorder, share_round0=source)
    assert recorder.calls == ["scores", "train", "evaluate"]  # round 1 only: round 0 was not trained
    round0 = artifacts(folder)
    assert {k: v for k, v in round0.items() if k.startswith("round_000/") and k != "round_000/metrics.csv"} == \
        {k: v for k, v in artifacts(source).items() if k.startswith("round_000/") and k != "round_000/metrics.csv"}
    mine, theirs = (pd.read_csv(f / "round_000" / "metrics.csv") for f in (folder, source))
    pd.testing.assert_frame_equal(mine.drop(columns=["experiment", "strategy"]),
                                  theirs.drop(columns=["experiment", "strategy"]))
    assert set(mine["strategy"]) == {"entropy"} and set(mine["experiment"]) == {"Dataset001_Toy-entropy-f0-s0"}
    pd.testing.assert_frame_equal(results[results["round"] == 0].reset_index(drop=True), mine)
    assert finished(folder)[:2] == (1, "evaluate")


def test_round0_is_not_shared_when_a_round0_field_differs(dataset, reference, tmp_path):
    recorder = Recorder()
    run(config(dataset, "entropy", rounds=1, initial=6), tmp_path / "exp", recorder, share_round0=reference("bald"))
    assert recorder.calls == ["train", "evaluate", "scores", "train", "evaluate"]
    assert len(selections(tmp_path / "exp")[0]) == 6



def test_full_neither_takes_nor_lends_round0(dataset, reference, tmp_path):
    run(config(dataset, "full"), tmp_path / "full", share_round0=reference("bald"))
    run(config(dataset, "random"), tmp_path / "random", share_round0=reference("full"))
    assert [len(c) for c in selections(tmp_path / "full")] == [POOL]  # not bald's 5 slices
    assert len(selections(tmp_path / "random")[0]) == 5  # not the whole pool

# --- 4. lock ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["fresh", "crashed", "done"])
def test_locked_folder_is_refused_and_left_untouched(state, dataset, tmp_path):
    cfg, folder = config(dataset, "random"), tmp_path / "exp"
    if state != "fresh":
        with pytest.MonkeyPatch.context() as mp:
            if state == "crashed":
                crash_after_finish(mp, (1, "select"))
            try:
                run(cfg, folder)
            except Crash:
                pass
    with FolderLock(folder):
        before = snapshot(folder)
        with pytest.raises(LockedError):
            run(cfg, folder)
        assert snapshot(folder) == before
    assert not run(cfg, folder).empty  # once released, the same folder runs


# --- 5. config reconciliation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [dict(seed=1), dict(budget=3), dict(initial=4), dict(mc_passes=4),
                                    dict(strategy="bald"), dict(strategy_options={"use_variance": True})],
                         ids=lambda c: next(iter(c)))
def test_resume_with_a_result_deciding_change_is_refused(change, dataset, tmp_path):
    folder = tmp_path / "exp"
    run(config(dataset, "meanstd", experiment="same", rounds=1), folder)
    before = snapshot(folder)
    with pytest.raises(ConfigError, match="differs"):
        run(config(dataset, **{"strategy": "meanstd", "experiment": "same", "rounds": 1, **change}), folder)
    assert snapshot(folder) == before


def test_more_rounds_extend_the_experiment(dataset, reference, tmp_path):
    folder = tmp_path / "exp"
    run(config(dataset, "bald", rounds=1), folder)
    before = snapshot(folder)
    run(config(dataset, "bald", rounds=ROUNDS, device="cpu"), folder)  # device: also resumable
    after = snapshot(folder)
    for rel in before:
        if rel.startswith(("round_000/", "round_001/")):
            assert after[rel] == before[rel], rel
    expected = reference("bald", device="cpu")
    assert_same_experiment(folder, expected)


def test_non_empty_folder_without_config_is_refused(dataset, tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match="config.yaml"):
        run(config(dataset), folder)
    assert snapshot(folder) == {"notes.txt": b"mine\n"}


# --- 6. determinism -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["random", "bald"])
def test_same_seed_same_experiment_other_seed_other_selection(strategy, dataset, reference, tmp_path):
    run(config(dataset, strategy), tmp_path / "again")
    assert_same_experiment(tmp_path / "again", reference(strategy))
    run(config(dataset, strategy, seed=1), tmp_path / "seed1")
    assert not np.array_equal(np.sort(selections(tmp_path / "seed1")[0]), np.sort(selections(reference(strategy))[0]))


def test_an_option_written_out_at_its_default_resumes(dataset, tmp_path):
    """``use_variance: false`` is the default: the same experiment as no option at all."""
    run(config(dataset, "meanstd", rounds=1), tmp_path / "exp")
    run(config(dataset, "meanstd", rounds=2, strategy_options={"use_variance": False}), tmp_path / "exp")
    assert len(selections(tmp_path / "exp")) == 3


def test_a_folder_filled_by_another_process_before_the_lock_is_checked_again(dataset, tmp_path, monkeypatch):
    """Between the first check and taking the lock another run may start the same folder: checked again."""
    import nnal.run_checks

    real_validate = nnal.run_checks.validate
    started = {"done": False}

    def validate_while_another_run_starts(ds):
        if not started["done"]:
            started["done"] = True
            run(config(dataset, "bald", rounds=0), tmp_path / "exp")
        return real_validate(ds)

    monkeypatch.setattr(nnal.run_checks, "validate", validate_while_another_run_starts)
    with pytest.raises(ConfigError, match="differs in .*seed"):
        run(config(dataset, "bald", rounds=0, seed=1), tmp_path / "exp")
    assert ExperimentFolder(tmp_path / "exp").read_config().seed == 0


def test_a_budget_schedule_gives_each_round_its_budget(dataset, tmp_path):
    """The paper's larger last rounds: ``budget`` as a list, one entry per round (the last one repeats)."""
    results = run(config(dataset, "bald", budget=[2, 3, 6]), tmp_path / "exp")
    assert [len(c) for c in selections(tmp_path / "exp")] == [5, 2, 3, 6]
    assert results.groupby("round")["n_labeled"].first().tolist() == [5, 7, 10, 16]
    run(config(dataset, "bald", budget=[2]), tmp_path / "short")
    assert [len(c) for c in selections(tmp_path / "short")] == [5, 2, 2, 2]


def test_the_report_tables_usim_query_sets_per_round(dataset, tmp_path):
    from nnal.analysis.load import query_sets

    run(config(dataset, "usimf", budget=3), tmp_path / "usimf")
    table = query_sets([tmp_path / "usimf"])
    assert table["round"].tolist() == [1, 2, 3]
    scores = ExperimentFolder(tmp_path / "usimf").read_scores(1)
    assert table["Q"].iloc[0] == len(scores["query"]) >= 3  # never below the budget
    assert table["distinct"].iloc[0] == len(np.unique(scores["query"]))
    assert {"share_1", "share_2"} <= set(table.columns) and table["share_1"].between(0, 1).all()
