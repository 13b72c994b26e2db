"""nnU-Net's side of ``nnal export``: where a case's pool slices lie in its raw arrays, the dataset.json of a
partially labeled raw dataset, and one round's weights as an nnU-Net results folder that ``nnUNetv2_predict``
loads as if nnU-Net had trained it."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from nnal.backend import inference
from nnal.backend.planning import CONFIGURATION, PLANS
from nnal.backend.session import Backend
from nnal.backend.training import partial_label_dataset_json

# nnU-Net's stock trainer: its network is the one nnal trains (nnal's trainer subclasses change only the data), and
# nnUNetv2_predict finds it without nnUNet_extTrainer
TRAINER = "nnUNetTrainer"
MODEL_FOLDER = f"{TRAINER}__{PLANS}__{CONFIGURATION}"
# the axes nnU-Net's trainer mirrors a 2d patch along (and so allows at test time); its no-augmentation trainer
# never mirrors, and a model trained without mirroring must not be tested with it
MIRROR_AXES_2D = (0, 1)


def open_cache(root: Path, *, dropout: str, dropout_p: float, mc_dropout_p: float) -> Backend:
    """The experiment's planned and preprocessed nnU-Net cache, with its dropout regime (as the model was built)."""
    return Backend.reopen(root, "cpu", dropout=dropout, dropout_p=dropout_p, mc_dropout_p=mc_dropout_p)


def ignore_label(dataset_json: Mapping) -> int:
    """nnU-Net's ignore label as nnal trains with it: one above the highest class."""
    return int(partial_label_dataset_json(dict(dataset_json))["labels"]["ignore"])


def raw_dataset_json(dataset_json: Mapping, num_cases: int) -> dict:
    """dataset.json of the exported raw dataset: nnal's classes and channels, the ignore label declared, NibabelIO
    kept (the pool's slice axis was found through it, and it needs no SimpleITK). The cache's list of every case's
    files is dropped: it names test cases, which are never exported."""
    out = partial_label_dataset_json(dict(dataset_json))
    out.pop("dataset", None)
    out["numTraining"] = int(num_cases)
    return out


def model_dataset_json(dataset_json: Mapping) -> dict:
    """dataset.json of the results folder: the classes the network predicts (no ignore label, no case list)."""
    out = copy.deepcopy(dict(dataset_json))
    out.pop("dataset", None)
    out["labels"] = {k: v for k, v in out["labels"].items() if k != "ignore"}
    return out


def write_model_folder(target: Path, backend: Backend, weights: Mapping[str, torch.Tensor], *, fold: int,
                       dataset_name: str, augmentation: bool, provenance: Mapping) -> Path:
    """``target/<dataset_name>/nnUNetTrainer__nnUNetPlans__2d/`` with plans.json (nnal's dropout module in its
    architecture: state-dict keys depend on it), dataset.json, dataset_fingerprint.json and
    ``fold_<fold>/checkpoint_final.pth`` in nnU-Net's checkpoint format. The weights are loaded into the network
    nnU-Net's predictor builds from these very files before anything is kept, so a mismatch fails here."""
    model_dir = target / dataset_name / MODEL_FOLDER
    (model_dir / f"fold_{fold}").mkdir(parents=True)
    plans = copy.deepcopy(backend.plans)
    plans["dataset_name"] = dataset_name
    dataset_json = model_dataset_json(backend.dataset_json)
    (model_dir / "plans.json").write_text(json.dumps(plans, indent=1))
    (model_dir / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    shutil.copyfile(backend.layout.preprocessed_root(backend.folder_name) / "dataset_fingerprint.json",
                    model_dir / "dataset_fingerprint.json")
    check_weights_fit(model_dir, weights)
    checkpoint = {
        "network_weights": dict(weights),
        "optimizer_state": None,  # an export is for inference (and -pretrained_weights), not for resuming
        "grad_scaler_state": None,
        "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": fold,
                      "dataset_json": partial_label_dataset_json(dataset_json), "device": torch.device("cpu")},
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": MIRROR_AXES_2D if augmentation else None,
        "nnal": dict(provenance),
    }
    torch.save(checkpoint, model_dir / f"fold_{fold}" / "checkpoint_final.pth")
    return model_dir


def check_weights_fit(model_dir: Path, weights: Mapping[str, torch.Tensor]) -> None:
    """Build the network as nnU-Net's predictor does from the folder's plans.json and dataset.json and load the
    weights strictly (a missing dropout module, a wrong head count or a compiled model's key prefix all fail)."""
    plans = json.loads((model_dir / "plans.json").read_text())
    dataset_json = json.loads((model_dir / "dataset.json").read_text())
    inference.build_network(plans, dataset_json, weights, torch.device("cpu"))
