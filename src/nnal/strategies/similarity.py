"""USIM's similarity matrices between the pool's and the query set's gradient embeddings (paper Eq. 2 and 4),
built in row blocks, float32 out."""

from __future__ import annotations

import numpy as np

from nnal.strategies.checks import CHUNK_ELEMENTS, row_blocks
from nnal.strategies.checks import finite_array as _finite

# --- similarity matrices --------------------------------------------------------------------------------------


def _pair(g_u: np.ndarray, g_q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    u = _finite(g_u, "g_u", 2)
    q = _finite(g_q, "g_q", 2)
    if u.shape[1] != q.shape[1]:
        raise ValueError(f"g_u has {u.shape[1]} columns, g_q {q.shape[1]}")
    dtype = np.result_type(u.dtype, q.dtype, np.float32)
    return u, q, dtype


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    return np.divide(x, norms[:, None], out=np.zeros_like(x), where=norms[:, None] > 0)


def _product(u: np.ndarray, right: np.ndarray, dtype: np.dtype, chunk_elements: int, normalize: bool) -> np.ndarray:
    out = np.empty((len(u), right.shape[1]), dtype=np.float32)
    for rows in row_blocks(len(u), max(u.shape[1], right.shape[1]), chunk_elements):
        block = u[rows].astype(dtype)
        out[rows] = (_unit_rows(block) if normalize else block) @ right
    return out


def cosine_similarity(g_u: np.ndarray, g_q: np.ndarray, chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """Paper Eq. 2: (N, Q) float32 cosine similarity; a zero row has similarity 0 to everything (no NaN)."""
    u, q, dtype = _pair(g_u, g_q)
    return _product(u, _unit_rows(q.astype(dtype)).T, dtype, chunk_elements, normalize=True)


def fisher_similarity(
    g_u: np.ndarray,
    g_q: np.ndarray,
    fisher_subset: np.ndarray,
    damping: float = 1e-6,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> np.ndarray:
    """Paper Eq. 4: (N, Q) float32 g_u diag(1 / (F + δ)) g_q^T, F the diagonal Fisher of the chosen params.

    The damping is relative to the Fisher's scale, δ = ``damping`` x mean(F): gradients scaled by a (CT against
    MRI intensities, another loss scale) scale F by a^2 and S by a constant, so the selection does not change.
    An absolute δ would act strongly on one dataset and not at all on another.
    """
    u, q, dtype = _pair(g_u, g_q)
    f = _finite(fisher_subset, "fisher_subset", 1, nonnegative=True).astype(np.float64)
    if len(f) != u.shape[1]:
        raise ValueError(f"fisher_subset has {len(f)} entries, gradients {u.shape[1]}")
    delta = damping * f.mean() if len(f) else 0.0
    if not np.isfinite(damping) or damping < 0 or ((f + delta) <= 0).any():
        raise ValueError("F + damping x mean(F) must be positive everywhere")
    scaled = q.astype(dtype) * (1.0 / (f + delta)).astype(dtype)  # (Q, d), no float64 copy
    return _product(u, scaled.T, dtype, chunk_elements, normalize=False)
