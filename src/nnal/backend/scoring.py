"""Score the unlabeled pool in one batched pass per round, reduced per batch to per-slice arrays.

The pool's probability maps are never held: each batch is reduced to scalars (or small vectors) per slice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from nnal.backend.gradients import head_gradient_embeddings
from nnal.backend.inference import (
    centred_window,
    draws_packed,
    load_volume,
    padded_shape,
    set_dropout,
    skip_packed_dropout,
    total_stride,
    use_packed_dropout,
    volume_shape,
)
from nnal.backend.planning import patch_size
from nnal.strategies.base import DETERMINISTIC_KEYS, MC_KEYS, MODEL_SCORE_KEYS

KNOWN_KEYS = MODEL_SCORE_KEYS
FEATURE_DIM = 10_000  # Core-Set's flattened bottleneck: longer vectors are randomly projected to this many dims
# one fixed seed for the projection, so the pool and the labeled set (two passes of a round, and every round)
# share one matrix
PROJECTION_SEED = 0


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Pixel entropy ``-sum_c p log p`` over the class axis (dim -3)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-3)


def _pixel_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the last two (pixel) axes, over ``mask`` pixels only when given (``(B, H, W)`` bool)."""
    if mask is None:
        return x.mean((-2, -1))
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-3)
    return (x * m).sum((-2, -1)) / m.sum((-2, -1)).clamp_min(1)


def reduce_deterministic(probs: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-slice scores from one dropout-free pass, ``probs`` of shape ``(B, C, H, W)``: the mean pixel entropy, and
    per foreground class the mean of H(p_i) p_{i,c} (ClaSP PE's class-weighted predictive entropy)."""
    pixel = entropy(probs)
    return {"entropy": _pixel_mean(pixel, mask), "class_entropy": _pixel_mean(pixel[:, None] * probs[:, 1:], mask)}


def reduce_mc(probs: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-slice scores from T MC-dropout passes, ``probs`` of shape ``(T, B, C, H, W)``.

    bald = H(mean_t p_t) - mean_t H(p_t); std/variance across passes (population, ddof 0), averaged
    over classes and pixels; class_uncertainty / class_variance: the std / variance per foreground class averaged
    over pixels.
    """
    mean = probs.mean(0)
    bald = _pixel_mean(entropy(mean) - entropy(probs).mean(0), mask)
    var = probs.var(0, unbiased=False)
    std = var.sqrt()
    return {
        "bald": bald,
        "std": _pixel_mean(std, mask).mean(-1),
        "variance": _pixel_mean(var, mask).mean(-1),
        "class_uncertainty": _pixel_mean(std[:, 1:], mask),
        "class_variance": _pixel_mean(var[:, 1:], mask),
    }


def pooled_batches(folder: Path, cases: Iterable[tuple[str, np.ndarray]], batch_size: int,
                   patch: tuple[int, int], stride: tuple[int, int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of slices across cases, ``(B, c, H, W)`` images zero-padded centred and ``(B, H, W)`` valid masks.

    Slices of consecutive cases share a batch while their padded size agrees; the order of ``cases`` then
    slices is kept.
    """
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    current = None
    for case, slices in cases:
        data, _ = load_volume(folder, case)
        c, _, h, w = data.shape
        target = padded_shape((h, w), patch, stride)
        if current is not None and target != current and images:
            yield _stack(images, masks)
            images, masks = [], []
        current = target
        rows, cols = centred_window((h, w), target)
        for z in np.asarray(slices):
            img = np.zeros((c, *target), dtype=np.float32)
            img[:, rows, cols] = data[:, z]
            valid = np.zeros(target, dtype=bool)
            valid[rows, cols] = True
            images.append(img)
            masks.append(valid)
            if len(images) == batch_size:
                yield _stack(images, masks)
                images, masks = [], []
    if images:
        yield _stack(images, masks)


class PlannedBatch(NamedTuple):
    """One batch of :func:`pooled_batches`, known from the volumes' headers: ``(c, H, W)`` and its slices."""

    shape: tuple[int, int, int]
    size: int


def batch_plan(folder: Path, cases: Iterable[tuple[str, np.ndarray]], batch_size: int, patch: tuple[int, int],
               stride: tuple[int, int]) -> list[PlannedBatch]:
    """The batches :func:`pooled_batches` forms from ``cases``, by the same rule, without reading any image: a
    shard of a sharded scoring pass (``nnal.backend.shards``) starts on a batch boundary of the single pass."""
    plan: list[PlannedBatch] = []
    size, current, channels = 0, None, 0
    for case, slices in cases:
        c, _, h, w = volume_shape(folder, case)
        target = padded_shape((h, w), patch, stride)
        if current is not None and target != current and size:
            plan.append(PlannedBatch((channels, *current), size))
            size = 0
        current, channels = target, c
        for _ in range(len(np.asarray(slices))):
            size += 1
            if size == batch_size:
                plan.append(PlannedBatch((channels, *current), size))
                size = 0
    if size:
        plan.append(PlannedBatch((channels, *current), size))
    return plan


def _stack(images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))


def feature_grid(plans: dict) -> tuple[int, int]:
    """Core-Set's fixed bottleneck grid: the patch size over the total stride (cells), the same for every case."""
    patch = patch_size(plans)
    return tuple(-(-int(p) // s) for p, s in zip(patch, total_stride(plans), strict=True))


def bottleneck_on_grid(bottleneck: torch.Tensor, mask: torch.Tensor, stride: tuple[int, int],
                       grid: tuple[int, int]) -> torch.Tensor:
    """``(B, F*gh*gw)``: the bottleneck map ``(B, F, h, w)`` with cells whose ``stride`` footprint in the valid
    mask ``(B, H, W)`` is all padding zeroed, centred on the ``grid`` (its centre cropped when larger), flattened.

    Padded sizes differ between cases; the grid gives every slice a vector of one length whose entries mean the
    same place relative to the slice's centre.
    """
    valid = torch.nn.functional.max_pool2d(mask[:, None].to(bottleneck.dtype), stride, stride)
    x = bottleneck * valid
    inner = (min(x.shape[-2], grid[0]), min(x.shape[-1], grid[1]))
    src_rows, src_cols = centred_window(inner, tuple(x.shape[-2:]))
    dst_rows, dst_cols = centred_window(inner, grid)
    out = x.new_zeros(len(x), x.shape[1], *grid)
    out[:, :, dst_rows, dst_cols] = x[:, :, src_rows, src_cols]
    return out.flatten(1)


def random_projection(dim: int, k: int, seed: int = PROJECTION_SEED) -> torch.Tensor:
    """``(dim, k)`` Gaussian matrix over sqrt(k) (squared norms kept in expectation), drawn on the CPU from
    ``seed`` so that every device gets the same matrix."""
    return torch.randn(dim, k, generator=torch.Generator().manual_seed(seed)) / math.sqrt(k)


# slices in one MC forward on CUDA: the T passes of a batch go through together while they fit. On CPU one pass per
# forward (stacked passes measured slower there: 59.9 s against 45.3 s for T = 5 over 834 slices, 2 cores)
MC_ROWS = 4096


def mc_probabilities(net: torch.nn.Module, batch: torch.Tensor, passes: int, rows: int | None = None
                     ) -> torch.Tensor:
    """``(T, B, C, H, W)`` softmax of ``passes`` MC-dropout passes, as few forwards as ``rows`` allows (default:
    ``MC_ROWS`` on CUDA, one pass per forward on CPU).

    The passes are stacked along the batch axis: dropout draws its masks element by element, so a stacked
    forward is ``passes`` independent dropout samples, with fewer, larger convolutions (what CPUs and GPUs run
    fastest). Instance norm works per slice, so slices never interact.
    """
    out = []
    for n in mc_forwards(len(batch), passes, rows, batch.device):
        logits = net(batch.repeat(n, 1, 1, 1)).float()
        out.append(logits.softmax(1).reshape(n, len(batch), *logits.shape[1:]))
    return torch.cat(out)


def mc_forwards(batch_len: int, passes: int, rows: int | None, device: torch.device) -> list[int]:
    """How many of the ``passes`` each MC forward of a ``batch_len``-slice batch stacks (:func:`mc_probabilities`)."""
    default = MC_ROWS if device.type == "cuda" else batch_len
    per_forward = max(1, (rows or default) // max(1, batch_len))
    return [min(per_forward, passes - start) for start in range(0, passes, per_forward)]


def replay_mc_draws(net: torch.nn.Module, after: Sequence[PlannedBatch], passes: int, rows: int | None,
                    device: torch.device) -> None:
    """Advance torch's generator as the MC passes of the batches ``after`` would, without their forwards.

    A scoring pass seeds once and draws its MC-dropout masks batch after batch, so a batch's masks depend on the
    batches before it. A shard that starts at batch k of the single pass replays the draws of batches 0..k-1
    (each dropout module's draw for its input's shape, found by one dropout-free forward per padded shape) and then
    draws exactly the masks the single pass drew: its scores are the single pass's, bit for bit on the CPU. The
    replay costs the random words alone, about a tenth of those batches' MC passes on the CPU.
    """
    calls: dict[tuple[int, int, int], list[tuple[torch.nn.Module, tuple[int, ...], torch.dtype]]] = {}
    words = None
    for planned in after:
        if planned.shape not in calls:
            calls[planned.shape] = _dropout_inputs(net, planned.shape, device)
        for n in mc_forwards(planned.size, passes, rows, device):
            for module, shape, dtype in calls[planned.shape]:
                numel = n * planned.size * math.prod(shape)
                if draws_packed(module):  # the words alone: masks would cost four times as much
                    if words is None or len(words) < (numel + 3) // 4:
                        words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
                    skip_packed_dropout(numel, module.p, device, words)
                else:  # torch's own dropout: the same call on an input of the same shape, whose values it ignores
                    module.train(True)
                    module(torch.empty((n * planned.size, *shape), dtype=dtype, device=device))
                    module.train(False)


def _dropout_inputs(net: torch.nn.Module, shape: tuple[int, int, int], device: torch.device
                    ) -> list[tuple[torch.nn.Module, tuple[int, ...], torch.dtype]]:
    """Each dropout call of one forward of a ``shape`` slice, in order: the module, its input's per-slice shape and
    dtype. The forward runs with dropout off, drawing nothing."""
    seen: list[tuple[torch.nn.Module, tuple[int, ...], torch.dtype]] = []
    modules = [m for m in net.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append((m, tuple(args[0].shape[1:]), args[0].dtype)))
             for m in modules]
    set_dropout(net, False)
    try:
        with _amp(device):
            net(torch.zeros((1, *shape), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _amp(device: torch.device):
    """Half-precision convolutions for the forward-only scoring passes on CUDA (softmax and reductions run in
    float32: logits are cast first); a no-op elsewhere. Gradient embeddings and the Fisher stay in float32."""
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda")


class _Captured:
    """What forward hooks keep of the dropout-free pass: the bottleneck (last encoder stage) and the 1x1
    segmentation head's input, while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.bottleneck: list[torch.Tensor] = []
        self.head_inputs: list[torch.Tensor] = []


@contextmanager
def _captured(net: torch.nn.Module, keys: set[str]) -> Iterator[_Captured]:
    """The hooks the keys need, on the network while scoring, removed however scoring ends."""
    captured, hooks = _Captured(), []
    if keys & {"features", "pooled_features"}:  # bottleneck = last encoder stage, dropout-free pass only
        hooks.append(net.encoder.stages[-1].register_forward_hook(
            lambda _m, _i, out: captured.bottleneck.append(out.float()) if captured.on else None))
    if "head_embeddings" in keys:  # the 1x1 segmentation head's input, for BADGE's closed-form gradient
        hooks.append(net.decoder.seg_layers[-1].register_forward_hook(
            lambda _m, i, _o: captured.head_inputs.append(i[0].float()) if captured.on else None))
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


class _FeatureMap(NamedTuple):
    """How the bottleneck becomes a feature vector: its stride and grid, the length kept, the projection (drawn
    once, on the first batch that needs it)."""

    stride: tuple[int, int]
    grid: tuple[int, int]
    dim: int
    projection: list[torch.Tensor]


def _deterministic_pass(net: torch.nn.Module, batch: torch.Tensor, mask: torch.Tensor, keys: set[str],
                        captured: _Captured, features: _FeatureMap, device: torch.device,
                        parts: dict[str, list[torch.Tensor]]) -> None:
    set_dropout(net, False)
    captured.on = True
    with _amp(device):
        logits = net(batch)
    captured.on = False
    probs = logits.float().softmax(1)
    for k, v in reduce_deterministic(probs, mask).items():
        if k in keys:
            parts[k].append(v.cpu())
    if captured.head_inputs:
        parts["head_embeddings"].append(head_gradient_embeddings(captured.head_inputs.pop(), probs, mask).cpu())
    if captured.bottleneck:
        out = captured.bottleneck.pop()
        if "pooled_features" in keys:  # over the whole padded map, as before the flattened default
            parts["pooled_features"].append(out.mean((-2, -1)).cpu())
        if "features" in keys:
            flat = bottleneck_on_grid(out, mask, features.stride, features.grid)
            if flat.shape[1] > features.dim:  # per batch: the pool's full maps are never held
                if not features.projection:
                    features.projection.append(random_projection(flat.shape[1], features.dim).to(flat.device))
                flat = flat @ features.projection[0]
            parts["features"].append(flat.cpu())


def _mc_pass(net: torch.nn.Module, batch: torch.Tensor, mask: torch.Tensor, keys: set[str], mc_passes: int,
             mc_rows: int | None, device: torch.device, parts: dict[str, list[torch.Tensor]]) -> None:
    set_dropout(net, True)
    with _amp(device):
        probs = mc_probabilities(net, batch, mc_passes, mc_rows)
    for k, v in reduce_mc(probs, mask).items():
        if k in keys:
            parts[k].append(v.cpu())
    set_dropout(net, False)


@torch.inference_mode()
def score_pool(net: torch.nn.Module, plans: dict, folder: Path, cases: Iterable[tuple[str, np.ndarray]],
               keys: set[str], mc_passes: int, batch_size: int, device: torch.device, seed: int,
               on_batch: Callable[[int], None] | None = None, *, feature_dim: int = FEATURE_DIM,
               mc_rows: int | None = None, after: Sequence[PlannedBatch] = ()) -> dict[str, np.ndarray]:
    """Score the given slices of each case; arrays come back in the order of ``cases`` then slices.

    ``features``: the flattened bottleneck on the fixed grid (:func:`bottleneck_on_grid`), projected to
    ``feature_dim`` entries when longer; ``pooled_features``: the bottleneck's global average. ``after``: the
    batches a single pass would have scored before these slices (a shard's, :func:`replay_mc_draws`).
    """
    unknown = set(keys) - KNOWN_KEYS
    if unknown:
        raise ValueError(f"unknown score keys: {sorted(unknown)}")
    patch = patch_size(plans)
    torch.manual_seed(seed)
    features = _FeatureMap(total_stride(plans), feature_grid(plans), feature_dim, [])
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    use_packed_dropout(net, device.type == "cpu")
    try:
        with _captured(net, keys) as captured:
            if after and keys & MC_KEYS:
                replay_mc_draws(net, after, mc_passes, mc_rows, device)
            for batch, mask in pooled_batches(folder, cases, batch_size, patch, total_stride(plans)):
                batch, mask = batch.to(device), mask.to(device)
                if keys & DETERMINISTIC_KEYS:
                    _deterministic_pass(net, batch, mask, keys, captured, features, device, parts)
                if keys & MC_KEYS:
                    _mc_pass(net, batch, mask, keys, mc_passes, mc_rows, device, parts)
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        set_dropout(net, False)
        use_packed_dropout(net, False)
    return {k: torch.cat(v).numpy() for k, v in parts.items() if v}
