"""ClaSP PE (Lüth, Traub et al. 2026): Class-stratified Scheduled Power Predictive Entropy, on 2D slices.

Their code (MIC-DKFZ/nnActive ``strategies/entropy_balanced.py``, ``class_power_pe66_exp``, the method the paper
names ClaSP PE): 66% of the budget is split equally over the foreground classes, each class taking the patches of
highest class-weighted predictive entropy; the other 34% take the patches of highest predictive entropy. Every
ranking is power-noised, log(score) + Gumbel(0, 1/beta), with beta growing 1 -> 100 exponentially over the query
rounds (:mod:`nnal.strategies.power`).

Per-class score: their code weights each voxel's predictive entropy by its predicted probability of the class,
H(p_i) p_{i,c}, averaged over the patch: the model pass's ``class_entropy`` (dropout off). The per-class MC-dropout
std or variance are options.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from nnal.strategies.base import Option, Scores, Strategy, register
from nnal.strategies.baselines import Share, share_count, split_evenly
from nnal.strategies.checks import matrix, score_vector
from nnal.strategies.power import check_power_options, power_options, power_prepare, ranking, round_beta

CLASS_SCORE_KEYS = {"entropy": "class_entropy", "uncertainty": "class_uncertainty", "variance": "class_variance"}
CLASS_SHARE = 0.66  # ClaSP PE's ratio_fg


def clasp_needs(*, class_score: str = "entropy", **_: object) -> tuple[str, ...]:
    """The per-class score that ranks each class's stratum."""
    return (CLASS_SCORE_KEYS[class_score],)


def take_best(order: np.ndarray, eligible: np.ndarray, taken: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` positions of ``order`` that are eligible and not taken yet; marks them taken."""
    free = order[eligible[order] & ~taken[order]][:k]
    taken[free] = True
    return free


def clasp_select(scores: Scores, budget: int, rng: np.random.Generator, *, class_share: float = CLASS_SHARE,
                 class_score: str = "entropy", power: float | None = 1.0) -> np.ndarray:
    """floor(class_share x budget) slices split equally over the foreground classes (one more for a random
    remainder of them), each class's share the best of its stratum by its per-class score; the rest the best by
    predictive entropy. Classes take their share in a random order, each from the slices not yet taken.

    Fallback: a class takes only slices where its score is > 0 (a class never predicted anywhere gets none), and
    what a class cannot fill goes to the predictive-entropy stratum.
    """
    ids = np.asarray(scores["ids"])
    per_class = matrix(scores[CLASS_SCORE_KEYS[class_score]], f"scores[{CLASS_SCORE_KEYS[class_score]!r}]",
                       rows=len(ids)).astype(np.float64)
    entropy = score_vector(scores, "entropy")
    beta = round_beta(scores, power)
    shares = split_evenly(share_count(budget, class_share), per_class.shape[1], rng)
    taken = np.zeros(len(ids), dtype=bool)
    picks = []
    for c in rng.permutation(per_class.shape[1]):  # no class gets first pick of the slices two classes share
        order = ranking(ids, per_class[:, c], beta, rng)
        picks.append(take_best(order, per_class[:, c] > 0, taken, shares[c]))
    rest = budget - int(taken.sum())
    picks.append(take_best(ranking(ids, entropy, beta, rng), np.ones(len(ids), dtype=bool), taken, rest))
    return ids[np.concatenate(picks)]


register(Strategy("clasp-pe", clasp_select, needs=("entropy",), option_needs=clasp_needs, score_key="entropy",
                  prepare=power_prepare, check_together=check_power_options,
                  options=(Option("class_share", Share, CLASS_SHARE,
                                  "share of the budget split equally over the foreground classes (ClaSP PE: 0.66)"),
                           Option("class_score", Literal["entropy", "uncertainty", "variance"], "entropy",
                                  "per-class score ranking a class's share: class-weighted predictive entropy "
                                  "(ClaSP PE's), or the class's MC-dropout std or variance"),
                           *power_options(power=1.0, schedule="exponential")),
                  help="ClaSP PE: class-stratified, power-noised predictive entropy, beta 1 -> 100 over the rounds "
                       "(Lüth, Traub et al. 2026)"))
