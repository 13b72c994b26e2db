"""The grid's steps as Ray tasks, and a clean end however the grid stops.

A task's arguments include the refs of the steps it needs, so Ray orders them and retries failures. When the
driver is interrupted (Ctrl-C, SIGTERM from a scheduler or ``kill``), the running tasks are cancelled (their
worker processes killed: an experiment resumes from its last finished phase), Ray is shut down, and any process
the local instance started that is still alive is killed: nothing is left running behind the command.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnal.errors import EnvironmentProblem
from nnal.grid.progress import Progress
from nnal.grid.run import GridRun, Step, experiment_step, prepare_step, record
from nnal.ray_session import WORKER_NICENESS, Descendants, descendant_pids, signals_as_interrupts
from nnal.threads import usable_cores

CLUSTER_PROBE_SECONDS = 5.0


def check_cluster(address: str, timeout: float = CLUSTER_PROBE_SECONDS) -> str:
    """The ``host:port`` that ``address`` names, once something answers there within ``timeout`` seconds; else one
    EnvironmentProblem line (Ray itself would retry for ever). ``auto``: the cluster ``ray start`` left on this
    machine (``RAY_ADDRESS``, or Ray's record of its current cluster)."""
    target = _resolve_address(address)
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise EnvironmentProblem(f"--address {address}: expected HOST:PORT (or auto), got {target!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        raise EnvironmentProblem(f"--address {address}: no Ray cluster answers at {host}:{port} ({reason} within "
                                 f"{timeout:.0f} s); start it with 'ray start --head', or leave --address out for a "
                                 "local instance") from None
    return target


def _resolve_address(address: str) -> str:
    if address != "auto":
        return address
    found = os.environ.get("RAY_ADDRESS") or _recorded_cluster()
    if not found or found == "auto":
        raise EnvironmentProblem("--address auto: no running Ray cluster found on this machine (RAY_ADDRESS is unset "
                                 "and 'ray start' left no record); start one with 'ray start --head', or leave "
                                 "--address out for a local instance")
    return found


def _recorded_cluster() -> str | None:
    """The address ``ray start`` writes for the drivers of this machine (/tmp/ray/ray_current_cluster)."""
    record_file = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    try:
        return record_file.read_text().strip() or None
    except OSError:
        return None


def run_ray(steps: list[Step], run: GridRun, progress: Progress, threads: int, gpus: float) -> None:
    """Every step as a Ray task on a local instance (started and shut down here) or on ``run.address``."""
    import ray

    started_here = not ray.is_initialized()
    existing = descendant_pids()
    if started_here:
        if run.address:
            ray.init(address=run.address, log_to_driver=False)
        else:
            os.environ.setdefault("RAY_worker_niceness", WORKER_NICENESS)
            ray.init(num_cpus=usable_cores(), include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
    started = Descendants(existing) if started_here and not run.address else None
    refs: dict[str, Any] = {}
    try:
        with signals_as_interrupts():  # again: ray.init installs a SIGTERM handler of its own (exit code 1)
            _submit(ray, steps, run, threads, gpus, refs)
            _collect(ray, steps, run, progress, refs, on_poll=started.remember if started else lambda: None)
    finally:
        for ref in refs.values():  # the unfinished steps' (_collect drops the others: cancelling a finished
            try:                      # task can abort this process in Ray 2.60); kills the worker of a running one
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort: shutting down must go on
                pass
        if started_here:
            ray.shutdown()
        if started is not None:
            started.end()


def _submit(ray, steps: list[Step], run: GridRun, threads: int, gpus: float, refs: dict[str, Any]) -> None:
    for step in steps:
        fn = prepare_step if step.kind == "prepare" else experiment_step
        task = ray.remote(fn).options(num_cpus=threads, num_gpus=gpus if step.kind != "prepare" else 0,
                                      max_retries=run.retries, retry_exceptions=True, name=step.key)
        deps = [refs[n] for n in step.needs]
        refs[step.key] = task.remote(*step.args, *deps) if step.kind != "prepare" else task.remote(*step.args)


def _collect(ray, steps: list[Step], run: GridRun, progress: Progress, refs: dict[str, Any],
             on_poll: Callable[[], None]) -> None:
    by_ref = {ref: key for key, ref in refs.items()}
    pending = list(refs.values())
    kinds = {s.key: s for s in steps}
    while pending:
        on_poll()
        ready, pending = ray.wait(pending, num_returns=1, timeout=2.0)
        for ref in ready:
            step = kinds[by_ref[ref]]
            del refs[step.key]
            try:
                result = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - one step's failure is recorded, the others go on
                cause = getattr(err, "cause", None) or err
                error = f"{type(cause).__name__}: {cause}".splitlines()[0]
                record(run, step, "failed", error, traceback=str(err)[-4000:], attempts=run.retries + 1)
            else:
                record(run, step, "done", seconds=result.get("seconds") if isinstance(result, dict) else None)
        progress.update()
