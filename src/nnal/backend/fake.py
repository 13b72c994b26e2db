"""A tiny deterministic stand-in for nnU-Net with the backend's seam, so the loop runs in seconds (tests, dry runs).

The "network" is one intensity prototype per class, fitted to the labeled slices; a voxel's class is the nearest
prototype, its probabilities a softmax of negative squared distances. MC-dropout passes jitter the prototypes
with a seeded Generator. Slices are taken along the first axis of the raw label volumes. Every number is a pure
function of (data, labeled set, seeds), so resumed and uninterrupted runs agree exactly, as with the real backend.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np

from nnal.backend.names import LOSSES
from nnal.dataset import RawDataset
from nnal.seams import SegmentationBackend

CaseSlices = list[tuple[str, np.ndarray]]


def _nifti(path: Path) -> nib.Nifti1Image:
    return cast(nib.Nifti1Image, nib.load(str(path)))


class FakeBackend:
    """The methods of ``nnal.backend.session.Backend`` that the loop calls, over a small raw dataset."""

    def __init__(self, dataset: RawDataset, cache: Path, config: object = None):
        self.root = Path(cache)
        self.dataset_json = {"labels": dict(dataset.labels)}
        self.labels = sorted(int(v) for v in dataset.labels.values())
        self.images: dict[str, np.ndarray] = {}
        self.truth: dict[str, np.ndarray] = {}
        for case in dataset.cases:
            image = np.asarray(_nifti(case.images[0]).dataobj, dtype=np.float64)
            self.images[case.name] = image[..., 0] if image.ndim == 4 else image
            # a case not annotated yet (annotation mode) reads as background until a person's labels come in
            self.truth[case.name] = (np.zeros(self.images[case.name].shape, dtype=np.int64) if case.label is None
                                     else np.asarray(_nifti(case.label).dataobj).astype(np.int64))
        self.splits = fake_splits(dataset, cache)
        self.calls: list[str] = []  # which operations ran, for tests

    def slice_counts(self, cases: list[str]) -> dict[str, np.ndarray]:
        k = len(self.labels)
        return {c: np.stack([(self.truth[c] == v).reshape(len(self.truth[c]), -1).sum(1) for v in range(k)], axis=1)
                for c in cases}

    def train(self, fold: int, labeled: Mapping[str, np.ndarray], config: object, epochs: int,
              init_weights: Mapping[str, np.ndarray] | None, log_dir: Path, seed: int,
              on_step: Callable[[float], None] | None = None) -> dict[str, np.ndarray]:
        """Class prototypes: the mean labeled intensity per class, averaged with the previous round's.

        Two knobs for tests of what runs experiments (grids): ``NNAL_FAKE_DELAY`` seconds of sleep per call (time to
        kill a run midway) and ``NNAL_FAKE_FAIL_SEED``, an experiment seed whose training fails.
        """
        self.calls.append("train")
        if os.environ.get("NNAL_FAKE_DELAY"):
            time.sleep(float(os.environ["NNAL_FAKE_DELAY"]))
        if os.environ.get("NNAL_FAKE_FAIL_SEED") == str(getattr(config, "seed", None)):
            raise RuntimeError(f"fake training failure (NNAL_FAKE_FAIL_SEED={os.environ['NNAL_FAKE_FAIL_SEED']})")
        values = np.concatenate([self.images[c][s].ravel() for c, s in sorted(labeled.items())])
        classes = np.concatenate([self.truth[c][s].ravel() for c, s in sorted(labeled.items())])
        overall = values.mean()
        proto = np.array([values[classes == v].mean() if (classes == v).any() else overall for v in self.labels])
        if init_weights is not None:
            proto = 0.5 * (proto + np.asarray(init_weights["prototypes"]))
        proto = proto + np.random.default_rng(seed).normal(scale=1e-3, size=len(proto))
        for _ in range(epochs * int(getattr(config, "iterations_per_epoch", 1) or 1)):
            if on_step is not None:
                on_step(0.0)
        return {"prototypes": proto, "spread": np.array([values.std() + 1e-6])}

    def model(self, weights: Mapping[str, np.ndarray]) -> FakeModel:
        return FakeModel(self, weights)

    def evaluate(self, weights: Mapping[str, np.ndarray], cases: list[str], batch_size: int,
                 on_case: Callable[[], None] | None = None) -> list[tuple[str, int, float]]:
        self.calls.append("evaluate")
        model = self.model(weights)
        rows = []
        for case in cases:
            pred = model.predict(self.images[case])
            for label in self.labels[1:]:
                p, t = pred == label, self.truth[case] == label
                denom = int(p.sum()) + int(t.sum())
                rows.append((case, label, float("nan") if denom == 0 else 2.0 * int((p & t).sum()) / denom))
            if on_case is not None:
                on_case()
        return rows

    def slice_location(self, case: str) -> tuple[int, int]:
        return 0, 0  # the fake slices the raw arrays along their first axis

    def write_labels(self, case: str, labels: np.ndarray, affine: np.ndarray) -> bool:
        labels = np.asarray(labels).astype(np.int64)
        changed = not np.array_equal(self.truth[case], labels)
        self.truth[case] = labels
        return changed

    def predict_raw(self, weights: Mapping[str, np.ndarray], case: str, slices: np.ndarray,
                    batch_size: int = 128) -> np.ndarray:
        out = np.zeros(self.images[case].shape, dtype=np.uint8)
        slices = np.asarray(slices, dtype=np.int64)
        out[slices] = self.model(weights).predict(self.images[case][slices])
        return out

    def environment(self) -> dict[str, str]:
        return {"backend": "fake", "device": "cpu", "nnunet_root": str(self.root)}

    @staticmethod
    def checkpoint_bytes(weights: Mapping[str, np.ndarray], **meta: object) -> bytes:
        buf = io.BytesIO()
        arrays: dict[str, Any] = {"meta": json.dumps(meta), **weights}
        np.savez(buf, **arrays)
        return buf.getvalue()

    @staticmethod
    def load_weights(path: Path) -> dict[str, np.ndarray]:
        with np.load(path) as data:
            return {k: data[k] for k in data.files if k != "meta"}


class FakeModel:
    """One round's prototypes; the operations of ``nnal.strategies.ModelLike``, numpy in and out."""

    def __init__(self, backend: FakeBackend, weights: Mapping[str, np.ndarray]):
        self.backend = backend
        self.prototypes = np.asarray(weights["prototypes"], dtype=np.float64)
        self.spread = float(np.asarray(weights["spread"])[0])

    def probabilities(self, image: np.ndarray, prototypes: np.ndarray | None = None) -> np.ndarray:
        proto = self.prototypes if prototypes is None else prototypes
        logits = -((image[..., None] - proto) / self.spread) ** 2
        logits -= logits.max(-1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(-1, keepdims=True)

    def predict(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(self.backend.labels)[self.probabilities(image).argmax(-1)]

    def _slices(self, cases: CaseSlices) -> list[np.ndarray]:
        return [self.backend.images[c][z] for c, slices in cases for z in np.asarray(slices)]

    def scores(self, cases: CaseSlices, keys: set[str], *, mc_passes: int, batch_size: int, seed: int,
               on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
        self.backend.calls.append("scores")
        images = self._slices(cases)
        rng = np.random.default_rng(seed)
        jitter = rng.normal(scale=0.1 * self.spread, size=(mc_passes, len(self.prototypes)))
        out: dict[str, list] = {k: [] for k in keys}
        for image in images:
            p = self.probabilities(image)
            mc = np.stack([self.probabilities(image, self.prototypes + j) for j in jitter])
            mean = mc.mean(0)
            ent = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)
            values = {
                "entropy": ent.mean(),
                "class_entropy": (ent[..., None] * p[..., 1:]).reshape(-1, len(self.prototypes) - 1).mean(0),
                "bald": (-(mean * np.log(np.clip(mean, 1e-12, None))).sum(-1)
                         + (mc * np.log(np.clip(mc, 1e-12, None))).sum(-1).mean(0)).mean(),
                "std": mc.std(0).mean(), "variance": mc.var(0).mean(),
                "class_uncertainty": mc.std(0)[..., 1:].reshape(-1, len(self.prototypes) - 1).mean(0),
                "class_variance": mc.var(0)[..., 1:].reshape(-1, len(self.prototypes) - 1).mean(0),
                # a fixed-length "flattened map": class means over a 2x2 grid of the slice
                "features": np.concatenate([q.reshape(-1, q.shape[-1]).mean(0) for half in
                                            np.array_split(p, 2, axis=0) for q in np.array_split(half, 2, axis=1)]),
                "pooled_features": np.array([image.mean(), image.std(), *p.reshape(-1, p.shape[-1]).mean(0)]),
                "head_embeddings": (p - np.eye(p.shape[-1])[p.argmax(-1)]).reshape(-1, p.shape[-1]).mean(0),
            }
            for k in keys:
                out[k].append(values[k])
        if on_batch is not None:
            on_batch(len(images))
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def parameter_count(self, group: str) -> int:
        return {"bottleneck": 8, "last-decoder-conv": 12, "decoder-convs": 14, "decoder": 16, "network": 24}[group]

    def gradient_embeddings(self, cases: CaseSlices, *, group: str, index: np.ndarray | None, batch_size: int,
                            loss: str = "log-likelihood", on_batch: Callable[[int], None] | None = None
                            ) -> np.ndarray:
        """Slice statistics spread over the group's "parameters"; each objective (``LOSSES``) its own phase, so
        that an option choosing the loss changes the embeddings, as it does on the real backend."""
        self.backend.calls.append("gradients")
        n = self.parameter_count(group)
        phase = 1.0 + LOSSES.index(loss)
        rows = []
        for image in self._slices(cases):
            p = self.probabilities(image).reshape(-1, len(self.prototypes))
            stats = np.concatenate([p.mean(0), (p ** 2).mean(0), [image.mean() / (abs(image).mean() + 1e-9)]])
            rows.append(np.resize(stats, n) * np.cos(phase * np.arange(n)))
        g = np.asarray(rows, dtype=np.float32)
        if on_batch is not None:
            on_batch(len(g))
        return g if index is None else g[:, np.asarray(index)]

    def fisher(self, cases: CaseSlices, counts: np.ndarray, *, group: str, batch_size: int,
               loss: str = "log-likelihood") -> np.ndarray:
        g = self.gradient_embeddings(cases, group=group, index=None, batch_size=batch_size,
                                     loss=loss).astype(np.float64)
        w = np.asarray(counts, dtype=np.float64)
        return (g ** 2 * w[:, None]).sum(0) / w.sum()


def fake_splits(dataset: RawDataset, cache: Path) -> list[dict[str, list[str]]]:
    """The fake backend's fold split without building it (the loop checks settings against it before writing)."""
    names = sorted(case.name for case in dataset.cases)
    return [{"train": [c for c in names if c not in names[k::5]], "val": names[k::5]} for k in range(5)]


class FakeFactory:
    """The fake backend's factory (``run_experiment(..., backend_factory=fake_backend)``); a test double that
    records what the backend does subclasses it."""

    name = "fake"

    def __call__(self, dataset: RawDataset, cache: Path, config: object) -> SegmentationBackend:
        return FakeBackend(dataset, cache, config)  # mypy checks here that the fake conforms to the seam

    def splits(self, dataset: RawDataset, cache: Path) -> list[dict[str, list[str]]] | None:
        return fake_splits(dataset, cache)


fake_backend = FakeFactory()
