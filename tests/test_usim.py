"""USIM building blocks: weights, query set, elbow, Fisher, parameter sampling, similarities, selection."""

from __future__ import annotations

import numpy as np
import pytest

from nnal.strategies.query_set import class_weights, elbow_size, query_probabilities, query_set, query_size_for
from nnal.strategies.usim import (
    accumulate_fisher,
    cosine_similarity,
    diagonal_fisher,
    fisher_similarity,
    sample_parameters,
    truncate_indices,
    usim_select,
)

# --- weights and query set ------------------------------------------------------------------------------------


def test_class_weights_inverse_counts_and_zero_class() -> None:
    w = class_weights(np.array([100, 0, 50]))
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w, [0.01, 0.02, 0.02])  # the empty class gets the largest finite weight
    np.testing.assert_array_equal(class_weights(np.zeros(3)), np.ones(3))
    with pytest.raises(ValueError):
        class_weights(np.array([1.0, -2.0]))


def test_query_probabilities_by_hand() -> None:
    u = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(query_probabilities(u, np.array([1.0, 2.0])), [1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(query_probabilities(np.zeros((4, 2)), np.array([1.0, 2.0])), np.full(4, 0.25))
    with pytest.raises(ValueError, match="classes"):
        query_probabilities(u, np.ones(3))


def test_query_set_weighted_is_seeded_and_proportional() -> None:
    u = np.array([[0.1, 0.0], [0.0, 0.1], [0.2, 0.1], [0.0, 0.0]])
    voxels = np.array([1000, 250])  # w = (0.001, 0.004): weighted scores 1e-4, 4e-4, 6e-4, 0
    a = query_set(u, voxels, 50, np.random.default_rng(5))
    assert a.dtype == np.int64 and len(a) == 50
    assert a.tolist() == query_set(u, voxels, 50, np.random.default_rng(5)).tolist()
    draws = query_set(u, voxels, 200_000, np.random.default_rng(6))
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [1 / 11, 4 / 11, 6 / 11, 0.0], atol=0.005)
    assert freq[3] == 0.0  # zero weighted uncertainty: never drawn


def test_query_set_uniform_and_max_uncertainty() -> None:
    u = np.array([[0.1, 0.0], [0.0, 0.1], [0.2, 0.1], [0.0, 0.0]])
    voxels = np.array([1000, 250])
    uniform = query_set(u, voxels, 40_000, np.random.default_rng(1), mode="uniform")
    np.testing.assert_allclose(np.bincount(uniform, minlength=4) / 40_000, np.full(4, 0.25), atol=0.01)
    assert query_set(u, voxels, 2, np.random.default_rng(1), mode="max-uncertainty").tolist() == [2, 1]
    assert query_set(u, voxels, 10, np.random.default_rng(1), mode="max-uncertainty").tolist() == [2, 1, 0, 3]
    assert len(query_set(u, voxels, 0, np.random.default_rng(1))) == 0
    with pytest.raises(ValueError, match="mode"):
        query_set(u, voxels, 2, np.random.default_rng(1), mode="greedy")


# --- elbow ----------------------------------------------------------------------------------------------------


def curves() -> dict[str, np.ndarray]:
    data = np.random.default_rng(0)
    x = np.arange(1, 501, dtype=float)
    return {
        "exp": np.exp(-x / 40),
        "inverse": 1 / x,
        "piecewise": np.concatenate([np.linspace(100, 10, 50), np.linspace(9.9, 0, 450)]),
        "sorted_exponential": np.sort(data.exponential(size=2000))[::-1],
        "sorted_beta": np.sort(data.beta(0.5, 5, size=3000))[::-1],
        "ties": np.sort(np.round(data.exponential(size=1000), 1))[::-1],
        "line": np.linspace(1, 0, 300),
    }


@pytest.mark.parametrize("sensitivity", [1.0, 10.0])
@pytest.mark.parametrize("name", sorted(curves()))
def test_elbow_matches_kneed_as_the_paper_code_calls_it(name: str, sensitivity: float) -> None:
    """The paper's code: KneeLocator(x=0..N-1, y sorted descending, S=10, convex, decreasing).knee."""
    kneed = pytest.importorskip("kneed")
    y = curves()[name]
    knee = kneed.KneeLocator(np.arange(len(y)), np.sort(y)[::-1], S=sensitivity, curve="convex",
                             direction="decreasing").knee
    assert elbow_size(y, sensitivity=sensitivity) == (len(y) if knee is None else int(knee))


def test_elbow_known_knee_and_fallbacks() -> None:
    assert elbow_size(curves()["piecewise"], sensitivity=1.0) == 49  # the steep part ends at position 49
    assert elbow_size(np.random.default_rng(0).permutation(curves()["piecewise"]), sensitivity=1.0) == 49
    assert elbow_size(curves()["line"]) == 300  # no knee: the whole pool
    assert elbow_size(np.full(10, 0.3)) == 10  # flat
    assert elbow_size(np.array([2.0, 1.0])) == 2  # too few points
    assert elbow_size(np.array([])) == 0
    assert elbow_size(curves()["piecewise"], sensitivity=1.0, floor=120) == 120
    assert elbow_size(curves()["piecewise"], sensitivity=1.0, floor=10) == 49
    assert elbow_size(curves()["piecewise"], floor=10_000) == 500


@pytest.mark.parametrize("name", ["exp", "inverse", "sorted_beta", "sorted_exponential"])
@pytest.mark.parametrize("budget", [1, 10, 100])
def test_query_size_is_the_code_rule_and_never_below_the_budget(name: str, budget: int) -> None:
    """Q = min(max(knee, 5 B), N) with kneed's knee at S = 10, and Q >= B (the demo's Q = 20 < B = 100 is gone)."""
    kneed = pytest.importorskip("kneed")
    y = curves()[name]
    knee = kneed.KneeLocator(np.arange(len(y)), np.sort(y)[::-1], S=10.0, curve="convex",
                             direction="decreasing").knee
    expected = min(max(len(y) if knee is None else int(knee), 5 * budget), len(y))
    assert query_size_for(y, budget) == expected >= budget
    assert query_size_for(y, budget, floor_budgets=0.0) >= budget
    assert query_size_for(y, budget, size=3) == max(3, budget)
    assert query_size_for(y, budget, size="pool") == max(len(y), budget)  # Appendix D's Q = U


# --- Fisher and parameters ------------------------------------------------------------------------------------


def test_fisher_by_hand_over_all_samples() -> None:
    g = np.array([[1.0, 2.0], [3.0, 0.0]])
    np.testing.assert_allclose(diagonal_fisher(g), [5.0, 2.0])  # not g[0] ** 2 (the paper code's bug)


def test_fisher_chunked_equals_full() -> None:
    g = np.random.default_rng(2).normal(size=(37, 11)).astype(np.float32)
    expected = (g.astype(np.float64) ** 2).mean(axis=0)
    np.testing.assert_allclose(diagonal_fisher(g), expected, rtol=1e-12)
    np.testing.assert_allclose(diagonal_fisher(g, chunk_elements=20), expected, rtol=1e-12)
    np.testing.assert_allclose(accumulate_fisher(g[i : i + 5] for i in range(0, 37, 5)), expected, rtol=1e-12)
    with pytest.raises(ValueError):
        accumulate_fisher(iter([]))
    with pytest.raises(ValueError, match="parameters"):
        accumulate_fisher([g[:2], g[2:4, :5]])


def test_sample_parameters_prefers_nonzero_fisher() -> None:
    fisher = np.zeros(20)
    fisher[[2, 5, 9, 13, 17]] = [1.0, 2.0, 3.0, 4.0, 5.0]
    a = sample_parameters(fisher, 3, np.random.default_rng(4))
    assert a.dtype == np.int64 and len(a) == 3 and a.tolist() == sorted(set(a.tolist()))
    assert set(a.tolist()) <= {2, 5, 9, 13, 17}
    assert a.tolist() == sample_parameters(fisher, 3, np.random.default_rng(4)).tolist()
    few = sample_parameters(fisher, 8, np.random.default_rng(4))
    assert {2, 5, 9, 13, 17} <= set(few.tolist()) and len(set(few.tolist())) == 8
    assert sample_parameters(fisher, 50, np.random.default_rng(4)).tolist() == list(range(20))


def test_sample_parameters_single_draw_is_proportional() -> None:
    fisher = np.array([1.0, 3.0, 0.0, 6.0])
    rng = np.random.default_rng(9)
    picks = np.array([sample_parameters(fisher, 1, rng)[0] for _ in range(8000)])
    np.testing.assert_allclose(np.bincount(picks, minlength=4) / 8000, [0.1, 0.3, 0.0, 0.6], atol=0.02)


def test_truncate_indices() -> None:
    a = truncate_indices(1000, 10, np.random.default_rng(3))
    assert a.dtype == np.int64 and len(np.unique(a)) == 10 and (np.diff(a) > 0).all() and a.max() < 1000
    assert a.tolist() == truncate_indices(1000, 10, np.random.default_rng(3)).tolist()
    assert truncate_indices(4, 10, np.random.default_rng(3)).tolist() == [0, 1, 2, 3]


# --- similarities ---------------------------------------------------------------------------------------------


def test_cosine_similarity_by_hand_and_zero_rows() -> None:
    s = cosine_similarity(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[1.0, 1.0], [0.0, 2.0]]))
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, [[2**-0.5, 0.0], [0.0, 0.0]], rtol=1e-6)
    s = cosine_similarity(np.array([[3.0, 4.0]]), np.array([[0.0, 0.0], [-3.0, -4.0]]))
    np.testing.assert_allclose(s, [[0.0, -1.0]], rtol=1e-6)


def test_similarities_chunked_equal_unchunked() -> None:
    data = np.random.default_rng(8)
    g_u, g_q, f = data.normal(size=(23, 6)), data.normal(size=(9, 6)), data.random(6) + 0.1
    np.testing.assert_allclose(cosine_similarity(g_u, g_q, chunk_elements=7), cosine_similarity(g_u, g_q), rtol=1e-6)
    np.testing.assert_allclose(
        fisher_similarity(g_u, g_q, f, chunk_elements=7), fisher_similarity(g_u, g_q, f), rtol=1e-6
    )
    np.testing.assert_allclose(fisher_similarity(g_u, g_q, f, damping=0.0), (g_u / f) @ g_q.T, rtol=1e-5)


def test_fisher_similarity_by_hand() -> None:
    g_u, g_q, f = np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([1.0, 4.0])
    s = fisher_similarity(g_u, g_q, f, damping=0.0)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, [[1.0, 1.5], [0.0, 0.25]])
    np.testing.assert_allclose(fisher_similarity(g_u, g_q, f), [[1.0, 1.5], [0.0, 0.25]], rtol=1e-5)
    with pytest.raises(ValueError):
        fisher_similarity(g_u, g_q, np.array([0.0, 1.0]), damping=0.0)


def test_fisher_damping_is_relative_to_the_fishers_mean() -> None:
    g_u, g_q, f = np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([0.0, 4.0])
    delta = 0.5 * f.mean()  # 1.0 by hand
    expected = g_u @ np.diag(1.0 / (f + delta)) @ g_q.T  # [[1, 1 + 2/5], [0, 1/5]]
    np.testing.assert_allclose(expected, [[1.0, 1.4], [0.0, 0.2]])
    np.testing.assert_allclose(fisher_similarity(g_u, g_q, f, damping=0.5), expected, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_fisher_damping_is_scale_aware(scale) -> None:
    """Gradients scaled by a (and so F by a^2, as F = E[g^2]) give the same S and the same USIMF picks."""
    from nnal.strategies import get_strategy

    data = np.random.default_rng(11)
    g = data.normal(size=(40, 12)) * data.random(12) ** 3  # some parameters with tiny gradients
    f = (g[:10] ** 2).mean(0)
    base = fisher_similarity(g, g[:10], f, damping=0.1)
    scaled = fisher_similarity(g * scale, g[:10] * scale, f * scale**2, damping=0.1)
    np.testing.assert_allclose(scaled, base, rtol=1e-4, atol=1e-6 * np.abs(base).max())
    scores = {"ids": np.arange(40), "grad_embeddings": g, "query": np.arange(10), "fisher": f}
    picks = get_strategy("usimf").select(scores, 5, np.random.default_rng(0), damping=0.1)
    scores_scaled = {**scores, "grad_embeddings": g * scale, "fisher": f * scale**2}
    picks_scaled = get_strategy("usimf").select(scores_scaled, 5, np.random.default_rng(0), damping=0.1)
    np.testing.assert_array_equal(picks, picks_scaled)


# --- selection ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["stochastic", "exact"])
def test_usim_select_valid_and_seeded(optimizer: str) -> None:
    pytest.importorskip("nnal.submodular")
    s = np.random.default_rng(0).normal(size=(30, 8))
    a = usim_select(s, 5, np.random.default_rng(1), optimizer=optimizer)
    assert a.dtype == np.int64 and len(a) == 5 == len(np.unique(a)) and a.min() >= 0 and a.max() < 30
    assert a.tolist() == usim_select(s, 5, np.random.default_rng(1), optimizer=optimizer).tolist()
    assert len(usim_select(s, 0, np.random.default_rng(1), optimizer=optimizer)) == 0


def test_usim_select_rejects_unknown_optimizer() -> None:
    pytest.importorskip("nnal.submodular")
    with pytest.raises(ValueError, match="optimizer"):
        usim_select(np.ones((3, 2)), 1, np.random.default_rng(0), optimizer="naive")


def test_usim_strategies_equal_their_manual_pipeline():
    from nnal.strategies import get_strategy
    from nnal.strategies.usim import cosine_similarity, fisher_similarity, usim_select

    rng = np.random.default_rng(0)
    n, d = 60, 12
    g = rng.normal(size=(n, d)).astype(np.float32)
    scores = {"ids": np.arange(100, 100 + n), "grad_embeddings": g, "query": rng.integers(0, n, 15),
              "class_uncertainty": rng.random((n, 2)), "class_variance": rng.random((n, 2)), "variance": rng.random(n),
              "labeled_class_voxels": np.array([10.0, 0.0]),
              "usim_uncertainty": rng.random(n), "fisher": rng.random(d).astype(np.float32) + 0.1}
    for name, sim in (("usimc", lambda: cosine_similarity(g, g[scores["query"]])),
                      ("usimf", lambda: fisher_similarity(g, g[scores["query"]], scores["fisher"]))):
        chosen = get_strategy(name)(scores, 7, np.random.default_rng(3))
        manual = scores["ids"][usim_select(sim(), 7, np.random.default_rng(3))]
        np.testing.assert_array_equal(chosen, manual)
        assert len(np.unique(chosen)) == 7
        again = get_strategy(name)(scores, 7, np.random.default_rng(3), {"optimizer": "exact", "eta": 2.0})
        assert len(np.unique(again)) == 7


@pytest.mark.parametrize("n,q", [(60, 15), (300, 40), (999, 30)])
def test_default_flqmi_is_what_the_paper_ran(n: int, q: int) -> None:
    """Negative similarities clipped to 0 and NaiveGreedy below 1000 pool rows: submodlib's picks, pick for pick,
    on a matrix with negative entries (cosine similarities are)."""
    submodlib = pytest.importorskip("submodlib")
    from nnal.strategies.usim import usim_select

    S = np.random.default_rng(n).uniform(-1.0, 1.0, size=(n, q)).astype(np.float32)
    f = submodlib.FacilityLocationVariantMutualInformationFunction(n=n, num_queries=q, query_sijs=S.copy(),
                                                                  queryDiversityEta=1.0)
    ref = [int(i) for i, _ in f.maximize(budget=20, optimizer="NaiveGreedy", stopIfZeroGain=False,
                                         stopIfNegativeGain=False, verbose=False, show_progress=False)]
    assert usim_select(S.copy(), 20, np.random.default_rng(0)).tolist() == ref
    shifted = usim_select(S.copy(), 20, np.random.default_rng(0), negatives="shifted")
    assert shifted.tolist() != ref  # the option changes what negative entries mean


def test_default_flqmi_switches_to_stochastic_greedy_at_1000_rows() -> None:
    from nnal.strategies.usim import usim_select
    from nnal.submodular import flqmi_stochastic_greedy

    S = np.random.default_rng(1).uniform(-1.0, 1.0, size=(1000, 20)).astype(np.float32)
    expected = flqmi_stochastic_greedy(S.copy(), 10, np.random.default_rng(5), eta=1.0, epsilon=0.01)
    assert usim_select(S.copy(), 10, np.random.default_rng(5)).tolist() == expected.tolist()


def test_usim_weights_its_query_draws_by_the_mc_variance_by_default() -> None:
    from nnal.strategies import get_strategy

    assert get_strategy("usimc").needs_for() == ("class_variance",)
    assert get_strategy("usimc").needs_for({"uncertainty": "std"}) == ("class_uncertainty",)
    # USIMF's prefilter (the code's 30,000 slices) ranks by the mean MC variance as well
    assert get_strategy("usimf").needs_for() == ("class_variance", "variance")
    assert get_strategy("usimf").needs_for({"uncertainty": "std", "prefilter": None}) == ("class_uncertainty",)


def test_usim_defaults_are_the_rows_of_docs_fidelity() -> None:
    """The defaults docs/fidelity.md lists for USIMC and USIMF (eta = 1 as the paper ran it, the code's Q rule,
    variance, clipped negatives, optimizer by pool size, relative damping, FLQMI selection, full-resolution
    gradients, the Fisher over all query draws, USIMC's seeded random subset, USIMF's 30,000-slice prefilter)."""
    from nnal.strategies import get_strategy

    expected = {"eta": 1.0, "query_mode": "weighted", "query_size": "elbow", "query_sensitivity": 10.0,
                "query_floor_budgets": 5.0, "uncertainty": "variance", "embedding_dim": 10_000,
                "optimizer": "by-pool-size", "negatives": "clipped", "epsilon": 0.01, "selection": "flqmi",
                "deep_supervision": "off"}
    assert get_strategy("usimc").defaults == {**expected, "parameter_subset": "random"}
    assert get_strategy("usimf").defaults == {**expected, "fisher_group": "network", "damping": 1e-6,
                                              "fisher_estimate": "all-samples", "prefilter": 30_000}
