"""What the paper's code (Berni1557/ALUNET) computed, as options of BADGE(LL), USIMC and USIMF, and the defaults the
fidelity rule gives (docs/fidelity.md): each default pinned, each option shown to reach the model or the kernel,
against hand computations on a recording model double.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import make_nnunet_dataset

from nnal.backend.fake import fake_backend
from nnal.backend.names import LOSSES
from nnal.config import Config
from nnal.loop import run_experiment
from nnal.strategies import REGISTRY, PoolView, get_strategy
from nnal.strategies.usim import fisher_similarity, usim_select

CASES = [("a", np.arange(12)), ("b", np.arange(8))]  # 20 pool slices
PARAMS = {"bottleneck": 50, "last-decoder-conv": 30, "decoder-convs": 40, "decoder": 45, "network": 60}


class RecordingModel:
    """A ``ModelLike`` with fixed per-slice gradients ``G[loss]`` (one row per pool slice) that records every
    gradient and Fisher call: which slices, counts, group, loss and parameter subset."""

    def __init__(self) -> None:
        rng = np.random.default_rng(11)
        self.rows = {(case, int(z)): i for i, (case, z) in enumerate((c, z) for c, s in CASES for z in s)}
        self.grads = {loss: rng.normal(size=(len(self.rows), 60)) for loss in LOSSES}
        self.variance = rng.random((len(self.rows), 2)) + 0.01
        self.calls: list[dict] = []

    def _positions(self, cases) -> np.ndarray:
        return np.array([self.rows[(c, int(z))] for c, s in cases for z in s], dtype=np.int64)

    def scores(self, cases, keys, *, mc_passes, batch_size, seed, on_batch=None):
        rows = self.variance[self._positions(cases)]
        return {"class_variance": rows, "variance": rows.mean(1)}

    def parameter_count(self, group: str) -> int:
        return PARAMS[group]

    def gradient_embeddings(self, cases, *, group, index, batch_size, loss="log-likelihood", on_batch=None):
        self.calls.append({"op": "embed", "group": group, "loss": loss, "index": index})
        g = self.grads[loss][self._positions(cases), :PARAMS[group]]
        return g if index is None else g[:, index]

    def fisher(self, cases, counts, *, group, batch_size, loss="log-likelihood"):
        positions = self._positions(cases)
        self.calls.append({"op": "fisher", "group": group, "loss": loss, "positions": positions,
                           "counts": np.asarray(counts)})
        g = self.grads[loss][positions, :PARAMS[group]]
        w = np.asarray(counts, dtype=np.float64)
        return (g**2 * w[:, None]).sum(0) / w.sum()


def pool_view(budget: int = 3) -> PoolView:
    return PoolView(ids=np.arange(20), cases=CASES, labeled_cases=[], labeled_class_voxels=np.array([5.0, 9.0]),
                    mc_passes=2, batch_size=4, seed=5, budget=budget)


def calls(model: RecordingModel, op: str) -> list[dict]:
    return [c for c in model.calls if c["op"] == op]


# --- 1. BADGE(LL)'s loss -------------------------------------------------------------------------------------------


def test_badge_embeds_nnunets_loss_by_default_and_the_log_likelihood_as_option():
    badge = get_strategy("badge")
    assert badge.defaults["loss"] == "nnunet"
    for options, loss in (({}, "nnunet"), ({"loss": "log-likelihood"}, "log-likelihood")):
        model = RecordingModel()
        scores = badge.score(model, pool_view(), options)
        (call,) = calls(model, "embed")
        assert (call["group"], call["loss"], call["index"]) == ("last-decoder-conv", loss, None)
        np.testing.assert_array_equal(scores["badge_embeddings"], model.grads[loss][:, :30])


# --- 2. USIM's deep supervision -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["usimc", "usimf"])
@pytest.mark.parametrize("choice,loss", [(None, "log-likelihood"), ("off", "log-likelihood"),
                                         ("sum", "log-likelihood-deep-supervision")])
def test_usim_gradients_are_full_resolution_by_default_and_summed_over_outputs_as_option(name, choice, loss):
    """Eq. 3's log p(y|x) at full resolution by default; the code's Fisher loss, summed over every
    deep-supervision output, with ``deep_supervision: sum``: for the Fisher and the embeddings alike."""
    strategy = get_strategy(name)
    assert strategy.defaults["deep_supervision"] == "off"
    model = RecordingModel()
    strategy.score(model, pool_view(), {} if choice is None else {"deep_supervision": choice})
    made = calls(model, "embed") + calls(model, "fisher")
    assert len(made) == (1 if name == "usimc" else 2)
    assert {c["loss"] for c in made} == {loss}


# --- 3. USIMF's kernel as the code computed it ----------------------------------------------------------------------


def test_usimf_fisher_is_over_every_query_draw_by_default():
    """F = 1/|Q| sum over the draws of g^2 (Eq. 3), each slice as often as it was drawn, by hand."""
    assert get_strategy("usimf").defaults["fisher_estimate"] == "all-samples"
    model = RecordingModel()
    scores = get_strategy("usimf").score(model, pool_view(), {"fisher_group": "decoder-convs"})
    (fisher,) = calls(model, "fisher")
    unique, counts = np.unique(scores["query"], return_counts=True)
    np.testing.assert_array_equal(fisher["positions"], unique)
    np.testing.assert_array_equal(fisher["counts"], counts)
    g = model.grads["log-likelihood"][:, :40]
    by_hand = sum(g[q] ** 2 for q in scores["query"]) / len(scores["query"])
    index = calls(model, "embed")[0]["index"]
    np.testing.assert_allclose(scores["fisher"], by_hand[index], rtol=1e-6)


def test_usimf_first_sample_fisher_is_the_first_draws_squared_gradient():
    """ALUNET USIMFStrategyUNet.computeF sums ``data_F[0].F['grad'] * data_F[0].F['grad']`` once per sample
    and divides by their number: the first draw's squared gradient. The query set is drawn the same way."""
    usimf = get_strategy("usimf")
    default, model = usimf.score(RecordingModel(), pool_view()), RecordingModel()
    scores = usimf.score(model, pool_view(), {"fisher_estimate": "first-sample"})
    np.testing.assert_array_equal(scores["query"], default["query"])
    (fisher,) = calls(model, "fisher")
    first = scores["query"][0]
    assert fisher["positions"].tolist() == [first] and fisher["counts"].tolist() == [1]
    squared = model.grads["log-likelihood"][first, :60] ** 2
    index = calls(model, "embed")[0]["index"]  # drawn in proportion to this Fisher
    np.testing.assert_allclose(scores["fisher"], squared[index], rtol=1e-6)
    assert not np.allclose(scores["fisher"], default["fisher"])


def test_the_codes_fisher_kernel_is_damping_zero_up_to_its_one_over_d():
    """ALUNET's ``similarity_fim``: S = (G_u * FI) @ G_q^T / len(FI), FI = 1 / F on the sampled parameters, no
    damping. nnal's kernel with ``damping: 0`` is that matrix times d; the 1/d changes no pick of FLQMI (a positive
    factor scales every marginal gain alike), so no option carries it."""
    rng = np.random.default_rng(2)
    n, q, d = 1200, 40, 25
    g_u = rng.normal(size=(n, d))
    g_q = g_u[rng.integers(0, n, q)]
    fisher = rng.random(d) + 0.05
    fi = 1.0 / fisher
    code = (g_u * fi) @ g_q.T / len(fi)
    ours = fisher_similarity(g_u, g_q, fisher, damping=0.0)
    np.testing.assert_allclose(ours / d, code, rtol=1e-5, atol=1e-7)
    for optimizer in ("exact", "stochastic"):
        for negatives in ("clipped", "shifted"):
            picks = usim_select(ours.copy(), 10, np.random.default_rng(4), optimizer=optimizer, negatives=negatives)
            scaled = usim_select((ours / d).astype(np.float32), 10, np.random.default_rng(4), optimizer=optimizer,
                                 negatives=negatives)
            assert picks.tolist() == scaled.tolist()


def test_damping_default_is_nnals_relative_guard_and_zero_is_the_exact_inverse():
    usimf = get_strategy("usimf")
    assert usimf.defaults["damping"] == 1e-6
    rng = np.random.default_rng(3)
    g = rng.normal(size=(30, 6)).astype(np.float32)
    g[:, 0] *= 1e-3  # a parameter of tiny gradients and Fisher, the one the relative guard acts on
    fisher = np.array([1e-6, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)
    scores = {"ids": np.arange(30), "grad_embeddings": g, "query": np.arange(0, 30, 3), "fisher": fisher,
              "class_variance": rng.random((30, 2)), "variance": rng.random(30), "usim_uncertainty": rng.random(30),
              "labeled_class_voxels": np.array([1.0, 1.0])}
    exact = fisher_similarity(g, g[scores["query"]], fisher, damping=0.0)
    damped = fisher_similarity(g, g[scores["query"]], fisher, damping=1e-6)
    delta = 1e-6 * fisher.astype(np.float64).mean()
    np.testing.assert_allclose(damped, (g / (fisher + delta)) @ g[scores["query"]].T, rtol=1e-4)
    assert not np.allclose(exact, damped, rtol=1e-3)  # the tiny entry is where the guard acts
    picks = {float(v): usimf(scores, 4, np.random.default_rng(0), {"damping": v, "optimizer": "exact"}).tolist()
             for v in (0.0, 1e-6)}
    assert picks[0.0] == (np.asarray(usim_select(exact, 4, np.random.default_rng(0), optimizer="exact"))).tolist()
    assert picks[1e-6] == (np.asarray(usim_select(damped, 4, np.random.default_rng(0), optimizer="exact"))).tolist()
    assert picks[0.0] != picks[1e-6]


def test_usimf_samples_its_parameters_by_the_fisher_as_text_and_code_do():
    """Both the text (p(theta_i) = F_i / ||F||) and the code (``np.random.choice(..., replace=False, p=F/sum F)``)
    sample parameters by the Fisher: there is no other choice to offer. The embeddings use those parameters."""
    model = RecordingModel()
    scores = get_strategy("usimf").score(model, pool_view(), {"embedding_dim": 7})
    (fisher,) = calls(model, "fisher")
    g = model.grads["log-likelihood"][fisher["positions"], :60]
    full = (g**2 * fisher["counts"][:, None]).sum(0) / fisher["counts"].sum()
    index = calls(model, "embed")[0]["index"]
    assert len(index) == 7 and np.all(np.diff(index) > 0)
    np.testing.assert_allclose(scores["fisher"], full[index], rtol=1e-6)


def test_usimc_takes_a_seeded_random_subset_by_default_and_the_first_entries_as_option():
    usimc = get_strategy("usimc")
    assert usimc.defaults["parameter_subset"] == "random"
    model = RecordingModel()
    first = usimc.score(model, pool_view(), {"embedding_dim": 10, "parameter_subset": "first"})
    assert calls(model, "embed")[0]["index"].tolist() == list(range(10))
    np.testing.assert_array_equal(first["grad_embeddings"], model.grads["log-likelihood"][:, :10])
    model = RecordingModel()
    usimc.score(model, pool_view(), {"embedding_dim": 10})
    index = calls(model, "embed")[0]["index"]
    assert len(index) == 10 and index.tolist() != list(range(10)) and np.all(np.diff(index) > 0)


# --- through the loop on the fake backend ----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy,options", [
    ("usimf", {"fisher_estimate": "first-sample", "damping": 0.0, "fisher_group": "decoder-convs",
               "deep_supervision": "sum"}),
    ("usimc", {"parameter_subset": "first", "embedding_dim": 3, "deep_supervision": "sum"}),
])
def test_the_codes_choices_run_through_the_loop(strategy, options, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    data = make_nnunet_dataset(tmp_path / "Dataset001_Toy", n_cases=6, shape=(8, 10, 12))
    cfg = Config(dataset=str(data), strategy=strategy, strategy_options=options, rounds=2, initial=5, budget=4,
                 iterations_per_epoch=1, epochs_initial=1, epochs_per_round=1, mc_passes=2)
    results = run_experiment(cfg, tmp_path / "exp", progress=False, backend_factory=fake_backend)
    assert results["round"].max() == 2
    assert REGISTRY[strategy].check_options(options) == options
