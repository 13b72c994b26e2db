"""The backend factories, by name: nnU-Net's and the fake one (tests, dry runs). Torch and nnU-Net load only when
nnU-Net's factory builds a backend or tells a split."""

from __future__ import annotations

from pathlib import Path

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
