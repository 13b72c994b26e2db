"""The benchmark problems of :mod:`nnal.bench`: the scales (pool x query sizes of the Decathlon tasks), the selection
parameters (budget, eta, epsilon) and the seeded synthetic similarity matrix every measurement builds.
"""

from __future__ import annotations

import numpy as np

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
