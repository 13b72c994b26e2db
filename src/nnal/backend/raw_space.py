"""Between nnU-Net's preprocessed 2D slices and the raw NIfTI volumes a person annotates (annotation mode).

nnU-Net's preprocessing runs transpose -> crop -> resample (``DefaultPreprocessor.run_case``), after NibabelIO has
reversed the NIfTI array's axes. For the 2d configuration the slicing axis is never resampled, so pool slice ``s``
of a case is NIfTI array index ``offset + s`` along one array axis. Labels a person gives go the same way as
nnU-Net's own preprocessing took the ground truth (``run_case`` on the known-labels file), so training on ingested
masks reads exactly what it would have read had the same labels been in the raw dataset; predictions go back the
way nnU-Net exports them (``convert_predicted_logits_to_segmentation_with_correct_shape``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import blosc2
import numpy as np
import torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnal.backend import inference
from nnal.backend.planning import CONFIGURATION

NIFTI_AXES = 3


def _properties(folder: Path, case: str) -> dict:
    with open(folder / f"{case}.pkl", "rb") as handle:
        return pickle.load(handle)


def slice_location(plans: dict, folder: Path, case: str) -> tuple[int, int]:
    """(NIfTI array axis, index offset): pool slice ``s`` of ``case`` is array index ``offset + s`` on that axis."""
    transpose_forward = PlansManager(plans).transpose_forward
    bbox = _properties(folder, case)["bbox_used_for_cropping"]
    # NibabelIO reads the array as (2, 1, 0); the plans' transpose_forward then picks preprocessed axis 0
    return NIFTI_AXES - 1 - int(transpose_forward[0]), int(bbox[0][0])


def labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int16).tobytes()
                          + str(labels.shape).encode()).hexdigest()


def write_labels(plans: dict, dataset_json: dict, raw: Path, folder: Path, work: Path, case: str,
                 labels: np.ndarray, affine: np.ndarray) -> bool:
    """Make ``labels`` (a NIfTI-array volume, 0 where nothing is known) the case's preprocessed segmentation, as
    nnU-Net's preprocessor would have made it from a raw label file holding them; False when it already is.

    ``work`` (same file system, outside nnU-Net's folders, which must hold nothing but nnU-Net's files) keeps a
    digest of the labels each case's segmentation was made from, and the temp file renamed into place."""
    import nibabel as nib

    work.mkdir(parents=True, exist_ok=True)
    marker = work / f"{case}.sha256"
    digest = labels_digest(labels)
    if marker.is_file() and marker.read_text().strip() == digest:
        return False
    label_file = raw / "labelsTr" / f"{case}.nii.gz"
    tmp_label = work / f"{case}.tmp.nii.gz"
    dtype = np.uint8 if int(np.max(labels, initial=0)) < 256 else np.uint16
    nib.save(nib.Nifti1Image(np.asarray(labels, dtype=dtype), affine), str(tmp_label))
    os.replace(tmp_label, label_file)  # a dataset label's symlink is replaced by the file, never written through
    manager = PlansManager(plans)
    configuration = manager.get_configuration(CONFIGURATION)
    ending = dataset_json.get("file_ending", ".nii.gz")
    images = sorted(str(p) for p in (raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))
    _, seg, _ = DefaultPreprocessor(verbose=False).run_case(images, str(label_file), manager, configuration,
                                                           dataset_json)
    seg = np.ascontiguousarray(seg.astype(np.int16, copy=False))  # as run_case_save stores it
    tmp = work / f"{case}_seg.tmp.b2nd"
    if tmp.exists():
        tmp.unlink()
    blocks, chunks = comp_blosc2_params(seg.shape, tuple(configuration.patch_size), seg.itemsize)
    blosc2.asarray(seg, urlpath=str(tmp), chunks=chunks, blocks=blocks)
    os.replace(tmp, folder / f"{case}_seg.b2nd")
    marker.write_text(digest + "\n")
    return True


@torch.inference_mode()
def predict_raw(network: torch.nn.Module, plans: dict, dataset_json: dict, folder: Path, case: str,
                slices: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """The argmax prediction of some pool slices as a NIfTI-array volume of the raw image's shape (0 elsewhere),
    mapped back as nnU-Net exports its predictions (resampling, cropping and transposes undone)."""
    manager = PlansManager(plans)
    configuration = manager.get_configuration(CONFIGURATION)
    label_manager = manager.get_label_manager(dataset_json)
    data, _ = inference.load_volume(folder, case)
    slices = np.asarray(slices, dtype=np.int64)
    logits = np.zeros((label_manager.num_segmentation_heads, *data.shape[1:]), dtype=np.float32)
    logits[0] = 1.0  # slices not asked for read as background
    target = inference.padded_shape(data.shape[2:], tuple(configuration.patch_size), inference.total_stride(plans))
    for idx, batch in inference.slice_batches(data, slices, batch_size, target):
        out = inference.crop_to(network(batch.to(device)), data.shape[2:])
        logits[:, idx] = out.float().cpu().numpy().transpose(1, 0, 2, 3)
    seg = convert_predicted_logits_to_segmentation_with_correct_shape(
        torch.from_numpy(logits), manager, configuration, label_manager, _properties(folder, case),
        num_threads_torch=torch.get_num_threads())
    return np.asarray(seg).transpose((2, 1, 0))  # NibabelIO's axis order back to the NIfTI array's
