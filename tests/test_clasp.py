"""ClaSP PE in 2D: class-stratified shares of the budget by per-class score, the rest by predictive entropy, every
ranking power-noised with beta scheduled over the rounds; against hand computations on small score arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnal.backend.fake import fake_backend
from nnal.config import Config
from nnal.errors import ConfigError
from nnal.loop import phase_seed, run_experiment
from nnal.strategies import get_strategy, variant_label

CLASP = get_strategy("clasp-pe")
NO_NOISE = {"power": None, "power_schedule": "constant"}

ENTROPY = [0.5, 0.4, 0.9, 0.3, 0.8, 0.2, 0.1, 0.7]
CLASS_1 = [0.9, 0.8, 0.1, 0.0, 0.2, 0.0, 0.05, 0.0]
CLASS_2 = [0.0, 0.1, 0.0, 0.7, 0.0, 0.6, 0.3, 0.0]


def scores_of(class_1, class_2, entropy=ENTROPY, beta=None) -> dict[str, np.ndarray]:
    out = {"ids": np.arange(100, 100 + len(entropy), dtype=np.int64), "entropy": np.array(entropy),
           "class_entropy": np.array([class_1, class_2], dtype=np.float64).T}
    if beta is not None:
        out["power_beta"] = np.array(beta)
    return out


def positions(chosen: np.ndarray) -> set[int]:
    return set((np.asarray(chosen) - 100).tolist())


def test_by_hand_without_noise():
    # B = 7: floor(0.66 x 7) = 4 class draws, 2 per class; class 1's best: slices 0 (0.9), 1 (0.8); class 2's best:
    # 3 (0.7), 5 (0.6); the other 3 by entropy among 2, 4, 6, 7: 2 (0.9), 4 (0.8), 7 (0.7). Slice 6 is left out.
    for seed in range(5):
        chosen = CLASP(scores_of(CLASS_1, CLASS_2), 7, np.random.default_rng(seed), NO_NOISE)
        assert positions(chosen) == {0, 1, 3, 5, 2, 4, 7}
    # B = 4: floor(2.64) = 2 class draws, one per class: 0 and 3; then entropy's best two of the rest: 2, 4.
    # Plain Max Entropy would take 2, 4, 7, 0: slice 3, class 2's best, only through the strata
    assert positions(CLASP(scores_of(CLASS_1, CLASS_2), 4, np.random.default_rng(0), NO_NOISE)) == {0, 3, 2, 4}
    entropy_only = get_strategy("entropy")(scores_of(CLASS_1, CLASS_2), 4, np.random.default_rng(0))
    assert positions(entropy_only) == {2, 4, 7, 0}


def test_a_class_never_predicted_gives_its_share_to_predictive_entropy():
    # class 2 is 0 everywhere: class 1 takes 0, 1; entropy the other 5 of 2..7: 2, 4, 7, 3 (0.3), 5 (0.2)
    chosen = CLASP(scores_of(CLASS_1, [0.0] * 8), 7, np.random.default_rng(0), NO_NOISE)
    assert positions(chosen) == {0, 1, 2, 4, 7, 3, 5}
    # class 2 predicted on one slice only (3): it takes that one, its second draw goes to entropy (2, 4, 7, 5)
    chosen = CLASP(scores_of(CLASS_1, [0, 0, 0, 0.4, 0, 0, 0, 0]), 7, np.random.default_rng(0), NO_NOISE)
    assert positions(chosen) == {0, 1, 3, 2, 4, 7, 5}


def test_a_slice_two_classes_want_goes_to_the_class_that_draws_first_in_a_random_order():
    # slice 0 is the best of both classes; B = 7, two draws per class (even: the split draws nothing, so the first
    # draw of the Generator is the classes' order)
    class_2 = [0.95, 0.1, 0.0, 0.7, 0.0, 0.6, 0.3, 0.0]
    expected = {  # class 1 first: {0, 1} then class 2 {3, 5}; class 2 first: {0, 3} then class 1 {1, 4}
        0: {0, 1, 3, 5} | {2, 4, 7},
        1: {0, 3, 1, 4} | {2, 7, 5},
    }
    seen = set()
    for seed in range(8):
        first = int(np.random.default_rng(seed).permutation(2)[0])
        chosen = CLASP(scores_of(CLASS_1, class_2), 7, np.random.default_rng(seed), NO_NOISE)
        assert positions(chosen) == expected[first]
        seen.add(first)
    assert seen == {0, 1}


def test_an_uneven_split_gives_the_extra_draw_to_a_random_class():
    # B = 6: floor(3.96) = 3 class draws: one each, the third to the class first in a permutation of the Generator
    extras = set()
    for seed in range(8):
        extra = int(np.random.default_rng(seed).permutation(2)[0])
        chosen = positions(CLASP(scores_of(CLASS_1, CLASS_2), 6, np.random.default_rng(seed), NO_NOISE))
        strata = {0, 1, 3} if extra == 0 else {0, 3, 5}  # class 1's best two and class 2's best, or the reverse
        assert chosen == strata | {2, 4, 7}  # entropy's best three of what is left, either way
        extras.add(extra)
    assert extras == {0, 1}


def test_by_hand_with_power_noise():
    # beta = 1: each ranking is log(score) + Gumbel(0, 1), classes in the Generator's order, then entropy
    beta, budget = 1.0, 7
    for seed in range(5):
        rng = np.random.default_rng(seed)
        order = rng.permutation(2)
        per_class = np.array([CLASS_1, CLASS_2])
        taken: list[int] = []
        for c in order:
            keys = np.log(np.maximum(per_class[c], 1e-300)) + rng.gumbel(0.0, 1.0 / beta, size=8)
            best = [int(p) for p in np.argsort(-keys) if per_class[c][p] > 0 and p not in taken]
            taken += best[:2]
        keys = np.log(ENTROPY) + rng.gumbel(0.0, 1.0 / beta, size=8)
        taken += [int(p) for p in np.argsort(-keys) if p not in taken][:budget - 4]
        chosen = CLASP(scores_of(CLASS_1, CLASS_2, beta=beta), budget, np.random.default_rng(seed), {"power": 1.0})
        assert (chosen - 100).tolist() == taken


def test_a_very_large_beta_is_the_plain_stratified_ranking():
    plain = CLASP(scores_of(CLASS_1, CLASS_2), 7, np.random.default_rng(3), NO_NOISE)
    noised = CLASP(scores_of(CLASS_1, CLASS_2, beta=1e12), 7, np.random.default_rng(3), {"power": 1e12})
    assert noised.tolist() == plain.tolist()


def test_declaration_options_and_labels():
    assert CLASP.needs_for({}) == ("entropy", "class_entropy")  # one dropout-free pass: no MC passes
    assert CLASP.needs_for({"class_score": "variance"}) == ("entropy", "class_variance")
    assert CLASP.defaults == {"class_share": 0.66, "class_score": "entropy", "power": 1.0,
                              "power_schedule": "exponential", "power_final": 100.0}
    assert variant_label("clasp-pe") == "clasp-pe"
    assert variant_label("clasp-pe", NO_NOISE) == "clasp-pe[power=null,power_schedule=constant]"
    assert variant_label("clasp-pe", {"class_share": 0.33}) == "clasp-pe[class_share=0.33]"
    for bad in ({"class_share": 1.2}, {"class_score": "std"}, {"power": None}, {"power": "1"}):
        with pytest.raises(ConfigError):
            CLASP.check_options(bad)
    # scores from a direct call, without a scoring phase's beta: the first round's, power itself
    assert CLASP(scores_of(CLASS_1, CLASS_2), 3, np.random.default_rng(0)).tolist() == \
        CLASP(scores_of(CLASS_1, CLASS_2, beta=1.0), 3, np.random.default_rng(0)).tolist()


def test_clasp_pe_runs_in_the_loop_with_beta_one_to_a_hundred(toy_dataset, tmp_path, no_fsync):
    config = Config(dataset=str(toy_dataset), strategy="clasp-pe", rounds=3, initial=5, budget=5,
                    iterations_per_epoch=2, epochs_initial=1, epochs_per_round=1, mc_passes=3)
    out = tmp_path / "clasp"
    run_experiment(config, out, progress=False, backend_factory=fake_backend)
    for r, beta in ((1, 1.0), (2, 10.0), (3, 100.0)):
        scores = dict(np.load(out / f"round_{r:03d}" / "scores.npz"))
        assert float(scores["power_beta"]) == pytest.approx(beta)
        assert scores["class_entropy"].shape == (len(scores["ids"]), 2)
        chosen = pd.read_csv(out / f"round_{r:03d}" / "selection.csv")
        again = CLASP(scores, 5, np.random.default_rng(phase_seed(config.seed, r, "select")))
        assert chosen["id"].tolist() == again.tolist()
        assert chosen["score"].notna().all()  # the slice's predictive entropy
