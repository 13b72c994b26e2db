"""Benchmark of FLQMI selection (ours vs submodlib) on seeded synthetic similarity matrices.

Every measurement runs in a fresh process (``multiprocessing`` spawn) that builds its own matrix, so one method's
memory never counts against another and an out-of-memory failure of submodlib is recorded, not fatal.

What is measured, per method, around the selection call only (the matrix is built before):
``seconds`` is wall time; ``peak_rss_mb`` is the process's peak resident memory during the call (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs`` just before, so it includes the matrix itself, the interpreter and numpy,
but not the matrix generation); ``peak_over_s`` divides it by the matrix size.

Run ``python -m nnal.bench --scale hippocampus --json``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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


def bench_selection(scale: str, seed: int = 0, with_submodlib: bool = True) -> dict[str, Any]:
    """Time and memory of FLQMI selection at ``scale`` (one of ``SCALES``), budget 100, eta 1.

    Ours: stochastic greedy (epsilon 0.01) and exact greedy. submodlib (when installed and ``with_submodlib``):
    its StochasticGreedy with the same epsilon, through its Python wrapper and through its C++ object directly.
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
    }
    from nnal.bench import _ours_worker, _submodlib_worker  # importable by name also under ``python -m``

    ours = _in_subprocess(_ours_worker, (n, q, seed, VOLUMES[scale]))
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
    return out


def format_bench(result: dict[str, Any]) -> str:
    """Human-readable table of a :func:`bench_selection` result."""
    r = result

    def cell(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    rows = [
        ("ours stochastic greedy", ""),
        ("ours exact greedy", "exact_"),
        ("submodlib wrapper", "submodlib_"),
        ("submodlib C++ object", "submodlib_cpp_"),
    ]
    exact = r.get("exact_objective")
    lines = [
        f"FLQMI selection, scale {r['scale']}: S {r['n']} x {r['q']} float32 ({r['s_size_mb']:.0f} MB), "
        f"budget {r['budget']}, eta {r['eta']}, epsilon {r['epsilon']}, seed {r['seed']}",
        f"{'method':<24}{'seconds':>10}{'peak RSS MB':>13}{'x S':>7}{'extra MB':>10}{'objective':>14}{'/ exact':>9}",
    ]
    for name, pre in rows:
        sec, rss, obj = r.get(pre + "seconds"), r.get(pre + "peak_rss_mb"), r.get(pre + "objective")
        ratio = None if rss is None else rss / r["s_size_mb"]
        rel = None if obj is None or not exact else obj / exact
        lines.append(
            f"{name:<24}{cell(sec, '.3f'):>10}{cell(rss, '.0f'):>13}{cell(ratio, '.2f'):>7}"
            f"{cell(r.get(pre + 'extra_mb'), '.0f'):>10}{cell(obj, '.3f'):>14}{cell(rel, '.4f'):>9}"
        )
    if r.get("submodlib_cpp_build_seconds") is not None:
        lines.append(
            f"submodlib C++ object: {r['submodlib_cpp_build_seconds']:.3f} s building it from S, "
            f"{r['submodlib_cpp_maximize_seconds']:.3f} s maximize"
        )
    if r.get("submodlib_error"):
        lines.append(f"submodlib errors: {r['submodlib_error']}")
    return "\n".join(lines)


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


def _ours_worker(n: int, q: int, seed: int, volumes: int) -> dict[str, Any]:
    S = similarity_matrix(n, q, seed, volumes)
    rng = np.random.default_rng(seed)
    picks, sec, peak, before = _measure(lambda: flqmi_stochastic_greedy(S, BUDGET, rng, ETA, EPSILON))
    out: dict[str, Any] = {
        "seconds": sec,
        "peak_rss_mb": peak,
        "rss_before_mb": before,
        "extra_mb": peak - before,
        "peak_over_s": peak / (S.nbytes / 2**20),
        "objective": flqmi_objective(S, picks, ETA),
        "peak_reset": _reset_peak(),
    }
    picks, sec, peak, before = _measure(lambda: flqmi_greedy(S, BUDGET, ETA))
    out.update(
        exact_seconds=sec,
        exact_peak_rss_mb=peak,
        exact_extra_mb=peak - before,
        exact_objective=flqmi_objective(S, picks, ETA),
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
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    res = bench_selection(a.scale, seed=a.seed, with_submodlib=not a.no_submodlib)
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in res.items()}
    print(json.dumps(clean, indent=2) if a.json else format_bench(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
