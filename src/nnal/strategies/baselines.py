"""Foreground-aware random sampling, nnActive's improved Random baseline (Lüth et al. 2025), on 2D slices.

nnActive found that plain Random is a weak baseline for segmentation, where most of a volume is background, and that
no active learning method reliably beat a random draw aimed at the foreground. Its "Random 66% FG" centres each
queried patch on a voxel of a foreground class present in the image with probability 2/3, anywhere otherwise
(MIC-DKFZ/nnActive ``strategies/randomlabel.py``). Here a fixed share of the budget is drawn among the unlabeled
slices whose ground-truth label holds foreground, the rest uniformly among all unlabeled slices, without
replacement overall. It reads the oracle's labels of slices not yet labeled, so it is a simulation baseline only.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from nnal.strategies.base import ModelLike, Option, PoolView, Scores, Strategy, register
from nnal.strategies.checks import finite_array

CLASS_VOXELS = "class_voxels"
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def share_count(budget: int, share: float) -> int:
    """floor(share x budget), as nnActive's ``int(query_size * ratio)``; the 1e-9 keeps float products such as
    0.29 x 100 = 28.999999999999996 at 29."""
    return int(np.floor(share * budget + 1e-9))


def split_evenly(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` split into ``parts`` counts: total // parts each, one more for total % parts of them drawn at random
    (ClaSP PE's code shuffles its classes the same way). No draw when the split is even."""
    counts = np.full(parts, total // parts if parts else 0, dtype=np.int64)
    extra = total % parts if parts else 0
    if extra:
        counts[rng.permutation(parts)[:extra]] += 1
    return counts


def uniform_draw(positions: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``min(k, len(positions))`` of ``positions`` uniformly without replacement; no draw at all for none, so a
    foreground share of 0 leaves the Generator to the rest (the same draw as plain Random)."""
    k = min(int(k), len(positions))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    return rng.choice(positions, size=k, replace=False)


def class_presence(scores: Scores) -> np.ndarray:
    """(N, C) bool: which foreground classes each unlabeled slice holds, from its ground-truth voxel counts."""
    voxels = finite_array(scores[CLASS_VOXELS], f"scores[{CLASS_VOXELS!r}]", 2, nonnegative=True)
    return voxels > 0


def class_balanced_draw(presence: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` positions (fewer if the foreground runs out), an equal share per foreground class, each among the slices
    that hold the class. A class with fewer slices than its share gives them all, and what it could not take is
    split again over the classes that still have slices (repeated until ``k`` or no foreground is left). A slice
    holding two classes counts for the class that drew it."""
    taken = np.zeros(len(presence), dtype=bool)
    chosen: list[np.ndarray] = []
    open_classes = np.flatnonzero(presence.any(axis=0))
    missing = int(k)
    while missing > 0 and len(open_classes):
        for c, share in zip(open_classes, split_evenly(missing, len(open_classes), rng), strict=True):
            drawn = uniform_draw(np.flatnonzero(presence[:, c] & ~taken), share, rng)
            taken[drawn] = True
            chosen.append(drawn)
            missing -= len(drawn)
        # a class short of its share is now exhausted, so each pass closes one class at least: the loop ends
        open_classes = open_classes[(presence[:, open_classes] & ~taken[:, None]).any(axis=0)]
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)


def random_fg_select(scores: Scores, budget: int, rng: np.random.Generator, *, fg_share: float = 0.66,
                     per_class: bool = False) -> np.ndarray:
    """floor(fg_share x budget) slices among the unlabeled slices with foreground (balanced over the classes with
    ``per_class``), the rest uniformly among all the others; all of it when the foreground runs out."""
    ids = np.asarray(scores["ids"])
    presence = class_presence(scores)
    wanted = share_count(budget, fg_share)
    if per_class:
        foreground = class_balanced_draw(presence, wanted, rng)
    else:
        foreground = uniform_draw(np.flatnonzero(presence.any(axis=1)), wanted, rng)
    others = np.setdiff1d(np.arange(len(ids)), foreground)
    return ids[np.concatenate([foreground, uniform_draw(others, budget - len(foreground), rng)])]


def foreground_prepare(model: ModelLike, pool: PoolView, scores: Scores, rng: np.random.Generator
                       ) -> dict[str, np.ndarray]:
    """The unlabeled slices' ground-truth voxels per foreground class, from the pool view into the scores."""
    if pool.class_voxels is None:
        raise ValueError("the pool view carries no class_voxels: random-fg needs the pool's ground-truth counts")
    voxels = np.asarray(pool.class_voxels)
    if voxels.ndim != 2 or len(voxels) != len(pool.ids):
        raise ValueError(f"pool class_voxels must be (N, C) with N = {len(pool.ids)}, got shape {voxels.shape}")
    return {CLASS_VOXELS: voxels}


register(Strategy("random-fg", random_fg_select, prepare=foreground_prepare, provides=(CLASS_VOXELS,),
                  reads_ground_truth=True,
                  options=(Option("fg_share", Share, 0.66,
                                  "share of the budget drawn among slices with foreground (nnActive's Random 66% "
                                  "FG); the rest uniformly among all"),
                           Option("per_class", bool, False,
                                  "split the foreground draws equally over the foreground classes")),
                  help="foreground-aware random (nnActive): a share of the budget among slices whose label holds "
                       "foreground, the rest uniformly; simulation only"))
