"""Process-wide settings for nnU-Net and torch: paths, threads, seeds, device."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from nnal.cache_layout import NNUNET_FOLDERS
from nnal.errors import EnvironmentProblem
from nnal.threads import available_threads


@contextmanager
def nnunet_environment(root: Path, num_processes: int) -> Iterator[None]:
    """nnU-Net's lazily read path variables pointed at nnal's cache ``root``, and its worker counts, while nnU-Net
    runs; the user's own ``nnUNet_*`` settings are back afterwards (nnal never reads or writes their folders)."""
    names = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_def_n_proc",
             "nnUNet_compile")
    before = {name: os.environ.get(name) for name in names}
    for name in NNUNET_FOLDERS:
        (root / name).mkdir(parents=True, exist_ok=True)
        os.environ[f"nnUNet_{name}"] = str(root / name)
    # 0 runs augmentation in-process, which is what makes CPU runs bit-reproducible
    os.environ["nnUNet_n_proc_DA"] = str(num_processes)
    os.environ["nnUNet_def_n_proc"] = str(max(1, num_processes))
    os.environ.setdefault("nnUNet_compile", "f")
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def set_threads() -> None:
    """One torch thread per core (``NNAL_THREADS`` when a grid runs several experiments on one machine), and no
    nested pools: oversubscription costs 20-100x on small machines."""
    torch.set_num_threads(max(1, available_threads()))
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # can only be set before the first parallel op
            pass


def seed_everything(seed: int) -> None:
    """Seed every generator nnU-Net draws from (python, numpy's global state, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(name: str) -> None:
    """``cuda`` must exist when asked for by name (``auto`` falls back to the CPU)."""
    if name == "cuda" and not cuda_available():
        raise EnvironmentProblem("device: 'cuda' requested but no CUDA device is available (use --device cpu or auto)")
