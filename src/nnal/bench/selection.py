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
import operator
import os
from collections.abc import Sequence
from typing import Any

from nnal.bench.process import TIMEOUT_S, run_in_subprocess
from nnal.bench.scales import BUDGET, EPSILON, ETA, REPEATS, SCALES, VOLUMES
from nnal.bench.workers import ours_worker, similarity_worker, submodlib_worker


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
    ours = run_in_subprocess(ours_worker, (n, q, seed, VOLUMES[scale], max(1, int(repeats)), threads))
    if "error" in ours:
        raise RuntimeError(f"benchmark of our selection failed: {ours['error']}")
    out.update(ours)
    out["objective_ratio"] = out["objective"] / out["exact_objective"]
    errors = []
    for mode, prefix in (("wrapper", "submodlib"), ("cpp", "submodlib_cpp")):
        res: dict[str, Any] = {"error": "skipped (with_submodlib=False)"} if not with_submodlib else {}
        if with_submodlib:
            res = run_in_subprocess(submodlib_worker, (n, q, seed, VOLUMES[scale], mode))
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

    ``kind="fisher"`` (paper Eq. 4): ``S = g_u diag(1 / (F + 1e-6 mean(F))) g_q^T`` (USIMF's default damping), the
    diagonal folded into ``g_q`` once;
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
    out: dict[str, Any] = dict(
        scale=scale, n=n, q=q, d=d, kind=kind, device=device, budget=BUDGET, eta=ETA, epsilon=EPSILON, seed=seed,
        s_size_mb=n * q * 4 / 2**20, g_u_size_mb=n * d * 4 / 2**20, gflop=2.0 * n * q * d / 1e9,
        cpu_count=os.cpu_count(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"), load_avg_before=_load_avg())
    res = run_in_subprocess(similarity_worker, (n, q, d, seed, kind, device, with_exact), timeout=2 * TIMEOUT_S)
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
