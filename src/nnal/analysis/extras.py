"""Inputs of the paper's Figs. 3, 6 and 10-12 from experiment folders (predictions need the round checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from nnal.analysis.report import ReportExtras, SegmentationExample

CORRELATION_SLICES = 300  # the paper: "a randomly selected subset of the unlabeled dataset"


def _backend(folder: Path):
    from nnal.backend.session import Backend  # torch and nnU-Net only when predictions are drawn

    env = json.loads((folder / "environment.json").read_text())
    root = env.get("nnunet_root")
    if not root or not Path(root).is_dir():
        return None
    return Backend.reopen(Path(root), "cpu")


def _weights(folder: Path, round_: int):
    import torch

    return torch.load(folder / f"round_{round_:03d}" / "checkpoint.pt", map_location="cpu",
                      weights_only=True)["network_weights"]


def _rounds(folder: Path) -> list[int]:
    return sorted(int(p.parent.name[6:]) for p in folder.glob("round_*/checkpoint.pt"))


def _first_round_scores(folder: Path, key: str):
    """Round 1's ``scores.npz`` when it holds ``key`` (the first selection made by a trained model)."""
    scores_file = folder / "round_001" / "scores.npz"
    if not scores_file.is_file():
        return None
    scores = np.load(scores_file)
    return scores if key in scores.files else None


def embedding_extras(folder: Path, extras: ReportExtras, max_points: int = 1500, seed: int = 0) -> bool:
    """Fig. 3: round 1's gradient embeddings, unlabeled / query / selected, sized by uncertainty."""
    scores = _first_round_scores(folder, "grad_embeddings")
    if scores is None:
        return False
    ids = scores["ids"]
    status = np.full(len(ids), "unlabeled", dtype=object)
    status[np.unique(scores["query"])] = "query"
    selected = pd.read_csv(folder / "round_001" / "selection.csv")["id"].to_numpy()
    status[np.searchsorted(ids, selected)] = "selected"
    keep = np.flatnonzero(status != "unlabeled")
    rest = np.flatnonzero(status == "unlabeled")
    rng = np.random.default_rng(seed)
    if len(keep) + len(rest) > max_points:
        rest = np.sort(rng.choice(rest, max(0, max_points - len(keep)), replace=False))
    take = np.sort(np.concatenate([keep, rest]))
    extras.embedding = scores["grad_embeddings"][take]
    extras.embedding_status = status[take].astype(str)
    extras.embedding_uncertainty = scores["usim_uncertainty"][take] if "usim_uncertainty" in scores.files else None
    return True


def correlation_extras(folder: Path, extras: ReportExtras, seed: int = 0) -> bool:
    """Fig. 6: misclassified pixels of the round-0 model against MC uncertainty and gradient length."""
    scores = _first_round_scores(folder, "class_uncertainty")
    if scores is None:
        return False
    backend = _backend(folder)
    if backend is None:
        return False
    pool = pd.read_csv(folder / "pool.csv").set_index("id")
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.choice(len(scores["ids"]), min(CORRELATION_SLICES, len(scores["ids"])), replace=False))
    rows = pool.loc[scores["ids"][pos]]
    weights = _weights(folder, 0)
    errors = np.zeros(len(pos))
    for case, grp in rows.assign(at=np.arange(len(pos))).groupby("case"):
        _, truth, pred = backend.predict_slices(weights, case, grp["slice"].to_numpy())
        errors[grp["at"].to_numpy()] = (truth != pred).reshape(len(grp), -1).sum(1)
    extras.error = errors
    extras.predictors = {"MC-dropout uncertainty (sum of class std)": scores["class_uncertainty"][pos].sum(1)}
    if "grad_embeddings" in scores.files:
        extras.predictors["gradient length (L2)"] = np.linalg.norm(scores["grad_embeddings"][pos], axis=1)
    return True


def segmentation_extras(folders: list[Path], extras: ReportExtras) -> bool:
    """Figs. 10-12: one test slice (the one with most foreground of the first test case), image, ground truth and
    the prediction after the first and the last round of each experiment."""
    usable = [f for f in folders if _rounds(f)]
    backend = _backend(usable[0]) if usable else None
    if backend is None:
        return False
    case = (usable[0] / "test_cases.txt").read_text().split()[0]
    from nnal.backend.inference import load_volume

    _, seg = load_volume(backend.folder, case)
    z = int(np.argmax((seg > 0).reshape(len(seg), -1).sum(1)))
    predictions = {}
    image = gt = None
    for folder in usable:
        strategy = str(pd.read_csv(folder / "results.csv")["strategy"].iloc[0])
        rounds = _rounds(folder)
        for r in sorted({rounds[0], rounds[-1]}):
            image, gt, pred = backend.predict_slices(_weights(folder, r), case, np.array([z]))
            label = "full" if strategy == "full" else f"{strategy}, round {r}"
            predictions[label] = pred[0]
    extras.segmentations = [SegmentationExample(image[0], gt[0], predictions, f"{case}, slice {z}")]
    return True


def extras_from_experiments(folders: list[Path]) -> ReportExtras:
    """Everything the experiment folders allow: embeddings and correlations from the first USIM/MC experiment."""
    extras = ReportExtras()
    for folder in folders:
        if embedding_extras(folder, extras):
            break
    for folder in folders:
        if correlation_extras(folder, extras):
            break
    segmentation_extras(folders, extras)
    return extras


def build_full_report(dirs: list[Path], output: Path) -> Path:
    """``build_report`` with every figure the experiments allow, predictions included (``nnal report``)."""
    from nnal.analysis.load import find_experiments
    from nnal.analysis.report import build_report

    folders = find_experiments(dirs)  # raises ReportError on folders that are not experiments
    return build_report(dirs, output, extras=extras_from_experiments(folders))
