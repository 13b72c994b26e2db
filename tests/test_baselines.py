"""random-fg, nnActive's foreground-aware Random: a share of the budget among slices whose ground truth holds
foreground, the rest uniform; its per-class variant; the pool view that carries the counts; the human-oracle refusal."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from conftest import assert_one_line_error, run_cli
from scipy.stats import chisquare

from nnal.backend.fake import fake_backend
from nnal.config import Config, build
from nnal.errors import ConfigError
from nnal.loop import pool_view, run_experiment
from nnal.pool import SlicePool
from nnal.strategies import get_strategy, variant_label
from nnal.strategies.baselines import class_balanced_draw, share_count, split_evenly

RANDOM_FG = get_strategy("random-fg")


def pool_scores(voxels: list[list[int]], first_id: int = 100) -> dict[str, np.ndarray]:
    """Scores of a hand-built pool: ids first_id, first_id + 2, ... with these foreground voxel counts."""
    voxels = np.asarray(voxels, dtype=np.int64)
    return {"ids": np.arange(first_id, first_id + 2 * len(voxels), 2, dtype=np.int64), "class_voxels": voxels}


# 20 slices: 6 with foreground (positions 0, 3, 6, 9, 12, 15), the others empty
TWENTY = pool_scores([[7, 0] if k % 3 == 0 and k < 18 else [0, 0] for k in range(20)])
FOREGROUND_IDS = set(TWENTY["ids"][[0, 3, 6, 9, 12, 15]].tolist())


def test_share_count_is_the_floor_and_even_splits_draw_nothing():
    assert [share_count(b, 0.66) for b in (1, 2, 3, 10, 100)] == [0, 1, 1, 6, 66]  # int(B * 0.66), nnActive's
    assert share_count(100, 0.29) == 29 and share_count(7, 1.0) == 7 and share_count(7, 0.0) == 0
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert split_evenly(6, 3, rng).tolist() == [2, 2, 2] and rng.bit_generator.state == state
    uneven = split_evenly(7, 3, np.random.default_rng(4))
    assert sorted(uneven.tolist()) == [2, 2, 3]
    assert uneven.argmax() == np.random.default_rng(4).permutation(3)[0]  # the extra one: a random class


@pytest.mark.parametrize("seed", range(5))
def test_a_share_of_one_selects_only_foreground_slices(seed):
    chosen = RANDOM_FG(TWENTY, 5, np.random.default_rng(seed), {"fg_share": 1.0})
    assert set(chosen.tolist()) <= FOREGROUND_IDS and len(set(chosen.tolist())) == 5
    # more budget than foreground: every foreground slice, the rest from the empty ones
    chosen = RANDOM_FG(TWENTY, 8, np.random.default_rng(seed), {"fg_share": 1.0})
    assert FOREGROUND_IDS <= set(chosen.tolist()) and len(set(chosen.tolist())) == 8


@pytest.mark.parametrize("seed", range(5))
def test_a_share_of_zero_is_plain_random_with_the_same_generator(seed):
    chosen = RANDOM_FG(TWENTY, 7, np.random.default_rng(seed), {"fg_share": 0.0})
    expected = np.random.default_rng(seed).choice(TWENTY["ids"], size=7, replace=False)
    assert chosen.tolist() == expected.tolist()
    assert chosen.tolist() == get_strategy("random")(TWENTY, 7, np.random.default_rng(seed)).tolist()


def test_the_default_share_draws_its_floor_among_the_foreground_then_uniformly():
    # 10 foreground slices, 10 empty: floor(0.66 x 10) = 6 foreground draws come first, 4 uniform draws after them
    scores = pool_scores([[1, 0]] * 10 + [[0, 0]] * 10)
    for seed in range(20):
        chosen = RANDOM_FG(scores, 10, np.random.default_rng(seed))
        positions = (chosen - 100) // 2
        assert (positions[:6] < 10).all()
        rng = np.random.default_rng(seed)
        first = rng.choice(np.arange(10), size=6, replace=False)
        rest = rng.choice(np.setdiff1d(np.arange(20), first), size=4, replace=False)
        assert positions.tolist() == [*first, *rest]


def test_the_draw_follows_the_exact_distribution():
    # slices 0, 1 with foreground, 2, 3 empty; share 0.5 of a budget of 2: one foreground draw, then one of the
    # other three. P{0,1} = 2 x 1/2 x 1/3 = 1/3, P{0,2} = P{0,3} = P{1,2} = P{1,3} = 1/6, P{2,3} = 0
    scores = pool_scores([[5, 0], [0, 3], [0, 0], [0, 0]], first_id=0)
    pairs = list(combinations([0, 2, 4, 6], 2))
    expected = np.array([1 / 3, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 0.0])
    rng = np.random.default_rng(2024)
    counts = dict.fromkeys(pairs, 0)
    n = 6000
    for _ in range(n):
        counts[tuple(sorted(RANDOM_FG(scores, 2, rng, {"fg_share": 0.5}).tolist()))] += 1
    observed = np.array([counts[p] for p in pairs])
    assert observed[-1] == 0  # two empty slices never: one draw is always foreground
    assert chisquare(observed[:-1], expected[:-1] * n).pvalue > 1e-3


# 40 slices: class 1 in 30 of them, class 2 in 6, 4 empty
CLASSES = pool_scores([[9, 0]] * 30 + [[0, 4]] * 6 + [[0, 0]] * 4)


@pytest.mark.parametrize("seed", range(5))
def test_the_per_class_variant_balances_the_classes(seed):
    chosen = RANDOM_FG(CLASSES, 10, np.random.default_rng(seed), {"fg_share": 1.0, "per_class": True})
    positions = (chosen - 100) // 2
    assert (positions < 30).sum() == 5 and ((positions >= 30) & (positions < 36)).sum() == 5
    # without it, class 2 gets what its frequency among foreground slices gives: 10 x 6/36 on average
    plain = [((RANDOM_FG(CLASSES, 10, np.random.default_rng(s), {"fg_share": 1.0}) - 100) // 2 >= 30).sum()
             for s in range(200)]
    assert np.mean(plain) == pytest.approx(10 * 6 / 36, abs=0.25)


def test_a_class_with_too_few_slices_gives_them_all_and_the_rest_goes_to_the_others():
    presence = np.zeros((12, 3), dtype=bool)
    presence[:9, 0] = True  # class 1: 9 slices
    presence[9:11, 1] = True  # class 2: 2 slices; class 3: none; slice 11 empty
    for seed in range(10):
        drawn = class_balanced_draw(presence, 9, np.random.default_rng(seed))
        assert len(drawn) == len(set(drawn.tolist())) == 9
        assert {9, 10} <= set(drawn.tolist()) and 11 not in drawn  # class 2 gives both, class 1 the other 7
    # more than the foreground holds: all 11 foreground slices, no more
    assert sorted(class_balanced_draw(presence, 20, np.random.default_rng(0)).tolist()) == list(range(11))
    assert len(class_balanced_draw(np.zeros((5, 2), dtype=bool), 3, np.random.default_rng(0))) == 0


def test_a_slice_of_two_classes_counts_for_the_class_that_drew_it():
    presence = np.array([[True, True], [True, False], [False, True], [False, True]])
    for seed in range(10):
        drawn = class_balanced_draw(presence, 2, np.random.default_rng(seed))
        # class 1 draws first, one of slices 0, 1; class 2 then one of its slices left
        assert drawn[0] in (0, 1) and drawn[1] in {0, 2, 3} - {drawn[0]}


def test_options_are_checked_strictly_and_label_the_variant():
    assert variant_label("random-fg") == "random-fg"
    assert variant_label("random-fg", {"fg_share": 0.66}) == "random-fg"
    assert variant_label("random-fg", {"fg_share": 1, "per_class": True}) == "random-fg[fg_share=1,per_class=true]"
    for bad in ({"fg_share": 1.5}, {"fg_share": -0.1}, {"fg_share": "0.5"}, {"per_class": "yes"}, {"share": 0.5}):
        with pytest.raises(ConfigError):
            RANDOM_FG.check_options(bad)
    assert RANDOM_FG.reads_ground_truth and RANDOM_FG.needs_for({}) == ()  # no model pass at all
    assert not get_strategy("random").reads_ground_truth


def test_random_fg_with_a_human_oracle_is_a_one_line_config_error(toy_dataset, tmp_path):
    with pytest.raises(ConfigError, match="random-fg reads the labels of unlabeled slices"):
        build({"dataset": str(toy_dataset), "strategy": "random-fg", "oracle": "human"})
    build({"dataset": str(toy_dataset), "strategy": "random-fg", "oracle": "simulated"})
    out = tmp_path / "human"
    result = run_cli(["run", "--dataset", toy_dataset, "--output", out, "--strategy", "random-fg", "--oracle", "human",
                      "--preset", "cpu"])
    assert_one_line_error(result, ["random-fg", "oracle: simulated"])
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_the_pool_view_carries_the_unlabeled_slices_counts_and_the_round():
    counts = {"a": np.array([[90, 0, 0], [80, 5, 0], [70, 0, 2]]), "b": np.array([[60, 1, 1], [99, 0, 0]])}
    pool = SlicePool.from_counts(counts)
    config = Config(dataset="x", strategy="random-fg", rounds=4)
    view = pool_view(config, pool, np.array([4, 1, 2]), np.array([0, 3]), 2)
    assert view.ids.tolist() == [1, 2, 4]
    assert view.class_voxels.tolist() == [[5, 0], [0, 2], [0, 0]]  # foreground columns, aligned with ids
    assert (view.round, view.rounds) == (2, 4)
    scores = RANDOM_FG.score(None, view)
    assert scores["class_voxels"].tolist() == [[5, 0], [0, 2], [0, 0]] and scores["ids"].tolist() == [1, 2, 4]


def test_random_fg_runs_in_the_loop_on_the_pools_ground_truth(toy_dataset, tmp_path, no_fsync):
    config = Config(dataset=str(toy_dataset), strategy="random-fg", strategy_options={"fg_share": 1.0}, rounds=2,
                    initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1, epochs_per_round=1, mc_passes=3)
    out = tmp_path / "fg"
    run_experiment(config, out, progress=False, backend_factory=fake_backend)
    pool = pd.read_csv(out / "pool.csv")
    foreground = pool[["vox_1", "vox_2"]].to_numpy()
    for r in (1, 2):
        scores = np.load(out / f"round_{r:03d}" / "scores.npz")
        assert scores["class_voxels"].tolist() == foreground[scores["ids"]].tolist()
        chosen = pd.read_csv(out / f"round_{r:03d}" / "selection.csv")["id"].to_numpy()
        assert len(chosen) == 4 and (foreground[chosen].sum(axis=1) > 0).all()
