"""The baselines' embeddings as the paper ran them, against direct computations on a small real nnU-Net network:
Core-Set's flattened bottleneck (fixed grid, padding cells zeroed, seeded projection when long) and BADGE(LL)'s
gradients of the decoder's last 3x3 convolution; the pooled and head-only variants as options; both strategies
through the loop on the fake backend."""

from __future__ import annotations

import math
import os
from pathlib import Path

import blosc2
import numpy as np
import pytest
import torch
from conftest import make_nnunet_dataset, small_unet

from nnal.backend.fake import fake_backend
from nnal.backend.gradients import parameter_names, per_sample_gradients_loop
from nnal.backend.model import Model
from nnal.backend.scoring import PROJECTION_SEED, score_pool
from nnal.config import Config
from nnal.loop import run_experiment
from nnal.strategies import REGISTRY, PoolView
from nnal.strategies.usim import truncate_indices

PATCH, STRIDE = (16, 12), (4, 4)  # grid: 4 x 3 bottleneck cells
SHAPES = {"small": (3, 5, 6), "large": (2, 22, 13)}  # (z, y, x): padded to 16x12 (padding cells) and 24x16 (cropped)
LAST_CONV = ["decoder.stages.1.convs.1.conv.weight", "decoder.stages.1.convs.1.conv.bias"]


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return small_unet()


@pytest.fixture(scope="module")
def plans() -> dict:
    return {"configurations": {"2d": {"patch_size": list(PATCH),
                                      "architecture": {"arch_kwargs": {"strides": [[1, 1], [2, 2], [2, 2]]}}}}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two preprocessed cases of different in-plane sizes, as nnU-Net's Blosc2 files."""
    root = tmp_path_factory.mktemp("preprocessed")
    rng = np.random.default_rng(3)
    for case, shape in SHAPES.items():
        blosc2.asarray(rng.normal(size=(1, *shape)).astype(np.float32), urlpath=str(root / f"{case}.b2nd"), mode="w")
        blosc2.asarray(rng.integers(0, 3, size=(1, *shape)).astype(np.int16), urlpath=str(root / f"{case}_seg.b2nd"),
                       mode="w")
    return root


@pytest.fixture(scope="module")
def model(net, plans, folder) -> Model:
    return Model(net, plans, folder, [0, 1, 2], torch.device("cpu"))


CASES = [("small", np.array([0, 2])), ("large", np.array([0, 1]))]


def padded(folder: Path, case: str, z: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One slice zero-padded by hand: centred in the smallest multiple of the stride at least the patch."""
    image = blosc2.open(urlpath=str(folder / f"{case}.b2nd"), mode="r")[:][:, z]
    h, w = image.shape[1:]
    target = [math.ceil(max(s, p) / 4) * 4 for s, p in zip((h, w), PATCH, strict=True)]
    top, left = (target[0] - h) // 2, (target[1] - w) // 2
    x = torch.zeros(1, 1, *target)
    x[0, :, top:top + h, left:left + w] = torch.from_numpy(image)
    mask = torch.zeros(1, *target, dtype=torch.bool)
    mask[0, top:top + h, left:left + w] = True
    return x, mask


def direct_features(net, folder: Path, cases) -> tuple[np.ndarray, np.ndarray]:
    """(flattened, pooled) bottleneck features of each slice, one forward each, cropping and masking by hand."""
    flat, pooled, seen = [], [], []
    hook = net.encoder.stages[-1].register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:  # the network is shared by the module's tests: never leave the hook on
        for case, slices in cases:
            for z in slices:
                x, mask = padded(folder, case, int(z))
                with torch.no_grad():
                    net(x)
                out = seen.pop()[0]  # (F, h, w)
                pooled.append(out.mean((1, 2)).numpy())
                f, h, w = out.shape
                cells = mask[0].reshape(h, 4, w, 4).any(3).any(1)  # a cell is kept when any of its pixels is image
                kept = out * cells
                top, left = (h - 4) // 2, (w - 3) // 2
                flat.append(kept[:, top:top + 4, left:left + 3].reshape(-1).numpy())
    finally:
        hook.remove()
    return np.stack(flat), np.stack(pooled)


def test_the_two_cases_cover_padding_cells_and_a_centre_crop(net, folder):
    x, mask = padded(folder, "small", 0)
    assert tuple(x.shape[-2:]) == PATCH and not mask[0, :4].any()  # the top cell row is all padding
    assert tuple(padded(folder, "large", 0)[0].shape[-2:]) == (24, 16)  # a 6 x 4 map, cropped to 4 x 3


def test_coreset_features_are_the_flattened_bottleneck_on_the_grid(net, plans, folder):
    got = score_pool(net, plans, folder, CASES, {"features", "pooled_features"}, 2, 3, torch.device("cpu"), 0)
    flat, pooled = direct_features(net, folder, CASES)
    assert got["features"].shape == (4, 32 * 4 * 3)
    np.testing.assert_allclose(got["features"], flat, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["pooled_features"], pooled, rtol=1e-4, atol=1e-5)
    small = got["features"][:2].reshape(2, 32, 4, 3)
    assert (small[:, :, [0, 3]] == 0).all() and (small[:, :, 1:3] != 0).any()  # padding cells zeroed


def test_long_features_are_projected_with_the_fixed_seed_and_the_same_matrix_each_pass(net, plans, folder):
    got = score_pool(net, plans, folder, CASES, {"features"}, 2, 3, torch.device("cpu"), 0, feature_dim=50)
    flat, _ = direct_features(net, folder, CASES)
    gauss = torch.randn(flat.shape[1], 50, generator=torch.Generator().manual_seed(PROJECTION_SEED)).numpy()
    assert got["features"].shape == (4, 50)
    np.testing.assert_allclose(got["features"], flat @ gauss / math.sqrt(50), rtol=1e-4, atol=1e-4)
    # the labeled set is scored in a pass of its own: same projection, so the same rows
    again = score_pool(net, plans, folder, CASES[1:], {"features"}, 2, 3, torch.device("cpu"), 5, feature_dim=50)
    np.testing.assert_allclose(again["features"], got["features"][2:], rtol=1e-5, atol=1e-6)
    short = score_pool(net, plans, folder, CASES, {"features"}, 2, 3, torch.device("cpu"), 0, feature_dim=384)
    np.testing.assert_allclose(short["features"], flat, rtol=1e-4, atol=1e-5)  # at the limit: not projected


def reference_gradients(net, folder: Path, names: list[str]) -> np.ndarray:
    rows = [per_sample_gradients_loop(net, *padded(folder, case, int(z)), names)
            for case, slices in CASES for z in slices]
    return torch.cat(rows).numpy()


def test_last_decoder_conv_is_the_last_3x3_convolution(net):
    assert parameter_names(net, "last-decoder-conv") == LAST_CONV
    assert net.decoder.stages[-1].convs[-1].conv.kernel_size == (3, 3)


def pool_view(budget: int = 2) -> PoolView:
    return PoolView(ids=np.arange(4), cases=CASES, labeled_cases=[("small", np.array([1]))],
                    labeled_class_voxels=np.array([10.0, 10.0]), mc_passes=2, batch_size=3, seed=7, budget=budget)


def nnunet_loss_gradients(net, folder: Path, names: list[str]) -> np.ndarray:
    """Per slice, one autograd backward of nnU-Net's own DC_and_CE_loss (batch Dice on a batch of one, no
    background, smooth 1e-5, padding as the ignore label) under the argmax: the paper code's BADGE(LL) loss. This
    network has two outputs, whose deep-supervision weights are 1 and 0: the full-resolution term alone."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=3, dice_class=MemoryEfficientSoftDiceLoss)
    params = dict(net.named_parameters())
    rows = []
    for case, slices in CASES:
        for z in slices:
            x, mask = padded(folder, case, int(z))
            logits = net(x)
            target = torch.where(mask[:, None], logits.argmax(1, keepdim=True), 3)
            grads = torch.autograd.grad(loss(logits, target), [params[n] for n in names])
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).numpy()


def test_badge_embeddings_are_last_conv_gradients_under_pseudo_labels(net, model, folder):
    """The default loss is nnU-Net's (the paper's code), the option the full-resolution log-likelihood."""
    expected = nnunet_loss_gradients(net, folder, LAST_CONV)
    likelihood = reference_gradients(net, folder, LAST_CONV)
    assert expected.shape == likelihood.shape == (4, 8 * 8 * 9 + 8) and np.abs(expected).max() > 0
    got = model.gradient_embeddings(CASES, group="last-decoder-conv", index=None, batch_size=3, loss="nnunet")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    got = model.gradient_embeddings(CASES, group="last-decoder-conv", index=None, batch_size=3)
    np.testing.assert_allclose(got, likelihood, rtol=1e-4, atol=1e-6)
    # through the strategy: the full layer (584 <= 10,000), then a seeded subset of 100 of its parameters
    scores = REGISTRY["badge"].score(model, pool_view())
    np.testing.assert_allclose(scores["badge_embeddings"], expected, rtol=1e-4, atol=1e-6)
    scores = REGISTRY["badge"].score(model, pool_view(), {"loss": "log-likelihood"})
    np.testing.assert_allclose(scores["badge_embeddings"], likelihood, rtol=1e-4, atol=1e-6)
    scores = REGISTRY["badge"].score(model, pool_view(), {"embedding_dim": 100})
    index = truncate_indices(expected.shape[1], 100, np.random.default_rng(7))
    np.testing.assert_allclose(scores["badge_embeddings"], expected[:, index], rtol=1e-4, atol=1e-6)
    chosen = REGISTRY["badge"](scores, 2, np.random.default_rng(0), {"embedding_dim": 100})
    assert len(np.unique(chosen)) == 2


def test_the_head_option_is_the_closed_form_head_gradient(net, model, folder):
    names = [f"decoder.seg_layers.{len(net.decoder.seg_layers) - 1}.{kind}" for kind in ("weight", "bias")]
    expected = -reference_gradients(net, folder, names)  # log-likelihood's gradient = minus cross-entropy's
    scores = REGISTRY["badge"].score(model, pool_view(), {"embedding": "head"})
    assert REGISTRY["badge"].needs_for({"embedding": "head"}) == ("head_embeddings",)
    np.testing.assert_allclose(scores["badge_embeddings"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(scores["badge_embeddings"], scores["head_embeddings"])


@pytest.mark.parametrize("choice,key,width", [("flattened", "features", 384), ("pooled", "pooled_features", 32)])
def test_coreset_reads_one_key_for_the_pool_and_the_labeled_set(net, model, folder, choice, key, width):
    coreset = REGISTRY["coreset"]
    options = {} if choice == "flattened" else {"features": choice}
    assert coreset.needs_for(options) == (key,)
    scores = coreset.score(model, pool_view(), options)
    flat, pooled = direct_features(net, folder, CASES)
    direct = flat if choice == "flattened" else pooled
    np.testing.assert_allclose(scores[key], direct, rtol=1e-4, atol=1e-5)
    # the labeled slice is slice 1 of the small case, scored like any pool slice
    lab_flat, lab_pooled = direct_features(net, folder, [("small", np.array([1]))])
    labeled = lab_flat if choice == "flattened" else lab_pooled
    assert scores["labeled_features"].shape == (1, width)
    np.testing.assert_allclose(scores["labeled_features"], labeled, rtol=1e-4, atol=1e-5)
    chosen = coreset(scores, 3, np.random.default_rng(0), options)
    assert len(np.unique(chosen)) == 3


# --- both strategies, each choice, through the loop on the fake backend ----------------------------------------


@pytest.mark.parametrize("strategy,options,keys", [
    ("coreset", {}, {"features", "labeled_features"}),
    ("coreset", {"features": "pooled"}, {"pooled_features", "labeled_features"}),
    ("badge", {}, {"badge_embeddings"}),
    ("badge", {"embedding": "head"}, {"head_embeddings", "badge_embeddings"}),
    ("badge", {"embedding_dim": 5}, {"badge_embeddings"}),
    ("badge", {"loss": "log-likelihood"}, {"badge_embeddings"}),
])
def test_strategies_run_through_the_loop_on_the_fake_backend(strategy, options, keys, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    data = make_nnunet_dataset(tmp_path / "Dataset001_Toy", n_cases=6, shape=(8, 10, 12))
    cfg = Config(dataset=str(data), strategy=strategy, strategy_options=options, rounds=2, initial=5, budget=4,
                 iterations_per_epoch=1, epochs_initial=1, epochs_per_round=1, mc_passes=2)
    run_experiment(cfg, tmp_path / "exp", progress=False, backend_factory=fake_backend)
    with np.load(tmp_path / "exp" / "round_001" / "scores.npz") as scores:
        assert keys <= set(scores.files)
        assert not ({"features", "pooled_features", "head_embeddings"} - keys) & set(scores.files)
        if strategy == "badge":
            assert scores["badge_embeddings"].shape[1] == {"embedding": 3, "embedding_dim": 5}.get(
                next(iter(options), ""), 12)


@pytest.mark.parametrize("loss", ["log-likelihood", "log-likelihood-deep-supervision", "nnunet"])
def test_the_models_fisher_is_the_count_weighted_mean_of_its_squared_embeddings(model, loss):
    """``Model.fisher`` (accumulated batch by batch) against ``Model.gradient_embeddings`` of the same loss."""
    counts = np.array([2, 1, 3, 1])
    g = model.gradient_embeddings(CASES, group="decoder-convs", index=None, batch_size=3, loss=loss).astype(np.float64)
    fisher = model.fisher(CASES, counts, group="decoder-convs", batch_size=3, loss=loss)
    np.testing.assert_allclose(fisher, (g**2 * counts[:, None]).sum(0) / counts.sum(), rtol=1e-4, atol=1e-12)
    assert fisher.shape == (model.parameter_count("decoder-convs"),)


@pytest.mark.parametrize("pixels", [1, 2 * PATCH[0] * PATCH[1]])
def test_a_batch_of_large_slices_goes_through_in_chunks_with_the_same_gradients(model, pixels, monkeypatch):
    """A score batch whose slices exceed the per-pass pixel budget (512 x 512 CT: 2 slices a pass) is split into
    consecutive parts: the same per-sample rows and the same Fisher as the one-pass batch, only less memory held."""
    import nnal.backend.model as model_module

    counts = np.array([2, 1, 3, 1])
    whole_rows = model.gradient_embeddings(CASES, group="decoder-convs", index=None, batch_size=4)
    whole_fisher = model.fisher(CASES, counts, group="decoder-convs", batch_size=4)
    calls = []
    per_sample = model_module.gradients.per_sample_gradients
    monkeypatch.setattr(model_module, "GRADIENT_PIXELS", pixels)
    monkeypatch.setattr(model_module.gradients, "per_sample_gradients",
                        lambda net, batch, *a: calls.append(len(batch)) or per_sample(net, batch, *a))
    rows = model.gradient_embeddings(CASES, group="decoder-convs", index=None, batch_size=4)
    assert calls and max(calls) == (1 if pixels == 1 else 2) and sum(calls) == 4
    # float32 convolutions round differently by batch size: equal up to 1e-5 of the largest entry
    np.testing.assert_allclose(rows, whole_rows, rtol=1e-4, atol=1e-5 * np.abs(whole_rows).max())
    np.testing.assert_allclose(model.fisher(CASES, counts, group="decoder-convs", batch_size=4), whole_fisher,
                               rtol=1e-4, atol=1e-5 * whole_fisher.max())
