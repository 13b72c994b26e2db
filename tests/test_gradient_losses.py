"""The per-slice objectives the paper's code differentiated, against independent autograd references on a small
four-stage nnU-Net network (three deep-supervision outputs, so nnU-Net's weights are 2/3, 1/3, 0):

- BADGE(LL)'s ``nnunet`` loss: nnU-Net's own loss object (``nnUNetTrainer._build_loss``: Dice + CE wrapped with
  its deep-supervision weights) on one slice at a time, targets the argmax of each output, padding as the ignore
  label sent to the lower outputs by nnU-Net's own ``DownsampleSegForDSTransform``;
- USIM's ``log-likelihood-deep-supervision``: ALUNET's ``UNetPatch.loss_fisher(idx_output=None)`` written out.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nnal.backend.gradients import (
    LOSSES,
    deep_supervision_weights,
    network_outputs,
    parameter_names,
    per_sample_gradients,
    per_sample_gradients_loop,
    per_sample_square_sums,
)

CLASSES = 3
IGNORE = CLASSES  # nnal's ignore label: max label + 1
POOL_KERNELS = [[1, 1], [2, 2], [2, 2], [2, 2]]


def four_stage_unet() -> torch.nn.Module:
    """A PlainConvUNet with four stages like the planned Hippocampus network: outputs at 16, 8 and 4 pixels."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    return PlainConvUNet(1, 4, (4, 8, 16, 16), torch.nn.Conv2d, 3, (1, 2, 2, 2), (2, 2, 2, 2), CLASSES, (2, 2, 2),
                         conv_bias=True, norm_op=torch.nn.InstanceNorm2d,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}).eval()


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return four_stage_unet()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 16, 16, generator=g)
    mask = torch.ones(4, 16, 16, dtype=torch.bool)
    mask[1, :3] = False  # padding rows and columns, as a centred smaller slice has
    mask[1, :, -2:] = False
    x[1, :, ~mask[1]] = 0.0
    return x, mask


def nnunet_loss() -> torch.nn.Module:
    """nnU-Net's own training loss for a 2d configuration with the ignore label (batch Dice, as planned)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = SimpleNamespace(
        label_manager=SimpleNamespace(has_regions=False, ignore_label=IGNORE),
        configuration_manager=SimpleNamespace(batch_dice=True, pool_op_kernel_sizes=POOL_KERNELS),
        is_ddp=False, enable_deep_supervision=True, _do_i_compile=lambda: False)
    trainer._get_deep_supervision_scales = lambda: nnUNetTrainer._get_deep_supervision_scales(trainer)
    return nnUNetTrainer._build_loss(trainer)


def ds_outputs(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    net.decoder.deep_supervision = True
    try:
        return list(net(x))
    finally:
        net.decoder.deep_supervision = False


def code_targets(outputs: list[torch.Tensor], valid: torch.Tensor) -> list[torch.Tensor]:
    """The code's ``[argmax(x, dim=1, keepdim=True) for x in outputi]``, padding set to the ignore label at each
    output as nnU-Net's data pipeline sends a label map to the deep-supervision outputs."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    scales = nnUNetTrainer._get_deep_supervision_scales(
        SimpleNamespace(enable_deep_supervision=True,
                        configuration_manager=SimpleNamespace(pool_op_kernel_sizes=POOL_KERNELS)))
    ignored = DownsampleSegForDSTransform(scales)._apply_to_segmentation((~valid[None]).to(torch.uint8))
    return [torch.where(ign[None].bool(), IGNORE, out.argmax(1, keepdim=True))
            for out, ign in zip(outputs, ignored, strict=True)]


def reference(net, x, mask, names, objective) -> torch.Tensor:
    """One autograd backward per slice of ``objective(outputs, valid)``: ``(B, d)``."""
    params = dict(net.named_parameters())
    rows = []
    for b in range(len(x)):
        value = objective(ds_outputs(net, x[b:b + 1]), mask[b])
        grads = torch.autograd.grad(value, [params[n] for n in names], allow_unused=True)
        rows.append(torch.cat([torch.zeros(params[n].numel()) if g is None else g.reshape(-1)
                               for n, g in zip(names, grads, strict=True)]))
    return torch.stack(rows)


def code_badge_loss(outputs, valid):
    """ALUNET BADGELLStrategyUNet.get_grad_embedding: ``net.model['unet'].loss(outputi, targeti)``."""
    return nnunet_loss()(outputs, code_targets(outputs, valid))


def code_fisher_loss(outputs, valid):
    """ALUNET UNetPatch.loss_fisher(idx_output=None), summed as grad_data does (``loss_ce[0].sum()``), the
    means taken over the valid pixels (the code's patches had no padding mask)."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    terms = []
    for out in outputs:
        scale = out.shape[-1] / valid.shape[-1]
        keep = DownsampleSegForDSTransform([[scale, scale]])._apply_to_segmentation(
            valid[None].to(torch.uint8))[0][0].bool()
        log_p = torch.log_softmax(out, dim=1)
        pseudo = torch.nn.functional.one_hot(torch.argmax(log_p.exp(), dim=1), out.shape[1]).permute(0, 3, 1, 2)
        for c in range(out.shape[1]):
            terms.append((log_p[:, c] * pseudo[:, c])[:, keep].mean())
    return torch.hstack(terms).sum()


def test_the_weights_are_nnunets(net):
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert list(nnunet_loss().weight_factors) == pytest.approx(deep_supervision_weights(3))
    assert deep_supervision_weights(1) == [1.0]
    assert len(ds_outputs(net, torch.zeros(1, 1, 16, 16))) == 3


@pytest.mark.parametrize("group", ["last-decoder-conv", "bottleneck", "decoder", "network"])
def test_nnunet_loss_gradients_are_the_codes_badge_loss_per_slice(net, batch, group):
    x, mask = batch
    names = parameter_names(net, group)
    expected = reference(net, x, mask, names, code_badge_loss)
    got = per_sample_gradients(net, x, mask, names, loss="nnunet")
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("group", ["last-decoder-conv", "bottleneck", "decoder", "network"])
def test_deep_supervision_log_likelihood_is_the_codes_fisher_loss(net, batch, group):
    x, mask = batch
    names = parameter_names(net, group)
    expected = reference(net, x, mask, names, code_fisher_loss)
    got = per_sample_gradients(net, x, mask, names, loss="log-likelihood-deep-supervision")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-5 * float(expected.abs().max()))


def test_lower_outputs_give_the_last_decoder_conv_no_gradient(net, batch):
    """The last 3x3 convolution feeds only the full-resolution head: under nnU-Net's loss its gradient is 2/3 of
    the full-resolution term's, under the code's Fisher loss the full-resolution log-likelihood's. Layers above
    it get gradients from the lower outputs too (so this is not true of any layer)."""
    x, mask = batch

    def full_res_only(outputs, valid):
        return nnunet_loss().loss(outputs[0], code_targets(outputs, valid)[0])

    last = parameter_names(net, "last-decoder-conv")
    torch.testing.assert_close(per_sample_gradients(net, x, mask, last, loss="nnunet"),
                               2 / 3 * reference(net, x, mask, last, full_res_only), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(per_sample_gradients(net, x, mask, last, loss="log-likelihood-deep-supervision"),
                               per_sample_gradients(net, x, mask, last, loss="log-likelihood"), rtol=1e-5, atol=1e-8)
    bottleneck = parameter_names(net, "bottleneck")
    lower = (per_sample_gradients(net, x, mask, bottleneck, loss="nnunet")
             - 2 / 3 * reference(net, x, mask, bottleneck, full_res_only))
    assert lower.abs().max() > 1e-3 * reference(net, x, mask, bottleneck, full_res_only).abs().max()


def test_the_default_objective_is_the_full_resolution_log_likelihood(net, batch):
    x, mask = batch
    names = parameter_names(net, "decoder")
    torch.testing.assert_close(per_sample_gradients(net, x, mask, names),
                               per_sample_gradients_loop(net, x, mask, names), rtol=1e-4, atol=1e-6)
    for loss in LOSSES[1:]:  # each other objective is another embedding
        assert not torch.allclose(per_sample_gradients(net, x, mask, names, loss=loss),
                                  per_sample_gradients(net, x, mask, names), rtol=1e-2, atol=0)


@pytest.mark.parametrize("loss", LOSSES)
def test_fisher_square_sums_follow_the_objective(net, batch, loss):
    x, mask = batch
    names = parameter_names(net, "decoder")
    weights = torch.tensor([1.0, 2.0, 0.0, 3.0], dtype=torch.float64)
    per_slice = per_sample_gradients(net, x, mask, names, loss=loss).double()
    got = per_sample_square_sums(net, x, mask, names, weights, loss=loss)
    torch.testing.assert_close(got, (per_slice.square() * weights[:, None]).sum(0), rtol=1e-6, atol=1e-14)


def test_the_pass_leaves_deep_supervision_off_and_rejects_unknown_losses(net, batch):
    x, mask = batch
    per_sample_gradients(net, x, mask, parameter_names(net, "bottleneck"), loss="nnunet")
    assert net.decoder.deep_supervision is False
    assert network_outputs(net, x, deep_supervision=False)[0].shape == (4, CLASSES, 16, 16)
    with pytest.raises(ValueError, match="unknown loss"):
        per_sample_gradients(net, x, mask, parameter_names(net, "bottleneck"), loss="dice")


def test_decoder_convs_are_the_codes_decoder_layers(net):
    """USIMF's ``layer_used='decoder'``: modules named with 'decoder', 'convs' and '0.conv' or '1.conv'
    (ALUNET USIMFStrategyUNet.getNetLayer), of which nngeometry's ``LayerCollection.from_model_BF`` keeps the
    Conv2d ones, weight then bias each, in module order."""
    layers = [name for name, module in net.named_modules()
              if "decoder" in name and "convs" in name and ("0.conv" in name or "1.conv" in name)
              and type(module).__name__ in ("Linear", "Conv2d", "Conv3d")]
    expected = [f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")]
    assert parameter_names(net, "decoder-convs") == expected
    assert len(expected) == 3 * 2 * 2  # three decoder stages, two convolutions each
