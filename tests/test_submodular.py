"""Tests of nnal.submodular: FLQMI (paper Eq. 1), exact and stochastic greedy."""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest

from nnal import submodular
from nnal.bench import similarity_matrix
from nnal.submodular import (
    checks,
    flqmi_greedy,
    flqmi_objective,
    flqmi_stochastic_greedy,
    kernel,
    maximize,
    shift_nonnegative,
)

HAVE_NUMBA = kernel.gain_kernel() is not None


@pytest.fixture(params=["numba", "numpy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the numba kernel and with the numpy fallback."""
    if request.param == "numba" and not HAVE_NUMBA:
        pytest.skip("numba is not installed")
    monkeypatch.setitem(kernel.KERNEL_STATE, "force_numpy", request.param == "numpy")
    assert submodular.backend() == request.param
    return request.param


def _rand(n: int, q: int, seed: int, low: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, q), dtype=np.float32) + np.float32(low)).astype(np.float32)


def _naive_stochastic(S: np.ndarray, budget: int, rng: np.random.Generator, eta: float, epsilon: float) -> list[int]:
    """Non-lazy stochastic greedy drawing its samples exactly as the implementation does."""
    n, q = S.shape
    size = math.ceil(n / budget * math.log(1 / epsilon))
    pool, where = np.arange(n), np.arange(n)
    cur = np.zeros(q, dtype=S.dtype)
    picks = []
    for t in range(budget):
        left = n - t
        sample = pool[rng.choice(left, min(size, left), replace=False)]
        rows = S[sample]
        g = (np.maximum(rows, cur) - cur).sum(axis=1) + eta * np.maximum(rows.max(axis=1), 0)
        j = int(sample[g == g.max()].max())
        picks.append(j)
        np.maximum(cur, S[j], out=cur)
        p, last = where[j], pool[left - 1]
        pool[p], where[last] = last, p
    return picks


# --------------------------------------------------------------------------------------------------- objective


def test_objective_by_hand() -> None:
    S = np.array([[0.1, 0.9, 0.3], [0.8, 0.2, 0.4], [0.5, 0.5, 0.5], [-0.2, 0.1, 0.0]])
    # columns: max(0.1, 0.8) + max(0.9, 0.2) + max(0.3, 0.4) = 2.1; rows: 0.9 + 0.8 = 1.7
    assert flqmi_objective(S, [0, 1], eta=1.0) == pytest.approx(3.8)
    assert flqmi_objective(S, np.array([1, 0]), eta=0.5) == pytest.approx(2.1 + 0.85)
    assert flqmi_objective(S, [0, 1], eta=0.0) == pytest.approx(2.1)
    # negative entries count as 0, as in submodlib: 0 + 0.1 + 0 and eta * 0.1
    assert flqmi_objective(S, [3], eta=1.0) == pytest.approx(0.2)
    assert flqmi_objective(S, [], eta=1.0) == 0.0


def test_objective_float32_matches_float64() -> None:
    S = _rand(40, 13, 0)
    sel = np.array([3, 17, 5, 39])
    assert flqmi_objective(S, sel, 2.0) == pytest.approx(flqmi_objective(S.astype(np.float64), sel, 2.0), rel=1e-6)


# ------------------------------------------------------------------------------------------------ exact greedy


def _submodlib_naive(S: np.ndarray, budget: int, eta: float) -> tuple[list[int], list[float], float]:
    submodlib = pytest.importorskip("submodlib")
    f = submodlib.FacilityLocationVariantMutualInformationFunction(
        n=S.shape[0], num_queries=S.shape[1], query_sijs=S, queryDiversityEta=eta
    )
    res = f.maximize(
        budget=budget,
        optimizer="NaiveGreedy",
        stopIfZeroGain=False,
        stopIfNegativeGain=False,
        verbose=False,
        show_progress=False,
    )
    picks = [int(i) for i, _ in res]
    return picks, [float(g) for _, g in res], float(f.evaluate(set(picks)))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 10.0])
@pytest.mark.parametrize(("n", "q", "low"), [(60, 60, 0.0), (200, 17, 0.0), (25, 90, 0.0), (150, 40, -0.4)])
def test_greedy_matches_submodlib_naive_greedy(eta: float, n: int, q: int, low: float, backend: str) -> None:
    S = _rand(n, q, seed=n * 1000 + q, low=low)
    budget = min(n - 1, 30)
    ref, ref_gains, ref_obj = _submodlib_naive(S, budget, eta)
    ours = flqmi_greedy(S, budget, eta)
    assert ours.tolist() == ref
    assert flqmi_objective(S, ours, eta) == pytest.approx(ref_obj, rel=1e-6)
    assert flqmi_objective(S, ours, eta) == pytest.approx(sum(ref_gains), rel=1e-5)


@pytest.mark.parametrize(
    "S",
    [
        np.ones((7, 3), np.float32),
        np.zeros((500, 4), np.float32),
        np.array([[1, 0], [0, 1], [1, 0], [0, 1], [0.5, 0.5]], np.float32),
    ],
)
def test_greedy_ties_match_submodlib(S: np.ndarray, backend: str) -> None:
    budget = min(S.shape[0] - 1, 6)
    assert flqmi_greedy(S, budget, 0.0).tolist() == _submodlib_naive(S, budget, 0.0)[0]
    assert flqmi_greedy(S, budget, 1.0).tolist() == _submodlib_naive(S, budget, 1.0)[0]


def test_greedy_ties_go_to_highest_index(backend: str) -> None:
    assert flqmi_greedy(np.ones((7, 3), np.float32), 3).tolist() == [6, 5, 4]
    S = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [0.5, 0.5]], np.float32)
    assert flqmi_greedy(S, 4, eta=0.0).tolist() == [4, 3, 2, 1]


@pytest.mark.parametrize("seed", range(6))
def test_greedy_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    S = rng.random((9, 6)) - 0.2
    eta = [0.0, 1.0, 3.0][seed % 3]
    for budget in (1, 2, 3, 4):
        opt = max(flqmi_objective(S, list(c), eta) for c in itertools.combinations(range(9), budget))
        got = flqmi_objective(S, flqmi_greedy(S, budget, eta), eta)
        assert got >= (1 - 1 / math.e) * opt - 1e-12
        if budget == 1:
            assert got == pytest.approx(opt)


def test_greedy_gains_are_the_marginal_objective_increments() -> None:
    S = similarity_matrix(800, 70, seed=3, volumes=10)
    picks = flqmi_greedy(S, 25)
    vals = [flqmi_objective(S, picks[:k]) for k in range(26)]
    assert np.all(np.diff(vals) >= 0) and np.all(np.diff(np.diff(vals)) <= 1e-3)  # diminishing returns
    for k in (0, 7, 24):  # each pick is the best single addition at its step
        best = max(flqmi_objective(S, np.append(picks[:k], j)) for j in range(800) if j not in picks[:k])
        assert vals[k + 1] == pytest.approx(best, rel=1e-6)


def test_budget_zero_and_all_rows(backend: str) -> None:
    S = _rand(12, 5, 1)
    assert flqmi_greedy(S, 0).size == 0
    assert flqmi_stochastic_greedy(S, 0, np.random.default_rng(0)).size == 0
    assert sorted(flqmi_greedy(S, 12).tolist()) == list(range(12))
    assert sorted(flqmi_stochastic_greedy(S, 12, np.random.default_rng(0)).tolist()) == list(range(12))


def test_dtypes_and_layouts(backend: str) -> None:
    S = _rand(300, 20, 2)
    ref = flqmi_greedy(S, 10).tolist()
    assert flqmi_greedy(np.asfortranarray(S), 10).tolist() == ref
    assert flqmi_greedy(S.astype(np.float64), 10).tolist() == ref
    ints = (S * 1000).astype(np.int32)
    assert flqmi_greedy(ints, 10).tolist() == flqmi_greedy(ints.astype(np.float64), 10).tolist()


# ------------------------------------------------------------------------------------------- stochastic greedy


@pytest.mark.parametrize(
    ("n", "q", "budget", "eta", "eps"), [(400, 60, 20, 1.0, 0.01), (1000, 35, 50, 0.0, 0.1), (300, 300, 10, 10.0, 0.5)]
)
def test_stochastic_is_exact_argmax_over_its_samples(
    n: int, q: int, budget: int, eta: float, eps: float, backend: str
) -> None:
    S = similarity_matrix(n, q, seed=n + q, volumes=8).astype(np.float64)
    ours = flqmi_stochastic_greedy(S, budget, np.random.default_rng(7), eta, eps)
    assert ours.tolist() == _naive_stochastic(S, budget, np.random.default_rng(7), eta, eps)


def test_stochastic_with_full_samples_is_exact_greedy(backend: str) -> None:
    S = _rand(200, 30, 4)
    eps = math.exp(-6)  # sample size ceil(200 / 5 * 6) >= 200: every step sees every row left
    assert flqmi_stochastic_greedy(S, 5, np.random.default_rng(0), epsilon=eps).tolist() == flqmi_greedy(S, 5).tolist()


@pytest.mark.parametrize("seed", range(3))
def test_stochastic_close_to_exact(seed: int) -> None:
    for S in (_rand(3000, 200, seed), similarity_matrix(3000, 300, seed=seed, volumes=40)):
        exact = flqmi_objective(S, flqmi_greedy(S, 40))
        stoch = flqmi_objective(S, flqmi_stochastic_greedy(S, 40, np.random.default_rng(seed)))
        assert stoch >= 0.99 * exact  # greedy is not optimal: stochastic greedy may even beat it


def test_stochastic_determinism() -> None:
    S = similarity_matrix(2000, 100, seed=1, volumes=20)
    np.random.seed(1)
    a = flqmi_stochastic_greedy(S, 30, np.random.default_rng(42))
    np.random.seed(2)  # the global generator plays no part
    b = flqmi_stochastic_greedy(S, 30, np.random.default_rng(42))
    c = flqmi_stochastic_greedy(S, 30, np.random.default_rng(43))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 30


def test_no_large_temporaries(backend: str) -> None:
    S = similarity_matrix(20000, 400, seed=0, volumes=50)  # 32 MB
    for run in (lambda: flqmi_stochastic_greedy(S, 50, np.random.default_rng(0)), lambda: flqmi_greedy(S, 50)):
        tracemalloc.start()
        run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 0.2 * S.nbytes


# ------------------------------------------------------------------------------------------------------- shift


def test_shift_nonnegative() -> None:
    S = np.array([[-0.1, -0.2], [-0.5, -0.5], [-0.9, -0.8]], dtype=np.float32)
    T = shift_nonnegative(S)
    assert T.dtype == np.float32 and T.min() == 0 and S.min() == np.float32(-0.9)
    np.testing.assert_allclose(T, S + 0.9, atol=1e-7)
    # clipped, every row has gain 0 and the tie goes to the last row; shifted, row 0 is the most similar
    assert flqmi_greedy(S, 1, eta=0.0).tolist() == [2]
    assert flqmi_greedy(T, 1, eta=0.0).tolist() == [0]
    U = S.copy()
    assert shift_nonnegative(U, inplace=True) is U and U.min() == 0


def test_shift_keeps_greedy_picks_of_nonnegative_matrices() -> None:
    S = np.random.default_rng(5).random((80, 25)) + 0.5
    for eta in (0.0, 1.0, 4.0):
        assert flqmi_greedy(shift_nonnegative(S), 15, eta).tolist() == flqmi_greedy(S, 15, eta).tolist()
        sel = flqmi_greedy(S, 15, eta)
        shifted = flqmi_objective(shift_nonnegative(S), sel, eta)
        assert shifted == pytest.approx(flqmi_objective(S, sel, eta) - (25 + eta * 15) * S.min())


# -------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("S", "budget", "eta", "match"),
    [
        (np.ones(5), 1, 1.0, "2-D"),
        (np.ones((2, 3, 4)), 1, 1.0, "2-D"),
        (np.ones((0, 3)), 0, 1.0, "non-empty"),
        (np.ones((3, 2), dtype=complex), 1, 1.0, "real"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), 1, 1.0, "non-finite"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), 1, 1.0, "non-finite"),
        (np.array([[1.0, -np.inf], [0.0, 1.0]]), 1, 1.0, "non-finite"),
        (np.ones((3, 2)), 4, 1.0, "budget"),
        (np.ones((3, 2)), -1, 1.0, "budget"),
        (np.ones((3, 2)), 1.5, 1.0, "budget"),
        (np.ones((3, 2)), 1, -0.1, "eta"),
        (np.ones((3, 2)), 1, float("nan"), "eta"),
    ],
)
def test_validation(S: np.ndarray, budget: object, eta: float, match: str, backend: str) -> None:
    with pytest.raises(ValueError, match=match):
        flqmi_greedy(S, budget, eta)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        flqmi_stochastic_greedy(S, budget, np.random.default_rng(0), eta)  # type: ignore[arg-type]


def test_validation_of_the_other_arguments() -> None:
    S = np.ones((4, 3))
    for eps in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="epsilon"):
            flqmi_stochastic_greedy(S, 2, np.random.default_rng(0), epsilon=eps)
    with pytest.raises(ValueError, match="Generator"):
        flqmi_stochastic_greedy(S, 2, 0)  # type: ignore[arg-type]
    for sel, match in (([0, 0], "duplicate"), ([4], r"\[0, 4\)"), ([-1], r"\[0, 4\)"), ([0.5], "integer")):
        with pytest.raises(ValueError, match=match):
            flqmi_objective(S, sel)
    with pytest.raises(ValueError, match="eta"):
        flqmi_objective(S, [0], eta=-1.0)
    with pytest.raises(ValueError, match="non-finite"):
        flqmi_objective(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match="non-finite"):
        shift_nonnegative(np.array([[np.nan, 1.0]]))


def test_shift_inplace_needs_a_float_array() -> None:
    with pytest.raises(ValueError, match="inplace"):
        shift_nonnegative(np.array([[1, 2], [3, 4]]), inplace=True)
    np.testing.assert_array_equal(shift_nonnegative(np.array([[1, 2], [3, 4]])), [[0, 1], [2, 3]])


# ------------------------------------------------------------------------------------- backends, threads, checks


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "q"), [(1500, 300), (900, 33), (400, 7), (600, 64), (700, 1000)])
def test_backends_give_identical_gains_and_picks(n: int, q: int, dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    S = similarity_matrix(n, q, seed=n + q, volumes=12).astype(dtype)
    got = {}
    for force_numpy in (False, True):
        monkeypatch.setitem(kernel.KERNEL_STATE, "force_numpy", force_numpy)
        gains = []
        for exact in (True, False):
            ev = maximize._Gains(S, 1.0, 1, exact)
            ev.evaluate(np.arange(n), None, True, -1.0, -1, 0)  # first reads
            for j in (3, n // 2, n - 1):
                ev.add(j)
            rows = np.arange(0, n, 3)
            ev.evaluate(rows, None, False, -1.0, -1, 1)  # re-reads
            gains.append((ev.ub.copy(), ev.rowmax.copy()))
        picks = [
            flqmi_greedy(S, 20, eta).tolist() + flqmi_stochastic_greedy(S, 20, np.random.default_rng(3), eta).tolist()
            for eta in (0.0, 1.0, 2.5)
        ]
        got[force_numpy] = (gains, picks)
    (g_nb, p_nb), (g_np, p_np) = got[False], got[True]
    assert p_nb == p_np
    for (ub_a, mx_a), (ub_b, mx_b) in zip(g_nb, g_np, strict=True):
        np.testing.assert_array_equal(ub_a, ub_b)  # bit for bit: the same operations in the same order
        np.testing.assert_array_equal(mx_a, mx_b)


def test_picks_do_not_depend_on_threads(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maximize, "_MIN_BYTES_PER_TASK", 1)  # split even small batches into many tasks
    S = similarity_matrix(3000, 120, seed=4, volumes=30)
    rng_picks = [flqmi_stochastic_greedy(S, 40, np.random.default_rng(5), threads=k).tolist() for k in (1, 2, 3)]
    exact_picks = [flqmi_greedy(S, 40, threads=k).tolist() for k in (1, 2, 3)]
    assert rng_picks[0] == rng_picks[1] == rng_picks[2]
    assert exact_picks[0] == exact_picks[1] == exact_picks[2]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_entry_anywhere_is_rejected(bad: float, backend: str) -> None:
    S = _rand(2000, 40, 6)
    for row in (0, 1234, 1999):
        T = S.copy()
        T[row, 17] = bad
        with pytest.raises(ValueError, match="non-finite"):
            flqmi_greedy(T, 3)
        # epsilon 0.5: samples of 14 rows, so about half of the rows are never read: checked at the end
        for seed in range(3):
            with pytest.raises(ValueError, match=f"non-finite values \\(row {row}\\)"):
                flqmi_stochastic_greedy(T, 50, np.random.default_rng(seed), epsilon=0.5)


def test_large_finite_entries_are_accepted(backend: str) -> None:
    S = np.full((50, 70), 3e37, dtype=np.float32)  # row sums overflow float32: not a reason to reject
    S[:, 0] = np.arange(50)
    assert flqmi_stochastic_greedy(S, 3, np.random.default_rng(0), eta=0.0).size == 3
    assert flqmi_greedy(S, 3, eta=0.0).size == 3


def test_threads_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    S = np.ones((4, 3))
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="threads"):
            flqmi_greedy(S, 2, threads=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="threads"):
            flqmi_stochastic_greedy(S, 2, np.random.default_rng(0), threads=bad)  # type: ignore[arg-type]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert checks.resolve_threads(None) == 3
    assert checks.resolve_threads(5) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert checks.resolve_threads(None) >= 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert checks.resolve_threads(None) >= 1
