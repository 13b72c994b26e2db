"""nnU-Net's 5-fold split of a dataset: the one place that makes or reads it.

The loop checks settings that depend on the split (the redundancy scenario's case must be a training case) before
it writes anything or spends minutes planning (:func:`fold_splits`); the backend writes the split next to the
preprocessed data as nnU-Net itself would (:func:`load_splits`). Both use the split file in the cache when there is
one, else nnU-Net's own split with seed 12345.
"""

from __future__ import annotations

import json
from pathlib import Path

from nnal.cache_layout import CacheLayout, prepared_split_files
from nnal.dataset import RawDataset
from nnal.dataset_checks import check_splits

Splits = list[dict[str, list[str]]]


def nnunet_splits(case_names: list[str]) -> Splits:
    """nnU-Net's own 5-fold split (seed 12345) of the case names."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    splits = generate_crossval_split(sorted(case_names), seed=12345, n_splits=5)
    return [{key: [str(c) for c in cases] for key, cases in fold.items()} for fold in splits]  # numpy str_ -> str


def fold_splits(dataset: RawDataset, cache: Path) -> Splits:
    """``[{"train": [...], "val": [...]}]`` per fold, as the nnU-Net backend for ``dataset`` in ``cache`` will use;
    nothing planned, nothing written."""
    names = [c.name for c in dataset.cases]
    files = prepared_split_files(cache, dataset)
    if files:
        return check_splits(json.loads(files[0].read_text()), names, files[0])
    return nnunet_splits(names)


def load_splits(root: Path, folder_name: str, case_names: list[str]) -> Splits:
    """The split of a dataset's cache folder ``root``: read, or made and written as nnU-Net would."""
    split_file = CacheLayout(root).split_file(folder_name)
    if split_file.is_file():
        return check_splits(json.loads(split_file.read_text()), case_names, split_file)
    splits = nnunet_splits(case_names)
    split_file.write_text(json.dumps(splits, indent=1))
    return splits
