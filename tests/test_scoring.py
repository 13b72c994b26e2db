"""Per-slice uncertainty reductions against hand computations in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_unet

from nnal.backend.scoring import entropy, reduce_deterministic, reduce_mc


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.fixture
def mc_probs() -> np.ndarray:
    rng = np.random.default_rng(0)
    return _softmax(rng.normal(size=(5, 4, 3, 6, 7)), axis=2)  # (T, B, C, H, W)


def test_entropy_matches_hand_computation():
    p = np.array([0.5, 0.25, 0.25])
    expected = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    got = entropy(torch.tensor(p).reshape(1, 3, 1, 1)).item()
    assert got == pytest.approx(expected)


def test_entropy_of_one_hot_is_zero():
    p = torch.zeros(1, 3, 2, 2)
    p[:, 1] = 1
    assert entropy(p).abs().max().item() == pytest.approx(0.0, abs=1e-9)


def test_deterministic_entropy_is_pixel_mean(mc_probs):
    p = mc_probs[0]
    expected = (-(p * np.log(p)).sum(1)).mean((1, 2))
    got = reduce_deterministic(torch.from_numpy(p))["entropy"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_bald_std_variance_match_numpy(mc_probs):
    p = mc_probs
    mean = p.mean(0)
    h_mean = -(mean * np.log(mean)).sum(1)
    mean_h = (-(p * np.log(p)).sum(2)).mean(0)
    bald = (h_mean - mean_h).mean((1, 2))
    std = p.std(0, ddof=0)
    out = {k: v.numpy() for k, v in reduce_mc(torch.from_numpy(p)).items()}
    np.testing.assert_allclose(out["bald"], bald, rtol=1e-6)
    np.testing.assert_allclose(out["std"], std.mean((1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(out["variance"], (std**2).mean((1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(out["class_uncertainty"], std[:, 1:].mean((2, 3)), rtol=1e-6)
    assert (out["bald"] >= -1e-12).all()  # mutual information is non-negative


def test_identical_passes_have_zero_bald_and_std(mc_probs):
    p = np.repeat(mc_probs[:1], 4, axis=0)
    out = reduce_mc(torch.from_numpy(p))
    assert out["bald"].abs().max().item() < 1e-9
    assert out["std"].abs().max().item() < 1e-9


def test_mask_restricts_the_pixel_mean(mc_probs):
    p = torch.from_numpy(mc_probs)
    mask = torch.zeros(4, 6, 7, dtype=torch.bool)
    mask[:, 1:4, 2:6] = True
    masked = reduce_mc(p, mask)
    cropped = reduce_mc(p[..., 1:4, 2:6])
    for key in masked:
        np.testing.assert_allclose(masked[key].numpy(), cropped[key].numpy(), rtol=1e-6)
    np.testing.assert_allclose(reduce_deterministic(p[0], mask)["entropy"].numpy(),
                               reduce_deterministic(p[0, ..., 1:4, 2:6])["entropy"].numpy(), rtol=1e-6)


@torch.inference_mode()
def test_mc_passes_stacked_in_one_forward_are_dropout_samples():
    from nnal.backend.inference import set_dropout
    from nnal.backend.scoring import mc_probabilities

    net = small_unet(torch.nn.Dropout)
    batch = torch.randn(4, 1, 16, 12, generator=torch.Generator().manual_seed(1))
    deterministic = net(batch).softmax(1)
    # dropout off: every stacked pass is the deterministic prediction of its own slice (slices never interact)
    stacked = mc_probabilities(net, batch, 6)
    assert stacked.shape == (6, 4, 3, 16, 12)
    torch.testing.assert_close(stacked, deterministic.expand(6, -1, -1, -1, -1), rtol=1e-5, atol=1e-6)
    set_dropout(net, True)
    # one pass per forward draws exactly as T separate forwards
    torch.manual_seed(5)
    loop = torch.stack([net(batch).softmax(1) for _ in range(6)])
    torch.manual_seed(5)
    torch.testing.assert_close(mc_probabilities(net, batch, 6, rows=4), loop)
    # stacked: T different dropout samples, in chunks when the rows limit cuts them
    for rows in (24, 8):
        probs = mc_probabilities(net, batch, 6, rows=rows)
        assert probs.shape == (6, 4, 3, 16, 12)
        assert all(not torch.equal(probs[t], probs[t + 1]) for t in range(5))
        assert (probs - deterministic).abs().mean() < 0.2  # samples around the deterministic prediction
    set_dropout(net, False)


@torch.inference_mode()
def test_packed_dropout_drops_at_rate_p_and_keeps_the_expectation():
    from nnal.backend.inference import packed_dropout

    x = torch.ones(400, 50, 50)  # 1e6 draws: the drop rate's standard error is 3e-4
    torch.manual_seed(0)
    for p in (0.01, 0.1, 0.5):
        out = packed_dropout(x, p)
        dropped = (out == 0).float().mean().item()
        assert abs(dropped - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5 + 1 / 65536
        torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 1 / (1 - p)))
        assert abs(out.mean().item() - 1) < 0.01
    # independent draws: two calls differ, the same seed repeats
    torch.manual_seed(3)
    a = packed_dropout(x, 0.1)
    b = packed_dropout(x, 0.1)
    torch.manual_seed(3)
    assert not torch.equal(a, b) and torch.equal(a, packed_dropout(x, 0.1))
    assert torch.equal(packed_dropout(x, 0.0), x) and torch.equal(packed_dropout(x, 1.0), torch.zeros_like(x))


@torch.inference_mode()
def test_packed_dropout_replaces_element_dropout_only_while_active():
    from nnal.backend.inference import set_dropout, use_packed_dropout

    net = small_unet(torch.nn.Dropout)
    batch = torch.randn(4, 1, 16, 12, generator=torch.Generator().manual_seed(1))
    deterministic = net(batch)
    use_packed_dropout(net, True)
    torch.testing.assert_close(net(batch), deterministic)  # eval mode: no dropout
    set_dropout(net, True)
    torch.manual_seed(2)
    packed = net(batch)
    use_packed_dropout(net, False)
    torch.manual_seed(2)
    native = net(batch)
    set_dropout(net, False)
    assert not torch.equal(packed, native)  # another draw: the packed one ran
    assert all("forward" not in m.__dict__ for m in net.modules())  # restored
    channel = small_unet(torch.nn.Dropout2d)
    use_packed_dropout(channel, True)
    assert all("forward" not in m.__dict__ for m in channel.modules())  # channel dropout is left alone


def test_scoring_autocasts_on_cuda_only():
    from nnal.backend.scoring import _amp

    with _amp(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cuda") and not torch.is_autocast_enabled("cpu")
    if torch.cuda.is_available():  # (without a CUDA device torch turns a CUDA autocast off itself)
        with _amp(torch.device("cuda")):
            assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.float16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.inference_mode()
def test_half_precision_mc_probabilities_match_float32_on_cuda():
    from nnal.backend.scoring import _amp, mc_probabilities

    net = small_unet(torch.nn.Dropout).cuda()
    batch = torch.randn(4, 1, 16, 12, device="cuda")
    full = mc_probabilities(net, batch, 3)
    with _amp(torch.device("cuda")):
        half = mc_probabilities(net, batch, 3)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=5e-3, rtol=0)


def test_class_entropy_is_the_class_weighted_pixel_entropy_by_hand():
    import torch

    # one slice of 2 pixels, classes (bg, a, b): p = (0.5, 0.5, 0) and (0.2, 0.3, 0.5)
    probs = torch.tensor([[[[0.5, 0.2]], [[0.5, 0.3]], [[0.0, 0.5]]]], dtype=torch.float64)
    h1 = -2 * 0.5 * np.log(0.5)
    h2 = -(0.2 * np.log(0.2) + 0.3 * np.log(0.3) + 0.5 * np.log(0.5))
    out = reduce_deterministic(probs)["class_entropy"].numpy()
    np.testing.assert_allclose(out, [[(h1 * 0.5 + h2 * 0.3) / 2, (h1 * 0.0 + h2 * 0.5) / 2]], rtol=1e-12)
