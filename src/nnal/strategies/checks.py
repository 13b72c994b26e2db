"""Argument checks shared by the strategies: arrays, counts, score tables and budgets.

Strategies validate at the edge with these and then trust their input; each error names the argument.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

CHUNK_ELEMENTS = 1 << 22  # floats per temporary block (32 MiB in float64)
# arrays that are not one row per pool slice: USIM's query positions and the Fisher values of its parameters
UNALIGNED_KEYS = frozenset({"query", "fisher"})
CANDIDATE_ROWS = frozenset({"grad_embeddings"})  # rows: the prefilter's candidates when the scores name them


def row_blocks(n: int, cols: int, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[slice]:
    """Row slices covering ``range(n)`` with at most ``chunk_elements`` floats per block (at least one row)."""
    step = max(1, int(chunk_elements) // max(1, cols))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def all_finite(arr: np.ndarray, chunk_elements: int = CHUNK_ELEMENTS) -> bool:
    """Whether every entry of ``arr`` is finite, checked block by block: at Liver scale a whole-array mask of a
    score array would be a gigabyte (and reads the pages of a memory-mapped array once, in order)."""
    if arr.ndim == 0:
        return bool(np.isfinite(arr))
    cols = int(np.prod(arr.shape[1:]))
    return all(np.isfinite(arr[rows]).all() for rows in row_blocks(len(arr), cols, chunk_elements))


def finite_array(arr: object, name: str, ndim: int, nonnegative: bool = False) -> np.ndarray:
    """A real ``ndim``-dimensional array without NaN or inf (and >= 0 when asked), checked block by block."""
    out = np.asarray(arr)
    if out.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {out.shape}")
    if not (np.issubdtype(out.dtype, np.floating) or np.issubdtype(out.dtype, np.integer)):
        raise ValueError(f"{name} must be real-valued, got dtype {out.dtype}")
    flat = out.reshape(out.shape[0], int(np.prod(out.shape[1:])))
    for rows in row_blocks(len(flat), flat.shape[1]):  # no full-size temporaries
        if not np.isfinite(flat[rows]).all():
            raise ValueError(f"{name} contains NaN or inf")
        if nonnegative and (flat[rows] < 0).any():
            raise ValueError(f"{name} must be non-negative")
    return out


def matrix(arr: object, name: str, rows: int | None = None, cols: int | None = None) -> np.ndarray:
    """A finite, real 2-d array, with the expected rows/columns where given."""
    out = finite_array(arr, name, 2)
    if rows is not None and out.shape[0] != rows:
        raise ValueError(f"{name} has {out.shape[0]} rows, expected {rows}")
    if cols is not None and out.shape[1] != cols:
        raise ValueError(f"{name} has {out.shape[1]} columns, expected {cols}")
    return out


def score_vector(scores: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """``scores[key]`` as a one-dimensional float64 array."""
    out = np.asarray(scores[key], dtype=np.float64)
    if out.ndim != 1:
        raise ValueError(f"scores[{key!r}] must be one-dimensional, got shape {out.shape}")
    return out


def count(value: int, name: str) -> int:
    """A non-negative integer (bools refused)."""
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_scores(scores: Mapping[str, np.ndarray], needs: tuple[str, ...]) -> np.ndarray:
    """Validate that ``scores`` holds ``ids`` and every needed array, aligned; return the ids."""
    if "ids" not in scores:
        raise ValueError("scores must contain 'ids'")
    ids = np.asarray(scores["ids"])
    if ids.ndim != 1:
        raise ValueError("scores['ids'] must be one-dimensional")
    for key in needs:
        if key not in scores:
            raise ValueError(f"scores lack {key!r}")
        arr = np.asarray(scores[key])
        if key.startswith("labeled_") or key in UNALIGNED_KEYS:
            continue
        # USIMF's prefilter keeps embeddings of its candidates only (usim_prefilter.candidate_rows)
        rows = len(scores["candidates"]) if key in CANDIDATE_ROWS and "candidates" in scores else len(ids)
        if arr.shape[0] != rows:
            raise ValueError(f"scores[{key!r}] has {arr.shape[0]} rows, expected {rows}")
        if not all_finite(arr):
            raise ValueError(f"scores[{key!r}] contains NaN or inf")
    return ids


def check_budget(budget: int, pool_size: int) -> int:
    """A budget is a non-negative int; it is capped at the pool size."""
    if int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget!r}")
    return min(int(budget), pool_size)


def top_k(ids: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` ids of highest value; ties broken by the lower id, so the result is deterministic."""
    order = np.lexsort((ids, -np.asarray(values, dtype=np.float64)))
    return ids[order[:k]]
