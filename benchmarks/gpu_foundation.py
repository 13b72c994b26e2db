"""The foundation's GPU check: a short Hippocampus fold-0 `random` experiment, preset gpu-short, 4 rounds.

Writes one JSON (device name, config, git hash, versions, Dice per round, seconds per phase) to
``results/`` (and to ``$OUT`` when set). Run from the repo root:

    python benchmarks/gpu_foundation.py [--tiny] [--output DIR]

``--tiny`` shrinks everything to a CPU smoke test of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test with a tiny schedule")
    parser.add_argument("--output", type=Path, default=Path("/tmp/nnal-gpu-foundation"))
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    import pandas as pd
    import torch

    from nnal.analysis.tables import mean_dice_per_round
    from nnal.config import Config
    from nnal.loop import run_experiment

    overrides = dict(pool_cases=4, test_cases=2, batch_size=8, iterations_per_epoch=3, epochs_initial=1,
                     epochs_per_round=1, initial=20, budget=10, device="cpu") if args.tiny else {}
    settings = dict(dataset=str(REPO / "data" / "Task04_Hippocampus"), strategy="random", fold=0, seed=0,
                    preset="gpu-short", rounds=args.rounds, device="auto",
                    num_processes=int(os.environ.get("nnUNet_n_proc_DA", "12")))
    config = Config(**{**settings, **overrides})
    if args.output.exists():
        shutil.rmtree(args.output)
    start = time.perf_counter()
    results = run_experiment(config, args.output / "exp", cache=args.output / "cache", progress=False)
    wall = time.perf_counter() - start

    state = json.loads((args.output / "exp" / "state.json").read_text())
    env = json.loads((args.output / "exp" / "environment.json").read_text())
    per_round = mean_dice_per_round(results)
    per_class = (results[results["label"] != "mean"].groupby(["round", "label"])["dice"].mean()
                 .unstack().reset_index().to_dict(orient="records"))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.tiny else "cpu"
    record = {
        "benchmark": "gpu_foundation",
        "device": device,
        "git_commit": os.environ.get("NNAL_GIT_COMMIT") or env.get("git_commit"),
        "config": config.resolved().to_dict(),
        "environment": env,
        "wall_seconds": round(wall, 1),
        "mean_dice_per_round": per_round.to_dict(orient="records"),
        "dice_per_round_and_class": per_class,
        "seconds_per_phase": state["seconds"],
        "test_cases": int(results["case"].nunique()),
        "pool_slices": int(len(pd.read_csv(args.output / "exp" / "pool.csv"))),
    }
    name = f"gpu-foundation-{device.replace(' ', '_')}.json" if not args.tiny else "gpu-foundation-tiny-cpu.json"
    text = json.dumps(record, indent=1)
    targets = [Path(os.environ["OUT"])] if os.environ.get("OUT") else [REPO / "results"]
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
