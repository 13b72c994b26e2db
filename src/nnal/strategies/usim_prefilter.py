"""USIMF's pool prefilter, as the paper's code ran it: before the query set, the Fisher and FLQMI, only the 30,000
unlabeled slices of highest unweighted mean MC-dropout variance are kept (ALUNET ``USIMFStrategyUNet.query``,
``NumSamplesMaxMCD = 30000``). It decides nothing on Hippocampus (7,662 slices) and a lot on Liver (104,133): there
it also keeps the gradient embeddings to 30,000 rows."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

PREFILTER = 30_000


def most_uncertain(scores: Mapping[str, np.ndarray], keep: int | None, budget: int = 0) -> np.ndarray | None:
    """Pool positions (sorted) of the ``max(keep, budget)`` slices of highest ``variance`` (ties: the lower
    position first); None when every slice is kept (``keep`` None, or the pool no larger)."""
    if keep is None or len(np.asarray(scores["ids"])) <= max(keep, budget):
        return None
    variance = np.asarray(scores["variance"], dtype=np.float64)
    keep = max(keep, budget)
    order = np.argsort(-variance, kind="stable")
    return np.sort(order[:keep]).astype(np.int64)


def candidate_rows(scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(pool position of each embedding row, the query set as embedding rows): the prefilter's candidates when
    the scores hold them, else every unlabeled slice."""
    query = np.asarray(scores["query"])
    if "candidates" not in scores:
        return np.arange(len(np.asarray(scores["ids"]))), query
    rows = np.asarray(scores["candidates"])
    return rows, np.searchsorted(rows, query)
