"""Inputs of the paper's Figs. 3, 6 and 10-12 from experiment folders (predictions need the round checkpoints)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from nnal.analysis.report import ReportExtras, SegmentationExample
from nnal.analysis.savings import TARGET_FRACTION
from nnal.experiment import ExperimentFolder
from nnal.strategies import variant_label

CORRELATION_SLICES = 300  # the paper: "a randomly selected subset of the unlabeled dataset"


class Predictions(Protocol):
    """One experiment's predictions (``nnal.backend.predictions.CheckpointPredictions``)."""

    def predict_slices(self, checkpoint: Path, case: str, slices: np.ndarray) -> tuple[np.ndarray, ...]:
        """(image, truth, prediction) of ``slices`` of ``case`` by the model saved in ``checkpoint``."""

    def segmentation(self, case: str) -> np.ndarray:
        """The case's ground truth as the model sees it, (slices, y, x)."""


PredictionProvider = Callable[[ExperimentFolder], "Predictions | None"]
"""Opens an experiment's predictions; None when they cannot be made (its nnU-Net data is gone)."""


def _first_round_scores(folder: ExperimentFolder, *keys: str) -> tuple[dict[str, np.ndarray] | None, str]:
    """Round 1's scores (the first selection made by a trained model), read once, and the first of ``keys`` they
    hold; ``(None, "")`` when they hold none."""
    if not folder.scores_file(1).is_file():
        return None, ""
    scores = folder.read_scores(1)
    key = next((k for k in keys if k in scores), "")
    return (scores, key) if key else (None, "")


def embedding_extras(path: Path, extras: ReportExtras, max_points: int = 1500, seed: int = 0) -> bool:
    """Fig. 3: round 1's gradient embeddings, unlabeled / query / selected, sized by uncertainty."""
    folder = ExperimentFolder(path)
    scores, _ = _first_round_scores(folder, "grad_embeddings")
    if scores is None:
        return False
    ids = scores["ids"]
    status = np.full(len(ids), "unlabeled", dtype=object)
    status[np.unique(scores["query"])] = "query"
    selected = folder.read_selection(1)["id"].to_numpy()
    status[np.searchsorted(ids, selected)] = "selected"
    keep = np.flatnonzero(status != "unlabeled")
    rest = np.flatnonzero(status == "unlabeled")
    rng = np.random.default_rng(seed)
    if len(keep) + len(rest) > max_points:
        rest = np.sort(rng.choice(rest, max(0, max_points - len(keep)), replace=False))
    take = np.sort(np.concatenate([keep, rest]))
    extras.embedding = scores["grad_embeddings"][take]
    extras.embedding_status = status[take].astype(str)
    extras.embedding_uncertainty = scores["usim_uncertainty"][take] if "usim_uncertainty" in scores else None
    return True


def correlation_extras(path: Path, extras: ReportExtras, predictions: PredictionProvider, seed: int = 0) -> bool:
    """Fig. 6: misclassified pixels of the round-0 model against MC uncertainty and gradient length."""
    folder = ExperimentFolder(path)
    scores, key = _first_round_scores(folder, "class_uncertainty", "class_variance")
    if scores is None:
        return False
    predicted = predictions(folder)
    if predicted is None:
        return False
    pool = folder.read_pool().table.set_index("id")
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.choice(len(scores["ids"]), min(CORRELATION_SLICES, len(scores["ids"])), replace=False))
    rows = pool.loc[scores["ids"][pos]]
    errors = np.zeros(len(pos))
    for case, grp in rows.assign(at=np.arange(len(pos))).groupby("case"):
        _, truth, pred = predicted.predict_slices(folder.checkpoint_file(0), case, grp["slice"].to_numpy())
        errors[grp["at"].to_numpy()] = (truth != pred).reshape(len(grp), -1).sum(1)
    extras.error = errors
    measure = "std" if key == "class_uncertainty" else "variance"
    extras.predictors = {f"MC-dropout uncertainty (sum of class {measure})": scores[key][pos].sum(1)}
    if "grad_embeddings" in scores:
        extras.predictors["gradient length (L2)"] = np.linalg.norm(scores["grad_embeddings"][pos], axis=1)
    return True


def segmentation_extras(folders: list[Path], extras: ReportExtras, predictions: PredictionProvider) -> bool:
    """Figs. 10-12: one test slice (the one with most foreground of the first test case), image, ground truth and
    the prediction after the first and the last round of the first experiment of each variant on the first one's
    dataset, titled by variant (usimf[eta=0.5], round 1). Further repetitions of a variant are left out: their
    thumbnails look alike and made most of a grid's page."""
    usable = [ExperimentFolder(f) for f in folders if ExperimentFolder(f).checkpoint_rounds()]
    if usable:  # one slice of one dataset: predictions of experiments on another dataset have no place here
        first = Path(usable[0].read_config().dataset).name
        usable = [f for f in usable if Path(f.read_config().dataset).name == first]
    predicted = predictions(usable[0]) if usable else None  # their checkpoints share the first one's nnU-Net data
    if predicted is None:
        return False
    case = usable[0].read_test_cases()[0]
    seg = predicted.segmentation(case)
    z = int(np.argmax((seg > 0).reshape(len(seg), -1).sum(1)))
    panels = {}
    image = gt = None
    drawn = set()
    for folder in usable:
        config = folder.read_config()
        variant = variant_label(config.strategy, config.strategy_options)
        if variant in drawn:
            continue
        drawn.add(variant)
        rounds = folder.checkpoint_rounds()
        for r in sorted({rounds[0], rounds[-1]}):
            image, gt, pred = predicted.predict_slices(folder.checkpoint_file(r), case, np.array([z]))
            panels["full" if config.strategy == "full" else f"{variant}, round {r}"] = pred[0]
    extras.segmentations = [SegmentationExample(image[0], gt[0], panels, f"{case}, slice {z}")]
    return True


def extras_from_experiments(folders: list[Path], predictions: PredictionProvider | None = None) -> ReportExtras:
    """Everything the experiment folders allow: embeddings and correlations from the first USIM/MC experiment;
    the figures that need predictions only with a provider."""
    extras = ReportExtras()
    for folder in folders:
        if embedding_extras(folder, extras):
            break
    if predictions is None:
        return extras
    for folder in folders:
        if correlation_extras(folder, extras, predictions):
            break
    segmentation_extras(folders, extras, predictions)
    return extras


def build_full_report(dirs: list[Path], output: Path, savings_fraction: float = TARGET_FRACTION, *,
                      predictions: PredictionProvider | None = None) -> Path:
    """``build_report`` with every figure the experiments allow, predictions included (``nnal report``); the
    predictions come from the experiments the report admits (finished ones, :func:`nnal.analysis.admission.admit`).
    ``savings_fraction``: the share of the full-label Dice that label savings count slices to; ``predictions``:
    opens an experiment's predictions (``nnal.backend.predictions.checkpoint_predictions``), None draws none."""
    from nnal.analysis.admission import admit
    from nnal.analysis.report import build_report, check_output

    output = Path(output)
    check_output(output)  # before the predictions are drawn: a refusal costs no work
    admission = admit(dirs)  # every folder read and checked before anything is written (ReportError)
    folders = [exp.path for exp in admission.experiments]
    return build_report(dirs, output, extras=extras_from_experiments(folders, predictions),
                        savings_fraction=savings_fraction)
