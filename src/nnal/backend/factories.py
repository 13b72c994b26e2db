"""The backend's door for the core: the factories by name (nnU-Net's and the fake one for tests and dry runs), the
device checks, and sharded scoring. The loop and its checks import nothing else of the backend (an import-linter
contract); torch and nnU-Net load only when one of these is called."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from nnal.backend.fake import fake_backend
from nnal.config import Config
from nnal.dataset import RawDataset
from nnal.seams import BackendFactory, SegmentationBackend, Split


class NnunetFactory:
    """nnU-Net planned and preprocessed for a dataset in a cache."""

    name = "nnunet"

    def __call__(self, dataset: RawDataset, cache: Path, config: Config) -> SegmentationBackend:
        from nnal.backend.session import Backend

        # mypy checks at this return that nnU-Net's backend conforms to the seam
        return Backend(dataset, cache, dropout=config.dropout, dropout_p=config.dropout_p,
                       mc_dropout_p=config.mc_dropout_p, num_processes=config.num_processes, device=config.device,
                       plans_file=config.plans)

    def splits(self, dataset: RawDataset, cache: Path) -> list[Split]:
        """The fold split the backend will use, without planning or writing anything."""
        from nnal.backend.splits import fold_splits

        return fold_splits(dataset, cache)


nnunet_backend = NnunetFactory()
BACKENDS: dict[str, BackendFactory] = {factory.name: factory for factory in (nnunet_backend, fake_backend)}


def check_device(name: str) -> None:
    """``cuda`` must exist when asked for by name (``auto`` falls back to the CPU); one line otherwise."""
    from nnal.backend.runtime import check_device as check

    check(name)


def cuda_available() -> bool:
    from nnal.backend.runtime import cuda_available as available

    return available()


def sharded_model(backend: SegmentationBackend, weights: Any, checkpoint: Path, shards: int, say: Callable[[str], None]
                  ) -> AbstractContextManager[Any]:
    """The round's model scoring its pool in ``shards`` Ray tasks, the same numbers as one process
    (:mod:`nnal.backend.shards`)."""
    from nnal.backend.shards import ShardedModel

    return ShardedModel(backend, weights, checkpoint, shards, say=say)
