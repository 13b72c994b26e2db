"""Predictions for the report's figures from an experiment's round checkpoints: the provider that ``nnal report``,
``nnal grid`` and the demo hand to :func:`nnal.analysis.extras.build_full_report` (analysis never imports the
backend; without a provider the report leaves the prediction figures out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnal.experiment import ExperimentFolder


class CheckpointPredictions:
    """One experiment's nnU-Net data reopened on the CPU; predictions of any checkpoint kept on it."""

    def __init__(self, backend) -> None:  # noqa: ANN001 (a Backend)
        self.backend = backend

    def predict_slices(self, checkpoint: Path, case: str, slices: np.ndarray) -> tuple[np.ndarray, ...]:
        """(image, truth, prediction) of ``slices`` of ``case`` by the model saved in ``checkpoint`` (a round of
        this experiment or of another on the same nnU-Net data)."""
        model = self.backend.model(self.backend.load_weights(checkpoint))
        return model.predict_slices(case, slices)

    def segmentation(self, case: str) -> np.ndarray:
        """The case's preprocessed ground truth, (slices, y, x)."""
        from nnal.backend.inference import load_volume

        return load_volume(self.backend.folder, case)[1]


def checkpoint_predictions(folder: ExperimentFolder) -> CheckpointPredictions | None:
    """The provider: None when the experiment's nnU-Net folder is gone (a copied or committed result)."""
    from nnal.backend.session import Backend  # torch and nnU-Net only when predictions are drawn

    root = folder.read_environment().get("nnunet_root")
    if not root or not Path(root).is_dir():
        return None
    config = folder.read_config()
    backend = Backend.reopen(Path(root), "cpu", dropout=config.dropout, dropout_p=config.dropout_p,
                             mc_dropout_p=config.mc_dropout_p)
    return CheckpointPredictions(backend)
