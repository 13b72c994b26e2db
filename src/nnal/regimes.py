"""``nnal regimes``: Random's learning curve on a dataset, and label regimes proposed from it.

Random runs as the AL protocol runs it (round 0 on ``start`` random slices, then fine-tuning rounds), with budgets
that double the labeled set every round (start, 2 start, 4 start, ... up to the whole pool), over a few seeds, plus
the full-label reference per seed: one grid (Ray, resumable, with its progress), run into ``OUTPUT/curve``. Its
mean curve against labeled slices, read as a fraction of the reference's Dice, places each regime: it starts where
Random is clearly below the reference and ends where Random approaches it (docs/regimes.md gives the thresholds).
Each regime is written as a grid file the user can run: the strategies to compare, the regime's initial set and
per-round budget, and the seeds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from nnal.errors import ConfigError, DatasetError

# (name, fraction of the reference's Dice where Random's curve starts the regime, where it ends)
# medium starts at 70%, not at low's end: a round 0 read off the seed mean at 85% lands above 85% for a healthy
# seed (results/low-label-cpu: 96% at 357 slices), which leaves nothing for selection to win
REGIMES = (("low", 0.50, 0.85), ("medium", 0.70, 0.95), ("high", 0.90, 0.98))
ROUNDS = 4  # selection rounds of each proposed regime
COMPARISON = ("random", "random-fg", "entropy", "bald", "coreset", "badge", "usimc", "usimf", "clasp-pe")


@dataclass(frozen=True)
class Regime:
    name: str
    start_fraction: float
    end_fraction: float
    initial: int  # labeled slices of round 0: where Random reaches ``start_fraction`` of the reference
    budget: int  # per round, so that ``initial + ROUNDS * budget`` reaches ``end_fraction``
    rounds: int
    reached: bool  # whether Random's curve reached ``end_fraction`` within the pool


def doubling_sizes(start: int, pool: int) -> list[int]:
    """start, 2 start, 4 start, ... while below the pool, then the pool itself."""
    if start < 1:
        raise ConfigError(f"--start: must be at least 1 slice, got {start}")
    if start > pool:
        raise ConfigError(f"--start: {start} slices, more than the fold's pool of at most {pool}")
    sizes = [start]
    while sizes[-1] * 2 < pool:
        sizes.append(sizes[-1] * 2)
    return [*sizes, pool]


def curve_grid(dataset: str, *, fold: int, seeds: list[int], sizes: list[int],
               settings: dict) -> dict:
    """The grid of Random's curve: round 0 on ``sizes[0]``, then budgets that take the labeled set through
    ``sizes`` (the last round takes the rest of the pool), plus the full-label reference."""
    budgets = [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
    return {"datasets": [dataset], "strategies": ["random"], "folds": [fold], "seeds": list(seeds),
            "settings": {**settings, "initial": sizes[0], "budget": budgets or [1], "rounds": len(budgets)},
            "full_reference": True}


def random_curve(results: pd.DataFrame) -> pd.DataFrame:
    """Per labeled-set size: Random's mean foreground Dice over seeds, its SD, and the reference's mean Dice.

    Columns: n_labeled, dice_mean, dice_std, n (seeds), reference, fraction (dice_mean / reference)."""
    means = results[results["label"] == "mean"]
    per = means.groupby(["strategy", "seed", "round"], as_index=False).agg(
        n_labeled=("n_labeled", "first"), dice=("dice", "mean"))
    reference = float(per.loc[per["strategy"] == "full", "dice"].mean())
    random = per[per["strategy"] == "random"]
    curve = random.groupby("round", as_index=False).agg(n_labeled=("n_labeled", "mean"), dice_mean=("dice", "mean"),
                                                         dice_std=("dice", "std"), n=("dice", "count"))
    return curve.assign(reference=reference, fraction=curve["dice_mean"] / reference).drop(columns="round")


def size_at(curve: pd.DataFrame, fraction: float) -> float | None:
    """Labeled slices where the mean curve first reaches ``fraction`` of the reference, interpolated linearly in
    log(slices) between the two sizes that bracket it; None when it never does."""
    n = curve["n_labeled"].to_numpy(dtype=np.float64)
    x, y = np.log(n), curve["fraction"].to_numpy(dtype=np.float64)
    if y[0] >= fraction:
        return float(n[0])
    for k in range(1, len(y)):
        if y[k] >= fraction:
            t = (fraction - y[k - 1]) / (y[k] - y[k - 1])
            return float(np.exp(x[k - 1] + t * (x[k] - x[k - 1])))
    return None


def propose(curve: pd.DataFrame, rounds: int = ROUNDS) -> list[Regime]:
    """The regimes of :data:`REGIMES` on ``curve``; a regime whose end Random never reaches runs to the pool."""
    pool = int(curve["n_labeled"].max())
    out = []
    for name, start, end in REGIMES:
        first = size_at(curve, start) or float(curve["n_labeled"].min())
        last = size_at(curve, end)
        initial = max(1, int(round(first)))
        target = pool if last is None else max(initial + rounds, int(math.ceil(last)))
        budget = max(1, int(math.ceil((min(target, pool) - initial) / rounds)))
        out.append(Regime(name, start, end, initial, budget, rounds, last is not None))
    return out


def regime_grid(regime: Regime, curve_spec: dict, *, seeds: list[int], strategies: list[str]) -> dict:
    """A grid file comparing ``strategies`` in ``regime`` on the curve's dataset, fold and settings."""
    settings = {k: v for k, v in curve_spec["settings"].items() if k not in ("initial", "budget", "rounds")}
    return {"datasets": curve_spec["datasets"], "strategies": strategies, "folds": curve_spec["folds"],
            "seeds": list(seeds), "full_reference": True,
            "settings": {**settings, "initial": regime.initial, "budget": regime.budget, "rounds": regime.rounds}}


def write_proposal(output: Path, curve: pd.DataFrame, regimes: list[Regime], curve_spec: dict, *,
                   seeds: list[int], strategies: list[str]) -> list[Path]:
    """``curve.csv``, ``curve.png``, ``regimes.json`` and one ``regime-<name>-grid.yaml`` per regime."""
    from nnal.atomic import atomic_write_json, atomic_write_text

    atomic_write_text(output / "curve.csv", curve.to_csv(index=False))
    _plot(curve, regimes, output / "curve.png")
    atomic_write_json(output / "regimes.json", {"curve": curve.to_dict(orient="records"),
                                                "regimes": [asdict(r) for r in regimes], "thresholds": REGIMES})
    grids = []
    for regime in regimes:
        path = output / f"regime-{regime.name}-grid.yaml"
        header = (f"# nnal regimes: the {regime.name} regime (Random from {regime.start_fraction:.0%} to "
                  f"{regime.end_fraction:.0%} of the full-label Dice"
                  + ("" if regime.reached else "; Random does not reach it within the pool") + ")\n")
        atomic_write_text(path, header + yaml.safe_dump(regime_grid(regime, curve_spec, seeds=seeds,
                                                                    strategies=strategies), sort_keys=False))
        grids.append(path)
    return grids


def _plot(curve: pd.DataFrame, regimes: list[Regime], path: Path) -> None:
    import matplotlib
    from matplotlib.figure import Figure

    # a Figure of its own (no pyplot, no global backend) drawn with matplotlib's defaults: nnU-Net's training
    # changes the global style of a process (seaborn.set(font_scale=2.5))
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        fig = Figure(figsize=(7, 4), layout="constrained")
        _draw_curve(fig.add_subplot(), curve, regimes)
        fig.savefig(path, dpi=110)


def _draw_curve(ax, curve: pd.DataFrame, regimes: list[Regime]) -> None:
    ax.errorbar(curve["n_labeled"], curve["dice_mean"], yerr=curve["dice_std"].fillna(0), marker="o",
                label="random (mean ± SD over seeds)")
    ax.axhline(curve["reference"].iloc[0], ls="--", color="black", label="full-label reference")
    for regime, color in zip(regimes, ("#1b9e77", "#d95f02", "#7570b3"), strict=False):
        ax.axvspan(regime.initial, regime.initial + regime.rounds * regime.budget, color=color, alpha=0.12,
                   label=f"{regime.name}: {regime.initial} + {regime.rounds} x {regime.budget}")
    ax.set_xscale("log")
    ax.set_xlabel("labeled slices (log scale)")
    ax.set_ylabel("mean foreground Dice")
    ax.legend(fontsize=8, loc="lower right")


def pool_upper_bound(dataset, pool_cases: list[str]) -> int:
    """At most this many slices in the pool of ``pool_cases``, from the image headers: nnU-Net's 2d plan slices along
    the axis of largest spacing (its first, on ties), and cropping to the body only removes slices."""
    import nibabel as nib

    total = 0
    by_name = {case.name: case for case in dataset.cases}
    for name in pool_cases:
        header = nib.load(str(by_name[name].label or by_name[name].images[0])).header
        spacing = header.get_zooms()[:3]
        total += int(header.get_data_shape()[int(np.argmax(spacing))])
    if total == 0:
        raise DatasetError(f"{dataset.root}: the fold's pool is empty")
    return total


def plan_curve(dataset_text: str, *, fold: int, seeds: list[int], start: int, sizes: list[int] | None,
               settings: dict, backend: str, cache: Path) -> dict:
    """The curve's grid, every input checked first (one line each): the dataset, a fold with a pool, sizes
    within the pool (the smallest pool any seed draws)."""
    from nnal.config import build
    from nnal.dataset import load_dataset, locate_dataset, validate
    from nnal.grid.run import backend_factory
    from nnal.run_checks import fold_cases

    path = str(locate_dataset(dataset_text))
    dataset = load_dataset(path)
    validate(dataset)
    splits = backend_factory(backend).splits(dataset, cache)
    if not 0 <= fold < len(splits) or not splits[fold]["train"]:
        raise ConfigError(f"--fold: {fold} has no pool (no training cases) in {dataset.root}'s split")
    pools = [fold_cases(splits[fold], build({**settings, "dataset": path, "fold": fold, "seed": s}))[0]
             for s in seeds]
    pool = min(pool_upper_bound(dataset, cases) for cases in pools)
    if sizes is None:
        sizes = doubling_sizes(start, pool)
    elif sorted(set(sizes)) != list(sizes) or sizes[0] < 1:
        raise ConfigError(f"--sizes: must increase and be at least 1, got {sizes}")
    elif sizes[-1] > pool:
        raise ConfigError(f"--sizes: {sizes[-1]} slices, more than the fold's pool of at most {pool}")
    return curve_grid(path, fold=fold, seeds=seeds, sizes=list(sizes), settings=settings)


def run_regimes(dataset: str, output: Path, *, fold: int, seeds: list[int], start: int, sizes: list[int] | None,
                settings: dict, strategies: list[str], comparison_seeds: list[int], executor: str = "ray",
                dry_run: bool = False, emit=print) -> list[Path]:
    """Random's curve as a grid in ``output/curve`` (resumed if there), then the proposed regimes' grid files."""
    from nnal.atomic import atomic_write_text
    from nnal.experiment import ExperimentFolder
    from nnal.grid import run_grid
    from nnal.layout import experiment_folders
    from nnal.preflight import check_writable_folder
    from nnal.strategies import get_strategy

    output = Path(output)
    check_writable_folder(output, "output")
    for name in strategies:
        get_strategy(name)
    spec = plan_curve(dataset, fold=fold, seeds=seeds, start=start, sizes=sizes, settings=settings,
                      backend="fake" if dry_run else "nnunet", cache=output / "curve" / "nnunet-cache")
    grid_file = output / "curve-grid.yaml"
    text = "# nnal regimes: Random's learning curve (doubling labeled sets) and the full-label reference\n" + \
        yaml.safe_dump(spec, sort_keys=False)
    if grid_file.is_file() and grid_file.read_text() != text:
        raise ConfigError(f"{grid_file}: this output holds a curve of other settings; use another --output")
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(grid_file, text)
    status = run_grid(grid_file, output / "curve", executor=executor, backend="fake" if dry_run else "nnunet",
                      report=True, emit=emit)
    if status["failed"]:
        raise ConfigError(f"{output / 'curve' / 'grid.json'}: {status['failed']} experiment(s) of the curve failed; "
                          "fix and run the same command again to resume")
    results = pd.concat([ExperimentFolder(f).read_results() for f in experiment_folders(output / "curve")],
                        ignore_index=True)
    curve = random_curve(results)
    return write_proposal(output, curve, propose(curve), spec, seeds=comparison_seeds, strategies=strategies)
