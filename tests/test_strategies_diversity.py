"""Mean STD, Core-Set, BADGE, Stochastic Batches against hand computations and naive implementations; the registry."""

from __future__ import annotations

import numpy as np
import pytest

from nnal.strategies import REGISTRY, Strategy, get_strategy
from nnal.strategies.diversity import badge_select, coreset_select, stochastic_batches_select


def _ids(n: int) -> np.ndarray:
    return np.arange(100, 100 + n, dtype=np.int64)


# --- Mean STD -------------------------------------------------------------------------------------------------


def test_meanstd_top_k_by_hand() -> None:
    scores = {"ids": _ids(5), "std": np.array([0.1, 0.5, 0.3, 0.5, 0.2]), "variance": np.array([9, 0, 0, 0, 8.0])}
    meanstd = get_strategy("meanstd")
    assert meanstd(scores, 3, np.random.default_rng(0)).tolist() == [101, 103, 102]  # tie 0.5: lower id first
    assert meanstd(scores, 2, np.random.default_rng(0), {"use_variance": True}).tolist() == [100, 104]


def test_meanstd_needs_follow_the_variance_option() -> None:
    meanstd = get_strategy("meanstd")
    assert meanstd.score_key == "std"
    assert meanstd.needs_for() == ("std",)
    assert meanstd.needs_for({"use_variance": False}) == ("std",)
    assert meanstd.needs_for({"use_variance": True}) == ("std", "variance")
    with pytest.raises(ValueError, match="variance"):
        meanstd({"ids": _ids(3), "std": np.ones(3)}, 1, np.random.default_rng(0), {"use_variance": True})


# --- Core-Set -------------------------------------------------------------------------------------------------


def naive_kcenter(x: np.ndarray, labeled: np.ndarray, budget: int, rng: np.random.Generator) -> list[int]:
    centres = list(labeled)
    chosen: list[int] = []
    for _ in range(budget):
        if not centres:
            i = int(rng.integers(len(x)))
        else:
            best, i = -1.0, -1
            for j in range(len(x)):
                if j in chosen:
                    continue
                d = min(float(np.linalg.norm(x[j] - c)) for c in centres)
                if d > best:
                    best, i = d, j
        chosen.append(i)
        centres.append(x[i])
    return chosen


def test_coreset_by_hand() -> None:
    scores = {
        "ids": _ids(4),
        "features": np.array([[0.0], [1.0], [5.0], [10.0]]),
        "labeled_features": np.array([[0.0]]),
    }
    # distances to the labeled point 0: 0, 1, 5, 10 -> pick 10; then min(., |x - 10|): 0, 1, 5 -> pick 5; then 1
    assert get_strategy("coreset")(scores, 3, np.random.default_rng(0)).tolist() == [103, 102, 101]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_labeled", [0, 1, 7])
def test_coreset_equals_brute_force(seed: int, n_labeled: int) -> None:
    data = np.random.default_rng(seed)
    x = data.normal(size=(30, 4)).astype(np.float32)
    labeled = data.normal(size=(n_labeled, 4)).astype(np.float32)
    scores = {"ids": _ids(30), "features": x, "labeled_features": labeled}
    expected = naive_kcenter(x.astype(np.float64), labeled.astype(np.float64), 8, np.random.default_rng(seed))
    for chunk in (5, 1 << 22):  # a block of one row and of the whole pool give the same picks
        got = coreset_select(scores, 8, np.random.default_rng(seed), chunk_elements=chunk)
        assert got.tolist() == _ids(30)[expected].tolist()


def test_coreset_duplicates_and_empty_labeled_shape() -> None:
    scores = {"ids": _ids(6), "features": np.zeros((6, 3)), "labeled_features": np.empty((0,))}
    got = get_strategy("coreset")(scores, 6, np.random.default_rng(1))
    assert sorted(got.tolist()) == _ids(6).tolist()


def test_coreset_rejects_mismatched_labeled_features() -> None:
    scores = {"ids": _ids(3), "features": np.zeros((3, 2)), "labeled_features": np.zeros((2, 5))}
    with pytest.raises(ValueError, match="columns"):
        get_strategy("coreset")(scores, 1, np.random.default_rng(0))


# --- BADGE ----------------------------------------------------------------------------------------------------


def naive_kmeanspp(x: np.ndarray, budget: int, rng: np.random.Generator) -> list[int]:
    chosen = [int(np.argmax([float(row @ row) for row in x]))]
    while len(chosen) < budget:
        d2 = np.array(
            [0.0 if j in chosen else min(float(np.sum((x[j] - x[c]) ** 2)) for c in chosen) for j in range(len(x))]
        )
        positive = np.flatnonzero(d2 > 0)
        cdf = np.cumsum(d2[positive])
        k = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        chosen.append(int(positive[min(k, len(positive) - 1)]))
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_badge_equals_naive_kmeanspp(seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(25, 6))
    expected = naive_kmeanspp(x, 7, np.random.default_rng(seed))
    for chunk in (6, 1 << 22):
        got = badge_select(
            {"ids": _ids(25), "badge_embeddings": x}, 7, np.random.default_rng(seed), chunk_elements=chunk
        )
        assert got.tolist() == _ids(25)[expected].tolist()


def test_badge_first_centre_is_largest_norm_and_second_follows_d2() -> None:
    x = np.array([[10.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    scores = {"ids": _ids(3), "badge_embeddings": x}
    rng = np.random.default_rng(123)
    picks = [badge_select(scores, 2, rng).tolist() for _ in range(3000)]
    assert all(p[0] == 100 for p in picks)
    share = np.mean([p[1] == 101 for p in picks])  # D^2 = 100 vs 81
    assert abs(share - 100 / 181) < 0.03


def test_badge_identical_embeddings_fall_back_to_uniform() -> None:
    scores = {"ids": _ids(5), "badge_embeddings": np.ones((5, 3))}
    got = get_strategy("badge")(scores, 5, np.random.default_rng(0))
    assert sorted(got.tolist()) == _ids(5).tolist() and got[0] == 100


# --- Stochastic Batches ---------------------------------------------------------------------------------------


def test_stochastic_batches_by_hand() -> None:
    entropy = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    perm = np.random.default_rng(7).permutation(7)  # what the strategy draws first from the same seed
    batches = [perm[0:3], perm[3:6]]  # perm[6] is left over
    best = batches[int(np.argmax([entropy[b].sum() for b in batches]))]
    scores = {"ids": _ids(7), "entropy": entropy}
    for reduce in ("sum", "mean"):
        got = get_strategy("stochastic-batches")(scores, 3, np.random.default_rng(7), {"reduce": reduce})
        assert got.tolist() == _ids(7)[best].tolist()
        assert _ids(7)[perm[6]] not in got


def test_stochastic_batches_ties_take_the_first_batch_and_small_pool() -> None:
    scores = {"ids": _ids(9), "entropy": np.ones(9)}
    perm = np.random.default_rng(3).permutation(9)
    got = stochastic_batches_select(scores, 4, np.random.default_rng(3))
    assert got.tolist() == _ids(9)[perm[:4]].tolist()
    whole = stochastic_batches_select(scores, 20, np.random.default_rng(3))
    assert sorted(whole.tolist()) == _ids(9).tolist()
    with pytest.raises(ValueError, match="reduce"):
        stochastic_batches_select(scores, 4, np.random.default_rng(3), reduce="max")


def test_stochastic_batches_as_the_code_ran_it_by_hand() -> None:
    """The code: MC variance instead of entropy, and the N mod B leftovers as a smaller batch of their own."""
    perm = np.random.default_rng(7).permutation(7)
    assert perm.tolist() == [0, 5, 6, 2, 4, 1, 3]  # batches {0, 5, 6}, {2, 4, 1}; slice 3 left over
    variance = np.array([0.0, 0.1, 0.2, 9.0, 0.4, 0.5, 0.6])  # the leftover slice alone outweighs either batch
    entropy = np.array([0.0, 0.1, 0.2, 0.3, 9.0, 0.5, 0.6])  # by entropy the second batch wins
    scores = {"ids": _ids(7), "entropy": entropy, "variance": variance}
    strategy = get_strategy("stochastic-batches")
    assert strategy(scores, 3, np.random.default_rng(7)).tolist() == _ids(7)[[2, 4, 1]].tolist()
    assert strategy(scores, 3, np.random.default_rng(7), {"score": "variance"}).tolist() == _ids(7)[[0, 5, 6]].tolist()
    assert strategy.needs_for({"score": "variance"}) == ("entropy", "variance")
    kept = strategy(scores, 3, np.random.default_rng(7), {"score": "variance", "last_group": "keep"})
    rng = np.random.default_rng(7)
    rng.permutation(7)
    fill = rng.choice(np.array([0, 1, 2, 4, 5, 6]), size=2, replace=False)  # the smaller batch, filled up
    assert kept.tolist() == _ids(7)[[3, *fill]].tolist()


# --- every registered strategy through Strategy.__call__ ------------------------------------------------------


def random_scores(n: int, seed: int) -> dict[str, np.ndarray]:
    data = np.random.default_rng(seed)
    return {
        "ids": data.permutation(np.arange(1000, 1000 + 3 * n, 3, dtype=np.int64)),
        "entropy": data.random(n),
        "bald": data.random(n),
        "std": data.random(n),
        "variance": data.random(n),
        "class_uncertainty": data.random((n, 2)),
        "class_entropy": data.random((n, 2)),
        "features": data.normal(size=(n, 8)).astype(np.float32),
        "labeled_features": data.normal(size=(5, 8)).astype(np.float32),
        "badge_embeddings": data.normal(size=(n, 12)).astype(np.float32),
        "labeled_class_voxels": np.array([500.0, 20.0]),
    }


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("budget", [1, 7, 40, 55])
def test_registered_strategy_contract(name: str, budget: int) -> None:
    strategy: Strategy = REGISTRY[name]
    scores = random_scores(40, seed=budget)
    missing = [key for key in strategy.needs + strategy.provides if key not in scores]
    if missing:
        pytest.skip(f"{name} needs {missing}, not pure per-slice scores")
    chosen = strategy(scores, budget, np.random.default_rng(11))
    assert chosen.dtype == np.int64
    assert len(chosen) == min(budget, 40) == len(np.unique(chosen))
    assert np.isin(chosen, scores["ids"]).all()
    assert strategy(scores, budget, np.random.default_rng(11)).tolist() == chosen.tolist()
    assert len(strategy(scores, 0, np.random.default_rng(11))) == 0


def test_direct_calls_with_zero_budget() -> None:
    scores = random_scores(6, seed=0)
    for select in (badge_select, coreset_select, stochastic_batches_select):
        assert len(select(scores, 0, np.random.default_rng(0))) == 0


def test_registered_names() -> None:
    assert {"meanstd", "coreset", "badge", "stochastic-batches"} <= set(REGISTRY)
