"""Benchmarks of FLQMI selection (ours vs submodlib) and of the similarity build, on seeded synthetic data.

Modules, each importing only those listed before it: :mod:`~nnal.bench.scales` (scales, selection parameters, the
synthetic similarity matrix), :mod:`~nnal.bench.process` (fresh spawned processes, memory measurement),
:mod:`~nnal.bench.workers` (what runs in those processes) and :mod:`~nnal.bench.selection` (the benchmarks, their
tables and the command line). Run ``python -m nnal.bench --help``; see docs/submodular.md.
"""

from __future__ import annotations

from nnal.bench.scales import BUDGET, EPSILON, ETA, REPEATS, SCALES, VOLUMES, similarity_matrix
from nnal.bench.selection import (
    bench_selection,
    bench_similarity_and_selection,
    format_bench,
    format_similarity_bench,
    main,
)

__all__ = [
    "BUDGET",
    "EPSILON",
    "ETA",
    "REPEATS",
    "SCALES",
    "VOLUMES",
    "bench_selection",
    "bench_similarity_and_selection",
    "format_bench",
    "format_similarity_bench",
    "main",
    "similarity_matrix",
]
