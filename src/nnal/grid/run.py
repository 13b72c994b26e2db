"""Run a grid: preprocess each dataset once, train each round-0 group once, then every experiment, on Ray or here.

On Ray each step is one task whose arguments are the results of the steps it needs, so Ray itself orders them
(an experiment waits for its round-0 group, a group for its dataset) and retries failures; no scheduler of our
own. ``local`` runs the same steps in the same order in this process, for debugging. Finished experiments are
skipped and cut-short ones resume (the experiment folders are the record); a failing experiment is retried
``retries`` times, then reported, and the others go on.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnal.atomic import atomic_write_json
from nnal.backend.factories import BACKENDS
from nnal.config import ROUND0_FIELDS, build
from nnal.dataset import load_dataset
from nnal.experiment import ExperimentFolder
from nnal.grid.progress import Progress
from nnal.grid.spec import GridExperiment
from nnal.seams import BackendFactory

# settings a shared round 0 takes from its experiments besides ROUND0_FIELDS: where and how fast it runs
ROUND0_RUNTIME = ("device", "num_processes", "score_batch_size")

@dataclass
class GridRun:
    """Where a grid runs and how: the output folder, the executor and its limits."""

    output: Path
    executor: str = "ray"  # ray | local
    address: str | None = None  # an existing Ray cluster; None starts a local instance sized to the machine
    max_parallel: int | None = None
    backend: str = "nnunet"  # fake: the test double, a dry run of the grid in seconds
    retries: int = 1
    on_progress: Callable[[str], None] = print
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.output / "nnunet-cache"

    def round0_folder(self, group: str) -> Path:
        return self.output / "round0" / group


# --- the steps (module-level functions: Ray ships them to its workers) ------------------------------------------


def backend_factory(name: str) -> BackendFactory:
    """The registered factory of that name (nnunet, fake)."""
    return BACKENDS[name]


def _use_threads(threads: int) -> None:
    # set before torch starts its pools: two experiments on two cores must not run two threads each
    os.environ["NNAL_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def prepare_step(config: dict, cache: str, backend: str, threads: int) -> str:
    """Plan and preprocess one dataset into the shared cache (the first step of everything on it)."""
    _use_threads(threads)
    conf = build(config, "grid")
    backend_factory(backend)(load_dataset(conf.dataset), Path(cache), conf)
    return conf.dataset


def experiment_step(config: dict, folder: str, cache: str, share_round0: str | None, backend: str, threads: int,
                    *after: object) -> dict[str, Any]:
    """Run (or resume) one experiment; ``after``: the results of the steps it waits for (Ray orders by them)."""
    from nnal.loop import run_experiment

    _use_threads(threads)
    start = time.perf_counter()
    run_experiment(build(config, "grid"), Path(folder), cache=Path(cache),
                   share_round0=Path(share_round0) if share_round0 else None, progress=False,
                   backend_factory=backend_factory(backend))
    return {"folder": folder, "seconds": round(time.perf_counter() - start, 1)}


# --- the plan --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    key: str
    kind: str  # prepare | round0 | experiment
    args: tuple
    needs: tuple[str, ...] = ()


def plan(experiments: list[GridExperiment], run: GridRun, threads: int) -> list[Step]:
    """The steps in an order that respects ``needs``; finished experiments are left out. Experiments go seed by
    seed (every strategy of a (dataset, fold, seed) before the next): a grid cut short holds whole comparisons."""
    steps: list[Step] = []
    prepared: dict[str, str] = {}
    groups: dict[str, str] = {}
    for exp in sorted(experiments, key=lambda e: (e.config.dataset, e.config.fold, e.config.seed)):
        folder = run.output / exp.folder
        if ExperimentFolder(folder).finished(exp.config.last_round):
            run.outcomes[exp.folder] = {"status": "done", "skipped": True}
            continue
        config = exp.config.to_dict()
        dataset = exp.config.dataset
        if dataset not in prepared:
            prepared[dataset] = f"prepare:{Path(dataset).name}"
            steps.append(Step(prepared[dataset], "prepare", (config, str(run.cache), run.backend, threads)))
        needs = [prepared[dataset]]
        share = None
        if exp.round0_group is not None:
            holder = run.round0_folder(exp.round0_group)
            share = str(holder)
            if exp.round0_group not in groups:
                groups[exp.round0_group] = f"round0:{exp.round0_group}"
                steps.append(Step(groups[exp.round0_group], "round0",
                                  (round0_config(config, exp.round0_group), str(holder), str(run.cache), None,
                                   run.backend, threads),
                                  (prepared[dataset],)))
            needs.append(groups[exp.round0_group])
        steps.append(Step(exp.folder, "experiment",
                          (config, str(folder), str(run.cache), share, run.backend, threads), tuple(needs)))
    return steps


def round0_config(config: dict, group: str) -> dict:
    """The config of a shared round 0: only what decides it (and how fast it runs), so that a grid changing later
    rounds reuses it."""
    return {**{k: config[k] for k in (*ROUND0_FIELDS, *ROUND0_RUNTIME)}, "strategy": "random", "rounds": 0,
            "experiment": f"round0-{group}"}


# --- executors ---------------------------------------------------------------------------------------------------


def run_local(steps: list[Step], run: GridRun, progress: Progress) -> None:
    """Every step in order in this process; a step whose needs failed is reported with their error."""
    failed: dict[str, str] = {}
    for step in steps:
        blocked = [n for n in step.needs if n in failed]
        if blocked:
            failed[step.key] = f"not run: {blocked[0]} failed ({failed[blocked[0]]})"
            record(run, step, "failed", failed[step.key])
            continue
        progress.started(step.key)
        for attempt in range(run.retries + 1):
            try:
                result = (prepare_step if step.kind == "prepare" else experiment_step)(*step.args)
            except Exception as err:  # noqa: BLE001 - one experiment's failure must not stop the grid
                error = f"{type(err).__name__}: {err}".splitlines()[0]
                if attempt == run.retries:
                    failed[step.key] = error
                    record(run, step, "failed", error, traceback=traceback.format_exc(), attempts=attempt + 1)
            else:
                record(run, step, "done", seconds=(result or {}).get("seconds") if isinstance(result, dict) else None,
                        attempts=attempt + 1)
                break
        progress.update(force=True)


def record(run: GridRun, step: Step, status: str, error: str | None = None, **extra: Any) -> None:
    if step.kind != "experiment":
        if status == "failed":
            run.on_progress(f"{step.key} failed: {error}")
        return
    entry = {"status": status, **{k: v for k, v in extra.items() if v is not None}}
    if error:
        entry["error"] = error
    run.outcomes[step.key] = entry


def write_status(run: GridRun, experiments: list[GridExperiment], spec: dict, seconds: float,
                 environment: dict) -> Path:
    """``grid.json``: the grid file, every experiment's outcome, the wall time, versions and git commit."""
    rows = []
    for exp in experiments:
        outcome = run.outcomes.get(exp.folder, {"status": "not run"})
        rows.append({"folder": exp.folder, "dataset": Path(exp.config.dataset).name, "variant": exp.label,
                     "fold": exp.config.fold, "seed": exp.config.seed, **outcome})
    path = run.output / "grid.json"
    atomic_write_json(path, {"grid": spec, "executor": run.executor, "backend": run.backend,
                             "dry_run": run.backend == "fake", "seconds": round(seconds, 1), "experiments": rows,
                             "environment": environment})
    return path


