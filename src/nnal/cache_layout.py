"""The layout of nnal's nnU-Net cache, the one place that spells it (the backend builds it, the checks and the grid
look into it without loading torch)::

    <cache>/<cache key>[-plans-<digest>]/     one dataset (and a user's own plans), locked while it is prepared
        .lock
        raw/<DatasetNNN_Name>/                nnU-Net's raw folder (dataset.json names every file)
        preprocessed/<DatasetNNN_Name>/       plans, fingerprint, splits_final.json, .nnal_done, the 2d data
        results/                              nnU-Net's results variable (nnal keeps checkpoints in the experiment)
"""

from __future__ import annotations

from pathlib import Path

from nnal.dataset import RawDataset, cache_key

NNUNET_FOLDERS = ("raw", "preprocessed", "results")  # nnU-Net's three path variables, one folder each
DONE_MARKER = ".nnal_done"  # written once planning and preprocessing finished
SPLIT_FILE = "splits_final.json"


class CacheLayout:
    """The paths of one dataset's part of a cache (``root``: ``<cache>/<cache key>[-plans-<digest>]``)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock_file = self.root / ".lock"

    @classmethod
    def for_dataset(cls, cache: Path, dataset: RawDataset, plans_key: str = "") -> CacheLayout:
        return cls(Path(cache) / (cache_key(dataset) + plans_key))

    def folder(self, name: str) -> Path:
        """nnU-Net's ``raw``, ``preprocessed`` or ``results`` folder."""
        return self.root / name

    def raw_dir(self, folder_name: str) -> Path:
        return self.folder("raw") / folder_name

    def preprocessed_root(self, folder_name: str) -> Path:
        return self.folder("preprocessed") / folder_name

    def split_file(self, folder_name: str) -> Path:
        return self.preprocessed_root(folder_name) / SPLIT_FILE

    def done_marker(self, folder_name: str) -> Path:
        return self.preprocessed_root(folder_name) / DONE_MARKER


def prepared_split_files(cache: Path, dataset: RawDataset) -> list[Path]:
    """The split files nnU-Net's planning left for ``dataset`` in ``cache`` (nnal's default plans)."""
    return sorted(CacheLayout.for_dataset(cache, dataset).folder("preprocessed").glob(f"*/{SPLIT_FILE}"))


def is_prepared(cache: Path, dataset: RawDataset) -> bool:
    """Whether nnU-Net's preprocessed data for ``dataset`` are already in ``cache``."""
    return any(CacheLayout.for_dataset(cache, dataset).folder("preprocessed").glob(f"*/{DONE_MARKER}"))
