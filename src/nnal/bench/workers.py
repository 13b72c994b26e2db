"""Worker functions of :mod:`nnal.bench`, run in spawned processes (module level, so they pickle by name): our
selection, submodlib's, and the similarity build plus selection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from nnal.bench.process import limit_memory, measure, proc_status_kb, read_peak_rss_mb, reset_peak_rss
from nnal.bench.scales import BUDGET, EPSILON, ETA, similarity_matrix
from nnal.submodular import backend, flqmi_greedy, flqmi_objective, flqmi_stochastic_greedy
from nnal.submodular.checks import resolve_threads
from nnal.submodular.kernel import KERNEL_STATE


class _Embeddings:
    """Seeded synthetic gradient embeddings: 16 modes in 32 dimensions, mapped linearly to ``d``, plus noise."""

    def __init__(self, d: int, rng: np.random.Generator, latent: int = 32, modes: int = 16) -> None:
        self.centres = rng.standard_normal((modes, latent), dtype=np.float32)
        self.lift = rng.standard_normal((latent, d), dtype=np.float32) / np.float32(math.sqrt(latent))

    def sample(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        z = self.centres[rng.integers(0, len(self.centres), rows)]
        z += 0.5 * rng.standard_normal(z.shape, dtype=np.float32)
        u = z @ self.lift
        u += 0.5 * rng.standard_normal(u.shape, dtype=np.float32)
        return u


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length in place (zero rows stay zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    np.divide(x, norms[:, None], out=x, where=norms[:, None] > 0)
    return x


def _blas_threads() -> int | None:
    from threadpoolctl import threadpool_info  # scikit-learn's dependency
    counts = [int(p["num_threads"]) for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


def _shifted_similarity_on_cpu(right: np.ndarray, n: int, rows: int, sample, cosine: bool
                               ) -> tuple[np.ndarray, dict[str, float]]:
    """The (n, Q) similarity of ``n`` sampled rows against ``right`` (d, Q), built ``rows`` at a time and shifted
    to be non-negative; the seconds of each part (as :func:`shifted_similarity_on_cuda` reports them)."""
    S = np.empty((n, right.shape[1]), dtype=np.float32)
    seconds = {"generation": 0.0, "gemm": 0.0, "transfer": 0.0}
    lo = np.inf
    for a in range(0, n, rows):
        b = min(n, a + rows)
        t = time.perf_counter()
        u = sample(b - a)
        t1 = time.perf_counter()
        if cosine:
            _unit(u)
        np.matmul(u, right, out=S[a:b])
        lo = min(lo, float(S[a:b].min()))
        seconds["generation"] += t1 - t
        seconds["gemm"] += time.perf_counter() - t1
    t = time.perf_counter()
    S -= np.float32(lo)
    seconds["shift"] = time.perf_counter() - t
    return S, seconds


def similarity_worker(n: int, q: int, d: int, seed: int, kind: str, device: str, with_exact: bool) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 0])
    model = _Embeddings(d, rng)
    g_q = model.sample(rng, q)
    fisher = (rng.gamma(2.0, 0.5, d) + 1e-3).astype(np.float32)
    gen = np.random.default_rng([seed, 1])
    rows = max(1, min(n, (64 << 20) // (4 * d)))
    t0 = time.perf_counter()
    flqmi_stochastic_greedy(np.ones((64, 8), np.float32), 2, np.random.default_rng(0))
    flqmi_greedy(np.ones((64, 8), np.float32), 2)
    compile_s = time.perf_counter() - t0
    before = (proc_status_kb("VmRSS") or 0) / 1024
    reset_peak_rss()
    t = time.perf_counter()
    if kind == "fisher":  # fold diag(1 / (F + delta)) into g_q once, in place; delta as USIMF's default damping
        f = fisher.astype(np.float64)
        g_q *= (1.0 / (f + 1e-6 * f.mean())).astype(np.float32)
    else:
        _unit(g_q)
    fold_s = time.perf_counter() - t
    if device == "cpu":
        S, seconds = _shifted_similarity_on_cpu(g_q.T, n, rows, lambda k: model.sample(gen, k), kind == "cosine")
    else:
        from nnal.backend.similarity import shifted_similarity_on_cuda  # torch only behind the backend

        S, seconds = shifted_similarity_on_cuda(g_q.T, n, rows, lambda k: model.sample(gen, k), kind == "cosine")
        fold_s += seconds["fold"]
    gen_s, gemm_s = seconds["generation"], seconds["gemm"]
    shift_s, transfer_s = seconds["shift"], seconds["transfer"]
    del g_q
    t = time.perf_counter()
    picks = flqmi_stochastic_greedy(S, BUDGET, np.random.default_rng(seed), ETA, EPSILON)
    sel_s = time.perf_counter() - t
    peak = read_peak_rss_mb()
    build_s = fold_s + gemm_s + transfer_s
    out: dict[str, Any] = {
        "seconds": build_s + shift_s + sel_s,
        "build_seconds": build_s,
        "fold_seconds": fold_s,
        "gemm_seconds": gemm_s,
        "transfer_seconds": transfer_s,
        "shift_seconds": shift_s,
        "selection_seconds": sel_s,
        "generation_seconds": gen_s,
        "compile_seconds": compile_s,
        "gflops": 2.0 * n * q * d / 1e9 / gemm_s,
        "chunk_rows": rows,
        "peak_rss_mb": peak,
        "rss_before_mb": before,
        "objective": flqmi_objective(S, picks, ETA),
        "backend": backend(),
        "threads": resolve_threads(None),
        "blas_threads": _blas_threads(),
    }
    if with_exact:
        t = time.perf_counter()
        exact = flqmi_greedy(S, BUDGET, ETA)
        out.update(exact_seconds=time.perf_counter() - t, exact_objective=flqmi_objective(S, exact, ETA))
        out["objective_ratio"] = out["objective"] / out["exact_objective"]
    return out


def ours_worker(n: int, q: int, seed: int, volumes: int, repeats: int, threads: int | None) -> dict[str, Any]:
    S = similarity_matrix(n, q, seed, volumes)
    t0 = time.perf_counter()  # compile (or load from numba's cache) both kernel variants, on a tiny matrix
    flqmi_stochastic_greedy(S[:64], 2, np.random.default_rng(0))
    flqmi_greedy(S[:64], 2)
    out: dict[str, Any] = {
        "compile_seconds": time.perf_counter() - t0,
        "backend": backend(),
        "threads": resolve_threads(threads),
        "repeats": repeats,
    }

    def stochastic(k: int | None) -> np.ndarray:
        return flqmi_stochastic_greedy(S, BUDGET, np.random.default_rng(seed), ETA, EPSILON, threads=k)

    times, peaks, picks = [], [], None
    for _ in range(repeats):
        res, sec, peak, before = measure(lambda: stochastic(threads))
        assert picks is None or np.array_equal(res, picks), "stochastic greedy is not deterministic"
        picks = res
        times.append(sec)
        peaks.append(peak)
    out.update(
        seconds=min(times),
        seconds_median=float(np.median(times)),
        seconds_all=times,
        peak_rss_mb=max(peaks),
        rss_before_mb=before,
        extra_mb=max(peaks) - before,
        peak_over_s=max(peaks) / (S.nbytes / 2**20),
        objective=flqmi_objective(S, picks, ETA),
        peak_reset=reset_peak_rss(),
    )
    times = []
    for _ in range(repeats):
        res, sec, peak, before = measure(lambda: stochastic(1))
        assert np.array_equal(res, picks), "the picks depend on the thread count"
        times.append(sec)
    out.update(one_thread_seconds=min(times), one_thread_seconds_median=float(np.median(times)))
    KERNEL_STATE["force_numpy"] = True
    try:
        res, sec, peak, before = measure(lambda: stochastic(threads))
    finally:
        KERNEL_STATE["force_numpy"] = False
    out.update(
        numpy_seconds=sec,
        numpy_peak_rss_mb=peak,
        numpy_extra_mb=peak - before,
        numpy_same_picks=bool(np.array_equal(res, picks)),
    )
    res, sec, peak, before = measure(lambda: flqmi_greedy(S, BUDGET, ETA, threads=threads))
    out.update(
        exact_seconds=sec,
        exact_peak_rss_mb=peak,
        exact_extra_mb=peak - before,
        exact_objective=flqmi_objective(S, res, ETA),
    )
    return out


class _RowLists(Sequence):
    """Rows of ``S`` as Python lists, made one at a time while pybind11 converts them to C++ vectors."""

    def __init__(self, S: np.ndarray) -> None:
        self.S = S

    def __len__(self) -> int:
        return self.S.shape[0]

    def __getitem__(self, i):  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.S[i].tolist()


def submodlib_worker(n: int, q: int, seed: int, volumes: int, mode: str) -> dict[str, Any]:
    if mode not in ("wrapper", "cpp"):
        raise ValueError(f"mode must be 'wrapper' or 'cpp', got {mode!r}")
    S = similarity_matrix(n, q, seed, volumes)
    limit_memory(S.nbytes)
    if mode == "wrapper":
        from submodlib import FacilityLocationVariantMutualInformationFunction as FL2MI

        def build() -> Any:
            return FL2MI(n=n, num_queries=q, query_sijs=S, queryDiversityEta=ETA)

        def run(obj: Any) -> list:
            return obj.maximize(
                budget=BUDGET,
                optimizer="StochasticGreedy",
                stopIfZeroGain=False,
                stopIfNegativeGain=False,
                epsilon=EPSILON,
                verbose=False,
                show_progress=False,
            )
    else:
        from submodlib_cpp import FacilityLocationVariantMutualInformation as FL2MI

        def build() -> Any:
            return FL2MI(n, q, _RowLists(S), ETA)

        def run(obj: Any) -> list:
            return obj.maximize("StochasticGreedy", BUDGET, False, False, EPSILON, False, False, [], False)

    before = (proc_status_kb("VmRSS") or 0) / 1024
    reset_peak_rss()
    t0 = time.perf_counter()
    obj = build()
    t1 = time.perf_counter()
    picks = [int(i) for i, _ in run(obj)]
    t2 = time.perf_counter()
    peak = read_peak_rss_mb()
    del obj
    return {
        "seconds": t2 - t0,
        "build_seconds": t1 - t0,
        "maximize_seconds": t2 - t1,
        "peak_rss_mb": peak,
        "rss_before_mb": before,
        "extra_mb": peak - before,
        "objective": flqmi_objective(S, np.asarray(picks, dtype=np.int64), ETA),
    }
