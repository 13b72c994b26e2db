"""Gain kernels of :mod:`nnal.submodular`: the numba kernel :func:`_nb_eval` (compiled by :func:`gain_kernel`)
and the numpy helpers that sum gains in the same order, so both backends give identical gains and picks. No I/O.

``KERNEL_STATE["force_numpy"]`` (initially: ``NNAL_SUBMODULAR_BACKEND=numpy``) makes :func:`gain_kernel` return None,
so the numpy backend evaluates gains; ``KERNEL_STATE["kernel"]`` caches the compiled kernel.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

LANES = 32  # a gain is summed in 32 lanes (lane = column % 32, each in column order), then lane by lane
KERNEL_STATE: dict[str, Any] = {"force_numpy": os.environ.get("NNAL_SUBMODULAR_BACKEND", "") == "numpy"}


def lane_sums(res: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Row sums of ``res`` in the kernel's order: lane ``l`` adds columns ``l, l + 32, ...`` in turn in ``dtype``
    (numpy reduces a non-contiguous axis element by element), then the 32 lanes are added in order in float64."""
    m, q = res.shape
    full = q - q % LANES
    if full:
        lanes = res[:, :full].reshape(m, full // LANES, LANES).sum(axis=1, dtype=dtype)
    else:
        lanes = np.zeros((m, LANES), dtype=dtype)
    if full < q:
        lanes[:, : q - full] += res[:, full:]
    g = lanes[:, 0].astype(np.float64)
    for lane in range(1, LANES):
        g += lanes[:, lane]
    return g


def running_best(g: np.ndarray, rows: np.ndarray, best_g: float, best_j: int) -> tuple[float, int]:
    """Running maximum over (gain, row) pairs; ties go to the highest row index."""
    if g.size == 0:
        return best_g, best_j
    gj = float(g.max())
    j = int(rows[g == gj].max())
    if gj > best_g or (gj == best_g and j > best_j):
        return gj, j
    return best_g, best_j


def argmax_last(g: np.ndarray) -> int:
    """Position of the last maximum of ``g`` (the highest row index among ties, rows being sorted)."""
    return g.size - 1 - int(np.argmax(g[::-1]))


# ----------------------------------------------------------------------------------------------- numba kernel


def _nb_eval(S, rows, bound, cur, eta, first, best_g, best_j, shared, lanes, rowmax, ub, fresh, step):  # noqa: ANN001, ANN202
    """Numba kernel (compiled by :func:`gain_kernel`): gains of ``rows`` in order, stopping at the first row whose bound
    is below the best gain known (``best_g``, or ``shared[0]``, which threads raise as they go); returns (rows
    evaluated, or -1 - position of a non-finite row; best gain; its row).

    Lane ``i % 32`` adds column ``i``'s term ``S[j, i] - cur[i]`` (the float operation submodlib does) when it is
    positive, in column order, in ``lanes.dtype``; then the lanes are added in order in float64, then
    ``eta * rowmax``. The inner loops run over the 32 lanes, so LLVM vectorises them without reassociating any sum.
    Rows go in pairs, read side by side (two memory streams are faster than one); a lone row is paired with itself.
    """
    q = S.shape[1]
    nsup = q // 32
    tail = 32 * nsup
    zero = eta - eta
    a1 = np.zeros_like(lanes)
    a2 = np.zeros_like(lanes)
    m1 = np.empty(32, dtype=S.dtype)
    m2 = np.empty(32, dtype=S.dtype)
    z1 = np.empty(32, dtype=S.dtype)
    z2 = np.empty(32, dtype=S.dtype)
    done = 0
    r = 0
    while r < rows.size:
        floor = max(best_g, shared[0])
        if bound[r] < floor:
            break
        j1 = rows[r]
        j2 = j1
        if r + 1 < rows.size and bound[r + 1] >= floor:
            j2 = rows[r + 1]
        row1 = S[j1]
        row2 = S[j2]
        a1[:] = 0
        a2[:] = 0
        if first:  # also the row maxima (NaN-propagating) and the row sums (for the finite check)
            m1[:] = row1[0]
            m2[:] = row2[0]
            z1[:] = 0
            z2[:] = 0
            for k in range(nsup):
                base = 32 * k
                for lane in range(32):
                    s = row1[base + lane]
                    t = s - cur[base + lane]
                    a1[lane] += t if t > 0 else zero
                    m1[lane] = np.maximum(m1[lane], s)
                    z1[lane] += s
                for lane in range(32):
                    s = row2[base + lane]
                    t = s - cur[base + lane]
                    a2[lane] += t if t > 0 else zero
                    m2[lane] = np.maximum(m2[lane], s)
                    z2[lane] += s
            for i in range(tail, q):
                s = row1[i]
                t = s - cur[i]
                a1[i - tail] += t if t > 0 else zero
                m1[i - tail] = np.maximum(m1[i - tail], s)
                z1[i - tail] += s
                s = row2[i]
                t = s - cur[i]
                a2[i - tail] += t if t > 0 else zero
                m2[i - tail] = np.maximum(m2[i - tail], s)
                z2[i - tail] += s
            for w in range(2):
                m = m1[0] if w == 0 else m2[0]
                z = z1[0] if w == 0 else z2[0]
                for lane in range(1, 32):
                    m = np.maximum(m, m1[lane] if w == 0 else m2[lane])
                    z += z1[lane] if w == 0 else z2[lane]
                row = row1 if w == 0 else row2
                if not (m - m == 0 and z - z == 0):  # NaN or inf, or a finite row whose float sum overflowed
                    for i in range(q):
                        if not row[i] - row[i] == 0:
                            return -1 - r - w, best_g, best_j
                rowmax[j1 if w == 0 else j2] = m if m > 0 else zero
        else:
            for k in range(nsup):
                base = 32 * k
                for lane in range(32):
                    t = row1[base + lane] - cur[base + lane]
                    a1[lane] += t if t > 0 else zero
                for lane in range(32):
                    t = row2[base + lane] - cur[base + lane]
                    a2[lane] += t if t > 0 else zero
            for i in range(tail, q):
                t = row1[i] - cur[i]
                a1[i - tail] += t if t > 0 else zero
                t = row2[i] - cur[i]
                a2[i - tail] += t if t > 0 else zero
        for w in range(2 if j2 != j1 else 1):
            j = j1 if w == 0 else j2
            g = 0.0
            for lane in range(32):
                g += a1[lane] if w == 0 else a2[lane]
            g += eta * rowmax[j]
            ub[j] = g
            fresh[j] = step
            if g > best_g or (g == best_g and j > best_j):
                best_g = g
                best_j = j
                if g > shared[0]:
                    shared[0] = g
            done += 1
        r += 2 if j2 != j1 else 1
    return done, best_g, best_j


def gain_kernel() -> Any:
    """The compiled :func:`_nb_eval`, or None with ``NNAL_SUBMODULAR_BACKEND=numpy``."""
    if KERNEL_STATE["force_numpy"]:
        return None
    if "kernel" not in KERNEL_STATE:
        import numba  # a declared dependency; imported here because compiling costs seconds

        try:
            KERNEL_STATE["kernel"] = numba.njit(nogil=True, cache=True)(_nb_eval)
        except RuntimeError:  # no writable cache location
            KERNEL_STATE["kernel"] = numba.njit(nogil=True)(_nb_eval)
    return KERNEL_STATE["kernel"]
