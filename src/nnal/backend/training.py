"""Training through nnU-Net's own trainer: a thin subclass that sees only the labeled slices."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA

from nnal.backend.partial_labels import PartialLabelDataset
from nnal.backend.planning import CONFIGURATION
from nnal.backend.runtime import seed_everything


@dataclass(frozen=True)
class Schedule:
    epochs: int
    iterations_per_epoch: int
    batch_size: int | None  # None: nnU-Net's planned batch size
    initial_lr: float
    augmentation: bool = True  # False: nnU-Net's own nnUNetTrainerNoDA pipeline (no spatial/intensity DA)
    val_iterations: int = 1


class NnalTrainer(nnUNetTrainer):
    """nnU-Net's trainer (loss, augmentation, deep supervision, poly LR, SGD) on partially labeled cases.

    Overridden: the datasets (labeled slices only, the rest the ignore label), where logs go, and a hook
    for a progress callback. The constructor keeps nnU-Net's explicit signature: nnU-Net records its
    arguments from ``locals()``.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.nnal_labeled: Mapping[str, np.ndarray] = {}
        self.nnal_seed = 0
        self.nnal_on_step: Callable[[float], None] | None = None
        self.disable_checkpointing = True  # nnal writes one checkpoint per round itself, atomically

    def get_tr_and_val_datasets(self):
        base = self.dataset_class(self.preprocessed_dataset_folder, sorted(self.nnal_labeled))
        # the fold's validation cases are nnal's test set: nnU-Net's per-epoch pseudo Dice must not see them
        dataset = PartialLabelDataset(
            base, self.nnal_labeled, ignore_label=self.label_manager.ignore_label,
            foreground=list(self.label_manager.foreground_labels),
            annotated_key=tuple([-1] + self.label_manager.all_labels), seed=self.nnal_seed)
        return dataset, dataset

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        if self.nnal_on_step is not None:
            self.nnal_on_step(float(out["loss"]))
        return out

    def plot_network_architecture(self):  # needs hiddenlayer and graphviz; nothing nnal uses
        return None

    def on_train_start(self):
        super().on_train_start()
        # nnU-Net redraws its progress PNG after every epoch (about a second on a small CPU); draw it once, at the end
        self._nnal_plot = self.logger.plot_progress_png
        self.logger.plot_progress_png = lambda *_args, **_kwargs: None

    def on_train_end(self):
        super().on_train_end()
        self._nnal_plot(self.output_folder)


class NnalTrainerNoDA(NnalTrainer, nnUNetTrainerNoDA):
    """The same, on nnU-Net's no-augmentation variant: learns in far fewer iterations on a small CPU."""


FINETUNE_HEADS = ("reinit", "keep")
HEAD_KEY = ".seg_layers."  # what nnU-Net's load_pretrained_weights leaves out: every segmentation head


def train(plans: dict, dataset_json: dict, fold: int, labeled: Mapping[str, np.ndarray], schedule: Schedule,
          init_weights: Mapping[str, torch.Tensor] | None, log_dir: Path, device: torch.device, seed: int,
          on_step: Callable[[float], None] | None = None, finetune_heads: str = "reinit") -> dict[str, torch.Tensor]:
    """Train (or fine-tune from ``init_weights``) on the labeled slices; return the network's state dict.

    ``finetune_heads``: ``reinit`` loads ``init_weights`` as nnU-Net's pretrained-weights loader does (what the
    paper's code ran), the segmentation heads staying at nnU-Net's fresh (seeded) initialisation; ``keep`` loads
    every weight, heads included.
    """
    if finetune_heads not in FINETUNE_HEADS:
        raise ValueError(f"finetune_heads must be one of {FINETUNE_HEADS}, got {finetune_heads!r}")
    seed_everything(seed)
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        trainer = make_trainer(plans, dataset_json, fold, labeled, schedule, log_dir, device, seed, on_step)
        if init_weights is not None:
            load_round_weights(trainer.network, init_weights, finetune_heads)
        trainer.run_training()
    (log_dir / "stdout.txt").write_text(captured.getvalue())
    return {k: v.detach().cpu().clone() for k, v in trainer.network.state_dict().items()}


def load_round_weights(network: torch.nn.Module, weights: Mapping[str, torch.Tensor], heads: str) -> None:
    """The previous round's ``weights`` into a freshly initialised ``network``: all of them (``keep``), or all but
    the segmentation heads (``reinit``), with the checks of nnU-Net's ``load_pretrained_weights``: every other
    key present with its shape."""
    if heads == "keep":
        network.load_state_dict(weights)
        return
    own = network.state_dict()
    for key, value in own.items():
        if HEAD_KEY in key:
            continue
        if key not in weights or tuple(weights[key].shape) != tuple(value.shape):
            raise ValueError(f"{key}: missing from the previous round's weights or of another shape")
    own.update({k: v for k, v in weights.items() if k in own and HEAD_KEY not in k})
    network.load_state_dict(own)


def make_trainer(plans: dict, dataset_json: dict, fold: int, labeled: Mapping[str, np.ndarray], schedule: Schedule,
                 log_dir: Path, device: torch.device, seed: int,
                 on_step: Callable[[float], None] | None = None) -> NnalTrainer:
    """nnU-Net's trainer for one round, initialised (its network built from ``plans``), not yet trained."""
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    if schedule.batch_size is not None:
        plans["configurations"][CONFIGURATION]["batch_size"] = int(schedule.batch_size)
    trainer_class = NnalTrainer if schedule.augmentation else NnalTrainerNoDA
    trainer = trainer_class(plans, CONFIGURATION, fold, partial_label_dataset_json(dataset_json), device)
    trainer.output_folder = trainer.output_folder_base = str(log_dir)
    trainer.log_file = str(log_dir / "training_log.txt")
    trainer.num_epochs = schedule.epochs
    trainer.num_iterations_per_epoch = schedule.iterations_per_epoch
    trainer.num_val_iterations_per_epoch = schedule.val_iterations
    trainer.initial_lr = schedule.initial_lr
    trainer.nnal_labeled = labeled
    trainer.nnal_seed = seed
    trainer.nnal_on_step = on_step
    trainer.initialize()
    return trainer


def partial_label_dataset_json(dataset_json: dict) -> dict:
    """dataset.json with nnU-Net's ignore label (max label + 1) declared."""
    out = copy.deepcopy(dataset_json)
    labels = {k: v for k, v in out["labels"].items() if k != "ignore"}
    labels["ignore"] = max(int(v) for v in labels.values()) + 1
    out["labels"] = labels
    return out
