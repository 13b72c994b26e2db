"""How many cores this process may use: the one owner of that count (torch, numba, the grid and the summary read it
from here). On a 2-core machine oversubscription costs 20-100x, so every pool of threads is sized from this."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (``taskset``, a container's cpuset), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_threads() -> int:
    """The cores this process may use, or ``NNAL_THREADS`` when set (a grid, ``--threads``)."""
    return int(os.environ.get("NNAL_THREADS") or usable_cores())
