"""nnU-Net fingerprint, plans and 2d preprocessing, once per dataset, cached; the dropout regime put into the plans."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path

from nnal.backend.runtime import set_threads
from nnal.cache_layout import CacheLayout
from nnal.dataset import NNUNET_NAME, RawDataset, nnunet_id

DEFAULT_ID = 1  # for a dataset whose folder name holds no nnU-Net id
PLANS = "nnUNetPlans"
CONFIGURATION = "2d"


def dataset_folder_name(dataset: RawDataset) -> str:
    """nnU-Net's name for the dataset in nnal's cache: the user's own ``DatasetNNN_Name``, MSD's ``TaskNN_Name`` as
    nnU-Net's converter names it (``Dataset0NN_Name``), else ``Dataset001_<name>``."""
    if NNUNET_NAME.fullmatch(dataset.root.name):
        return dataset.root.name
    safe = "".join(ch if ch.isalnum() else "_" for ch in dataset.name) or "Data"
    return f"Dataset{nnunet_id(dataset) or DEFAULT_ID:03d}_{safe}"


def _dataset_id(folder_name: str) -> int:
    return int(folder_name[len("Dataset"):len("Dataset") + 3])


def plan_and_preprocess(root: Path, folder_name: str, num_processes: int, verbose: bool = False, *,
                        unlabeled: bool = False, user_plans: dict | None = None) -> dict:
    """Run nnU-Net's fingerprint, planner and 2d preprocessor on ``root/raw/<folder_name>``; return the plans.
    Call it inside :func:`nnal.backend.runtime.nnunet_environment` for ``root``.

    Done once: a marker file makes a second call return the cached plans. The plans are nnU-Net's own; the
    dropout regime is an experiment setting (:func:`with_dropout`), so one cache serves every regime.
    ``unlabeled`` (annotation mode, no case labeled yet): see :func:`_body_fingerprint_extractor`. ``user_plans``:
    a user's own ``nnUNetPlans.json``, used instead of nnU-Net's planner (the fingerprint is still extracted).
    """
    layout = CacheLayout(root)
    pre_dir = layout.preprocessed_root(folder_name)
    marker = layout.done_marker(folder_name)
    if marker.is_file():
        return json.loads((pre_dir / f"{PLANS}.json").read_text())

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    workers = max(1, num_processes)
    # the planner sets torch's thread count from nnUNet_n_proc_DA, which must then be >= 1
    os.environ["nnUNet_n_proc_DA"] = str(workers)
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        extractor = _body_fingerprint_extractor(root / "nnal_fingerprint") if unlabeled else None
        extract_fingerprint_dataset(_dataset_id(folder_name), num_processes=workers, check_dataset_integrity=False,
                                    clean=True, verbose=verbose, show_progress_bar=verbose,
                                    **({"fingerprint_extractor_class": extractor} if extractor else {}))
        if user_plans is None:
            plan_experiment_dataset(_dataset_id(folder_name))
        else:  # the user's plans, for this copy of the dataset
            (pre_dir / f"{PLANS}.json").write_text(json.dumps({**user_plans, "dataset_name": folder_name,
                                                                "plans_name": PLANS}, indent=1))
        plans = json.loads((pre_dir / f"{PLANS}.json").read_text())
        preprocess_dataset(_dataset_id(folder_name), PLANS, configurations=(CONFIGURATION,), num_processes=(workers,),
                           verbose=verbose, show_progress_bar=verbose)
    os.environ["nnUNet_n_proc_DA"] = str(num_processes)
    set_threads()
    marker.write_text("ok\n")
    return plans


def _body_fingerprint_extractor(work: Path):
    """nnU-Net's fingerprint extractor for a dataset without any label yet (annotation mode before the first
    masks): it takes intensity statistics from foreground voxels, and with none at all it fails (a percentile of
    nothing). Here the statistics come from the body instead, every voxel where the first channel is nonzero (nnU-Net's
    own crop region), through stand-in label files outside the raw folder. Only CT normalisation reads these
    statistics; shapes, spacings and the plans are nnU-Net's as ever."""
    import nibabel as nib
    import numpy as np
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    class BodyFingerprintExtractor(DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            work.mkdir(parents=True, exist_ok=True)
            for case, entry in self.dataset.items():
                image = nib.load(entry["images"][0])
                body = (np.asanyarray(image.dataobj) != 0).astype(np.uint8)
                entry["label"] = str(work / f"{case}.nii.gz")
                nib.save(nib.Nifti1Image(body, image.affine), entry["label"])

    return BodyFingerprintExtractor


DROPOUT_OPS = {"element": "torch.nn.Dropout", "channel": "torch.nn.Dropout2d"}


def with_dropout(plans: dict, kind: str, p: float) -> dict:
    """A copy of the plans whose 2d architecture has a dropout module of ``kind`` (``element``: ``nn.Dropout``,
    as the paper's code; ``channel``: ``nn.Dropout2d``) with probability ``p`` after every convolution.

    The module is there even at p = 0: the same architecture in every round and for MC scoring, whose p is set
    on these modules at scoring time (and state-dict keys depend on the module's presence).
    """
    out = copy.deepcopy(plans)
    arch = out["configurations"][CONFIGURATION]["architecture"]
    arch["arch_kwargs"]["dropout_op"] = DROPOUT_OPS[kind]
    arch["arch_kwargs"]["dropout_op_kwargs"] = {"p": float(p), "inplace": False}
    required = arch.setdefault("_kw_requires_import", [])
    if "dropout_op" not in required:
        required.append("dropout_op")
    return out


def patch_size(plans: dict) -> tuple[int, int]:
    """The 2d configuration's patch (y, x) nnU-Net planned."""
    y, x = plans["configurations"][CONFIGURATION]["patch_size"]
    return int(y), int(x)


def preprocessed_dir(root: Path, folder_name: str, plans: dict) -> Path:
    return CacheLayout(root).preprocessed_root(folder_name) / plans["configurations"][CONFIGURATION]["data_identifier"]
