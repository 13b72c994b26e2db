"""The low-label regime on a GPU: Random, foreground-aware random, BALD and USIMF over 3 seeds on the full fold pool
at a short GPU schedule, with the full-label reference; one command, sized to finish within 8 minutes on one H100 or
H200 (figures below).

The regime (initial labeled slices, per-round budget, rounds) is the one ``nnal regimes`` proposed for the CPU
comparison (``--regimes results/low-label-cpu/regimes/regimes.json --regime medium``), or given with ``--initial
--budget --rounds``. The schedule: nnU-Net's planned batch, no augmentation (on the GPU the augmentation workers,
not the GPU, bound a round: DESIGN.md), 500 iterations for round 0, 100 per round, 2,000 for the reference, T = 10.

Sizing, from an H100 run of this project (``results/gpu-foundation-NVIDIA_H100_80GB_HBM3.json``: 200 iterations with
augmentation in 15-17 s, a round's evaluation of 52 cases under 1 s; planning and preprocessing 41 s): without
augmentation an iteration is GPU-bound, so 3 round 0s, 12 x R fine-tuning rounds of 100 iterations and one reference
of 2,000 fit in a few minutes; USIMF's scoring of the 7,4k-slice pool (T = 10 and 10k-entry gradient embeddings)
is the largest unknown and is measured here.

Writes ``--json`` (device name, config, git commit, wall seconds, seconds per phase, final Dice and label savings per
strategy) and ``--archive`` (a .tar.gz of the experiment folders without checkpoints and score files, with the
report's tables). ``--dry-run`` runs the same on nnal's fake model (the test suite's check); ``--tiny`` on a few
cases with a few iterations (a CPU check of the real path).

    python benchmarks/gpu_protocol.py --regimes results/low-label-cpu/regimes/regimes.json --output /tmp/gp \\
        --json $OUT/gpu-protocol.json --archive $OUT/gpu-protocol.tar.gz
"""

from __future__ import annotations

import argparse
import json
import platform
import tarfile
import time
from pathlib import Path

import yaml

from nnal.demo import BUNDLED
from nnal.experiment import ExperimentFolder
from nnal.grid import run_grid
from nnal.layout import experiment_folders
from nnal.provenance import git_commit

STRATEGIES = ["random", "random-fg", "bald", "usimf"]
SEEDS = [0, 1, 2]
SCHEDULE = dict(preset="gpu-short", device="auto", augmentation=False, iterations_per_epoch=50, epochs_initial=10,
                epochs_per_round=2, full_epochs=40, mc_passes=10, num_processes=8)
TINY = dict(device="cpu", pool_cases=4, test_cases=2, iterations_per_epoch=2, epochs_initial=2, epochs_per_round=1,
            full_epochs=2, mc_passes=2, batch_size=8, num_processes=0, score_batch_size=64)
KEPT = ("config.yaml", "environment.json", "state.json", "results.csv", "pool.csv", "test_cases.txt")


def regime_settings(args: argparse.Namespace) -> dict:
    """initial, budget and rounds: from ``--regimes`` (a regimes.json of ``nnal regimes``) or the flags."""
    if args.regimes is not None:
        regimes = {r["name"]: r for r in json.loads(args.regimes.read_text())["regimes"]}
        chosen = regimes[args.regime]
        return {"initial": chosen["initial"], "budget": chosen["budget"], "rounds": chosen["rounds"]}
    return {"initial": args.initial, "budget": args.budget, "rounds": args.rounds}


def grid(args: argparse.Namespace) -> dict:
    settings = {**SCHEDULE, **regime_settings(args), **(TINY if args.tiny or args.dry_run else {})}
    return {"datasets": [str(args.dataset)], "strategies": STRATEGIES, "folds": [0], "seeds": SEEDS,
            "settings": settings, "full_reference": True}


def summary(output: Path) -> dict:
    """Final Dice per strategy and seed, seconds per phase per experiment, and the label-savings lines."""
    from nnal.analysis.load import load_results
    from nnal.analysis.savings import label_savings, savings_lines

    folders = experiment_folders(output)
    results = load_results(folders)
    means = results[results["label"] == "mean"]
    last = means[means["round"] == means.groupby("experiment")["round"].transform("max")]
    final = last.groupby(["variant", "seed"])["dice"].mean().round(4)
    seconds = {str(f.relative_to(output)): ExperimentFolder(f).state.data.get("seconds", {}) for f in folders}
    return {"final_dice": {f"{v} s{s}": d for (v, s), d in final.items()},
            "label_savings": savings_lines(label_savings(results)), "seconds_per_phase": seconds}


def archive(output: Path, path: Path) -> None:
    """The experiment folders' small files (no checkpoints, no score files) and the report's tables."""
    with tarfile.open(path, "w:gz") as tar:
        for folder in experiment_folders(output):
            for name in KEPT:
                if (folder / name).is_file():
                    tar.add(folder / name, arcname=str((folder / name).relative_to(output)))
            for selection in sorted(folder.glob("round_*/selection.csv")):
                tar.add(selection, arcname=str(selection.relative_to(output)))
        for table in sorted((output / "report" / "tables").glob("*.csv")):
            tar.add(table, arcname=str(table.relative_to(output)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=BUNDLED)
    parser.add_argument("--regimes", type=Path)
    parser.add_argument("--regime", default="medium")
    parser.add_argument("--initial", type=int, default=16)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--archive", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="nnal's fake model (seconds)")
    parser.add_argument("--tiny", action="store_true", help="a few cases and iterations (a CPU check)")
    args = parser.parse_args()
    spec = grid(args)
    args.output.mkdir(parents=True, exist_ok=True)
    grid_file = args.output / "gpu-protocol-grid.yaml"
    grid_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    start = time.perf_counter()
    status = run_grid(grid_file, args.output / "run", executor="local", backend="fake" if args.dry_run else "nnunet",
                      report=True)
    wall = round(time.perf_counter() - start, 1)
    environment = json.loads((experiment_folders(args.output / "run")[0] / "environment.json").read_text())
    result = {"benchmark": "gpu_protocol", "device": environment.get("device_name", environment.get("device")),
              "dry_run": args.dry_run, "tiny": args.tiny, "grid": spec, "wall_seconds": wall,
              "failed": status["failed"], "git_commit": git_commit(), "python": platform.python_version(),
              "environment": environment, **summary(args.output / "run")}
    print(json.dumps({k: result[k] for k in ("device", "wall_seconds", "failed", "final_dice")}, indent=1))
    for line in result["label_savings"]:
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.archive:
        archive(args.output / "run", args.archive)


if __name__ == "__main__":
    main()
