"""The slice pool: every slice along nnU-Net's 2D axis of the fold's training cases, with class voxel counts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd


class SlicePool:
    """A table ``id, case, slice, vox_0 .. vox_{K-1}``; ids are 0..N-1 in (case, slice) order."""

    def __init__(self, table: pd.DataFrame):
        self.table = table.reset_index(drop=True)
        if not np.array_equal(self.table["id"].to_numpy(), np.arange(len(self.table))):
            raise ValueError("pool ids must be 0..N-1 in table order")

    @classmethod
    def from_counts(cls, counts: dict[str, np.ndarray]) -> SlicePool:
        """``counts[case]`` is ``(n_slices, K)`` voxels per class; cases are sorted by name."""
        frames = []
        for case in sorted(counts):
            c = np.asarray(counts[case], dtype=np.int64)
            frame = pd.DataFrame(c, columns=[f"vox_{k}" for k in range(c.shape[1])])
            frame.insert(0, "slice", np.arange(len(c)))
            frame.insert(0, "case", case)
            frames.append(frame)
        table = pd.concat(frames, ignore_index=True)
        table.insert(0, "id", np.arange(len(table)))
        return cls(table)

    @classmethod
    def load(cls, path: Path) -> SlicePool:
        return cls(pd.read_csv(path))

    def save_csv(self) -> str:
        return self.table.to_csv(index=False)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def num_classes(self) -> int:
        return sum(col.startswith("vox_") for col in self.table.columns)

    def by_case(self, ids: Iterable[int]) -> dict[str, np.ndarray]:
        """Group slice ids into ``{case: sorted slice indices}``."""
        rows = self.table.iloc[np.sort(np.asarray(list(ids), dtype=np.int64))]
        return {case: grp["slice"].to_numpy() for case, grp in rows.groupby("case", sort=True)}

    def ordered_by_case(self, ids: Iterable[int]) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
        """Ids sorted by (case, slice), and the matching ``[(case, slices)]`` for scoring."""
        ids = np.sort(np.asarray(list(ids), dtype=np.int64))
        return ids, list(self.by_case(ids).items())

    def class_voxels(self, ids: Iterable[int]) -> np.ndarray:
        """Annotated voxels per class over the given slices, ``(K,)``."""
        cols = [f"vox_{k}" for k in range(self.num_classes)]
        return self.table.iloc[np.asarray(list(ids), dtype=np.int64)][cols].to_numpy().sum(0)
