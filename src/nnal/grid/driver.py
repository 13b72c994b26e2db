"""``nnal grid``: check the grid, run it (Ray or local), write ``grid.json`` and the grid's report."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

import yaml

from nnal.atomic import atomic_write_text
from nnal.backend.factories import BACKENDS
from nnal.dataset import locate_dataset
from nnal.errors import ConfigError, EnvironmentProblem
from nnal.grid.checks import check_datasets, check_output, check_settings_of
from nnal.grid.progress import Progress, preparation_steps
from nnal.grid.run import GridRun, plan, run_local, write_status
from nnal.grid.spec import GridSpec, expand, load_grid
from nnal.preflight import check_writable_folder
from nnal.provenance import environment_record
from nnal.ray_session import signals_as_interrupts
from nnal.threads import usable_cores

EXECUTORS = ("ray", "local")
DRY_RUN_NOTE = "DRY RUN: every number comes from nnal's fake model, not nnU-Net; these are not results"


def default_output(grid_file: Path, *, dry_run: bool) -> Path:
    """``runs/<grid file name>``; a dry run's own ``runs/<grid file name>-dry-run``, so its fake results never
    become the real grid's."""
    return Path("runs") / (f"{grid_file.stem}-dry-run" if dry_run else grid_file.stem)


class _Checked(NamedTuple):
    """A grid checked before anything is written: its file, experiments, datasets and how it will run."""

    spec: GridSpec
    experiments: list
    datasets: dict
    run: GridRun
    threads: int
    gpus: int


def run_grid(path: Path, output: Path, *, executor: str = "ray", address: str | None = None,
             max_parallel: int | None = None, backend: str = "nnunet", report: bool = True,
             emit=print) -> dict:
    """Run every experiment of the grid file ``path`` into ``output``; return the grid's status."""
    path, output = Path(path), Path(output)
    checked = _validate(path, output, executor, address, max_parallel, backend, emit)  # before any write
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "grid.yaml", _as_run(checked.spec, path))
    seconds = _execute(checked, path, executor, backend, emit)
    return _finish(checked, path, output, seconds, backend, report, emit)


def _validate(path: Path, output: Path, executor: str, address: str | None, max_parallel: int | None,
              backend: str, emit) -> _Checked:
    """Every check of a grid: its options, file, devices, datasets, settings and output folder."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: unknown {executor!r}; known: {', '.join(EXECUTORS)}")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown {backend!r}; known: {', '.join(BACKENDS)}")
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel: must be at least 1, got {max_parallel}")
    if executor == "ray":
        require_ray()
    spec = load_grid(path)
    experiments = expand(spec, str(path), base=path.parent)  # paths in a file are relative to it
    check_writable_folder(output, "output")
    devices = {e.config.device for e in experiments}
    if "cuda" in devices:
        from nnal.backend.runtime import check_device  # torch loads only here

        check_device("cuda")
    cores = usable_cores()
    gpus = _gpu_count() if backend == "nnunet" and devices & {"cuda", "auto"} else 0
    parallel = max_parallel or (gpus or max(1, cores // 2))
    run = GridRun(output, executor=executor, address=address, max_parallel=parallel, backend=backend,
                  retries=spec.retries, on_progress=emit)
    datasets = check_datasets(experiments)
    check_settings_of(experiments, datasets, run, str(path))
    check_output(experiments, run, str(path))
    if executor == "ray" and address is not None:
        from nnal.grid.ray_executor import check_cluster

        check_cluster(address)
    return _Checked(spec, experiments, datasets, run, max(1, cores // parallel), gpus)


def _execute(checked: _Checked, path: Path, executor: str, backend: str, emit) -> float:
    """The grid's steps, on Ray or in this process, with progress; the seconds they took."""
    experiments, run, threads = checked.experiments, checked.run, checked.threads
    steps = plan(experiments, run, threads)
    if backend == "fake":
        emit(DRY_RUN_NOTE)
    emit(f"grid {path}: {len(experiments)} experiments ({len(experiments) - sum(s.kind == 'experiment' for s in steps)}"
         f" already done), executor {executor}, {run.max_parallel} at a time, {threads} thread(s) each")
    progress = Progress(experiments, run.output, run.outcomes, run.max_parallel, emit=emit,
                        preparing=preparation_steps(steps, checked.datasets, run))
    start = time.perf_counter()
    with signals_as_interrupts():  # SIGTERM ends the grid as Ctrl-C does: cleanly, exit code 130
        if executor == "local":
            run_local(steps, run, progress)
        else:
            from nnal.grid.ray_executor import run_ray

            run_ray(steps, run, progress, threads, 1.0 if checked.gpus else 0.0)
    progress.update(force=True)
    return time.perf_counter() - start


def _finish(checked: _Checked, path: Path, output: Path, seconds: float, backend: str, report: bool,
            emit) -> dict:
    """The status file, the failures named, the report of the finished experiments."""
    experiments, run = checked.experiments, checked.run
    status = write_status(run, experiments, yaml.safe_load(path.read_text()), seconds, _environment())
    failed = [e for e in experiments if run.outcomes.get(e.folder, {}).get("status") == "failed"]
    for exp in failed:
        emit(f"failed: {exp.folder}: {run.outcomes[exp.folder].get('error', '')}")
    done = [output / e.folder for e in experiments if run.outcomes.get(e.folder, {}).get("status") == "done"]
    if report and done:
        from nnal.analysis.extras import build_full_report
        from nnal.analysis.verdict import report_verdict
        from nnal.backend.predictions import checkpoint_predictions

        page = build_full_report(done, output / "report", predictions=checkpoint_predictions)
        emit(f"report: {page}")
        for line in report_verdict(page):
            emit(line)
    emit(f"grid status: {status}  ({seconds:.0f} s)")
    if backend == "fake":
        emit(DRY_RUN_NOTE)
    return {"experiments": len(experiments), "failed": len(failed), "seconds": seconds}


def _as_run(spec: GridSpec, path: Path) -> str:
    """The grid file as run, its datasets as absolute paths: a rerun from ``OUTPUT/grid.yaml`` finds them."""
    values = spec.model_dump(mode="json")
    values["datasets"] = [str(locate_dataset(d, base=path.parent)) for d in spec.datasets]
    return f"# {path} as run (dataset paths made absolute)\n" + yaml.safe_dump(values, sort_keys=False)


def require_ray() -> None:
    """Ray is the optional ``grid`` extra: without it, one line saying how to get it, before any work."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("nnal grid needs Ray, the optional 'grid' extra: pip install -e '.[grid]' in a "
                                 "clone (or the wheel's [grid]); or run it with --executor local") from None


def _gpu_count() -> int:
    from nnal.backend.runtime import cuda_device_count

    return cuda_device_count()


def _environment() -> dict:
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    return environment_record(ray=ray_version, cores=os.cpu_count())
