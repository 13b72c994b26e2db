"""FLQMI, the submodular mutual information of the paper's Eq. 1, and its greedy maximisers.

For a similarity matrix ``S`` of shape ``(n_candidates, n_query)`` (rows: unlabeled pool, columns: query set)

    I(B; Q) = sum_{i in Q} max_{j in B} S[j, i] + eta * sum_{j in B} max_{i in Q} S[j, i]

which is submodlib's ``FacilityLocationVariantMutualInformationFunction`` ("FL2MI"). As in submodlib, a maximum over
the empty set is 0 and entries below 0 count as 0 (the running column maxima start at 0), so negative similarities
all tie. :func:`shift_nonnegative` removes that loss of information. Numpy only; no I/O.

The marginal gain of row ``j`` given the running column maxima ``cur`` is
``sum_i max(0, S[j, i] - cur[i]) + eta * max(0, max_i S[j, i])``. Gains never grow while ``B`` grows, so a stale
gain is an upper bound: both maximisers evaluate lazily, read ``S`` in row chunks of about 2 MiB and never copy it.
"""

from __future__ import annotations

import math
import operator

import numpy as np

__all__ = ["flqmi_greedy", "flqmi_objective", "flqmi_stochastic_greedy", "shift_nonnegative"]

_CHUNK_BYTES = 1 << 21  # rows of S are processed in blocks of about this size (fits in L2/L3)
_EXACT_BATCH_MAX = 1 << 16  # exact greedy: most stale rows re-evaluated per round (rounds double from one chunk)


def shift_nonnegative(S: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Return ``S - S.min()``, so the smallest similarity becomes 0.

    submodlib clips negative similarities to 0, so all of them tie. Subtracting the global minimum keeps their order.
    For a non-empty ``B`` a constant shift ``c`` changes the objective by ``-(n_query + eta * |B|) * c``, which
    is the same for all sets of one size: greedy picks on the shifted matrix are greedy picks of Eq. 1 on the raw
    ``S`` with nothing clipped. ``inplace=True`` shifts a float array in place (no second copy of ``S``).
    """
    src = S
    S = _as_matrix(S)
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
    S = _as_matrix(S)
    eta = _check_eta(eta)
    sel = _as_indices(selected, S.shape[0])
    if sel.size == 0:
        return 0.0
    colmax = np.zeros(S.shape[1], dtype=S.dtype)
    rowmax_sum = 0.0
    step = _chunk_rows(S)
    for a in range(0, sel.size, step):
        rows = S[sel[a : a + step]]
        if not np.isfinite(rows).all():
            raise ValueError("S contains non-finite values in the selected rows")
        np.maximum(colmax, rows.max(axis=0), out=colmax)
        rowmax_sum += float(np.maximum(rows.max(axis=1), 0).sum(dtype=np.float64))
    return float(colmax.sum(dtype=np.float64)) + eta * rowmax_sum


def flqmi_greedy(S: np.ndarray, budget: int, eta: float = 1.0) -> np.ndarray:
    """Exact greedy maximisation of Eq. 1; returns ``budget`` row indices in pick order.

    Lazy: one contiguous read of ``S`` gives every first gain (and checks ``S`` is finite); later steps re-evaluate,
    in rounds of growing size, only rows whose stale gain (an upper bound) can still win. Gains are float64 sums of
    the float32 terms submodlib computes, and ties go to the highest row index as in submodlib's ``NaiveGreedy`` (it
    scans its ground set from the last row down and keeps the first strict maximum), so the picks equal submodlib's
    pick for pick up to the order of the float64 summation.
    """
    S, budget, eta = _validate(S, budget, eta)
    n = S.shape[0]
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    ev = _Gains(S, eta, exact=True)
    ub = ev.scan(gains=True)  # exact gains at step 0, upper bounds afterwards
    fresh = np.zeros(n, dtype=np.int64)  # step at which ub[j] was last computed exactly
    picks = np.empty(budget, dtype=np.int64)
    for t in range(budget):
        best_g, best_j = -1.0, -1  # all gains are >= 0
        batch = ev.rows_per_chunk
        if t == 0:
            best_j = _argmax_last(ub)  # row index == position
        while t > 0:
            cand = np.flatnonzero((ub >= best_g) & (fresh != t))  # picked rows hold -inf
            if cand.size == 0:
                break
            if cand.size > batch:
                cand = np.sort(cand[np.argpartition(ub[cand], cand.size - batch)[-batch:]])
            batch = min(2 * batch, _EXACT_BATCH_MAX)
            g = ev.dense(cand)
            ub[cand] = g
            fresh[cand] = t
            best_g, best_j = _better(g, cand, best_g, best_j)
        picks[t] = best_j
        ev.add(best_j)
        ub[best_j] = -np.inf
    return picks


def flqmi_stochastic_greedy(
    S: np.ndarray, budget: int, rng: np.random.Generator, eta: float = 1.0, epsilon: float = 0.01
) -> np.ndarray:
    """Stochastic greedy (Mirzasoleiman et al. 2015) for Eq. 1; returns ``budget`` row indices in pick order.

    Each step draws ``ceil(n / budget * ln(1 / epsilon))`` distinct rows (at most all that are left) uniformly from
    the rows not yet picked, using only ``rng``, and adds the one with the largest marginal gain (ties: highest row
    index). The pick is the argmax over the sample (gains summed in ``S.dtype``, so exact up to that rounding):
    laziness only skips sampled rows whose stale gain (an upper bound) cannot win. One contiguous read of ``S``
    first checks it is finite and stores the row maxima. Deviations from submodlib: see docs/submodular.md.
    """
    S, budget, eta = _validate(S, budget, eta)
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator")
    epsilon = float(epsilon)
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    n = S.shape[0]
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    size = math.ceil(n / budget * math.log(1.0 / epsilon))
    ev = _Gains(S, eta, exact=False)
    ev.scan(gains=False)
    ub = np.full(n, np.inf)  # inf: never evaluated
    pool = np.arange(n, dtype=np.int64)  # rows not yet picked are pool[:left]
    where = np.arange(n, dtype=np.int64)  # position of each row in pool
    batch = max(1, ev.rows_per_chunk // 4)
    picks = np.empty(budget, dtype=np.int64)
    for t in range(budget):
        left = n - t
        sample = pool[rng.choice(left, min(size, left), replace=False)]
        bound = ub[sample]
        best_g, best_j = -1.0, -1
        never = np.isinf(bound)
        if never.any():  # no bound yet: must be read
            rows = np.sort(sample[never])
            g = ev.dense(rows)
            ub[rows] = g
            best_g, best_j = _better(g, rows, best_g, best_j)
        rest, bound = sample[~never], bound[~never]
        keep = bound >= best_g
        order = np.argsort(-bound[keep], kind="stable")
        rest, bound = rest[keep][order], bound[keep][order]
        for a in range(0, rest.size, batch):  # stale rows, highest bound first
            if bound[a] < best_g:
                break
            rows = rest[a : a + batch]
            rows = np.sort(rows[bound[a : a + batch] >= best_g])
            g = ev.dense(rows)
            ub[rows] = g
            best_g, best_j = _better(g, rows, best_g, best_j)
        picks[t] = best_j
        ev.add(best_j)
        ub[best_j] = -np.inf
        p, last = where[best_j], pool[left - 1]
        pool[p], where[last] = last, p
    return picks


class _Gains:
    """Exact marginal gains of rows of ``S`` against the running column maxima ``cur`` of the picks."""

    def __init__(self, S: np.ndarray, eta: float, exact: bool) -> None:
        n, q = S.shape
        self.S = S
        self.eta = S.dtype.type(eta)  # submodlib multiplies eta and the row maximum in float32
        self.exact = exact  # float64 row sums (the same for a row whatever the chunk) vs sums in S.dtype
        self.cur = np.zeros(q, dtype=S.dtype)
        self.rows_per_chunk = _chunk_rows(S)
        self.buf = np.empty((self.rows_per_chunk, q), dtype=S.dtype)
        self.buf_rows = list(self.buf)
        self.rowmax = np.zeros(n, dtype=S.dtype)  # max(0, max_i S[j, i])

    def add(self, j: int) -> None:
        np.maximum(self.cur, self.S[j], out=self.cur)

    def scan(self, gains: bool) -> np.ndarray | None:
        """One contiguous read of ``S``: check it is finite, store row maxima, optionally return all gains."""
        n = self.S.shape[0]
        out = np.empty(n) if gains else None
        for a in range(0, n, self.rows_per_chunk):
            b = min(n, a + self.rows_per_chunk)
            blk = self.S[a:b]
            mx = blk.max(axis=1)  # NaN propagates
            if not (np.isfinite(mx).all() and np.isfinite(blk.min())):
                raise ValueError(f"S contains non-finite values (rows {a}..{b - 1})")
            np.maximum(mx, 0, out=self.rowmax[a:b])
            if out is not None:
                res = self.buf[: b - a]
                np.maximum(blk, self.cur, out=res)
                out[a:b] = self._finish(res, a, b)
        return out

    def dense(self, rows: np.ndarray) -> np.ndarray:
        """Gains of ``rows`` (sorted row indices), reading each row of ``S`` once, straight into the buffer."""
        out = np.empty(rows.size)
        S, cur, maximum, buf_rows = self.S, self.cur, np.maximum, self.buf_rows
        for a in range(0, rows.size, self.rows_per_chunk):
            idx = rows[a : a + self.rows_per_chunk]
            for r, j in enumerate(idx.tolist()):
                maximum(S[j], cur, out=buf_rows[r])  # no gathered copy of the rows
            out[a : a + idx.size] = self._finish(self.buf[: idx.size], idx)
        return out

    def _finish(self, res: np.ndarray, rows: np.ndarray | int, stop: int | None = None) -> np.ndarray:
        """``res`` holds ``max(S[rows], cur)``: subtract ``cur`` (same float ops as submodlib), sum, add eta term."""
        np.subtract(res, self.cur, out=res)
        if self.exact:  # pairwise float64 sums, identical for a row whatever chunk it is in
            g = res.sum(axis=1, dtype=np.float64)
        else:  # sums in S.dtype: 3x faster than numpy's pairwise sum, and the terms are mostly 0 after a few picks
            g = np.einsum("ij->i", res).astype(np.float64)
        if self.eta != 0:
            m = self.rowmax[rows:stop] if stop is not None else self.rowmax[rows]
            g += self.eta * m
        return g


def _better(g: np.ndarray, rows: np.ndarray, best_g: float, best_j: int) -> tuple[float, int]:
    """Running maximum over (gain, row) pairs for sorted ``rows``; ties go to the highest row index."""
    if g.size == 0:
        return best_g, best_j
    i = _argmax_last(g)
    gj, j = float(g[i]), int(rows[i])
    if gj > best_g or (gj == best_g and j > best_j):
        return gj, j
    return best_g, best_j


def _argmax_last(g: np.ndarray) -> int:
    """Position of the last maximum of ``g`` (the highest row index among ties, rows being sorted)."""
    return g.size - 1 - int(np.argmax(g[::-1]))


def _chunk_rows(S: np.ndarray) -> int:
    return max(1, min(S.shape[0], _CHUNK_BYTES // max(1, S.shape[1] * S.itemsize)))


def _as_matrix(S: np.ndarray) -> np.ndarray:
    if not isinstance(S, np.ndarray):
        S = np.asarray(S)
    if S.ndim != 2:
        raise ValueError(f"S must be 2-D (n_candidates, n_query), got shape {S.shape}")
    if S.shape[0] == 0 or S.shape[1] == 0:
        raise ValueError(f"S must be non-empty, got shape {S.shape}")
    if S.dtype.kind in "biu" or S.dtype == np.float16:
        S = S.astype(np.float32 if S.dtype.itemsize <= 2 else np.float64)
    elif S.dtype.kind != "f":
        raise ValueError(f"S must hold real numbers, got dtype {S.dtype}")
    return S


def _check_eta(eta: float) -> float:
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be finite and >= 0, got {eta}")
    return eta


def _validate(S: np.ndarray, budget: int, eta: float) -> tuple[np.ndarray, int, float]:
    S = _as_matrix(S)
    try:
        budget = operator.index(budget)
    except TypeError:
        raise ValueError(f"budget must be an integer, got {budget!r}") from None
    if not 0 <= budget <= S.shape[0]:
        raise ValueError(f"budget must be in [0, {S.shape[0]}] (rows of S), got {budget}")
    eta = _check_eta(eta)
    return S, budget, eta


def _as_indices(selected: np.ndarray, n: int) -> np.ndarray:
    sel = np.asarray(selected)
    if sel.size == 0:
        return np.empty(0, dtype=np.int64)
    if sel.ndim != 1 or sel.dtype.kind not in "iu":
        raise ValueError("selected must be a 1-D array of integer row indices")
    sel = sel.astype(np.int64)
    if sel.min() < 0 or sel.max() >= n:
        raise ValueError(f"selected indices must be in [0, {n})")
    if np.unique(sel).size != sel.size:
        raise ValueError("selected contains duplicate indices")
    return sel
