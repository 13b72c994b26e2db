"""The redundancy scenario (the paper's Appendix E) on the fake backend: the pool with a duplicated case, round 0 as
without it, USIMF against uniform sampling from the query set, the report's share table, and refused cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_one_line_error, make_nnunet_dataset, run_cli

from nnal.analysis.redundancy import redundancy_shares
from nnal.backend.fake import FakeBackend, FakeFactory, FakeModel, fake_backend
from nnal.config import Config
from nnal.dataset import load_dataset
from nnal.errors import ConfigError
from nnal.experiment import ExperimentFolder
from nnal.loop import run_experiment
from nnal.pool import SlicePool
from nnal.strategies import get_strategy
from nnal.strategies.usim_uniform import uniform_from_query

CASE, COPIES = "case_002", 2  # fake split, fold 0: case_000 and case_005 are the test set, case_001..004 the pool


pytestmark = pytest.mark.usefixtures("no_fsync")


@pytest.fixture(scope="module")
def dataset(toy_dataset) -> Path:
    return toy_dataset


def config(dataset: Path, strategy: str = "usimf", redundancy: dict | None = None, **changes) -> Config:
    values = dict(dataset=str(dataset), strategy=strategy, rounds=2, initial=5, budget=6, iterations_per_epoch=2,
                  epochs_initial=1, epochs_per_round=1, mc_passes=3,
                  redundancy={"case": CASE, "copies": COPIES} if redundancy is None else redundancy)
    return Config(**{**values, **changes})


class WithSplits(FakeFactory):
    """The fake backend factory, also telling its split beforehand (as ``nnunet_backend`` does); keeps its backends
    and, given a list, records the labeled slices of every training call in it."""

    def __init__(self, trained: list | None = None):
        self.backends: list[FakeBackend] = []
        self.trained = trained

    def __call__(self, dataset, cache, cfg):
        backend = fake_backend(dataset, cache, cfg)
        if self.trained is not None:
            train, trained = backend.train, self.trained

            def record(fold, labeled, *args, **kwargs):
                trained.append({k: np.asarray(v) for k, v in labeled.items()})
                return train(fold, labeled, *args, **kwargs)

            backend.train = record
        self.backends.append(backend)
        return backend



def run(cfg: Config, folder: Path, factory=fake_backend) -> pd.DataFrame:
    return run_experiment(cfg, folder, progress=False, backend_factory=factory)


# --- the pool -----------------------------------------------------------------------------------------------------


def _pool() -> SlicePool:
    counts = {"b": np.array([[10, 0], [5, 5]]), "a": np.array([[8, 2], [9, 1], [10, 0]]), "c": np.array([[7, 3]])}
    return SlicePool.from_counts(counts, duplicate="b", copies=2)


def test_copies_follow_their_case_and_ids_stay_in_table_order(tmp_path):
    pool = _pool()
    assert pool.table[["id", "case", "slice", "copy"]].values.tolist() == [
        [0, "a", 0, 0], [1, "a", 1, 0], [2, "a", 2, 0],
        [3, "b", 0, 0], [4, "b", 1, 0], [5, "b", 0, 1], [6, "b", 1, 1], [7, "b", 0, 2], [8, "b", 1, 2],
        [9, "c", 0, 0]]
    assert pool.original_ids().tolist() == [0, 1, 2, 3, 4, 9]
    # scoring: one entry per id in id order, a repeated slice once per copy
    ids, cases = pool.ordered_by_case([9, 7, 4, 0, 5])
    assert ids.tolist() == [0, 4, 5, 7, 9]
    assert [(c, s.tolist()) for c, s in cases] == [("a", [0]), ("b", [1, 0, 0]), ("c", [0])]
    flat = [(c, z) for c, s in cases for z in s]
    assert flat == [tuple(r) for r in pool.table.loc[ids, ["case", "slice"]].values.tolist()]
    # training and annotated voxels: each (case, slice) once
    assert {k: v.tolist() for k, v in pool.by_case([3, 5, 7, 8]).items()} == {"b": [0, 1]}
    np.testing.assert_array_equal(pool.class_voxels([3, 5, 7, 8]), [15, 5])
    (tmp_path / "pool.csv").write_text(pool.save_csv())
    pd.testing.assert_frame_equal(SlicePool.load(tmp_path / "pool.csv").table, pool.table)


def test_a_pool_saved_without_the_copy_column_reads_as_originals(tmp_path):
    plain = SlicePool.from_counts({"a": np.array([[8, 2], [9, 1]])})
    (tmp_path / "pool.csv").write_text(plain.table.drop(columns="copy").to_csv(index=False))
    loaded = SlicePool.load(tmp_path / "pool.csv")
    assert loaded.table.columns.tolist() == ["id", "case", "slice", "copy", "vox_0", "vox_1"]
    assert loaded.table["copy"].tolist() == [0, 0] and loaded.original_ids().tolist() == [0, 1]


def test_the_fake_model_scores_duplicates_like_their_originals(dataset, tmp_path):
    backend = fake_backend(load_dataset(str(dataset)), tmp_path, None)
    pool = SlicePool.from_counts(backend.slice_counts(["case_001", CASE]), duplicate=CASE, copies=2)
    weights = backend.train(0, pool.by_case(range(10)), None, 1, None, tmp_path, 0)
    ids, cases = pool.ordered_by_case(np.arange(len(pool)))
    entropy = FakeModel(backend, weights).scores(cases, {"entropy"}, mc_passes=2, batch_size=4, seed=0)["entropy"]
    table = pool.table.set_index("id")
    for copy in (1, 2):  # row by row, the k-th copy's score is its original's
        dup = table.index[table["copy"] == copy]
        orig = [table.index[(table["case"] == CASE) & (table["slice"] == z) & (table["copy"] == 0)][0]
                for z in table.loc[dup, "slice"]]
        np.testing.assert_array_equal(entropy[np.searchsorted(ids, dup)], entropy[np.searchsorted(ids, orig)])


# --- the loop -----------------------------------------------------------------------------------------------------


def test_round0_is_the_one_without_redundancy(dataset, tmp_path):
    plain = config(dataset, rounds=0).replace(redundancy=None)
    run(plain, tmp_path / "plain")
    run(config(dataset, rounds=0), tmp_path / "dup")
    pool = pd.read_csv(tmp_path / "dup" / "pool.csv")
    assert len(pool) == 32 + COPIES * 8 and (pool.loc[pool["copy"] > 0, "case"] == CASE).all()
    a = pd.read_csv(tmp_path / "plain" / "round_000" / "selection.csv")
    b = pd.read_csv(tmp_path / "dup" / "round_000" / "selection.csv")
    assert a[["case", "slice"]].values.tolist() == b[["case", "slice"]].values.tolist()
    assert (pool.set_index("id").loc[b["id"], "copy"] == 0).all()
    ma = pd.read_csv(tmp_path / "plain" / "round_000" / "metrics.csv")
    mb = pd.read_csv(tmp_path / "dup" / "round_000" / "metrics.csv")
    np.testing.assert_array_equal(ma["dice"], mb["dice"])


@pytest.fixture(scope="module")
def scenario(dataset, tmp_path_factory):
    """Two-round runs with redundancy: USIMF, and USIMF with uniform sampling from the query set; their backends."""
    root = tmp_path_factory.mktemp("redundancy")
    made = {}
    for name, options in (("flqmi", {}), ("uniform", {"selection": "uniform"})):
        factory = WithSplits(trained=[])
        run(config(dataset, strategy_options=options, experiment=f"redundancy-{name}"), root / name,
            factory=factory)
        made[name] = (root / name, factory.backends[-1], factory.trained)
    return made


def _direct_counts(folder: Path) -> list[dict]:
    """Per round >= 1, counted straight from pool.csv, selection.csv and scores.npz."""
    exp = ExperimentFolder(folder)
    case_of = pd.read_csv(exp.pool_file).set_index("id")["case"]
    out = []
    for r in (1, 2):
        scores = exp.read_scores(r)
        drawn = scores["ids"][scores["query"]]
        sel = exp.read_selection(r)["id"].to_numpy()
        out.append({"round": r, "Q": len(drawn), "query_from_case": int((case_of[drawn] == CASE).sum()),
                    "distinct": len(set(drawn.tolist())),
                    "distinct_from_case": int((case_of[np.unique(drawn)] == CASE).sum()),
                    "batch": len(sel), "batch_from_case": int((case_of[sel] == CASE).sum())})
    return out


@pytest.mark.parametrize("name", ["flqmi", "uniform"])
def test_the_share_table_counts_what_the_files_hold(name, scenario):
    folder, backend, _ = scenario[name]
    table = redundancy_shares([folder])
    assert table["round"].tolist() == [1, 2]
    assert table["selection"].tolist() == [name] * 2 and (table["case"] == CASE).all()
    assert (table["copies"] == COPIES).all()
    want = _direct_counts(folder)
    for col in want[0]:
        assert table[col].tolist() == [w[col] for w in want], col
    np.testing.assert_allclose(table["query_share"], [w["query_from_case"] / w["Q"] for w in want])
    np.testing.assert_allclose(table["batch_share"], [w["batch_from_case"] / w["batch"] for w in want])
    assert (table["query_from_case"] > 0).all()  # the duplicated case is a large part of this pool
    # uniform sampling never computes gradient embeddings; FLQMI does
    assert ("gradients" in backend.calls) == (name == "flqmi")


def test_both_variants_draw_the_same_query_set_and_uniform_selects_from_it(scenario):
    flqmi, uniform = (ExperimentFolder(scenario[k][0]) for k in ("flqmi", "uniform"))
    a, b = flqmi.read_scores(1), uniform.read_scores(1)
    np.testing.assert_array_equal(a["ids"][a["query"]], b["ids"][b["query"]])
    picked = uniform.read_selection(1)["id"].to_numpy()
    assert np.isin(picked, b["ids"][b["query"]]).all()
    assert b["grad_embeddings"].shape == (len(b["ids"]), 0) and b["fisher"].shape == (0,)


@pytest.mark.parametrize("name", ["flqmi", "uniform"])
def test_training_sees_each_slice_once(name, scenario):
    folder, _, seen = scenario[name]
    assert len(seen) == 3
    for labeled in seen:
        for slices in labeled.values():
            assert len(np.unique(slices)) == len(slices)
    pool = pd.read_csv(folder / "pool.csv").set_index("id")
    ids = np.concatenate([pd.read_csv(p)["id"].to_numpy() for p in sorted(folder.glob("round_*/selection.csv"))])
    distinct = pool.loc[ids].drop_duplicates(["case", "slice"])
    assert sum(len(s) for s in seen[-1].values()) == len(distinct)


def test_the_report_shows_the_share_table_only_with_redundancy(scenario, dataset, tmp_path):
    from nnal.analysis import build_report

    index = build_report([scenario["uniform"][0]], tmp_path / "report")
    table = pd.read_csv(tmp_path / "report" / "tables" / "redundancy.csv")
    assert table["round"].tolist() == [1, 2] and "Redundancy scenario (Appendix E)" in index.read_text()
    run(config(dataset, rounds=1).replace(redundancy=None), tmp_path / "plain")
    assert redundancy_shares([tmp_path / "plain"]).empty


# --- refused cases ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "words"), [("case_000", ["redundancy.case", "case_000", "test case"]),
                                             ("case_999", ["redundancy.case", "case_999"])])
def test_a_test_or_unknown_case_is_refused_before_anything_is_written(case, words, dataset, tmp_path):
    with pytest.raises(ConfigError) as err:
        run(config(dataset, redundancy={"case": case, "copies": 3}), tmp_path / "out", factory=WithSplits())
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


class SplitUnknown(FakeFactory):
    """A factory that tells no split before its backend is built."""

    def splits(self, dataset, cache):
        return None


def test_a_factory_that_cannot_tell_its_split_still_refuses_a_test_case(dataset, tmp_path):
    with pytest.raises(ConfigError, match="case_000 is a test case"):
        run(config(dataset, redundancy={"case": "case_000", "copies": 3}), tmp_path / "out", factory=SplitUnknown())
    assert not (tmp_path / "out" / "pool.csv").exists()


def test_a_pool_subset_without_the_case_is_refused_naming_the_drawn_cases(dataset, tmp_path):
    drawn = None
    for case in ("case_001", "case_002", "case_003", "case_004"):
        try:
            run(config(dataset, rounds=0, pool_cases=2, redundancy={"case": case, "copies": 1}), tmp_path / case,
                factory=WithSplits())
        except ConfigError as err:
            assert "not among the 2 pool cases" in str(err) and not (tmp_path / case).exists()
            drawn = str(err)
    assert drawn is not None  # two of the four training cases are left out of a 2-case pool


def test_the_cli_refuses_a_test_case_of_nnunets_split_in_one_line(tmp_path):
    from nnal.backend.splits import fold_splits

    data = make_nnunet_dataset(tmp_path / "Dataset001_Toy", n_cases=5)
    test_case = fold_splits(load_dataset(str(data)), tmp_path / "cache")[0]["val"][0]
    for case in (test_case, "nope"):
        cfg = tmp_path / f"{case}.yaml"
        cfg.write_text(yaml.safe_dump({"dataset": str(data), "redundancy": {"case": case, "copies": 100}}))
        result = run_cli(["run", "--config", cfg, "--output", tmp_path / case])
        assert_one_line_error(result, ["redundancy.case", case])
        assert not (tmp_path / case).exists() and not (tmp_path / "cache").exists()


# --- uniform sampling from the query set ---------------------------------------------------------------------------


class Scripted:
    """A Generator stand-in with a given permutation; ``choice`` takes the first ``size`` candidates."""

    def __init__(self, order):
        self.order = np.asarray(order)

    def permutation(self, n):
        assert n == len(self.order)
        return self.order

    def choice(self, a, size, replace):
        assert not replace
        return np.asarray(a)[:size]


def test_uniform_sampling_by_hand():
    query = np.array([4, 4, 1, 4, 6])
    # draws in the order 3, 0, 2, 1, 4: slices 4, 4, 1, 4, 6 -> first appearances 4, 1, 6
    assert uniform_from_query(query, 8, 2, Scripted([3, 0, 2, 1, 4])).tolist() == [4, 1]
    assert uniform_from_query(query, 8, 3, Scripted([4, 2, 0, 1, 3])).tolist() == [6, 1, 4]
    # fewer distinct slices than the budget: the rest from the other positions (0, 2, 3, 5, 7) -> 0, 2
    assert uniform_from_query(query, 8, 5, Scripted([3, 0, 2, 1, 4])).tolist() == [4, 1, 6, 0, 2]
    assert uniform_from_query(query, 8, 0, Scripted([3, 0, 2, 1, 4])).tolist() == []
    with pytest.raises(ValueError, match="query positions"):
        uniform_from_query(query, 5, 2, np.random.default_rng(0))


def test_uniform_sampling_follows_the_draw_counts():
    # slice 0 holds 45% of the draws, slices 1..55 one draw each: the first pick is slice 0 about 45% of the time
    query = np.concatenate([np.zeros(45, np.int64), np.arange(1, 56)])
    rng = np.random.default_rng(0)
    first = [uniform_from_query(query, 60, 1, rng)[0] for _ in range(4000)]
    assert abs(np.mean(np.asarray(first) == 0) - 0.45) < 0.03


@pytest.mark.parametrize("name", ["usimc", "usimf"])
def test_the_strategies_take_uniform_selection_as_an_option(name):
    rng = np.random.default_rng(1)
    scores = {"ids": np.arange(100, 130), "query": rng.integers(0, 30, size=40), "usim_uncertainty": rng.random(30),
              "labeled_class_voxels": np.array([5.0, 3.0]), "grad_embeddings": np.zeros((30, 0), np.float32),
              "fisher": np.zeros(0, np.float32), "class_variance": rng.random((30, 2)), "variance": rng.random(30)}
    got = get_strategy(name)(scores, 7, np.random.default_rng(2), {"selection": "uniform"})
    want = scores["ids"][uniform_from_query(scores["query"], 30, 7, np.random.default_rng(2))]
    assert got.tolist() == want.tolist()
