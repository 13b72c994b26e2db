"""Expected GPU hours of a grid, from per-round times measured on a GPU (a ``gpu_foundation`` result).

The measured run gives seconds per training phase and its iterations (iterations_per_epoch x epochs); a least-
squares line ``seconds = start + per_iteration x iterations`` is fitted through them. The grid's experiments are
expanded as ``nnal grid`` would run them: a round 0 trained once per round-0 group, every fine-tuning round per
experiment, one training of the full reference. Evaluation adds the measured mean seconds per round. Scoring is
not in the estimate: the measured run is Random's, and on the GPU a round's scoring is one pass over the pool
against thousands of training iterations; the estimate says so.

    python benchmarks/gpu_hours.py examples/hippocampus-paper-grid.yaml \
        results/gpu-foundation-NVIDIA_H100_80GB_HBM3.json --out results/gpu-hours-hippocampus-paper.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nnal.grid.spec import expand, load_grid
from nnal.provenance import git_commit


def per_iteration_fit(measured: dict) -> tuple[float, float]:
    """``(start_s, per_iteration_s)`` through the measured training phases."""
    config = measured["config"]
    iterations, seconds = [], []
    for round_, phases in measured["seconds_per_phase"].items():
        epochs = config["epochs_initial"] if int(round_) == 0 else config["epochs_per_round"]
        iterations.append(epochs * config["iterations_per_epoch"])
        seconds.append(phases["train"])
    slope, start = np.polyfit(np.asarray(iterations, float), np.asarray(seconds, float), 1)
    return float(start), float(slope)


def grid_trainings(grid: Path) -> list[tuple[str, int]]:
    """Every training the grid runs, as (what, iterations), round 0 counted once per group."""
    experiments = expand(load_grid(grid), str(grid), base=Path(grid).parent)
    out: list[tuple[str, int]] = []
    seen_groups: set[str] = set()
    for exp in experiments:
        c = exp.config.resolved()
        if exp.round0_group is None:  # the full reference: one training on every pool slice
            out.append(("full reference", c.full_epochs * c.iterations_per_epoch))
            continue
        if exp.round0_group not in seen_groups:
            seen_groups.add(exp.round0_group)
            out.append(("round 0", c.epochs_initial * c.iterations_per_epoch))
        out.extend(("fine-tuning round", c.epochs_per_round * c.iterations_per_epoch) for _ in range(c.rounds))
    return out


def estimate(grid: Path, measured_file: Path) -> dict:
    measured = json.loads(measured_file.read_text())
    start, per_iteration = per_iteration_fit(measured)
    evaluate = float(np.mean([p["evaluate"] for p in measured["seconds_per_phase"].values()]))
    trainings = grid_trainings(grid)
    train_s = sum(start + per_iteration * n for _, n in trainings)
    evaluate_s = evaluate * len(trainings)
    counts: dict[str, int] = {}
    for what, _ in trainings:
        counts[what] = counts.get(what, 0) + 1
    return {
        "benchmark": "gpu_hours", "grid": str(grid), "measured": str(measured_file),
        "device": measured["device"], "measured_git_commit": measured.get("git_commit"),
        "fit": {"start_s": round(start, 2), "per_iteration_s": round(per_iteration, 5)},
        "trainings": counts, "iterations": int(sum(n for _, n in trainings)),
        "train_hours": round(train_s / 3600, 1), "evaluate_hours": round(evaluate_s / 3600, 2),
        "gpu_hours": round((train_s + evaluate_s) / 3600, 1),
        "not_included": "scoring (the measured run is Random's; one pass over the pool per round on the GPU)",
        "git_commit": git_commit(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path)
    parser.add_argument("measured", type=Path, help="a gpu_foundation result JSON (results/gpu-foundation-*.json)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = estimate(args.grid, args.measured)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
