"""FLQMI, the submodular mutual information of the paper's Eq. 1, and its greedy maximisers.

For a similarity matrix ``S`` of shape ``(n_candidates, n_query)`` (rows: unlabeled pool, columns: query set)

    I(B; Q) = sum_{i in Q} max_{j in B} S[j, i] + eta * sum_{j in B} max_{i in Q} S[j, i]

which is submodlib's ``FacilityLocationVariantMutualInformationFunction`` ("FL2MI"). As in submodlib, a maximum over
the empty set is 0 and entries below 0 count as 0 (the running column maxima start at 0), so negative similarities
all tie. :func:`shift_nonnegative` removes that loss of information. No I/O; numba (when installed) compiles the
gain kernel, otherwise numpy computes the same numbers.

The marginal gain of row ``j`` given the running column maxima ``cur`` is
``sum_i max(0, S[j, i] - cur[i]) + eta * max(0, max_i S[j, i])``. Gains never grow while ``B`` grows, so a stale
gain is an upper bound: both maximisers evaluate lazily and never copy ``S``. See docs/submodular.md.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from nnal.submodular.checks import (
    as_row_indices,
    as_similarity_matrix,
    check_eta,
    resolve_threads,
    rows_per_chunk,
    validate_problem,
)
from nnal.submodular.kernel import LANES, argmax_last, gain_kernel, lane_sums, running_best

__all__ = ["backend", "flqmi_greedy", "flqmi_objective", "flqmi_stochastic_greedy", "shift_nonnegative"]

_EXACT_BATCH_MAX = 1 << 16  # exact greedy: most stale rows re-evaluated per round (rounds double from one chunk)
_MIN_BYTES_PER_TASK = 4 << 20  # with several threads, a batch is cut into tasks that read at least this much of S
_PARTS_PER_THREAD = 4  # ... and into at most this many tasks per thread


def shift_nonnegative(S: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Return ``S - S.min()``, so the smallest similarity becomes 0.

    submodlib clips negative similarities to 0, so all of them tie. Subtracting the global minimum keeps their order.
    For a non-empty ``B`` a constant shift ``c`` changes the objective by ``-(n_query + eta * |B|) * c``, which
    is the same for all sets of one size: greedy picks on the shifted matrix are greedy picks of Eq. 1 on the raw
    ``S`` with nothing clipped. ``inplace=True`` shifts a float array in place (no second copy of ``S``).
    """
    src = S
    S = as_similarity_matrix(S)
    if inplace and S is not src:
        raise ValueError("inplace=True needs a float32 or float64 numpy array")
    lo = S.min()
    if not (np.isfinite(lo) and np.isfinite(S.max())):
        raise ValueError("S contains non-finite values")
    if inplace:
        S -= lo
        return S
    return S - lo


def flqmi_objective(S: np.ndarray, selected: np.ndarray, eta: float = 1.0) -> float:
    """Evaluate Eq. 1 for the row indices ``selected`` (a set: no duplicates); 0.0 for the empty set."""
    S = as_similarity_matrix(S)
    eta = check_eta(eta)
    sel = as_row_indices(selected, S.shape[0])
    if sel.size == 0:
        return 0.0
    colmax = np.zeros(S.shape[1], dtype=S.dtype)
    rowmax_sum = 0.0
    step = rows_per_chunk(S)
    for a in range(0, sel.size, step):
        rows = S[sel[a : a + step]]
        if not np.isfinite(rows).all():
            raise ValueError("S contains non-finite values in the selected rows")
        np.maximum(colmax, rows.max(axis=0), out=colmax)
        rowmax_sum += float(np.maximum(rows.max(axis=1), 0).sum(dtype=np.float64))
    return float(colmax.sum(dtype=np.float64)) + eta * rowmax_sum


def flqmi_greedy(S: np.ndarray, budget: int, eta: float = 1.0, *, threads: int | None = None) -> np.ndarray:
    """Exact greedy maximisation of Eq. 1; returns ``budget`` row indices in pick order.

    Lazy: one contiguous read of ``S`` gives every first gain (and checks ``S`` is finite); later steps re-evaluate,
    in rounds of growing size, only rows whose stale gain (an upper bound) can still win. Gains are float64 sums of
    the float32 terms submodlib computes, and ties go to the highest row index as in submodlib's ``NaiveGreedy`` (it
    scans its ground set from the last row down and keeps the first strict maximum), so the picks equal submodlib's
    pick for pick up to the order of the float64 summation. ``threads``: see :func:`flqmi_stochastic_greedy`.
    """
    S, budget, eta = validate_problem(S, budget, eta)
    threads = resolve_threads(threads)
    n = S.shape[0]
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    picks = np.empty(budget, dtype=np.int64)
    with _Gains(S, eta, threads, exact=True) as ev:
        ub, fresh = ev.ub, ev.fresh  # ub: exact gains at step 0, upper bounds afterwards; fresh: step of that gain
        ev.evaluate(np.arange(n, dtype=np.int64), None, True, -1.0, -1, 0)
        for t in range(budget):
            best_g, best_j = -1.0, -1  # all gains are >= 0
            batch = ev.rows_per_chunk
            if t == 0:
                best_j = argmax_last(ub)  # row index == position
            while t > 0:
                cand = np.flatnonzero((ub >= best_g) & (fresh != t))  # picked rows hold -inf
                if cand.size == 0:
                    break
                if cand.size > batch:
                    cand = cand[np.argpartition(ub[cand], cand.size - batch)[-batch:]]
                cand = cand[np.argsort(-ub[cand], kind="stable")]  # highest bound first
                batch = min(2 * batch, _EXACT_BATCH_MAX)
                best_g, best_j = ev.evaluate(cand, ub[cand], False, best_g, best_j, t, interleave=True)
            picks[t] = best_j
            ev.add(best_j)
            ub[best_j] = -np.inf
    return picks


def flqmi_stochastic_greedy(
    S: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    eta: float = 1.0,
    epsilon: float = 0.01,
    *,
    threads: int | None = None,
) -> np.ndarray:
    """Stochastic greedy (Mirzasoleiman et al. 2015) for Eq. 1; returns ``budget`` row indices in pick order.

    Each step draws ``ceil(n / budget * ln(1 / epsilon))`` distinct rows (at most all that are left) uniformly from
    the rows not yet picked, using only ``rng``, and adds the one with the largest marginal gain (ties: highest row
    index). The pick is the exact argmax over the sample: laziness only skips sampled rows whose stale gain (an upper
    bound) cannot win. A row is checked to be finite, and its maximum stored, the first time it is read; the rows no
    sample drew are checked at the end, so a non-finite entry anywhere raises ``ValueError``.

    ``threads``: threads that evaluate gains (default: ``OMP_NUM_THREADS`` if set, else the CPUs this process may
    use). The picks do not depend on it, nor on whether numba is installed. Deviations from submodlib: see
    docs/submodular.md.
    """
    S, budget, eta = validate_problem(S, budget, eta)
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator")
    epsilon = float(epsilon)
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    threads = resolve_threads(threads)
    n = S.shape[0]
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    size = math.ceil(n / budget * math.log(1.0 / epsilon))
    pool = np.arange(n, dtype=np.int64)  # rows not yet picked are pool[:left]
    where = np.arange(n, dtype=np.int64)  # position of each row in pool
    picks = np.empty(budget, dtype=np.int64)
    with _Gains(S, eta, threads, exact=False) as ev:
        ub = ev.ub  # inf: never read; -inf: picked
        for t in range(budget):
            left = n - t
            sample = pool[rng.choice(left, min(size, left), replace=False)]
            bound = ub[sample]
            best_g, best_j = -1.0, -1
            never = np.isinf(bound)
            if never.any():  # no bound yet: must be read
                best_g, best_j = ev.evaluate(np.sort(sample[never]), None, True, best_g, best_j, t)
            rest, bound = sample[~never], bound[~never]
            keep = bound >= best_g
            rest, bound = rest[keep], bound[keep]
            if rest.size:  # stale rows, highest bound first, until no bound can win
                order = np.argsort(-bound, kind="stable")
                best_g, best_j = ev.evaluate(rest[order], bound[order], False, best_g, best_j, t, interleave=True)
            picks[t] = best_j
            ev.add(best_j)
            ub[best_j] = -np.inf
            p, last = where[best_j], pool[left - 1]
            pool[p], where[last] = last, p
        ev.check_unread()
    return picks


# ------------------------------------------------------------------------------------------------ gain evaluation


class _Gains:
    """Exact marginal gains of rows of ``S`` against the running column maxima ``cur`` of the picks.

    Holds per row: ``ub`` (the last gain computed, inf if the row was never read), ``fresh`` (the step of that gain)
    and ``rowmax`` (``max(0, max_i S[j, i])``, stored on the first read, which also checks the row is finite). A gain
    is summed in 32 lanes (lane ``i % 32`` adds column ``i``'s positive term, in column order) in float64 for the
    exact greedy and in ``S.dtype`` for the stochastic one, then the lanes in order in float64. The numba kernel and
    numpy compute these same operations in the same order, so both backends give identical gains and picks.
    """

    def __init__(self, S: np.ndarray, eta: float, threads: int, exact: bool) -> None:
        n, q = S.shape
        self.S = S
        self.eta = S.dtype.type(eta)  # submodlib multiplies eta and the row maximum in float32
        self.cur = np.zeros(q, dtype=S.dtype)
        self.ub = np.full(n, np.inf)
        self.fresh = np.full(n, -1, dtype=np.int64)
        self.rowmax = np.zeros(n, dtype=S.dtype)
        self.lanes = np.zeros(LANES, dtype=np.float64 if exact else S.dtype)  # accumulator dtype
        self.rows_per_chunk = rows_per_chunk(S)
        self.threads = threads
        self.min_rows = max(1, _MIN_BYTES_PER_TASK // (q * S.itemsize))
        self.kernel = gain_kernel() if S.flags.c_contiguous and S.dtype in (np.float32, np.float64) else None
        self.local = threading.local()  # numpy backend: one buffer per thread
        self.executor = ThreadPoolExecutor(threads - 1) if threads > 1 else None

    def __enter__(self) -> _Gains:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.executor is not None:
            self.executor.shutdown()

    def add(self, j: int) -> None:
        np.maximum(self.cur, self.S[j], out=self.cur)

    def evaluate(
        self,
        rows: np.ndarray,
        bound: np.ndarray | None,
        first: bool,
        best_g: float,
        best_j: int,
        step: int,
        interleave: bool = False,
    ) -> tuple[float, int]:
        """Gains of ``rows`` into ``ub`` (``fresh`` := ``step``); returns the running (best gain, row), ties to the
        highest row. ``bound`` (None: no bound) holds upper bounds in decreasing order: a thread stops at the first
        row whose bound is below the best gain any thread has found. ``first``: the rows were never read.

        With several threads, ``rows`` is cut into tasks, contiguous runs or, with ``interleave``, every k-th row (so
        that all of them start at high bounds). Which rows are skipped may depend on timing; the best (gain, row)
        does not, since a row is only skipped when it cannot win."""
        if bound is None:
            bound = np.full(rows.size, np.inf)
        parts = 1 if self.executor is None else min(_PARTS_PER_THREAD * self.threads, rows.size // self.min_rows)
        if parts <= 1:
            slices = [(rows, bound)]
        elif interleave:
            slices = [
                (np.ascontiguousarray(rows[k::parts]), np.ascontiguousarray(bound[k::parts])) for k in range(parts)
            ]
        else:
            cuts = np.linspace(0, rows.size, parts + 1).astype(np.int64)
            slices = [(rows[a:b], bound[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        shared = np.array([best_g])  # best gain found so far by any thread (racy reads only make pruning weaker)
        results = self._run([(r, b, first, best_g, best_j, step, shared) for r, b in slices])
        for (r, _), (bad, g, j) in zip(slices, results, strict=True):
            if bad >= 0:
                raise ValueError(f"S contains non-finite values (row {int(r[bad])})")
            if g > best_g or (g == best_g and j > best_j):
                best_g, best_j = g, j
        return best_g, best_j

    def _run(self, tasks: list[tuple]) -> list[tuple[int, float, int]]:
        """Run :meth:`_part` on each task: this thread and ``threads - 1`` pool threads take tasks in turn, so a
        thread slowed down (by another process on its core) just takes fewer of them."""
        if len(tasks) == 1 or self.executor is None:
            return [self._part(*t) for t in tasks]
        results: list[Any] = [None] * len(tasks)
        todo = iter(range(len(tasks)))
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                results[i] = self._part(*tasks[i])

        helpers = [self.executor.submit(work) for _ in range(min(self.threads, len(tasks)) - 1)]
        try:
            work()
        finally:
            for f in helpers:
                f.result()
        return results

    def _part(
        self,
        rows: np.ndarray,
        bound: np.ndarray,
        first: bool,
        best_g: float,
        best_j: int,
        step: int,
        shared: np.ndarray,
    ) -> tuple[int, float, int]:
        """One thread's share: (position of a non-finite row or -1, best gain, its row)."""
        if self.kernel is not None:
            status, g, j = self.kernel(
                self.S, rows, bound, self.cur, self.eta, first, best_g, best_j, shared, self.lanes,
                self.rowmax, self.ub, self.fresh, step,
            )  # fmt: skip
            return (-status - 1 if status < 0 else -1), float(g), int(j)
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = np.empty((self.rows_per_chunk, self.S.shape[1]), dtype=self.S.dtype)
        return _numpy_gains(self, rows, bound, first, best_g, best_j, step, shared, buf)

    def check_unread(self) -> None:
        """Raise if a row never read holds a non-finite value: a NaN anywhere in ``S`` is an error."""
        rows = np.flatnonzero(self.ub == np.inf)
        for a in range(0, rows.size, self.rows_per_chunk):
            idx = rows[a : a + self.rows_per_chunk]
            ok = np.isfinite(self.S[idx]).all(axis=1)
            if not ok.all():
                raise ValueError(f"S contains non-finite values (row {int(idx[np.argmin(ok)])})")


def _numpy_gains(gains: _Gains, rows: np.ndarray, bound: np.ndarray, first: bool, best_g: float, best_j: int,
                 step: int, shared: np.ndarray, buf: np.ndarray) -> tuple[int, float, int]:
    """:meth:`_Gains._part` without numba: the same gains, block by block in numpy."""
    S, cur, step_rows = gains.S, gains.cur, gains.rows_per_chunk
    for a in range(0, rows.size, step_rows):
        floor = max(best_g, float(shared[0]))
        if bound[a] < floor:
            break
        idx, b = rows[a : a + step_rows], bound[a : a + step_rows]
        idx = idx[b >= floor]
        res = buf[: idx.size]
        if int(idx[-1]) - int(idx[0]) == idx.size - 1 and bool(np.all(np.diff(idx) == 1)):
            src = S[int(idx[0]) : int(idx[-1]) + 1]
        else:
            src = res
            for r, j in enumerate(idx.tolist()):
                res[r] = S[j]  # one row at a time: no gathered temporary
        if first:
            mx, mn = src.max(axis=1), src.min(axis=1)  # NaN propagates
            ok = np.isfinite(mx) & np.isfinite(mn)
            if not ok.all():
                return a + int(np.flatnonzero(b >= floor)[np.argmin(ok)]), best_g, best_j
            gains.rowmax[idx] = np.maximum(mx, 0)
        np.maximum(src, cur, out=res)
        np.subtract(res, cur, out=res)  # the float terms submodlib computes
        g = lane_sums(res, gains.lanes.dtype)
        if gains.eta != 0:
            g += gains.eta * gains.rowmax[idx]
        gains.ub[idx] = g
        gains.fresh[idx] = step
        best_g, best_j = running_best(g, idx, best_g, best_j)
        if best_g > shared[0]:
            shared[0] = best_g
    return -1, best_g, best_j


def backend() -> str:
    """``"numba"`` or ``"numpy"``: what evaluates gains of C-contiguous float matrices in this process."""
    return "numpy" if gain_kernel() is None else "numba"
