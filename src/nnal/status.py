"""``nnal status DIR``: where an experiment stands (any experiment; an annotation experiment's batch and masks are
read through the annotation package's store) — its round, the labeled slices per class, the batch waiting for
masks, the time each round took (the person's share included), and the last Dice when a test set has labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nnal.annotation.batch import pending_round
from nnal.annotation.store import AnnotationStore
from nnal.annotation.volumes import index_along, read_volume
from nnal.dataset import load_dataset
from nnal.errors import NnalError
from nnal.experiment import ExperimentFolder


def experiment_status(root: Path) -> dict[str, Any]:
    """The status as a JSON-serialisable dict (``format_status`` prints it)."""
    folder = ExperimentFolder(root)
    if not folder.holds_experiment():
        raise NnalError(f"{root}: not an nnal experiment (no config.yaml)")
    config = folder.read_config()
    state = folder.state.data if folder.state_file.is_file() else {"round": -1, "phase": None, "seconds": {}}
    store = None
    if config.oracle == "human":
        store = AnnotationStore(folder, load_dataset(config.dataset, labels_optional=True))
    pending = pending_round(folder, store) if store is not None else None
    selected = [r for r in folder.rounds() if folder.selection_file(r).is_file()]
    revealed = [r for r in selected if r != pending]
    out: dict[str, Any] = {
        "experiment": config.experiment, "strategy": config.strategy, "oracle": config.oracle,
        "round": state["round"], "phase": state["phase"], "rounds": config.rounds,
        "labeled_slices": 0, "labeled_slices_per_class": {}, "pending": None, "seconds_per_round": {},
        "last_dice": None}
    if folder.has_pool() and revealed:
        out["labeled_slices"], out["labeled_slices_per_class"] = _labeled(folder, store, revealed)
    if pending is not None:
        selection = folder.read_selection(pending)
        batch_dir = folder.annotate_dir(pending)
        masks = batch_dir / "masks"
        out["pending"] = {"round": pending, "slices": len(selection),
                          "cases": {str(c): int(n) for c, n in selection.groupby("case").size().items()},
                          "batch": str(batch_dir) if folder.batch_file(pending).is_file() else None,
                          "masks_saved": sorted(p.name for p in masks.glob("*.nii*")) if masks.is_dir() else []}
    for r, phases in sorted(state["seconds"].items(), key=lambda kv: int(kv[0])):
        out["seconds_per_round"][r] = {"machine": round(sum(phases.values()), 1)}
    if store is not None:
        for r in store.ingested_rounds():
            seconds = store.entry(r).get("annotation_seconds")
            out["seconds_per_round"].setdefault(str(r), {})["annotation"] = seconds
    if folder.results_file.is_file():
        results = folder.read_results()
        means = results[results["label"] == "mean"]
        if len(means):
            last = int(means["round"].max())
            out["last_dice"] = {"round": last, "mean": round(float(means[means["round"] == last]["dice"].mean()), 4),
                                "test_cases": int(means[means["round"] == last]["case"].nunique())}
    return out


def _labeled(folder: ExperimentFolder, store: AnnotationStore | None, rounds: list[int]) -> tuple[int, dict]:
    """Labeled slices, and per foreground class the labeled slices that hold it. Slices a person labeled are read
    from the ingested masks (the pool's counts catch up at the next training); the rest from ``pool.csv``."""
    pool = folder.read_pool()
    names = {f"vox_{k}": f"class {k}" for k in range(pool.num_classes)}
    if store is not None:
        names = {f"vox_{v}": k for k, v in store.dataset.labels.items()}
    present = pool.table[list(names)].to_numpy() > 0
    labeled = np.concatenate([folder.read_selection(r)["id"].to_numpy() for r in rounds])
    for r in store.ingested_rounds() if store is not None else []:
        batch = store.batch(r)
        for case, rows in batch.groupby("case"):
            labels = np.asarray(read_volume(folder.annotation_file(r, case))[1])
            for row in rows.itertuples():
                values = labels[index_along(int(row.axis), int(row.slice))]
                present[int(row.id)] = [bool((values == k).any()) for k in range(pool.num_classes)]
    counts = present[labeled].sum(0)
    return len(labeled), {name: int(c) for name, c in zip(list(names.values())[1:], counts[1:], strict=True)}


def waiting_line(root: Path) -> str | None:
    """One line when an annotation experiment waits for masks, else None."""
    status = experiment_status(root)
    pending = status["pending"]
    if pending is None:
        return None
    return (f"round {pending['round']}: {pending['slices']} slices of {len(pending['cases'])} cases wait for "
            f"annotation in {pending['batch']}; save the corrected masks in its masks/ folder, then "
            f"'nnal ingest {root}' and 'nnal run --output {root}'")


def format_status(status: dict[str, Any]) -> str:
    lines = [f"experiment {status['experiment']}: strategy {status['strategy']}, oracle {status['oracle']}",
             f"round {status['round']} of {status['rounds']}, last phase done: {status['phase'] or 'none'}",
             f"labeled slices: {status['labeled_slices']}"
             + "".join(f", {name} in {n}" for name, n in status["labeled_slices_per_class"].items())]
    pending = status["pending"]
    if pending is not None:
        cases = ", ".join(f"{c} ({n})" for c, n in pending["cases"].items())
        lines.append(f"pending: round {pending['round']}, {pending['slices']} slices to annotate in {cases}")
        lines.append(f"  batch: {pending['batch'] or 'not exported yet (nnal query)'}; masks saved: "
                     f"{len(pending['masks_saved'])} of {len(pending['cases'])}")
    else:
        lines.append("pending: nothing waits for annotation")
    for r, seconds in status["seconds_per_round"].items():
        person = seconds.get("annotation")
        lines.append(f"round {r}: {seconds.get('machine', 0.0)} s machine"
                     + ("" if person is None else f", {person} s annotation"))
    dice = status["last_dice"]
    lines.append("last Dice: none (no test case with labels evaluated yet)" if dice is None else
                 f"last Dice: {dice['mean']} (round {dice['round']}, mean over {dice['test_cases']} test cases)")
    return "\n".join(lines)

