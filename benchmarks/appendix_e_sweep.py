"""Appendix E's share of duplicates selected, against eta and the kernel, re-selected on a round's saved scores.

For each USIMF experiment folder of a redundancy run (``examples/appendix-e-paper-grid.yaml``), round R's
``scores.npz`` holds the query set, the Fisher-sampled gradient embeddings and the Fisher; the selection is re-run
with FLQMI for every eta and two kernels on those same embeddings: the Fisher kernel g_u^T F^-1 g_q (USIMF, with the
folder's own damping) and the cosine kernel (USIMC's Eq. 2). A folder with ``selection: uniform`` contributes its
recorded batch. Every row counts the selected slices that belong to the duplicated case (its original or a copy)
and the query draws that do. Writes a CSV and a JSON with the git commit.

    python benchmarks/appendix_e_sweep.py runs/appendix-e-paper --json results/appendix-e-paper-cpu/sweep.json \\
        --csv results/appendix-e-paper-cpu/sweep.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from nnal.experiment import ExperimentFolder
from nnal.layout import experiment_folders
from nnal.loop import phase_seed
from nnal.provenance import git_commit
from nnal.strategies import get_strategy

ETAS = (0.0, 0.1, 1.0, 10.0)


def duplicated_ids(folder: ExperimentFolder, case: str) -> set[int]:
    """Ids of every pool slice of the duplicated case, its originals and its copies."""
    pool = pd.read_csv(folder.pool_file)
    return set(pool.loc[pool["case"] == case, "id"].astype(int))


def sweep_folder(path: Path, round_: int) -> list[dict]:
    folder = ExperimentFolder(path)
    config = yaml.safe_load(folder.config_file.read_text())
    options = config.get("strategy_options") or {}
    case = config["redundancy"]["case"]
    dup = duplicated_ids(folder, case)
    with np.load(folder.scores_file(round_)) as data:
        scores = dict(data)
    ids = scores["ids"]
    query_from_case = int(np.isin(ids[scores["query"]], list(dup)).sum())
    base = {"experiment": config["experiment"], "kernel_source": _source(options), "round": round_,
            "Q": len(scores["query"]), "query_from_case": query_from_case,
            "query_share": query_from_case / len(scores["query"]), "pool": len(ids)}
    budget = len(pd.read_csv(folder.selection_file(round_)))
    if options.get("selection") == "uniform":
        chosen = pd.read_csv(folder.selection_file(round_))["id"].to_numpy()
        return [{**base, "selection": "uniform", "kernel": "-", "eta": None, **_count(chosen, dup)}]
    rows = []
    usimf, usimc = get_strategy("usimf"), get_strategy("usimc")
    damping = options.get("damping", usimf.defaults["damping"])
    for eta in ETAS:
        for kernel, strategy, extra in (("fisher", usimf, {"damping": damping}), ("cosine", usimc, {})):
            rng = np.random.default_rng(phase_seed(config["seed"], round_, "select"))  # the loop's own draw
            chosen = strategy.select(scores, budget, rng, eta=eta, **extra)
            rows.append({**base, "selection": "flqmi", "kernel": kernel, "eta": eta, **_count(chosen, dup)})
    return rows


def _source(options: dict) -> str:
    return "the code's" if options.get("fisher_estimate") == "first-sample" else "nnal's"


def _count(chosen: np.ndarray, dup: set[int]) -> dict:
    from_case = int(np.isin(np.asarray(chosen), list(dup)).sum())
    return {"batch": len(chosen), "batch_from_case": from_case, "batch_share": from_case / len(chosen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the grid's output folder")
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for path in experiment_folders(args.output):
        if ExperimentFolder(path).scores_file(args.round).is_file():
            rows.extend(sweep_folder(path, args.round))
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "etas": ETAS, "git_commit": git_commit()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
