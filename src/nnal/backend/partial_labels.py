"""A view of nnU-Net's preprocessed dataset in which only the labeled slices carry ground truth.

Every other voxel reads as the ignore label, so nnU-Net's DC+CE loss skips it. Sampling locations are
restricted to the labeled slices: nnU-Net's loader then never draws a patch that is all ignore.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MAX_LOCATIONS = 10_000  # as many sampling locations per class and case as nnU-Net's preprocessor keeps


class MaskedSegmentation:
    """Lazy ``(c, z, y, x)`` segmentation whose unlabeled z-slices read as ``ignore_label``."""

    def __init__(self, seg, labeled: np.ndarray, ignore_label: int):
        self._seg = seg
        self._labeled = np.zeros(seg.shape[1], dtype=bool)
        self._labeled[labeled] = True
        self._ignore = ignore_label
        self.shape = tuple(seg.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(seg.dtype)

    def __getitem__(self, index):
        if not (isinstance(index, tuple) and len(index) == self.ndim and isinstance(index[1], slice)):
            raise IndexError("MaskedSegmentation supports full (c, z-slice, y, x) indexing only")
        out = np.array(self._seg[index])
        keep = self._labeled[index[1]]
        out[:, ~keep] = self._ignore
        return out


def sampling_locations(seg: np.ndarray, labeled: np.ndarray, foreground: list[int],
                       annotated_key: tuple[int, ...], rng: np.random.Generator) -> dict:
    """nnU-Net's ``class_locations`` for the labeled slices only: ``(c, z, y, x)`` rows per class."""
    sub = np.asarray(seg[0][labeled])  # (n_labeled, y, x)
    locations: dict = {}
    for cls in foreground:
        locations[cls] = _rows(np.argwhere(sub == cls), labeled, rng)
    locations[annotated_key] = _rows(np.argwhere(sub >= -1), labeled, rng)
    return locations


def _rows(hits: np.ndarray, labeled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(hits) > MAX_LOCATIONS:
        hits = hits[np.sort(rng.choice(len(hits), MAX_LOCATIONS, replace=False))]
    rows = np.zeros((len(hits), 4), dtype=np.int64)
    rows[:, 1] = labeled[hits[:, 0]]
    rows[:, 2:] = hits[:, 1:]
    return rows


class PartialLabelDataset:
    """Duck-types nnU-Net's dataset classes (``identifiers``, ``load_case``) over the labeled cases only."""

    def __init__(self, base, labeled: Mapping[str, np.ndarray], ignore_label: int, foreground: list[int],
                 annotated_key: tuple[int, ...], seed: int):
        self._base = base
        self._labeled = {k: np.asarray(sorted(v), dtype=np.int64) for k, v in labeled.items() if len(v)}
        self.identifiers = sorted(self._labeled)
        self._ignore = ignore_label
        self._locations = {}
        rng = np.random.default_rng(seed)
        for case in self.identifiers:
            _, seg, _, _ = base.load_case(case)
            self._locations[case] = sampling_locations(seg, self._labeled[case], foreground, annotated_key, rng)

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier):
        data, seg, seg_prev, properties = self._base.load_case(identifier)
        properties = dict(properties, class_locations=self._locations[identifier])
        return data, MaskedSegmentation(seg, self._labeled[identifier], self._ignore), seg_prev, properties
