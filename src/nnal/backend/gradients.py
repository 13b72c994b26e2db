"""Gradient embeddings under pseudo labels: per-sample (one batched backward), BADGE's closed form.

A slice's embedding is the gradient of one per-slice objective (``LOSSES``), under pseudo labels ``y_hat``, the
argmax of the dropout-free prediction:

- ``log-likelihood``: the mean over the slice's valid pixels of ``log p(y_hat | x)`` at full resolution (the
  paper's ``log p_theta(y_bar | x)``; the mean instead of the sum keeps slices of different sizes comparable and
  cancels in cosine and Fisher-kernel similarities);
- ``log-likelihood-deep-supervision``: that mean at every deep-supervision output, each under its own argmax,
  summed without weights: the paper code's Fisher loss (ALUNET ``UNetPatch.loss_fisher`` with ``idx_output=None``);
- ``nnunet``: nnU-Net's training loss, cross-entropy plus soft Dice summed over the deep-supervision outputs with
  nnU-Net's weights, each output under its own argmax: the paper code's BADGE(LL) loss. The code ran it on one
  slice at a time, so nnU-Net's batch Dice was the slice's own Dice: that is the per-slice Dice here.

Padding pixels (outside the valid mask) count in no objective: at a lower deep-supervision output the mask is
downsampled the way nnU-Net downsamples its targets (nearest-exact), as nnU-Net sends its ignore label there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nnal.backend.inference import set_dropout
from nnal.backend.names import LOSSES, PARAMETER_GROUPS

DICE_SMOOTH = 1e-5  # nnU-Net's soft Dice (nnUNetTrainer._build_loss)


def parameter_names(net: torch.nn.Module, group: str) -> list[str]:
    """Trainable parameter names of a group: the bottleneck's last convolution (weight), the decoder's last 3x3
    convolution (weight and bias: BADGE(LL)'s layer in the paper's code), the decoder's 3x3 convolutions (weights
    and biases: USIMF's ``layer_used='decoder'`` in the paper's code), the decoder, or all."""
    if group == "bottleneck":
        convs = [n for n, m in net.encoder.stages[-1].named_modules() if isinstance(m, torch.nn.Conv2d)]
        return [f"encoder.stages.{len(net.encoder.stages) - 1}.{convs[-1]}.weight"]
    if group == "last-decoder-conv":
        # found by identity: nnU-Net registers the same conv twice (``.conv`` and ``.all_modules.0``)
        own = {id(p) for p in net.decoder.stages[-1].convs[-1].conv.parameters() if p.requires_grad}
        return [n for n, p in net.named_parameters() if id(p) in own]
    if group == "decoder-convs":  # by identity, like the last conv: not the transposed convs, norms or heads
        own = {id(p) for stage in net.decoder.stages for block in stage.convs
               for p in block.conv.parameters() if p.requires_grad}
        return [n for n, p in net.named_parameters() if id(p) in own]
    if group == "decoder":
        return [n for n, p in net.named_parameters() if n.startswith("decoder.") and p.requires_grad]
    if group == "network":
        return [n for n, p in net.named_parameters() if p.requires_grad]
    raise ValueError(f"unknown parameter group {group!r}; known: {', '.join(PARAMETER_GROUPS)}")


def parameter_count(net: torch.nn.Module, names: Sequence[str]) -> int:
    params = dict(net.named_parameters())
    return int(sum(params[n].numel() for n in names))


def pseudo_labels(net: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Argmax of the dropout-free prediction, ``(B, H, W)``."""
    set_dropout(net, False)
    with torch.no_grad():
        return net(batch).argmax(1)


# --- the per-slice objectives ---------------------------------------------------------------------------------


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    return loss


def network_outputs(net: torch.nn.Module, batch: torch.Tensor, deep_supervision: bool) -> list[torch.Tensor]:
    """The network's logits, full resolution first; with ``deep_supervision`` every decoder stage's output.

    nnal builds its scoring network without deep supervision; the heads of the lower outputs are there all the
    same (nnU-Net trains them), so the flag is switched on for this one forward only.
    """
    decoder = net.decoder
    before = decoder.deep_supervision
    decoder.deep_supervision = deep_supervision
    try:
        out = net(batch)
    finally:
        decoder.deep_supervision = before
    return [o.float() for o in out] if isinstance(out, list | tuple) else [out.float()]


def per_slice_objective(outputs: Sequence[torch.Tensor], mask: torch.Tensor, loss: str) -> torch.Tensor:
    """``(B,)`` the objective ``loss`` (see ``LOSSES``) of each slice; slices never mix, so the gradient of the
    sum w.r.t. a layer's output holds each slice's own gradient."""
    check_loss(loss)
    if loss == "log-likelihood":
        return mean_log_likelihood(outputs[0], mask)
    if loss == "log-likelihood-deep-supervision":  # the paper code's Fisher loss: every output, weight 1
        return sum(mean_log_likelihood(out, mask_at(mask, out.shape[-2:])) for out in outputs)
    weights = deep_supervision_weights(len(outputs))
    return sum(w * nnunet_slice_loss(out, mask_at(mask, out.shape[-2:]))
               for w, out in zip(weights, outputs, strict=True) if w != 0)


def mean_log_likelihood(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean over the valid pixels of ``log p(argmax | x)``, the argmax of these logits."""
    labels = logits.detach().argmax(1)
    logp = logits.log_softmax(1).gather(1, labels[:, None]).squeeze(1)
    m = mask.to(logp.dtype)
    return (logp * m).sum((-2, -1)) / m.sum((-2, -1)).clamp_min(1)


def mask_at(mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The valid mask at a deep-supervision output's resolution, nearest-exact as nnU-Net downsamples targets
    (``DownsampleSegForDSTransform``)."""
    if tuple(mask.shape[-2:]) == tuple(shape):
        return mask
    scaled = torch.nn.functional.interpolate(mask[:, None].float(), size=tuple(shape), mode="nearest-exact")
    return scaled[:, 0] > 0.5


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net's weights of its deep-supervision outputs (``nnUNetTrainer._build_loss``): 1/2^i, the lowest
    output 0, normalised to sum 1 (one output: weight 1)."""
    if n_outputs == 1:
        return [1.0]
    weights = [1.0 / 2**i for i in range(n_outputs)]
    weights[-1] = 0.0
    return [w / sum(weights) for w in weights]


def nnunet_slice_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` nnU-Net's ``DC_and_CE_loss`` (``MemoryEfficientSoftDiceLoss``, no background, smooth 1e-5) of
    each slice alone under the argmax of these logits, pixels outside ``mask`` ignored as nnU-Net ignores its
    ignore label: cross-entropy averaged over the valid pixels minus the mean foreground soft Dice."""
    labels = logits.detach().argmax(1)
    m = mask.to(logits.dtype)
    n_valid = m.sum((-2, -1))
    nll = -logits.log_softmax(1).gather(1, labels[:, None]).squeeze(1)
    # nnU-Net skips the cross-entropy when no pixel is valid; the clamp gives the same 0
    ce = (nll * m).sum((-2, -1)) / n_valid.clamp_min(1)
    probs = logits.softmax(1)[:, 1:] * m[:, None]
    onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).movedim(-1, 1)[:, 1:].to(logits.dtype) * m[:, None]
    intersect = (probs * onehot).sum((-2, -1))
    dice = (2 * intersect + DICE_SMOOTH) / (onehot.sum((-2, -1)) + probs.sum((-2, -1)) + DICE_SMOOTH).clamp_min(1e-8)
    return ce - dice.mean(1)


# --- per-sample gradients -------------------------------------------------------------------------------------


def per_sample_gradients(net: torch.nn.Module, batch: torch.Tensor, mask: torch.Tensor, names: Sequence[str],
                         index: torch.Tensor | None = None, loss: str = "log-likelihood") -> torch.Tensor:
    """``(B, d)`` gradients of each slice's objective ``loss`` (``LOSSES``) w.r.t. the named parameters
    (flattened, in ``names`` order), restricted to ``index`` (sorted positions in that flattening) when given.

    One batched forward and backward of the summed per-slice losses: slices do not interact in nnU-Net's
    networks (instance norm, no batch statistics), so each slice's share of a layer's gradient follows from
    that layer's input and output gradient (the per-sample trick of Goodfellow 2015 / Opacus), for
    Conv2d, ConvTranspose2d (kernel = stride) and affine InstanceNorm2d.
    """
    owners, captured = _layer_signals(net, batch, mask, names, loss)
    wanted = None if index is None else index.to("cpu").numpy()
    parts, offset = [], 0
    for name in names:
        module, kind = owners[name]
        size = getattr(module, kind).numel()
        cols = None
        if wanted is not None:  # gather per parameter: the (B, all parameters) matrix is never built
            lo, hi = np.searchsorted(wanted, [offset, offset + size])
            cols = torch.as_tensor(wanted[lo:hi] - offset, device=batch.device)
            offset += size
            if len(cols) == 0:
                continue
        else:
            offset += size
        a, g = captured[module]
        if a is None or g is None:  # not on the forward path (deep-supervision heads when it is off): zero
            grad = torch.zeros(len(batch), size if cols is None else len(cols), dtype=torch.float32,
                               device=batch.device)
        elif cols is None:
            grad = _sample_grad(module, kind, a, g).reshape(len(batch), -1)
        else:  # only the wanted entries are computed: a 10k subset of 1.9M parameters costs a few hundredths
            grad = _sample_grad_columns(module, kind, a, g, cols)
        parts.append(grad)
    return torch.cat(parts, dim=1)


def _layer_signals(net: torch.nn.Module, batch: torch.Tensor, mask: torch.Tensor, names: Sequence[str], loss: str
                   ) -> tuple[dict[str, tuple[torch.nn.Module, str]], dict[torch.nn.Module, list]]:
    """One batched forward and backward: each owning layer's input and output gradient, ``{module: [a, g]}``."""
    check_loss(loss)
    net.eval()
    owners = _owners(net, names)
    captured: dict[torch.nn.Module, list] = {m: [None, None] for m in {m for m, _ in owners.values()}}
    outputs: dict[torch.nn.Module, torch.Tensor] = {}

    def on_forward(module, inputs, output):
        captured[module][0] = inputs[0].detach()
        outputs[module] = output

    hooks = [module.register_forward_hook(on_forward) for module in captured]
    # nnU-Net's LeakyReLU runs in place, which would overwrite the outputs whose gradients are captured
    inplace = [m for m in net.modules() if getattr(m, "inplace", False)]
    for module in inplace:
        module.inplace = False
    try:
        with torch.enable_grad():
            # pseudo labels: the argmax of the same (dropout-free) pass, per output
            logits = network_outputs(net, batch, deep_supervision=loss != "log-likelihood")
            total = per_slice_objective(logits, mask, loss).sum()
            # differentiated w.r.t. the layers' outputs, not their parameters: the per-sample gradients below need
            # only these, and nothing upstream of the first requested layer runs (no encoder pass for "decoder")
            layers = list(outputs)
            grads = torch.autograd.grad(total, [outputs[m] for m in layers], allow_unused=True)
            for module, grad in zip(layers, grads, strict=True):
                captured[module][1] = None if grad is None else grad.detach()
    finally:
        for h in hooks:
            h.remove()
        for module in inplace:
            module.inplace = True
    return owners, captured


def per_sample_square_sums(net: torch.nn.Module, batch: torch.Tensor, mask: torch.Tensor, names: Sequence[str],
                           weights: torch.Tensor, loss: str = "log-likelihood") -> torch.Tensor:
    """``(d,)`` float64 ``sum_b weights[b] * g_b^2`` of the per-sample gradients of ``loss``, layer by layer: the
    ``(B, d)`` matrix is never built (at 1.9M parameters and 128 slices it is 1 GB in float32)."""
    owners, captured = _layer_signals(net, batch, mask, names, loss)
    w = weights.to(device=batch.device, dtype=torch.float64)
    parts = []
    for name in names:
        module, kind = owners[name]
        a, g = captured[module]
        if a is None or g is None:
            parts.append(torch.zeros(getattr(module, kind).numel(), dtype=torch.float64, device=batch.device))
            continue
        grad = _sample_grad(module, kind, a, g).reshape(len(batch), -1)
        parts.append(torch.einsum("b,bd->d", w, grad.double().square_()))
    return torch.cat(parts)


def _owners(net: torch.nn.Module, names: Sequence[str]) -> dict[str, tuple[torch.nn.Module, str]]:
    modules = dict(net.named_modules())
    out = {}
    for name in names:
        path, kind = name.rsplit(".", 1)
        module = modules[path]
        if not isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.InstanceNorm2d):
            raise TypeError(f"per-sample gradients of {type(module).__name__} ({name}) are not supported")
        if isinstance(module, torch.nn.ConvTranspose2d) and (module.kernel_size != module.stride
                                                             or module.padding != (0, 0)):
            raise TypeError(f"{name}: transposed convolution with kernel != stride is not supported")
        out[name] = (module, kind)
    return out


def _sample_grad(module: torch.nn.Module, kind: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """One layer's per-sample gradient from its input ``a`` and output gradient ``g``."""
    if kind == "bias" and not isinstance(module, torch.nn.InstanceNorm2d):
        return g.sum((-2, -1))
    if isinstance(module, torch.nn.Conv2d):
        cols = torch.nn.functional.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)
        grad_w = torch.einsum("bop,bkp->bok", g.flatten(2), cols)  # (B, out, in*kh*kw)
        return grad_w.reshape(len(a), *module.weight.shape)
    if isinstance(module, torch.nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        b, o, hh, ww = g.shape
        g6 = g.reshape(b, o, hh // kh, kh, ww // kw, kw)
        return torch.einsum("bihw,bohkwl->biokl", a, g6)
    # affine instance norm: y = gamma * x_hat + beta
    if kind == "bias":
        return g.sum((-2, -1))
    mean = a.mean((-2, -1), keepdim=True)
    var = a.var((-2, -1), unbiased=False, keepdim=True)
    return (g * (a - mean) / torch.sqrt(var + module.eps)).sum((-2, -1))


SUBSET_CHUNK = 1 << 24  # floats in one temporary (B, entries, pixels) block of _sample_grad_columns


def _sample_grad_columns(module: torch.nn.Module, kind: str, a: torch.Tensor, g: torch.Tensor, cols: torch.Tensor
                         ) -> torch.Tensor:
    """The entries ``cols`` (flattened positions in the parameter) of one layer's per-sample gradient, ``(B, n)``,
    without forming the rest: entry (o, j) of a convolution's weight gradient is sum_p g[o, p] * patches[j, p]."""
    if kind == "bias" or isinstance(module, torch.nn.InstanceNorm2d):  # (B, channels): cheap in full
        return _sample_grad(module, kind, a, g).reshape(len(a), -1)[:, cols]
    if isinstance(module, torch.nn.Conv2d) and module.groups == 1:
        return _conv_weight_columns(module, a, g, cols)
    if isinstance(module, torch.nn.Conv2d):
        left = torch.nn.functional.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)
        right = g.flatten(2)  # (B, out, P) against patches (B, in*kh*kw, P)
        per_row = left.shape[1]
        rows, taps = cols // per_row, cols % per_row
        first, second = right, left
    else:  # ConvTranspose2d with kernel = stride: weight (in, out, kh, kw)
        kh, kw = module.kernel_size
        b, o, hh, ww = g.shape
        second = g.reshape(b, o, hh // kh, kh, ww // kw, kw).permute(0, 1, 3, 5, 2, 4).reshape(b, o * kh * kw, -1)
        first = a.flatten(2)  # (B, in, h*w)
        per_row = o * kh * kw
        rows, taps = cols // per_row, cols % per_row
    out = torch.empty(len(a), len(cols), dtype=torch.result_type(first, second), device=a.device)
    step = max(1, SUBSET_CHUNK // max(1, len(a) * first.shape[-1]))
    for start in range(0, len(cols), step):
        part = slice(start, start + step)
        out[:, part] = (first[:, rows[part]] * second[:, taps[part]]).sum(-1)
    return out


def _conv_weight_columns(module: torch.nn.Conv2d, a: torch.Tensor, g: torch.Tensor, cols: torch.Tensor
                         ) -> torch.Tensor:
    """Entries of a convolution's per-sample weight gradient, one kernel tap at a time: entry (o, c, ky, kx) is
    sum over output pixels of g[o] times the input channel c shifted by the tap, a strided view of the padded
    input. Only the selected channels are gathered, never the (B, in*kh*kw, P) patch matrix."""
    kh, kw = module.kernel_size
    (sy, sx), (dy, dx), (py, px) = module.stride, module.dilation, module.padding
    padded = torch.nn.functional.pad(a, (px, px, py, py))
    ho, wo = g.shape[-2:]
    out_grad = g.flatten(2)  # (B, out, P)
    per_out = a.shape[1] * kh * kw
    rows, rest = cols // per_out, cols % per_out
    channel, tap = rest // (kh * kw), rest % (kh * kw)
    out = torch.empty(len(a), len(cols), dtype=torch.result_type(a, g), device=a.device)
    step = max(1, SUBSET_CHUNK // max(1, len(a) * ho * wo))
    for t in torch.unique(tap).tolist():
        ky, kx = divmod(t, kw)
        shifted = padded[:, :, ky * dy: ky * dy + sy * (ho - 1) + 1: sy, kx * dx: kx * dx + sx * (wo - 1) + 1: sx]
        where = torch.nonzero(tap == t).flatten()
        for start in range(0, len(where), step):
            part = where[start:start + step]
            picked = shifted[:, channel[part]].flatten(2)  # (B, n, P)
            out[:, part] = (out_grad[:, rows[part]] * picked).sum(-1)
    return out


def per_sample_gradients_loop(net: torch.nn.Module, batch: torch.Tensor, mask: torch.Tensor, names: Sequence[str]
                              ) -> torch.Tensor:
    """Reference: the log-likelihood's gradients with one autograd backward per slice (tests and benchmarks)."""
    net.eval()
    labels = pseudo_labels(net, batch)
    params = dict(net.named_parameters())
    rows = []
    for b in range(len(batch)):
        net.zero_grad(set_to_none=True)
        logp = net(batch[b:b + 1]).float().log_softmax(1).gather(1, labels[b][None, None]).squeeze(1)[0]
        m = mask[b].to(logp.dtype)
        ((logp * m).sum() / m.sum().clamp_min(1)).backward()
        rows.append(torch.cat([torch.zeros(params[n].numel()) if params[n].grad is None
                               else params[n].grad.reshape(-1) for n in names]))
    net.zero_grad(set_to_none=True)
    return torch.stack(rows)


def head_gradient_embeddings(features: torch.Tensor, probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BADGE(LL) embeddings in closed form: the gradient of the mean pixel cross-entropy under the pseudo label
    w.r.t. the 1x1 segmentation head, ``mean_pixels (p - onehot(argmax p)) f^T`` plus the bias part ``(p - onehot)``.

    features ``(B, F, H, W)`` (the head's input), probs ``(B, C, H, W)``; returns ``(B, C*F + C)``.
    """
    onehot = torch.zeros_like(probs).scatter_(1, probs.argmax(1, keepdim=True), 1.0)
    m = mask.to(probs.dtype)[:, None]
    err = (probs - onehot) * m
    denom = m.sum((-2, -1)).clamp_min(1)  # (B, 1)
    weight = torch.einsum("bchw,bfhw->bcf", err, features.to(probs.dtype)) / denom[..., None]
    bias = err.sum((-2, -1)) / denom
    return torch.cat([weight.flatten(1), bias], dim=1)
