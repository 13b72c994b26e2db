"""Argument checks, thread count and chunk size shared by the maximisers of :mod:`nnal.submodular.maximize`."""

from __future__ import annotations

import math
import operator
import os

import numpy as np

from nnal.threads import usable_cores

_CHUNK_BYTES = 1 << 21  # numpy backend: rows of S are processed in blocks of about this size (fits in L2/L3)


def resolve_threads(threads: int | None) -> int:
    """``threads``, or ``OMP_NUM_THREADS`` if set, or the CPUs this process may run on."""
    if threads is None:
        try:
            threads = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
        except ValueError:
            threads = 0
        if threads < 1:
            threads = usable_cores()
        return max(1, threads)
    try:
        threads = operator.index(threads)
    except TypeError:
        raise ValueError(f"threads must be a positive integer, got {threads!r}") from None
    if threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads}")
    return threads


# ------------------------------------------------------------------------------------------------- validation


def rows_per_chunk(S: np.ndarray) -> int:
    return max(1, min(S.shape[0], _CHUNK_BYTES // max(1, S.shape[1] * S.itemsize)))


def as_similarity_matrix(S: np.ndarray) -> np.ndarray:
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


def check_eta(eta: float) -> float:
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be finite and >= 0, got {eta}")
    return eta


def validate_problem(S: np.ndarray, budget: int, eta: float) -> tuple[np.ndarray, int, float]:
    S = as_similarity_matrix(S)
    try:
        budget = operator.index(budget)
    except TypeError:
        raise ValueError(f"budget must be an integer, got {budget!r}") from None
    if not 0 <= budget <= S.shape[0]:
        raise ValueError(f"budget must be in [0, {S.shape[0]}] (rows of S), got {budget}")
    eta = check_eta(eta)
    return S, budget, eta


def as_row_indices(selected: np.ndarray, n: int) -> np.ndarray:
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
