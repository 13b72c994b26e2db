"""Experiment bookkeeping: atomic state, the lock, the slice pool, the config."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from nnal.atomic import FolderLock, atomic_write_json
from nnal.backend.partial_labels import MaskedSegmentation, sampling_locations
from nnal.config import PRESETS, Config, ConfigError, build
from nnal.errors import LockedError
from nnal.pool import SlicePool
from nnal.state import PHASES, State


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "s.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temp files left


def test_state_orders_phases_and_survives_reload(tmp_path):
    state = State(tmp_path / "state.json")
    assert not state.done(0, "select")
    state.finish(0, "select", 1.0)
    state.finish(0, "train", 2.0)
    again = State(tmp_path / "state.json")
    assert again.done(0, "select") and again.done(0, "train")
    assert not again.done(0, "evaluate") and not again.done(1, "score")
    assert again.data["seconds"]["0"] == {"select": 1.0, "train": 2.0}
    assert PHASES == ("score", "select", "train", "evaluate")


def test_lock_refuses_a_second_holder(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(LockedError, match="another nnal process"):
            with FolderLock(tmp_path):
                pass
    with FolderLock(tmp_path):  # released after the first exits
        pass


def _pool() -> SlicePool:
    counts = {"b": np.array([[10, 0], [5, 5]]), "a": np.array([[8, 2], [9, 1], [10, 0]])}
    return SlicePool.from_counts(counts)


def test_pool_ids_follow_case_then_slice():
    pool = _pool()
    assert pool.table[["id", "case", "slice"]].values.tolist() == [
        [0, "a", 0], [1, "a", 1], [2, "a", 2], [3, "b", 0], [4, "b", 1]]
    assert pool.num_classes == 2
    assert {k: v.tolist() for k, v in pool.by_case([4, 0, 2]).items()} == {"a": [0, 2], "b": [1]}
    np.testing.assert_array_equal(pool.class_voxels([0, 4]), [13, 7])


def test_pool_roundtrips_through_csv(tmp_path):
    pool = _pool()
    (tmp_path / "pool.csv").write_text(pool.save_csv())
    pd.testing.assert_frame_equal(SlicePool.load(tmp_path / "pool.csv").table, pool.table)


def test_masked_segmentation_hides_unlabeled_slices():
    seg = np.arange(2 * 4 * 3 * 3).reshape(1, 8, 3, 3) % 3
    masked = MaskedSegmentation(seg, np.array([1, 5]), ignore_label=3)
    out = masked[(slice(None), slice(0, 8), slice(0, 3), slice(0, 3))]
    np.testing.assert_array_equal(out[:, [1, 5]], seg[:, [1, 5]])
    assert (np.delete(out, [1, 5], axis=1) == 3).all()
    part = masked[(slice(None), slice(4, 6), slice(1, 2), slice(0, 3))]
    np.testing.assert_array_equal(part[:, 1], seg[:, 5, 1:2])
    assert (part[:, 0] == 3).all()


def test_sampling_locations_lie_in_labeled_slices_only():
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 3, size=(1, 10, 5, 5))
    labeled = np.array([2, 7])
    locs = sampling_locations(seg, labeled, [1, 2], (-1, 0, 1, 2), rng)
    for key, rows in locs.items():
        assert len(rows) and set(rows[:, 1]) <= {2, 7}
        if key in (1, 2):
            assert (seg[0, rows[:, 1], rows[:, 2], rows[:, 3]] == key).all()
    assert len(locs[(-1, 0, 1, 2)]) == 2 * 25


def test_presets_fill_the_schedule():
    for name in PRESETS:
        cfg = Config(dataset="x", preset=name).resolved()
        assert cfg.iterations_per_epoch and cfg.epochs_per_round and cfg.initial_lr
    assert Config(dataset="x", preset="paper").resolved().epochs_per_round == 300
    assert Config(dataset="x", preset="cpu", epochs_per_round=7).resolved().epochs_per_round == 7


@pytest.mark.parametrize("values,message", [
    ({"dataset": "x", "fold": 7}, "fold"),
    ({"dataset": "x", "budget": 0}, "budget"),
    ({"dataset": "x", "bogus": 1}, "unknown key"),
    ({"strategy": "random"}, "dataset"),
    ({"dataset": "x", "preset": "huge"}, "preset"),
])
def test_bad_config_is_rejected_with_the_field_name(values, message):
    with pytest.raises(ConfigError, match=message):
        build(values).resolved()


@pytest.mark.parametrize("splits,message", [
    ([{"train": ["a", "b"], "val": ["b"]}], "both train and val"),
    ([{"train": ["a"], "val": ["zz"]}], "does not have"),
    ({"train": ["a"]}, "list of folds"),
])
def test_a_split_that_leaks_test_cases_or_names_other_cases_is_refused(splits, message, tmp_path):
    from nnal.dataset_checks import check_splits
    from nnal.errors import DatasetError

    with pytest.raises(DatasetError, match=message):
        check_splits(splits, ["a", "b", "c"], tmp_path / "splits_final.json")
    assert check_splits([{"train": ["a", "b"], "val": ["c"]}], ["a", "b", "c"], tmp_path) == [
        {"train": ["a", "b"], "val": ["c"]}]


def test_one_round_is_the_strategys_own_property():
    """The full-label reference labels the pool at once: its last round is 0 whatever ``rounds`` says; a selection
    strategy ends at ``rounds``."""
    from nnal.config import Config
    from nnal.strategies import REGISTRY

    assert [name for name, s in REGISTRY.items() if s.single_round] == ["full"]
    assert Config(dataset="x", strategy="full", rounds=4).last_round == 0
    assert Config(dataset="x", strategy="usimf", rounds=4).last_round == 4


def test_the_state_counts_finished_steps_and_names_the_next(tmp_path):
    """A fresh experiment starts with round 0's selection (round 0 is never scored); after round 0 it scores round
    1; the count of finished (round, phase) steps is what a grid's progress divides by (rounds + 1) x 4."""
    from nnal.state import State

    state = State(tmp_path / "state.json")
    assert (state.phases_done(), state.next_step()) == (0, (0, "select"))
    state.finish(0, "evaluate", 1.0)
    assert (state.phases_done(), state.next_step()) == (4, (1, "score"))
    state.finish(1, "select", 1.0)
    assert (state.phases_done(), state.next_step()) == (6, (1, "train"))
