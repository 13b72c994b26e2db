"""The model seam: nnU-Net's network bound to one round's weights, built once per phase, numpy in and out.

Strategies' preparation steps see it through ``nnal.strategies.ModelLike``; the loop and the report use it for
scores, predictions and Dice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from nnal.backend import gradients, inference, scoring
from nnal.backend.planning import patch_size

CaseSlices = list[tuple[str, np.ndarray]]
# pixels per per-sample-gradient pass: a pass holds every layer's input and output gradient, and each convolution's
# unfolded input (9 x channels x pixels a sample), so a score batch of 512 x 512 slices (8 of them: over 23 GB for the
# whole network) goes through in chunks of 2; Hippocampus' batch of 128 slices (286,720 pixels) stays one pass
GRADIENT_PIXELS = 2**19


class Model:
    """One round's network over one preprocessed dataset."""

    def __init__(self, network: torch.nn.Module, plans: dict, folder: Path, labels: list[int], device: torch.device):
        self.network = network
        self.plans = plans
        self.folder = Path(folder)
        self.labels = labels
        self.device = device
        self.mc_rows: int | None = None  # slices per MC forward (None: scoring.MC_ROWS); benchmarks vary it

    def scores(self, cases: CaseSlices, keys: set[str], *, mc_passes: int, batch_size: int, seed: int,
               on_batch: Callable[[int], None] | None = None, after: Sequence[scoring.PlannedBatch] = ()
               ) -> dict[str, np.ndarray]:
        """Per-slice score arrays (``nnal.strategies.MODEL_SCORE_KEYS``) in the order of ``cases`` then slices;
        ``after``: the batches scored before these in a single pass (a shard's, ``nnal.backend.shards``)."""
        return scoring.score_pool(self.network, self.plans, self.folder, cases, keys, mc_passes, batch_size,
                                  self.device, seed, on_batch, mc_rows=self.mc_rows, after=after)

    def batch_plan(self, cases: CaseSlices, batch_size: int) -> list[scoring.PlannedBatch]:
        """The batches every pass over ``cases`` forms (``scoring.batch_plan``), from the volumes' headers."""
        patch = patch_size(self.plans)
        return scoring.batch_plan(self.folder, cases, batch_size, patch, inference.total_stride(self.plans))

    def parameter_count(self, group: str) -> int:
        """Trainable parameters of a group: ``bottleneck`` (its last convolution), ``last-decoder-conv`` (the
        decoder's last 3x3 convolution), ``decoder-convs`` (the decoder's 3x3 convolutions), ``decoder`` or
        ``network``."""
        return gradients.parameter_count(self.network, gradients.parameter_names(self.network, group))

    def gradient_embeddings(self, cases: CaseSlices, *, group: str, index: np.ndarray | None, batch_size: int,
                            loss: str = "log-likelihood", on_batch: Callable[[int], None] | None = None
                            ) -> np.ndarray:
        """Per-slice gradients of a pseudo-label objective (``nnal.backend.names.LOSSES``) w.r.t. a parameter group,
        ``index`` entries (all when None), float32 ``(N, d)`` in the order of ``cases`` then slices."""
        gradients.check_loss(loss)
        names = gradients.parameter_names(self.network, group)
        idx = None if index is None else torch.as_tensor(np.asarray(index), dtype=torch.long, device=self.device)
        rows = []
        for batch, mask in self._batches(cases, batch_size):
            for part, part_mask in _gradient_chunks(batch, mask):
                rows.append(gradients.per_sample_gradients(self.network, part.to(self.device),
                                                           part_mask.to(self.device), names, idx, loss).cpu())
            if on_batch is not None:
                on_batch(len(batch))
        return torch.cat(rows).numpy()

    def fisher(self, cases: CaseSlices, counts: np.ndarray, *, group: str, batch_size: int,
               loss: str = "log-likelihood") -> np.ndarray:
        """Diagonal empirical Fisher ``sum_i n_i g_i^2 / sum_i n_i`` of a parameter group over slices drawn
        ``counts`` times each, accumulated batch by batch: the per-sample gradients are never all held."""
        return fold_fisher(self.fisher_parts(cases, counts, group=group, batch_size=batch_size, loss=loss), counts)

    def fisher_parts(self, cases: CaseSlices, counts: np.ndarray, *, group: str, batch_size: int,
                     loss: str = "log-likelihood") -> Iterator[torch.Tensor]:
        """The Fisher's float64 numerator batch by batch, ``sum_b n_b g_b^2`` over each batch: a shard's share of
        :meth:`fisher`, whose parts added in order make the single pass's sum bit for bit."""
        gradients.check_loss(loss)
        names = gradients.parameter_names(self.network, group)
        weights = torch.as_tensor(np.asarray(counts, dtype=np.float64))
        start = 0
        for batch, mask in self._batches(cases, batch_size):
            total = None
            for part, part_mask in _gradient_chunks(batch, mask):
                sums = gradients.per_sample_square_sums(self.network, part.to(self.device), part_mask.to(self.device),
                                                        names, weights[start:start + len(part)], loss)
                total = sums if total is None else total + sums
                start += len(part)
            yield total

    def _batches(self, cases: CaseSlices, batch_size: int):
        """The slices zero-padded (centred) into batches, with their valid masks (``scoring.pooled_batches``)."""
        patch = patch_size(self.plans)
        return scoring.pooled_batches(self.folder, cases, batch_size, patch, inference.total_stride(self.plans))

    def predict_slices(self, case: str, slices: np.ndarray, batch_size: int = 128
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``(n, y, x)`` (first channel), ground truth and argmax prediction of some slices of a case."""
        data, truth = inference.load_volume(self.folder, case)
        slices = np.asarray(slices)
        pred = inference.predict_volume(self.network, data[:, slices], self.plans, batch_size, self.device)
        return data[0, slices], truth[slices], pred

    def dice(self, cases: list[str], batch_size: int, on_case: Callable[[], None] | None = None
             ) -> list[tuple[str, int, float]]:
        """3D Dice per case and foreground label: ``[(case, label, dice)]``."""
        rows = []
        for case in cases:
            data, truth = inference.load_volume(self.folder, case)
            pred = inference.predict_volume(self.network, data, self.plans, batch_size, self.device)
            for label, value in inference.dice_per_class(pred, truth, self.labels[1:]).items():
                rows.append((case, label, value))
            if on_case is not None:
                on_case()
        return rows


def _gradient_chunks(batch: torch.Tensor, mask: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A score batch in consecutive parts of at most :data:`GRADIENT_PIXELS` pixels (at least one slice each)."""
    per = max(1, GRADIENT_PIXELS // (batch.shape[-2] * batch.shape[-1]))
    yield from zip(batch.split(per), mask.split(per), strict=True)


def fold_fisher(parts: Iterable[torch.Tensor], counts: np.ndarray) -> np.ndarray:
    """The diagonal Fisher from its per-batch parts (:meth:`Model.fisher_parts`), added in order, over the draws."""
    total = None
    for part in parts:
        total = part if total is None else total + part
    return (total / torch.as_tensor(np.asarray(counts, dtype=np.float64)).sum()).cpu().numpy()


def weights_to_bytes(weights: Mapping[str, torch.Tensor], **meta: object) -> bytes:
    """A checkpoint's bytes: the network weights and a few facts (round, labeled slices)."""
    import io

    buf = io.BytesIO()
    torch.save({"network_weights": weights, **meta}, buf)
    return buf.getvalue()


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint written by :func:`weights_to_bytes` (the one loader)."""
    return torch.load(path, map_location="cpu", weights_only=True)["network_weights"]
