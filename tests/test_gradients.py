"""Per-sample gradient embeddings and BADGE's closed form against autograd references."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import small_unet

from nnal.backend.gradients import (
    head_gradient_embeddings,
    parameter_names,
    per_sample_gradients,
    per_sample_gradients_loop,
)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    """A small nnU-Net PlainConvUNet with the same block structure as the planned one, float64."""
    return small_unet().double()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 16, 12, generator=g, dtype=torch.float64)
    mask = torch.ones(5, 16, 12, dtype=torch.bool)
    mask[2, :3] = False  # one slice with padding
    return x, mask


@pytest.mark.parametrize("group", ["bottleneck", "decoder", "network"])
def test_batched_per_sample_gradients_equal_an_autograd_loop(net, batch, group):
    x, mask = batch
    names = parameter_names(net, group)
    fast = per_sample_gradients(net, x, mask, names)
    slow = per_sample_gradients_loop(net, x, mask, names)
    assert fast.shape == slow.shape and fast.shape[0] == 5
    assert slow.abs().max() > 0
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)  # float64: equal up to rounding


def test_per_sample_gradients_leave_the_network_untouched(net, batch):
    x, mask = batch
    before = copy.deepcopy(net.state_dict())
    per_sample_gradients(net, x, mask, parameter_names(net, "network"))
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(m.inplace for m in net.modules() if isinstance(m, torch.nn.LeakyReLU))
    assert all(p.grad is None for p in net.parameters())


def test_index_selects_columns(net, batch):
    x, mask = batch
    names = parameter_names(net, "bottleneck")
    full = per_sample_gradients(net, x, mask, names)
    idx = torch.tensor([0, 7, 100])
    torch.testing.assert_close(per_sample_gradients(net, x, mask, names, idx), full[:, idx])


@pytest.mark.parametrize("group", ["decoder", "network"])
def test_a_subset_is_computed_alone_and_equals_the_full_columns(net, batch, group, monkeypatch):
    """Convolutions, transposed convolutions, norms and biases: only the wanted entries, in small chunks."""
    import nnal.backend.gradients as gradients

    x, mask = batch
    names = parameter_names(net, group)
    full = per_sample_gradients(net, x, mask, names)
    idx = torch.sort(torch.randperm(full.shape[1], generator=torch.Generator().manual_seed(3))[:400]).values
    monkeypatch.setattr(gradients, "SUBSET_CHUNK", 5 * 16 * 12 * 7)  # several chunks per layer
    subset = per_sample_gradients(net, x, mask, names, idx)
    torch.testing.assert_close(subset, full[:, idx], rtol=1e-9, atol=1e-12)


def test_bottleneck_is_the_last_encoder_convolution(net):
    assert parameter_names(net, "bottleneck") == ["encoder.stages.2.0.convs.1.conv.weight"]
    assert len(parameter_names(net, "network")) == len(list(net.parameters()))


def test_badge_closed_form_equals_autograd_of_the_head():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    head = torch.nn.Conv2d(4, 3, 1).double()
    mask = torch.ones(3, 5, 6, dtype=torch.bool)
    mask[1, :, :2] = False
    probs = head(feats).softmax(1).detach()
    closed = head_gradient_embeddings(feats, probs, mask)
    for b in range(3):
        head.zero_grad()
        logits = head(feats[b:b + 1])
        target = logits.argmax(1)
        ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")[0]
        m = mask[b].double()
        ((ce * m).sum() / m.sum()).backward()
        expected = torch.cat([head.weight.grad.reshape(3, 4).flatten(), head.bias.grad])
        torch.testing.assert_close(closed[b], expected)


@pytest.mark.parametrize("group", ["decoder", "network"])
def test_weighted_square_sums_equal_the_per_sample_reference(net, batch, group):
    """The diagonal Fisher's accumulation, layer by layer, against one autograd backward per slice."""
    from nnal.backend.gradients import per_sample_square_sums

    x, mask = batch
    names = parameter_names(net, group)
    weights = torch.tensor([1.0, 3.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    reference = (per_sample_gradients_loop(net, x, mask, names).square() * weights[:, None]).sum(0)
    got = per_sample_square_sums(net, x, mask, names, weights)
    assert got.dtype == torch.float64 and got.shape == reference.shape
    torch.testing.assert_close(got, reference, rtol=1e-9, atol=1e-14)
