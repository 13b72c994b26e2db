"""The slice pool: every slice along nnU-Net's 2D axis of the fold's training cases, with class voxel counts.

In the redundancy scenario (the paper's Appendix E) one case's slices are in the pool ``1 + copies`` times: column
``copy`` is 0 for the original row and k for its k-th duplicate. A duplicate is a pool row of its own (it can be
queried, selected and labeled, which spends budget), but it is the same image: training and annotated-voxel counts
see each (case, slice) once.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd


class SlicePool:
    """A table ``id, case, slice, copy, vox_0 .. vox_{K-1}``; ids are 0..N-1 in table order.

    Rows are grouped by case in name order, a duplicated case's copies right after its original rows: sorting ids
    therefore groups them by case, which the scoring order (case, then the case's rows in id order) relies on.
    """

    def __init__(self, table: pd.DataFrame):
        table = table.reset_index(drop=True)
        if "copy" not in table.columns:  # pools saved before the redundancy scenario existed: originals only
            table.insert(int(table.columns.get_loc("slice")) + 1, "copy", 0)
        self.table = table
        if not np.array_equal(self.table["id"].to_numpy(), np.arange(len(self.table))):
            raise ValueError("pool ids must be 0..N-1 in table order")
        cases = self.table["case"].astype(str).to_numpy()
        if len(cases) > 1 and not (cases[1:] >= cases[:-1]).all():
            raise ValueError("pool rows must be grouped by case in name order")

    @classmethod
    def from_counts(cls, counts: dict[str, np.ndarray], *, duplicate: str | None = None,
                    copies: int = 0) -> SlicePool:
        """``counts[case]`` is ``(n_slices, K)`` voxels per class; cases are sorted by name. ``duplicate``: a
        case whose slices follow ``copies`` more times (column ``copy`` = 1 .. copies), right after its own."""
        if duplicate is not None and duplicate not in counts:
            raise ValueError(f"cannot duplicate {duplicate!r}: not a pool case")
        if isinstance(copies, bool) or int(copies) != copies or copies < 0:
            raise ValueError(f"copies must be a non-negative integer, got {copies!r}")
        frames = []
        for case in sorted(counts):
            c = np.asarray(counts[case], dtype=np.int64)
            frame = pd.DataFrame(c, columns=[f"vox_{k}" for k in range(c.shape[1])])
            frame.insert(0, "copy", 0)
            frame.insert(0, "slice", np.arange(len(c)))
            frame.insert(0, "case", case)
            frames.append(frame)
            if case == duplicate:
                frames.extend(frame.assign(copy=k) for k in range(1, int(copies) + 1))
        table = pd.concat(frames, ignore_index=True)
        table.insert(0, "id", np.arange(len(table)))
        return cls(table)

    @classmethod
    def load(cls, path: Path) -> SlicePool:
        return cls(pd.read_csv(path, dtype={"case": str}))  # "001" stays a name, not the number 1

    def save_csv(self) -> str:
        return self.table.to_csv(index=False)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def num_classes(self) -> int:
        return sum(col.startswith("vox_") for col in self.table.columns)

    def original_ids(self) -> np.ndarray:
        """Ids of the original rows (``copy`` 0), ascending: the whole pool when nothing is duplicated."""
        return np.flatnonzero(self.table["copy"].to_numpy() == 0).astype(np.int64)

    def by_case(self, ids: Iterable[int]) -> dict[str, np.ndarray]:
        """Group slice ids into ``{case: sorted distinct slice indices}``: what training sees (a labeled duplicate
        adds no image the model has not seen)."""
        rows = self.table.iloc[np.sort(np.asarray(list(ids), dtype=np.int64))]
        return {case: np.unique(grp["slice"].to_numpy()) for case, grp in rows.groupby("case", sort=True)}

    def ordered_by_case(self, ids: Iterable[int]) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
        """Ids sorted, and the matching ``[(case, slices)]`` for scoring: one entry per id, in id order, so a
        duplicated slice appears once per copy and score rows align with the sorted ids."""
        ids = np.sort(np.asarray(list(ids), dtype=np.int64))
        rows = self.table.iloc[ids]
        # groupby keeps the row order inside a group, and the cases' blocks are in name order (see __init__)
        return ids, [(case, grp["slice"].to_numpy()) for case, grp in rows.groupby("case", sort=True)]

    def with_counts(self, counts: dict[str, np.ndarray]) -> SlicePool:
        """A copy whose rows of the given cases take new voxel counts per class (``(n_slices, K)`` per case, by
        slice index): annotation mode learns a slice's classes only when a person labels it."""
        table = self.table.copy()
        cols = [f"vox_{k}" for k in range(self.num_classes)]
        for case, per_slice in counts.items():
            rows = table["case"] == case
            table.loc[rows, cols] = np.asarray(per_slice, dtype=np.int64)[table.loc[rows, "slice"].to_numpy()]
        return SlicePool(table)

    def class_voxels(self, ids: Iterable[int]) -> np.ndarray:
        """Annotated voxels per class over the distinct (case, slice) of the given ids, ``(K,)``."""
        cols = [f"vox_{k}" for k in range(self.num_classes)]
        rows = self.table.iloc[np.asarray(list(ids), dtype=np.int64)].drop_duplicates(["case", "slice"])
        return rows[cols].to_numpy().sum(0)
