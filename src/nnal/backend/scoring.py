"""Score the unlabeled pool in one batched pass per round, reduced per batch to per-slice arrays.

The pool's probability maps are never held: each batch is reduced to scalars (or small vectors) per slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from nnal.backend.inference import crop_to, load_volume, padded_shape, set_dropout, slice_batches, total_stride
from nnal.backend.planning import CONFIGURATION

MC_KEYS = frozenset({"bald", "std", "variance", "class_uncertainty"})
DETERMINISTIC_KEYS = frozenset({"entropy", "features"})
KNOWN_KEYS = MC_KEYS | DETERMINISTIC_KEYS


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Pixel entropy ``-sum_c p log p`` over the class axis (dim -3)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-3)


def reduce_deterministic(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-slice scores from one dropout-free pass, ``probs`` of shape ``(B, C, H, W)``."""
    return {"entropy": entropy(probs).mean((-2, -1))}


def reduce_mc(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-slice scores from T MC-dropout passes, ``probs`` of shape ``(T, B, C, H, W)``.

    bald = H(mean_t p_t) - mean_t H(p_t); std/variance across passes (population, ddof 0), averaged
    over classes and pixels; class_uncertainty: the std per foreground class averaged over pixels.
    """
    mean = probs.mean(0)
    bald = (entropy(mean) - entropy(probs).mean(0)).mean((-2, -1))
    var = probs.var(0, unbiased=False)
    std = var.sqrt()
    return {
        "bald": bald,
        "std": std.mean((-3, -2, -1)),
        "variance": var.mean((-3, -2, -1)),
        "class_uncertainty": std[:, 1:].mean((-2, -1)),
    }


@torch.inference_mode()
def score_pool(net: torch.nn.Module, plans: dict, folder: Path, cases: Iterable[tuple[str, np.ndarray]],
               keys: set[str], mc_passes: int, batch_size: int, device: torch.device, seed: int,
               on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Score the given slices of each case; arrays come back in the order of ``cases`` then slices."""
    unknown = set(keys) - KNOWN_KEYS
    if unknown:
        raise ValueError(f"unknown score keys: {sorted(unknown)}")
    patch = tuple(plans["configurations"][CONFIGURATION]["patch_size"])
    stride = total_stride(plans)
    torch.manual_seed(seed)
    features: list[torch.Tensor] = []
    hook = None
    if "features" in keys:  # bottleneck = last encoder stage, global-average pooled
        hook = net.encoder.stages[-1].register_forward_hook(
            lambda _m, _i, out: features.append(out.float().mean((-2, -1)).cpu()))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    try:
        for case, slices in cases:
            data, _ = load_volume(folder, case)
            target = padded_shape(data.shape[2:], patch, stride)
            for _, batch in slice_batches(data, np.asarray(slices), batch_size, target):
                batch = batch.to(device)
                if keys & DETERMINISTIC_KEYS:
                    set_dropout(net, False)
                    probs = crop_to(net(batch).float().softmax(1), data.shape[2:])
                    for k, v in reduce_deterministic(probs).items():
                        if k in keys:
                            parts[k].append(v.cpu())
                if keys & MC_KEYS:
                    set_dropout(net, True)
                    probs = torch.stack([crop_to(net(batch).float().softmax(1), data.shape[2:])
                                         for _ in range(mc_passes)])
                    for k, v in reduce_mc(probs).items():
                        if k in keys:
                            parts[k].append(v.cpu())
                    set_dropout(net, False)
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        if hook is not None:
            hook.remove()
        set_dropout(net, False)
    if "features" in keys:
        parts["features"] = features
    return {k: torch.cat(v).numpy() for k, v in parts.items() if v}
