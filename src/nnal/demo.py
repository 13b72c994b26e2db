"""``nnal demo``: Random against USIMF on the bundled Hippocampus copy, in minutes on two CPU cores."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from nnal.analysis.extras import build_full_report
from nnal.analysis.tables import dice_table
from nnal.analysis.verdict import report_verdict
from nnal.backend.predictions import checkpoint_predictions
from nnal.config import Config
from nnal.errors import DatasetError
from nnal.loop import run_experiment

# package data, so that the demo runs from a wheel as from a clone (where data/Task04_Hippocampus links here)
BUNDLED = Path(__file__).resolve().parent / "data" / "Task04_Hippocampus"
STRATEGIES = ("random", "usimf")


def bundled_dataset() -> Path:
    """The MSD Hippocampus copy shipped inside the package; one line naming it when an install left it out."""
    if not (BUNDLED / "dataset.json").is_file():
        raise DatasetError(f"{BUNDLED}: the demo's bundled Hippocampus data are missing from this nnal install; "
                           "reinstall nnal from its wheel or a clone (pip install -e .)")
    return BUNDLED


def demo_config(strategy: str, dataset: Path | None = None) -> Config:
    """The demo's schedule: the cpu preset on a pool of 25 training cases, 10 test cases, 3 rounds, T=5."""
    return Config(dataset=str(dataset or bundled_dataset()), strategy=strategy, preset="cpu", rounds=3, initial=100,
                  budget=100, pool_cases=25, test_cases=10, mc_passes=5, device="cpu")


def run_demo(output: Path, progress: bool = True) -> pd.DataFrame:
    """Run both strategies (sharing preprocessing and round 0), print and return the Dice table."""
    output = Path(output)
    start = time.perf_counter()
    frames = []
    first = None
    for strategy in STRATEGIES:
        folder = output / strategy
        frames.append(run_experiment(demo_config(strategy), folder, cache=output / "nnunet-cache",
                                     share_round0=first, progress=progress))
        first = first or folder
    results = pd.concat(frames, ignore_index=True)
    results.to_csv(output / "results.csv", index=False)
    page = build_full_report([output / s for s in STRATEGIES], output / "report", predictions=checkpoint_predictions)
    print(dice_table(results))
    print(f"results: {output / 'results.csv'}")
    print(f"report:  {page}  ({time.perf_counter() - start:.0f} s in all)")
    for line in report_verdict(page):  # the report's answer, also where no browser opens the page
        print(line)
    return results
