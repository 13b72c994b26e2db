"""Ray for nnal's own tasks: a session that ends cleanly however it stops, signals as interrupts, and shards run on
Ray with this process as their backstop.

Ray is the optional ``grid`` extra: it is imported here lazily, and its absence is one line (:func:`require_ray`).
The grid (``nnal.grid.ray_executor``) and sharded scoring (``nnal.backend.shards``) both end what they started: a
local instance's processes are remembered while they are this process's descendants and killed at the end if still
alive, so Ctrl-C, SIGTERM or an error leave nothing running.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psutil

from nnal.errors import EnvironmentProblem, NnalError
from nnal.threads import usable_cores

# Ray starts its workers at nice 15, so a grid gets almost no CPU while anything else runs on the machine (a grid
# started under load waited minutes at preparation); a local instance's workers run at the driver's priority
WORKER_NICENESS = "0"
POLL_SECONDS = 1.0
FETCH_SECONDS = 600.0  # a finished shard's arrays (a Liver shard's gradient embeddings: gigabytes) to this node


def require_ray(what: str) -> None:
    """One EnvironmentProblem line when Ray (the ``grid`` extra) is missing; ``what`` names what needs it."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(f"{what} needs Ray, the optional 'grid' extra: pip install -e '.[grid]' in a clone "
                                 "(or the wheel's [grid])") from None


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt as Ctrl-C does, so the executors clean up (cancel, shut down) for both."""
    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a grid run from a library call): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def ray_instance(gpu_ids: Sequence[str] | None = None) -> Iterator[Any]:
    """Ray: the instance this process is part of (a grid's worker, a test's), the cluster ``$RAY_ADDRESS`` names,
    or a local instance started here, with the GPUs ``gpu_ids`` (None: every one it finds). What is started or
    joined here ends with the block, the local instance's processes with it, however the block ends."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    started = None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        os.environ.setdefault("RAY_worker_niceness", WORKER_NICENESS)
        existing = descendant_pids()
        with _visible_gpus(gpu_ids):  # Ray hands out the GPUs it saw at its start
            ray.init(num_cpus=usable_cores(), num_gpus=None if gpu_ids is None else len(gpu_ids),
                     include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        started = Descendants(existing)
    try:
        with signals_as_interrupts():  # again: ray.init installs a SIGTERM handler of its own (exit code 1)
            yield ray
    finally:
        ray.shutdown()
        if started is not None:
            started.end()


@contextmanager
def _visible_gpus(gpu_ids: Sequence[str] | None) -> Iterator[None]:
    if gpu_ids is None:
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def run_shards(ray: Any, task: Any, calls: Sequence[tuple], here: Callable[[int], Any], *, grace: float,
               on_result: Callable[[int, Any], None] = lambda _i, _r: None,
               say: Callable[[str], None] = lambda _line: None) -> list[Any]:
    """``calls[i]`` for every shard ``i``: shard 0 here (``here(0)``), the others as Ray tasks (``task``, a remote
    function), results in shard order.

    This process is their backstop: a task not back ``grace`` seconds (or as long as this process took for its
    last shard, if longer) after this process ran out of work is cancelled and its shard scored here, from the
    last. Nothing waits for resources that never come: a grid's experiment holds its own GPU while it waits, and a
    GPU held by every waiting experiment would otherwise be waited for by all of them. A task that fails on a
    user's mistake (a missing checkpoint) raises its one line; a shard lost any other way is scored here.
    """
    refs = {i: task.remote(*calls[i]) for i in range(1, len(calls))}
    results: dict[int, Any] = {}
    lost: set[int] = set()
    finished: set[int] = set()  # back from Ray, with a result or an error: never cancelled (see below)
    try:
        patience = _timed(here, 0, results, on_result, grace)
        idle_since = time.monotonic()
        while len(results) < len(calls):
            pending = {refs[i]: i for i in sorted(refs) if i not in results and i not in lost}
            if pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_SECONDS)
                finished |= {pending[ref] for ref in ready}
                lost |= {pending[ref] for ref in ready if not _collect(ray, ref, pending[ref], results, on_result,
                                                                       say)}
            left = [i for i in refs if i not in results]
            if not left or (not lost & set(left) and time.monotonic() - idle_since < patience):
                continue
            last = max(lost & set(left)) if lost & set(left) else max(left)
            if last not in lost:  # a lost shard's task is over: nothing to cancel
                if ray.wait([refs[last]], timeout=0)[0]:
                    continue  # back just now: collected on the next pass
                say(f"shard {last} not back {patience:.0f} s after this process scored its own: scored here instead")
                ray.cancel(refs[last], force=True)
                finished.add(last)
            patience = _timed(here, last, results, on_result, grace)
            idle_since = time.monotonic()
    finally:
        # Only the tasks still out: cancelling one whose result is in can crash this process (Ray 2.60's driver
        # aborts with exit code 1, "Tried to complete task that was not pending", when a cancel meets the
        # task's completion), and it kills the worker of a running one.
        for i in sorted(set(refs) - finished):
            try:
                ray.cancel(refs[i], force=True)
            except Exception:  # noqa: BLE001 - best effort: the shards' results are in, or an error is on its way
                pass
    return [results[i] for i in range(len(calls))]


def _timed(here: Callable[[int], Any], i: int, results: dict[int, Any], on_result: Callable[[int, Any], None],
           grace: float) -> float:
    """Shard ``i`` here; the patience after it: ``grace``, or the shard's own seconds if longer."""
    start = time.monotonic()
    results[i] = here(i)
    on_result(i, results[i])
    return max(grace, time.monotonic() - start)


def _collect(ray: Any, ref: Any, i: int, results: dict[int, Any], on_result: Callable[[int, Any], None],
             say: Callable[[str], None]) -> bool:
    """A finished task's result into ``results``; False if the shard was lost (it is scored here then)."""
    try:
        results[i] = ray.get(ref, timeout=FETCH_SECONDS)
    except Exception as err:  # noqa: BLE001 - sorted below: a user's mistake is raised, anything else retried here
        cause = getattr(err, "cause", None)
        if isinstance(cause, NnalError):
            raise cause from None
        say(f"shard {i} was lost on Ray ({type(cause or err).__name__}); it is scored here instead")
        return False
    on_result(i, results[i])
    return True


def descendant_pids() -> set[int]:
    """The processes below this one now: taken before ``ray.init`` so that :class:`Descendants` leaves them alone."""
    try:
        return {child.pid for child in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


class Descendants:
    """Every process a local Ray instance started (GCS, raylet, workers and what they spawned), remembered
    while they are our descendants, so that those still alive at the end are killed even if a parent died first.

    Only Ray's: the processes below this one that were not there before ``ray.init`` (``existing``), and what
    they spawn. Anything else this process runs (an X server a test holds, a user's helper) is not touched."""

    def __init__(self, existing: set[int]) -> None:
        self.me = psutil.Process()
        self.existing = set(existing)
        self.seen: dict[int, psutil.Process] = {}
        try:
            self.roots = [p for p in self.me.children(recursive=True) if p.pid not in self.existing]
        except psutil.Error:
            self.roots = []
        self.remember()

    def remember(self) -> None:
        for root in self.roots:
            self.seen.setdefault(root.pid, root)
            try:
                for child in root.children(recursive=True):
                    self.seen.setdefault(child.pid, child)
            except psutil.Error:
                pass

    def end(self, grace: float = 5.0) -> None:
        self.remember()
        alive = [p for p in self.seen.values() if _alive(p)]
        for proc in alive:
            _quietly(proc.terminate)
        _, still = psutil.wait_procs(alive, timeout=grace)
        for proc in still:
            _quietly(proc.kill)
        psutil.wait_procs(still, timeout=grace)


def _alive(proc: psutil.Process) -> bool:
    try:  # is_running also checks the pid was not reused by an unrelated process
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _quietly(action: Callable[[], None]) -> None:
    try:
        action()
    except psutil.Error:
        pass
