"""Benchmarks of FLQMI selection (ours vs submodlib) and of the similarity build, on seeded synthetic data.

Every measurement runs in a fresh process (``multiprocessing`` spawn) that builds its own matrix, so one method's
memory never counts against another and an out-of-memory failure of submodlib is recorded, not fatal.

What is measured, per method, around the selection call only (the matrix is built before):
``seconds`` is wall time (the minimum over ``repeats`` runs; ``seconds_median`` the median: the machine may be
shared, ``load_avg`` says how busy it was); ``peak_rss_mb`` is the process's peak resident memory during the call
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before, so it includes the matrix itself, the
interpreter, numpy and numba, but not the matrix generation); ``peak_over_s`` divides it by the matrix size. Our
gain kernel is compiled (or loaded from numba's cache) before the timed calls: ``compile_seconds``.

Run ``python -m nnal.bench --scale hippocampus --json``, or ``python -m nnal.bench --similarity --d 1000``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import operator
import os
import resource
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nnal import submodular
from nnal.submodular import flqmi_greedy, flqmi_objective, flqmi_stochastic_greedy

SCALES: dict[str, tuple[int, int]] = {
    "hippocampus": (7662, 942),
    "medium": (30000, 3000),
    "liver": (104133, 6606),
}
VOLUMES = {"hippocampus": 260, "medium": 100, "liver": 131}  # scans in the Decathlon tasks (medium: made up)
BUDGET = 100
ETA = 1.0
EPSILON = 0.01
REPEATS = 5  # timed runs of our stochastic greedy (one process; the same rng seed each time)
_TIMEOUT_S = 1800.0
_GUARD = {"note": ""}  # set in a submodlib worker process once its memory is capped


def similarity_matrix(
    n: int, q: int, seed: int = 0, volumes: int = 100, dim: int = 64, modes: int = 8, step: float = 0.1
) -> np.ndarray:
    """Seeded synthetic ``(n, q)`` float32 similarity matrix, shifted so its minimum is 0.

    Models cosine similarities of slice embeddings: ``volumes`` scans of consecutive slices, each scan a smooth
    random walk (step ``step``) around its own centre, the centres spread around ``modes`` shared anatomies, in
    ``dim`` dimensions. Neighbouring slices are near-duplicates, scans of one anatomy resemble each other, and
    the query set is drawn from the pool with replacement as USIM does (exact self-matches). Built in row chunks
    of about 4 MiB, so generation needs little beyond the matrix itself.
    """
    rng = np.random.default_rng(seed)
    vol = np.sort(rng.integers(0, volumes, n))
    centres = rng.standard_normal((modes, dim), dtype=np.float32)[rng.integers(0, modes, volumes)]
    centres += 0.7 * rng.standard_normal((volumes, dim), dtype=np.float32)
    walk = np.cumsum(step * rng.standard_normal((n, dim), dtype=np.float32), axis=0)
    walk -= walk[np.searchsorted(vol, vol)]  # every scan starts at its centre
    emb = centres[vol] + walk + 0.05 * rng.standard_normal((n, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    query_t = np.ascontiguousarray(emb[rng.integers(0, n, q)].T)
    S = np.empty((n, q), dtype=np.float32)
    rows = max(1, (1 << 22) // (4 * q))
    for a in range(0, n, rows):
        np.matmul(emb[a : a + rows], query_t, out=S[a : a + rows])
    S -= S.min()
    return S


def bench_selection(
    scale: str, seed: int = 0, with_submodlib: bool = True, repeats: int = REPEATS, threads: int | None = None
) -> dict[str, Any]:
    """Time and memory of FLQMI selection at ``scale`` (one of ``SCALES``), budget 100, eta 1.

    Ours: stochastic greedy (epsilon 0.01; ``repeats`` timed runs with ``threads`` threads, default as
    :func:`nnal.submodular.flqmi_stochastic_greedy` chooses them, then ``repeats`` with one thread and one with the
    numpy backend) and exact greedy (one run). submodlib (when installed and ``with_submodlib``): its
    StochasticGreedy with the same epsilon, through its Python wrapper and through its C++ object directly.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {sorted(SCALES)}")
    n, q = SCALES[scale]
    out: dict[str, Any] = {
        "scale": scale,
        "n": n,
        "q": q,
        "budget": BUDGET,
        "eta": ETA,
        "epsilon": EPSILON,
        "seed": seed,
        "s_size_mb": n * q * 4 / 2**20,
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_avg_before": _load_avg(),
    }
    from nnal.bench import _ours_worker, _submodlib_worker  # importable by name also under ``python -m``

    ours = _in_subprocess(_ours_worker, (n, q, seed, VOLUMES[scale], max(1, int(repeats)), threads))
    if "error" in ours:
        raise RuntimeError(f"benchmark of our selection failed: {ours['error']}")
    out.update(ours)
    out["objective_ratio"] = out["objective"] / out["exact_objective"]
    errors = []
    for mode, prefix in (("wrapper", "submodlib"), ("cpp", "submodlib_cpp")):
        res: dict[str, Any] = {"error": "skipped (with_submodlib=False)"} if not with_submodlib else {}
        if with_submodlib:
            res = _in_subprocess(_submodlib_worker, (n, q, seed, VOLUMES[scale], mode))
        for key in ("seconds", "build_seconds", "maximize_seconds", "peak_rss_mb", "extra_mb", "objective"):
            out[f"{prefix}_{key}"] = res.get(key)
        if "error" in res:
            errors.append(f"{prefix}: {res['error']}")
    out["submodlib_error"] = "; ".join(errors) or None
    out["load_avg_after"] = _load_avg()
    return out


def format_bench(result: dict[str, Any]) -> str:
    """Human-readable table of a :func:`bench_selection` result."""
    r = result

    def cell(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    rows = [
        (f"ours stochastic, {r.get('threads', '?')} thr", ""),
        ("ours stochastic, 1 thr", "one_thread_"),
        ("ours stochastic, numpy", "numpy_"),
        ("ours exact greedy", "exact_"),
        ("submodlib wrapper", "submodlib_"),
        ("submodlib C++ object", "submodlib_cpp_"),
    ]
    exact = r.get("exact_objective")
    lines = [
        f"FLQMI selection, scale {r['scale']}: S {r['n']} x {r['q']} float32 ({r['s_size_mb']:.0f} MB), "
        f"budget {r['budget']}, eta {r['eta']}, epsilon {r['epsilon']}, seed {r['seed']}; backend "
        f"{r.get('backend')}, {r.get('threads')} threads (OMP_NUM_THREADS={r.get('omp_num_threads')}), "
        f"load average {_fmt_load(r.get('load_avg_before'))} -> {_fmt_load(r.get('load_avg_after'))}",
        f"{'method':<26}{'seconds':>9}{'median':>9}{'peak RSS MB':>13}{'x S':>7}{'extra MB':>10}{'objective':>14}"
        f"{'/ exact':>9}",
    ]
    for name, pre in rows:
        sec, rss, obj = r.get(pre + "seconds"), r.get(pre + "peak_rss_mb"), r.get(pre + "objective")
        ratio = None if rss is None else rss / r["s_size_mb"]
        rel = None if obj is None or not exact else obj / exact
        lines.append(
            f"{name:<26}{cell(sec, '.3f'):>9}{cell(r.get(pre + 'seconds_median'), '.3f'):>9}{cell(rss, '.0f'):>13}"
            f"{cell(ratio, '.2f'):>7}{cell(r.get(pre + 'extra_mb'), '.0f'):>10}{cell(obj, '.3f'):>14}"
            f"{cell(rel, '.4f'):>9}"
        )
    lines.append(
        f"seconds: min over {r.get('repeats', 1)} runs (median beside it); gain kernel compiled or loaded in "
        f"{cell(r.get('compile_seconds'), '.2f')} s before timing"
    )
    if r.get("submodlib_cpp_build_seconds") is not None:
        lines.append(
            f"submodlib C++ object: {r['submodlib_cpp_build_seconds']:.3f} s building it from S, "
            f"{r['submodlib_cpp_maximize_seconds']:.3f} s maximize"
        )
    if r.get("submodlib_error"):
        lines.append(f"submodlib errors: {r['submodlib_error']}")
    return "\n".join(lines)


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _fmt_load(load: Sequence[float] | None) -> str:
    return "?" if not load else "/".join(f"{x:.2f}" for x in load)


# -------------------------------------------------------------------------------- similarity build + selection


def bench_similarity_and_selection(
    scale: str = "liver",
    d: int = 10000,
    seed: int = 0,
    kind: str = "fisher",
    device: str = "cpu",
    with_exact: bool = True,
) -> dict[str, Any]:
    """Build ``S`` from gradient embeddings and select a batch of 100, as USIM does at ``scale``; one process.

    ``kind="fisher"`` (paper Eq. 4): ``S = g_u diag(1 / (F + 1e-8)) g_q^T``, the diagonal folded into ``g_q`` once;
    ``kind="cosine"`` (Eq. 2): rows of ``g_u`` and ``g_q`` scaled to unit length. ``S`` (float32) is preallocated and
    filled in row chunks of ``g_u`` of about 64 MiB, each one matrix product (numpy's BLAS, or torch on the GPU with
    ``device="cuda"``, TF32 off); the running minimum is kept on the way, then ``S`` is shifted to ``>= 0`` in place
    and stochastic greedy (epsilon 0.01, eta 1) picks 100 rows.

    The embeddings are seeded synthetic ones (a 32-dimensional mixture of 16 modes mapped linearly to ``d``
    dimensions, plus noise): ``g_q`` (Q x d) and the Fisher diagonal (d,) exist in full, ``g_u`` only one chunk at
    a time, generated in the loop; its generation is timed apart (``generation_seconds``) and not counted, as it
    stands in for reading embeddings that already exist. ``build_seconds`` counts folding the diagonal in, the
    products (and, on the GPU, moving each chunk there and ``S`` back). ``gflops`` is ``2 N Q d`` over the product
    time. ``peak_rss_mb`` covers the whole build and selection (``S``, ``g_q``, one chunk, the interpreter).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {sorted(SCALES)}")
    if kind not in ("fisher", "cosine"):
        raise ValueError(f"kind must be 'fisher' or 'cosine', got {kind!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    d = operator.index(d)
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    n, q = SCALES[scale]
    out: dict[str, Any] = {
        "scale": scale,
        "n": n,
        "q": q,
        "d": d,
        "kind": kind,
        "device": device,
        "budget": BUDGET,
        "eta": ETA,
        "epsilon": EPSILON,
        "seed": seed,
        "s_size_mb": n * q * 4 / 2**20,
        "g_u_size_mb": n * d * 4 / 2**20,
        "gflop": 2.0 * n * q * d / 1e9,
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_avg_before": _load_avg(),
    }
    from nnal.bench import _similarity_worker  # importable by name also under ``python -m``

    res = _in_subprocess(_similarity_worker, (n, q, d, seed, kind, device, with_exact), timeout=2 * _TIMEOUT_S)
    if "error" in res:
        raise RuntimeError(f"similarity benchmark failed: {res['error']}")
    out.update(res)
    out["submodlib_seconds"] = None
    out["submodlib_objective"] = None
    out["submodlib_error"] = (
        "not run here: bench_selection compares with submodlib on the same kind of matrix; at liver scale its "
        "wrapper runs out of memory"
    )
    out["load_avg_after"] = _load_avg()
    return out


def format_similarity_bench(result: dict[str, Any]) -> str:
    """Human-readable summary of a :func:`bench_similarity_and_selection` result."""
    r = result
    lines = [
        f"similarity build ({r['kind']}, {r['device']}) + FLQMI selection, scale {r['scale']}: g_u {r['n']} x "
        f"{r['d']}, g_q {r['q']} x {r['d']}, S {r['s_size_mb']:.0f} MB; BLAS threads {r.get('blas_threads')}, "
        f"selection threads {r.get('threads')}; load average {_fmt_load(r.get('load_avg_before'))} -> "
        f"{_fmt_load(r.get('load_avg_after'))}",
        f"  total {r['seconds']:.2f} s = build {r['build_seconds']:.2f} s (products {r['gemm_seconds']:.2f} s, "
        f"{r['gflop']:.1f} GFLOP at {r['gflops']:.1f} GFLOP/s) + shift {r['shift_seconds']:.2f} s + selection "
        f"{r['selection_seconds']:.3f} s",
        f"  not counted: generating g_u {r['generation_seconds']:.2f} s, kernel compile/load "
        f"{r['compile_seconds']:.2f} s; peak RSS {r['peak_rss_mb']:.0f} MB "
        f"({r['peak_rss_mb'] / r['s_size_mb']:.2f} x S)",
        f"  objective {r['objective']:.3f}"
        + (
            f", exact greedy {r['exact_objective']:.3f} (ratio {r['objective'] / r['exact_objective']:.4f}, "
            f"{r['exact_seconds']:.2f} s)"
            if r.get("exact_objective")
            else ""
        ),
    ]
    return "\n".join(lines)


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
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [int(p["num_threads"]) for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


def _similarity_worker(n: int, q: int, d: int, seed: int, kind: str, device: str, with_exact: bool) -> dict[str, Any]:
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
    before = (_status_kb("VmRSS") or 0) / 1024
    _reset_peak()
    gen_s = gemm_s = transfer_s = 0.0
    t = time.perf_counter()
    if kind == "fisher":  # fold diag(1 / F) into g_q once, in place
        g_q *= (1.0 / (fisher.astype(np.float64) + 1e-8)).astype(np.float32)
    else:
        _unit(g_q)
    fold_s = time.perf_counter() - t
    lo = np.inf
    if device == "cpu":
        S = np.empty((n, q), dtype=np.float32)
        right = g_q.T
        for a in range(0, n, rows):
            b = min(n, a + rows)
            t = time.perf_counter()
            u = model.sample(gen, b - a)
            t1 = time.perf_counter()
            if kind == "cosine":
                _unit(u)
            np.matmul(u, right, out=S[a:b])
            lo = min(lo, float(S[a:b].min()))
            t2 = time.perf_counter()
            gen_s += t1 - t
            gemm_s += t2 - t1
        t = time.perf_counter()
        S -= np.float32(lo)
        shift_s = time.perf_counter() - t
    else:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products, as on the CPU
        dev = torch.device("cuda")
        t = time.perf_counter()
        right_t = torch.from_numpy(g_q).to(dev).T
        S_dev = torch.empty((n, q), dtype=torch.float32, device=dev)
        torch.cuda.synchronize()
        fold_s += time.perf_counter() - t
        for a in range(0, n, rows):
            b = min(n, a + rows)
            t = time.perf_counter()
            u = model.sample(gen, b - a)
            t1 = time.perf_counter()
            u_dev = torch.from_numpy(u).to(dev)
            if kind == "cosine":
                u_dev = u_dev / u_dev.norm(dim=1, keepdim=True).clamp_min(1e-30)
            torch.matmul(u_dev, right_t, out=S_dev[a:b])
            t2 = time.perf_counter()
            gen_s += t1 - t
            gemm_s += t2 - t1
        t = time.perf_counter()
        torch.cuda.synchronize()
        gemm_s += time.perf_counter() - t
        t = time.perf_counter()
        S_dev -= S_dev.min()
        torch.cuda.synchronize()
        shift_s = time.perf_counter() - t
        t = time.perf_counter()  # back to the host in chunks, straight into S (pinning 2.6 GB costs more)
        S = np.empty((n, q), dtype=np.float32)
        for a in range(0, n, rows):
            torch.from_numpy(S[a : a + rows]).copy_(S_dev[a : a + rows])
        transfer_s = time.perf_counter() - t
        del S_dev, right_t
        torch.cuda.empty_cache()
    del g_q
    t = time.perf_counter()
    picks = flqmi_stochastic_greedy(S, BUDGET, np.random.default_rng(seed), ETA, EPSILON)
    sel_s = time.perf_counter() - t
    peak = _peak_mb()
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
        "backend": submodular.backend(),
        "threads": submodular._resolve_threads(None),
        "blas_threads": _blas_threads(),
    }
    if with_exact:
        t = time.perf_counter()
        exact = flqmi_greedy(S, BUDGET, ETA)
        out.update(exact_seconds=time.perf_counter() - t, exact_objective=flqmi_objective(S, exact, ETA))
        out["objective_ratio"] = out["objective"] / out["exact_objective"]
    return out


# ----------------------------------------------------------------------------------------------- measurement


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: lifetime peak, an over-estimate
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def _measure(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """Run ``fn``; return (result, seconds, peak RSS MB during the call, RSS MB before it)."""
    before = (_status_kb("VmRSS") or 0) / 1024
    _reset_peak()
    t0 = time.perf_counter()
    res = fn()
    sec = time.perf_counter() - t0
    return res, sec, _peak_mb(), before


def _ours_worker(n: int, q: int, seed: int, volumes: int, repeats: int, threads: int | None) -> dict[str, Any]:
    S = similarity_matrix(n, q, seed, volumes)
    t0 = time.perf_counter()  # compile (or load from numba's cache) both kernel variants, on a tiny matrix
    flqmi_stochastic_greedy(S[:64], 2, np.random.default_rng(0))
    flqmi_greedy(S[:64], 2)
    out: dict[str, Any] = {
        "compile_seconds": time.perf_counter() - t0,
        "backend": submodular.backend(),
        "threads": submodular._resolve_threads(threads),
        "repeats": repeats,
    }

    def stochastic(k: int | None) -> np.ndarray:
        return flqmi_stochastic_greedy(S, BUDGET, np.random.default_rng(seed), ETA, EPSILON, threads=k)

    times, peaks, picks = [], [], None
    for _ in range(repeats):
        res, sec, peak, before = _measure(lambda: stochastic(threads))
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
        peak_reset=_reset_peak(),
    )
    times = []
    for _ in range(repeats):
        res, sec, peak, before = _measure(lambda: stochastic(1))
        assert np.array_equal(res, picks), "the picks depend on the thread count"
        times.append(sec)
    out.update(one_thread_seconds=min(times), one_thread_seconds_median=float(np.median(times)))
    submodular._STATE["force_numpy"] = True
    try:
        res, sec, peak, before = _measure(lambda: stochastic(threads))
    finally:
        submodular._STATE["force_numpy"] = False
    out.update(
        numpy_seconds=sec,
        numpy_peak_rss_mb=peak,
        numpy_extra_mb=peak - before,
        numpy_same_picks=bool(np.array_equal(res, picks)),
    )
    res, sec, peak, before = _measure(lambda: flqmi_greedy(S, BUDGET, ETA, threads=threads))
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


def _submodlib_worker(n: int, q: int, seed: int, volumes: int, mode: str) -> dict[str, Any]:
    if mode not in ("wrapper", "cpp"):
        raise ValueError(f"mode must be 'wrapper' or 'cpp', got {mode!r}")
    S = similarity_matrix(n, q, seed, volumes)
    _limit_memory(S.nbytes)
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

    before = (_status_kb("VmRSS") or 0) / 1024
    _reset_peak()
    t0 = time.perf_counter()
    obj = build()
    t1 = time.perf_counter()
    picks = [int(i) for i, _ in run(obj)]
    t2 = time.perf_counter()
    peak = _peak_mb()
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


def _limit_memory(s_bytes: int) -> None:
    """Cap this process's address space so submodlib fails with MemoryError instead of exhausting the machine."""
    avail_kb = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail_kb = int(line.split()[1])
    except OSError:
        return
    vm_kb = _status_kb("VmSize")
    if avail_kb is None or vm_kb is None:
        return
    allowance = int(min(0.5 * avail_kb * 1024, 3 * s_bytes + (1 << 30)))
    limit = vm_kb * 1024 + allowance
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    _GUARD["note"] = f" (address space capped at {limit / 2**30:.1f} GiB, S {s_bytes / 2**30:.2f} GiB)"


def _child(conn: Any, fn: Callable[..., dict[str, Any]], args: tuple) -> None:
    try:
        res = fn(*args)
    except BaseException as exc:  # reported to the parent as a string
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} `{frames[-1].line}`" if frames else ""
        msg = f": {exc}" if str(exc) else ""
        res = {"error": f"{type(exc).__name__}{msg}{where}{_GUARD['note']}"}
    conn.send(res)
    conn.close()


def _in_subprocess(fn: Callable[..., dict[str, Any]], args: tuple, timeout: float = _TIMEOUT_S) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    from nnal.bench import _child as child

    proc = ctx.Process(target=child, args=(send, fn, args), daemon=True)
    proc.start()
    send.close()
    try:
        if recv.poll(timeout):
            return recv.recv()
        return {"error": f"timed out after {timeout:.0f} s"}
    except EOFError:
        proc.join(5)
        return {"error": f"process died (exit code {proc.exitcode}; a negative code is the signal, 9: OOM killer?)"}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nnal.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="hippocampus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-submodlib", action="store_true", help="measure only our implementation")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="timed runs of our stochastic greedy")
    ap.add_argument("--similarity", action="store_true", help="benchmark the similarity build plus selection")
    ap.add_argument("--d", type=int, default=10000, help="embedding dimension (with --similarity)")
    ap.add_argument("--kind", choices=("fisher", "cosine"), default="fisher", help="similarity (with --similarity)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to build S (with --similarity)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    if a.similarity:
        res = bench_similarity_and_selection(a.scale, d=a.d, seed=a.seed, kind=a.kind, device=a.device)
        text = format_similarity_bench
    else:
        res = bench_selection(a.scale, seed=a.seed, with_submodlib=not a.no_submodlib, repeats=a.repeats)
        text = format_bench
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in res.items()}
    print(json.dumps(clean, indent=2) if a.json else text(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
