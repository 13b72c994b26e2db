"""One facade over nnU-Net for the loop: prepare once, then train, evaluate and score per round."""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from nnal.backend import gradients, inference, planning, scoring, training
from nnal.backend.runtime import configure_nnunet_env, resolve_device, set_threads
from nnal.dataset import RawDataset, write_nnunet_raw


def dataset_digest(dataset: RawDataset) -> str:
    """Content-ish hash of a raw dataset (names, sizes, labels): keys the preprocessing cache."""
    h = hashlib.sha256(json.dumps([dataset.name, dataset.labels, dataset.channel_names]).encode())
    for case in dataset.cases:
        for path in (*case.images, case.label):
            h.update(f"{case.name}:{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()[:16]


class Backend:
    """nnU-Net planned and preprocessed for one dataset; the loop's only door to nnU-Net."""

    def __init__(self, dataset: RawDataset, cache: Path, dropout_p: float, num_processes: int, device: str,
                 verbose: bool = False):
        set_threads()
        self.device = resolve_device(device)
        self.root = Path(cache) / f"{dataset_digest(dataset)}-p{dropout_p:g}"
        self.folder_name = planning.dataset_folder_name(dataset.name)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as lock:  # experiments sharing a cache preprocess once
            fcntl.flock(lock, fcntl.LOCK_EX)
            configure_nnunet_env(self.root, num_processes)
            raw = self.root / "raw" / self.folder_name
            if not (raw / "dataset.json").is_file():
                write_nnunet_raw(dataset, raw)
            self.plans = planning.plan_and_preprocess(self.root, self.folder_name, dropout_p, num_processes, verbose)
            self.dataset_json = json.loads((raw / "dataset.json").read_text())
            self.splits = planning.load_splits(self.root, self.folder_name, [c.name for c in dataset.cases])
        self.folder = planning.preprocessed_dir(self.root, self.folder_name, self.plans)
        self.labels = sorted(int(v) for v in self.dataset_json["labels"].values())

    @classmethod
    def reopen(cls, root: Path, device: str = "cpu") -> Backend:
        """An existing planned and preprocessed cache (``environment.json``'s ``nnunet_root``), for inference."""
        self = cls.__new__(cls)
        set_threads()
        self.device = resolve_device(device)
        self.root = Path(root)
        plans_files = sorted(self.root.glob(f"preprocessed/*/{planning.PLANS}.json"))
        if not plans_files:
            raise FileNotFoundError(f"{self.root}: no nnU-Net plans (was the experiment's cache removed?)")
        pre = plans_files[0].parent
        self.folder_name = pre.name
        self.plans = json.loads(plans_files[0].read_text())
        self.dataset_json = json.loads((pre / "dataset.json").read_text())
        self.splits = json.loads((pre / "splits_final.json").read_text())
        self.folder = planning.preprocessed_dir(self.root, self.folder_name, self.plans)
        self.labels = sorted(int(v) for v in self.dataset_json["labels"].values())
        return self

    def predict_slices(self, weights: Mapping[str, torch.Tensor], case: str, slices: np.ndarray,
                       batch_size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``(n, y, x)`` (first channel), ground truth and argmax prediction of some slices of a case."""
        net = self.network(weights)
        data, truth = inference.load_volume(self.folder, case)
        pred = inference.predict_volume(net, data[:, np.asarray(slices)], self.plans, batch_size, self.device)
        return data[0, slices], truth[slices], pred

    @property
    def planned_batch_size(self) -> int:
        return int(self.plans["configurations"][planning.CONFIGURATION]["batch_size"])

    def slice_counts(self, cases: list[str]) -> dict[str, np.ndarray]:
        return {c: inference.slice_class_counts(self.folder, c, len(self.labels)) for c in cases}

    def train(self, fold: int, labeled: Mapping[str, np.ndarray], schedule: training.Schedule,
              init_weights: Mapping[str, torch.Tensor] | None, log_dir: Path, seed: int,
              on_step: Callable[[float], None] | None = None) -> dict[str, torch.Tensor]:
        return training.train(self.plans, self.dataset_json, fold, labeled, schedule, init_weights, log_dir,
                              self.device, seed, on_step)

    def network(self, weights: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        return inference.build_network(self.plans, self.dataset_json, weights, self.device)

    def evaluate(self, weights: Mapping[str, torch.Tensor], cases: list[str], batch_size: int,
                 on_case: Callable[[], None] | None = None) -> list[tuple[str, int, float]]:
        """3D Dice per test case and foreground label: ``[(case, label, dice)]``."""
        net = self.network(weights)
        rows = []
        for case in cases:
            data, truth = inference.load_volume(self.folder, case)
            pred = inference.predict_volume(net, data, self.plans, batch_size, self.device)
            for label, dice in inference.dice_per_class(pred, truth, self.labels[1:]).items():
                rows.append((case, label, dice))
            if on_case is not None:
                on_case()
        return rows

    def score(self, weights: Mapping[str, torch.Tensor], cases: list[tuple[str, np.ndarray]], keys: set[str],
              mc_passes: int, batch_size: int, seed: int, on_batch: Callable[[int], None] | None = None
              ) -> dict[str, np.ndarray]:
        net = self.network(weights)
        return scoring.score_pool(net, self.plans, self.folder, cases, keys, mc_passes, batch_size, self.device,
                                  seed, on_batch)

    def parameter_count(self, weights: Mapping[str, torch.Tensor], group: str) -> int:
        net = self.network(weights)
        return gradients.parameter_count(net, gradients.parameter_names(net, group))

    def gradient_embeddings(self, weights: Mapping[str, torch.Tensor], cases: list[tuple[str, np.ndarray]],
                            group: str, index: np.ndarray | None, batch_size: int,
                            on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Per-slice gradients of the pseudo-label log-likelihood w.r.t. a parameter group, ``index`` entries."""
        net = self.network(weights)
        return scoring.gradient_embeddings(net, self.plans, self.folder, cases, gradients.parameter_names(net, group),
                                           index, batch_size, self.device, on_batch)

    def fisher(self, weights: Mapping[str, torch.Tensor], cases: list[tuple[str, np.ndarray]], counts: np.ndarray,
               group: str, batch_size: int) -> np.ndarray:
        """Diagonal empirical Fisher of a parameter group over slices drawn ``counts`` times each."""
        net = self.network(weights)
        return scoring.fisher_diagonal(net, self.plans, self.folder, cases, counts,
                                       gradients.parameter_names(net, group), batch_size, self.device)
