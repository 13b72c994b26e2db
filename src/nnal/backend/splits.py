"""nnU-Net's 5-fold split of a dataset, known before the backend is built: nothing planned, nothing written.

The loop checks settings that depend on the split (the redundancy scenario's case must be a training case) before
it writes anything or spends minutes planning. The backend itself (``planning.load_splits``) uses the split file
in the cache when there is one, else nnU-Net's own split with seed 12345; this reads the same file the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from nnal.dataset import RawDataset, cache_key


def fold_splits(dataset: RawDataset, cache: Path) -> list[dict[str, list[str]]]:
    """``[{"train": [...], "val": [...]}]`` per fold, as the nnU-Net backend for ``dataset`` in ``cache`` will use."""
    names = [c.name for c in dataset.cases]
    files = sorted(Path(cache).glob(f"{cache_key(dataset)}/preprocessed/*/splits_final.json"))
    if files:
        from nnal.dataset_checks import check_splits

        return check_splits(json.loads(files[0].read_text()), names, files[0])
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    splits = generate_crossval_split(sorted(names), seed=12345, n_splits=5)
    return [{key: [str(c) for c in cases] for key, cases in fold.items()} for fold in splits]  # numpy str_ -> str
