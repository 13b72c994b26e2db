"""Power noising of the score rankings (Kirsch et al. 2023) and ClaSP PE's schedule of its beta over the rounds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from nnal.backend.fake import fake_backend
from nnal.config import Config, build
from nnal.errors import ConfigError
from nnal.loop import phase_seed, run_experiment
from nnal.strategies import get_strategy, variant_label
from nnal.strategies.base import PoolView
from nnal.strategies.checks import top_k
from nnal.strategies.power import power_prepare, ranking, scheduled_beta

ENTROPY = get_strategy("entropy")


def scores_with(values, beta=None, key="entropy") -> dict[str, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    out = {"ids": np.arange(10, 10 + 3 * len(values), 3, dtype=np.int64), key: values}
    if beta is not None:
        out["power_beta"] = np.array(beta)
    return out


def test_the_exponential_schedule_by_hand():
    # ClaSP PE: exponential_schedule(rounds, 1, 100)[round - 1] = 100 ** ((round - 1) / (rounds - 1))
    assert [scheduled_beta(1.0, "exponential", 100.0, r, 3) for r in (1, 2, 3)] == pytest.approx([1, 10, 100])
    assert [scheduled_beta(1.0, "exponential", 100.0, r, 5) for r in range(1, 6)] == pytest.approx(
        [1, 100 ** 0.25, 10, 100 ** 0.75, 100])
    assert scheduled_beta(2.0, "exponential", 8.0, 2, 3) == pytest.approx(4.0)
    assert scheduled_beta(1.0, "exponential", 100.0, 7, 3) == pytest.approx(100)  # an extended run keeps the last
    assert scheduled_beta(1.0, "exponential", 100.0, 1, 1) == 1.0  # one round: the first beta
    assert scheduled_beta(3.0, "constant", 100.0, 2, 3) == 3.0


def test_the_scoring_phase_saves_the_rounds_beta():
    view = PoolView(ids=np.arange(3), cases=[], labeled_cases=[], labeled_class_voxels=np.zeros(2), mc_passes=1,
                    batch_size=1, seed=0, budget=1, round=2, rounds=3)
    assert power_prepare(None, view, {}, None, power=None) == {}
    assert float(power_prepare(None, view, {}, None, power=1.0, power_schedule="exponential")["power_beta"]) == \
        pytest.approx(10)
    assert float(power_prepare(None, view, {}, None, power=0.5)["power_beta"]) == 0.5


def test_the_noised_ranking_is_log_score_plus_gumbel_of_scale_one_over_beta():
    values = np.array([0.2, 0.9, 0.5, 0.7, 0.1])
    ids = np.arange(5)
    gumbel = np.random.default_rng(7).gumbel(0.0, 1.0 / 2.0, size=5)
    expected = np.argsort(-(np.log(values) + gumbel), kind="stable")
    assert ranking(ids, values, 2.0, np.random.default_rng(7)).tolist() == expected.tolist()
    assert ranking(ids, values, None, np.random.default_rng(7)).tolist() == [1, 3, 2, 0, 4]


@pytest.mark.parametrize("name,key", [("entropy", "entropy"), ("bald", "bald"), ("meanstd", "std")])
def test_a_very_large_beta_ranks_as_the_plain_score(name, key):
    values = np.random.default_rng(1).random(50) + 0.01
    strategy = get_strategy(name)
    plain = strategy(scores_with(values, key=key), 12, np.random.default_rng(0))
    assert plain.tolist() == top_k(scores_with(values)["ids"], values, 12).tolist()
    noised = strategy(scores_with(values, beta=1e12, key=key), 12, np.random.default_rng(0), {"power": 1e12})
    assert noised.tolist() == plain.tolist()
    small = strategy(scores_with(values, beta=1.0, key=key), 12, np.random.default_rng(0), {"power": 1.0})
    assert small.tolist() != plain.tolist()  # beta 1 does move things


def test_draws_are_reproducible_per_seed_and_round():
    scores = scores_with(np.random.default_rng(3).random(60), beta=1.0)

    def draw(seed: int, r: int) -> list[int]:
        return ENTROPY(scores, 10, np.random.default_rng(phase_seed(seed, r, "select")), {"power": 1.0}).tolist()

    assert draw(0, 1) == draw(0, 1) and draw(4, 2) == draw(4, 2)
    assert draw(0, 1) != draw(0, 2) and draw(0, 1) != draw(1, 1)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_one_draw_picks_a_slice_with_probability_proportional_to_score_to_the_beta(beta):
    values = np.array([1.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(99)
    n = 8000
    picks = [int(ENTROPY(scores_with(values, beta=beta), 1, rng, {"power": beta})[0]) for _ in range(n)]
    observed = np.array([picks.count(i) for i in scores_with(values)["ids"]])
    expected = values ** beta / (values ** beta).sum() * n
    assert chisquare(observed, expected).pvalue > 1e-3


def test_zero_scores_come_after_every_positive_one_without_log_of_zero():
    values = np.array([0.0, 0.3, 0.0, 0.6, 0.0, 0.2])
    with np.errstate(all="raise"):
        for seed in range(10):
            chosen = ENTROPY(scores_with(values, beta=1.0), 5, np.random.default_rng(seed), {"power": 1.0})
            positions = (chosen - 10) // 3
            assert set(positions[:3].tolist()) == {1, 3, 5} and set(positions[3:].tolist()) <= {0, 2, 4}
    # the zeros' order is random, not by id
    firsts = {int(ENTROPY(scores_with(values, beta=1.0), 4, np.random.default_rng(s), {"power": 1.0})[3])
              for s in range(30)}
    assert firsts == {10, 16, 22}


def test_power_options_are_checked_strictly_and_label_the_variant():
    assert variant_label("entropy", {"power": 1.0}) == "entropy[power=1]"
    assert variant_label("bald", {"power": 1.0, "power_schedule": "exponential"}) == \
        "bald[power=1,power_schedule=exponential]"
    assert variant_label("meanstd", {"power": None}) == "meanstd"
    for bad in ({"power": 0.0}, {"power": -1.0}, {"power": "1"}, {"power": True}, {"power_schedule": "linear"},
                {"power_final": 0}):
        with pytest.raises(ConfigError):
            ENTROPY.check_options(bad)
    with pytest.raises(ConfigError, match="exponential needs power"):
        ENTROPY.check_options({"power_schedule": "exponential"})
    with pytest.raises(ConfigError, match="power_final"):
        ENTROPY.check_options({"power": 1.0, "power_final": 50.0})
    with pytest.raises(ConfigError, match="power"):
        build({"dataset": "x", "strategy": "bald", "strategy_options": {"power": "high"}})


def test_scores_without_the_scoring_phases_beta_use_the_first_rounds():
    values = np.random.default_rng(5).random(30)
    options = {"power": 2.0, "power_schedule": "exponential"}
    direct = ENTROPY(scores_with(values), 6, np.random.default_rng(0), options)
    assert direct.tolist() == ENTROPY(scores_with(values, beta=2.0), 6, np.random.default_rng(0), options).tolist()
    assert direct.tolist() != ENTROPY(scores_with(values, beta=20.0), 6, np.random.default_rng(0), options).tolist()
    for bad in (0.0, -1.0, np.inf, [1.0, 2.0]):
        with pytest.raises(ValueError, match="power_beta"):
            ENTROPY(scores_with(values, beta=bad), 6, np.random.default_rng(0), options)


def test_the_loop_schedules_beta_over_the_rounds(toy_dataset, tmp_path, no_fsync):
    options = {"power": 1.0, "power_schedule": "exponential"}
    config = Config(dataset=str(toy_dataset), strategy="entropy", strategy_options=options, rounds=3, initial=5,
                    budget=4, iterations_per_epoch=2, epochs_initial=1, epochs_per_round=1, mc_passes=3)
    out = tmp_path / "power"
    run_experiment(config, out, progress=False, backend_factory=fake_backend)
    for r, beta in ((1, 1.0), (2, 10.0), (3, 100.0)):
        scores = dict(np.load(out / f"round_{r:03d}" / "scores.npz"))
        assert float(scores["power_beta"]) == pytest.approx(beta)
        chosen = np.loadtxt(out / f"round_{r:03d}" / "selection.csv", delimiter=",", skiprows=1, usecols=0)
        again = ENTROPY(scores, 4, np.random.default_rng(phase_seed(config.seed, r, "select")), options)
        assert chosen.astype(np.int64).tolist() == again.tolist()
