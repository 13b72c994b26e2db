"""One facade over nnU-Net for the loop: plan and preprocess once, then per round train, and hand out a model
bound to a round's weights (scores, gradients, predictions, Dice)."""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from nnal.backend import inference, planning, raw_space, training
from nnal.backend.model import Model, load_weights, weights_to_bytes
from nnal.backend.runtime import nnunet_environment, resolve_device, set_threads
from nnal.backend.splits import load_splits
from nnal.cache_layout import CacheLayout
from nnal.dataset import RawDataset, write_nnunet_raw
from nnal.dataset_checks import read_plans


class Backend:
    """nnU-Net planned and preprocessed for one dataset; the loop's only door to nnU-Net."""

    def __init__(self, dataset: RawDataset, cache: Path, *, dropout: str, dropout_p: float, mc_dropout_p: float | None,
                 num_processes: int, device: str, verbose: bool = False, plans_file: str | None = None):
        set_threads()
        self.device = resolve_device(device)
        self.user_plans = read_plans(Path(plans_file)) if plans_file else None
        # a user's plans preprocess differently: their own cache beside nnU-Net's planned one
        plans_key = "" if self.user_plans is None else "-plans-" + hashlib.sha256(
            json.dumps(self.user_plans, sort_keys=True).encode()).hexdigest()[:12]
        self.layout = CacheLayout.for_dataset(cache, dataset, plans_key)
        self.root = self.layout.root
        self.folder_name = planning.dataset_folder_name(dataset)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.layout.lock_file, "a+") as lock:  # experiments sharing a cache preprocess once
            fcntl.flock(lock, fcntl.LOCK_EX)
            with nnunet_environment(self.root, num_processes):
                self._prepare(dataset, num_processes, verbose)
        self.num_processes = num_processes
        self.plans = planning.with_dropout(self._plans, dropout, dropout_p)  # what training builds
        self.mc_dropout_p = mc_dropout_p
        self.folder = planning.preprocessed_dir(self.root, self.folder_name, self.plans)
        self.labels = sorted(int(v) for v in self.dataset_json["labels"].values())

    def _prepare(self, dataset: RawDataset, num_processes: int, verbose: bool) -> None:
        """nnU-Net's raw folder, plans and preprocessed data in the cache (once: later calls read them)."""
        raw = self.layout.raw_dir(self.folder_name)
        if not (raw / "dataset.json").is_file():
            write_nnunet_raw(dataset, raw)
        self._plans = planning.plan_and_preprocess(self.root, self.folder_name, num_processes, verbose,
                                                   unlabeled=all(case.label is None for case in dataset.cases),
                                                   user_plans=self.user_plans)
        self.dataset_json = json.loads((raw / "dataset.json").read_text())
        self.splits = load_splits(self.root, self.folder_name, [c.name for c in dataset.cases])

    @classmethod
    def reopen(cls, root: Path, device: str = "cpu", *, dropout: str, dropout_p: float, mc_dropout_p: float
               ) -> Backend:
        """An existing planned and preprocessed cache (``environment.json``'s ``nnunet_root``), for inference, with
        the experiment's dropout regime (the network's module layout must match its checkpoints)."""
        self = cls.__new__(cls)
        set_threads()
        self.device = resolve_device(device)
        self.root = Path(root)
        self.layout = CacheLayout(self.root)
        plans_files = sorted(self.root.glob(f"preprocessed/*/{planning.PLANS}.json"))
        if not plans_files:
            raise FileNotFoundError(f"{self.root}: no nnU-Net plans (was the experiment's cache removed?)")
        pre = plans_files[0].parent
        self.folder_name = pre.name
        self.plans = planning.with_dropout(json.loads(plans_files[0].read_text()), dropout, dropout_p)
        self.mc_dropout_p = mc_dropout_p
        self.num_processes = 0
        self.dataset_json = json.loads((pre / "dataset.json").read_text())
        self.splits = json.loads(self.layout.split_file(self.folder_name).read_text())
        self.folder = planning.preprocessed_dir(self.root, self.folder_name, self.plans)
        self.labels = sorted(int(v) for v in self.dataset_json["labels"].values())
        return self

    @property
    def planned_batch_size(self) -> int:
        return int(self.plans["configurations"][planning.CONFIGURATION]["batch_size"])

    def slice_counts(self, cases: list[str]) -> dict[str, np.ndarray]:
        return {c: inference.slice_class_counts(self.folder, c, len(self.labels)) for c in cases}

    def train(self, fold: int, labeled: Mapping[str, np.ndarray], config, epochs: int,
              init_weights: Mapping[str, torch.Tensor] | None, log_dir: Path, seed: int,
              on_step: Callable[[float], None] | None = None) -> dict[str, torch.Tensor]:
        """Fine-tune ``init_weights`` (None: nnU-Net's initialisation) for ``epochs`` on the labeled slices, with
        the config's schedule (iterations per epoch, batch size or nnU-Net's planned one, lr, augmentation)."""
        schedule = training.Schedule(epochs, config.iterations_per_epoch, config.batch_size or self.planned_batch_size,
                                     config.initial_lr, config.augmentation)
        with nnunet_environment(self.root, self.num_processes):
            return training.train(self.plans, self.dataset_json, fold, labeled, schedule, init_weights, log_dir,
                                  self.device, seed, on_step, finetune_heads=config.finetune_heads)

    def network(self, weights: Mapping[str, torch.Tensor] | None) -> torch.nn.Module:
        return inference.build_network(self.plans, self.dataset_json, weights, self.device)

    def model(self, weights: Mapping[str, torch.Tensor] | None) -> Model:
        """The network bound to one round's weights (build it once per phase), its dropout modules at the scoring
        probability: they act only in the MC-dropout passes, every other pass runs them in eval mode."""
        network = self.network(weights)
        inference.set_dropout_p(network, self.mc_dropout_p)
        return Model(network, self.plans, self.folder, self.labels, self.device)

    def evaluate(self, weights: Mapping[str, torch.Tensor], cases: list[str], batch_size: int,
                 on_case: Callable[[], None] | None = None) -> list[tuple[str, int, float]]:
        """3D Dice per test case and foreground label: ``[(case, label, dice)]``."""
        return self.model(weights).dice(cases, batch_size, on_case)

    # --- annotation mode: between pool slices and the raw NIfTI volumes a person annotates ----------------------

    def slice_location(self, case: str) -> tuple[int, int]:
        """(NIfTI array axis, index offset) of the case's pool slices: slice ``s`` is array index ``offset + s``."""
        return raw_space.slice_location(self.plans, self.folder, case)

    def write_labels(self, case: str, labels: np.ndarray, affine: np.ndarray) -> bool:
        """Make the case's known labels (NIfTI array, 0 where none is known) what training reads; False if they
        already are."""
        with nnunet_environment(self.root, self.num_processes):
            return raw_space.write_labels(self.plans, self.dataset_json, self.layout.raw_dir(self.folder_name),
                                          self.folder, self.root / "nnal_labels", case, labels, affine)

    def predict_raw(self, weights: Mapping[str, torch.Tensor], case: str, slices: np.ndarray,
                    batch_size: int = 128) -> np.ndarray:
        """The prediction of some pool slices in the raw image's NIfTI array (0 on every other slice)."""
        return raw_space.predict_raw(self.network(weights), self.plans, self.dataset_json, self.folder, case, slices,
                                     batch_size, self.device)

    def environment(self) -> dict[str, str]:
        """Versions and the device, for ``environment.json``."""
        import platform
        from importlib.metadata import version

        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "cpu"
        return {"backend": "nnunet", "torch": torch.__version__, "nnunetv2": version("nnunetv2"),
                "device": str(self.device),
                "device_name": name, "nnunet_root": str(self.root.resolve())}

    @staticmethod
    def checkpoint_bytes(weights: Mapping[str, torch.Tensor], **meta: object) -> bytes:
        return weights_to_bytes(weights, **meta)

    @staticmethod
    def load_weights(path: Path) -> dict[str, torch.Tensor]:
        return load_weights(path)
