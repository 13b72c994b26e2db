"""Does a CPU protocol train each round close to convergence? Run it and the same with doubled training.

For each (fold, seed) the protocol's schedule (a grid file's ``settings``) runs Random twice: as given, and
with ``epochs_initial`` and ``epochs_per_round`` doubled. The round-0 model (the initial labeled slices) and
the final model are compared. A protocol measures selection rather than training luck when doubling changes the
mean foreground Dice by less than ``--tolerance`` (0.02) everywhere.

    python benchmarks/convergence.py examples/hippocampus-cpu-grid.yaml --folds 0 1 --seeds 0 1 \
        --work /tmp/convergence --out results/cpu-protocol-convergence.json
    python benchmarks/convergence.py --table results/cpu-protocol-convergence.json

``--full`` checks the grid's full-label reference instead: it trains once, from scratch, on every pool slice (with
the grid's ``full_reference`` settings over ``settings``), so it is run as given and with its ``full_epochs``
doubled, and its Dice compared the same way (the "round 0" columns; there is no later round).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import pandas as pd

from nnal.config import build
from nnal.dataset import locate_dataset
from nnal.grid.spec import load_grid, settings_for
from nnal.loop import run_experiment


def mean_dice(results: pd.DataFrame) -> dict[int, float]:
    rows = results[results["label"] == "mean"]
    return {int(r): float(v) for r, v in rows.groupby("round")["dice"].mean().items()}


def converged(rows: list[dict], tolerance: float) -> bool:
    """Doubling the training changed neither the round-0 nor the final Dice by ``tolerance`` or more, anywhere."""
    return all(abs(r["round0_change"]) < tolerance and abs(r["final_change"]) < tolerance for r in rows)


def merge(parts: list[Path], out: Path) -> dict:
    """One result from runs split over processes (one per fold, say): their rows, the check over all of them."""
    loaded = [json.loads(p.read_text()) for p in parts]
    summary = {**loaded[0], "rows": [row for part in loaded for row in part["rows"]],
               "merged_from": [str(p) for p in parts],
               "wall_seconds": max(part.get("wall_seconds", 0.0) for part in loaded)}
    summary["converged"] = converged(summary["rows"], summary.setdefault("tolerance", 0.02))
    out.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def markdown_table(result: dict) -> str:
    """The rows as the table in docs/grids.md (printed from the result, never typed)."""
    lines = ["| fold | seed | round 0 | doubled | change | final | doubled | change |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['fold']} | {r['seed']} | {r['round0_dice']:.4f} | {r['round0_dice_doubled']:.4f} | "
                     f"{r['round0_change']:+.4f} | {r['final_dice']:.4f} | {r['final_dice_doubled']:.4f} | "
                     f"{r['final_change']:+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, nargs="?", help="a grid file whose settings are the protocol")
    parser.add_argument("--merge", type=Path, nargs="+", help="instead of running: merge these results into --out")
    parser.add_argument("--table", type=Path, help="instead of running: print this result as a markdown table")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--full", action="store_true", help="check the full-label reference instead of Random")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnal-convergence"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--round0-from", type=Path, default=None,
                        help="a --work folder of an earlier run with the same round-0 settings: its trained round 0s "
                             "(protocol and doubled) are adopted, only the fine-tuning rounds run")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.table:
        result = json.loads(args.table.read_text())
        print(markdown_table(result))
        return result
    spec = load_grid(args.grid)
    strategy = "full" if args.full else "random"
    settings = settings_for(spec, strategy)
    dataset = str(locate_dataset(spec.datasets[0], base=args.grid.parent))  # as `nnal grid` finds it
    rows = []
    start = time.perf_counter()
    for fold in args.folds:
        for seed in args.seeds:
            base = build({**settings, "dataset": dataset, "strategy": strategy, "fold": fold, "seed": seed},
                         str(args.grid)).resolved()
            doubled = base.replace(epochs_initial=2 * base.epochs_initial, epochs_per_round=2 * base.epochs_per_round,
                                   full_epochs=2 * base.full_epochs)
            dice = {}
            for name, config in (("protocol", base), ("doubled", doubled)):
                t = time.perf_counter()
                folder = args.work / f"f{fold}-s{seed}-{'full-' if args.full else ''}{name}"
                shared = args.round0_from / folder.name if args.round0_from else None
                dice[name] = mean_dice(run_experiment(config, folder, cache=args.work / "cache", progress=False,
                                                      share_round0=shared))
                dice[f"{name}_seconds"] = round(time.perf_counter() - t, 1)
            last = max(dice["protocol"])
            row = {"fold": fold, "seed": seed,
                   "round0_dice": round(dice["protocol"][0], 4), "round0_dice_doubled": round(dice["doubled"][0], 4),
                   "final_round": last, "final_dice": round(dice["protocol"][last], 4),
                   "final_dice_doubled": round(dice["doubled"][last], 4),
                   "seconds": dice["protocol_seconds"], "seconds_doubled": dice["doubled_seconds"]}
            row["round0_change"] = round(row["round0_dice_doubled"] - row["round0_dice"], 4)
            row["final_change"] = round(row["final_dice_doubled"] - row["final_dice"], 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:  # after every (fold, seed): a cut-short run keeps what it measured
                args.out.write_text(json.dumps({"partial": True, "rows": rows}, indent=1) + "\n")
    ok = converged(rows, args.tolerance)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {"benchmark": "cpu_protocol_convergence", "strategy": strategy, "grid": str(args.grid),
               "settings": settings,
               "round0_from": str(args.round0_from) if args.round0_from else None,
               "tolerance": args.tolerance, "converged": ok, "rows": rows,
               "wall_seconds": round(time.perf_counter() - start, 1), "git_commit": commit,
               "machine": {"python": platform.python_version(), "processor": platform.processor() or "cpu"}}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"converged within {args.tolerance}: {ok}")
    return summary


if __name__ == "__main__":
    main()
