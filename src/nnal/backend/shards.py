"""One round's model scored in shards on Ray (``score_shards``): the same numbers as one process, sooner.

:class:`ShardedModel` is a ``nnal.strategies.ModelLike``. Each call (the pool's scores, gradient embeddings, the
Fisher) splits its ``cases`` into up to ``score_shards`` contiguous shards of whole batches of the single pass
(``Model.batch_plan``), about equal in slices. Shard 0 runs in this process on the round's model; every other shard
is a Ray task that loads the round's checkpoint once (checked against this process's digest of it), builds the model
on its own GPU or CPU threads and scores its slices. The per-shard arrays are put together in shard order.

Why the numbers are the single pass's, bit for bit on the CPU:

- a shard holds whole batches of the single pass, so every batch is the same tensor (padding, composition, size);
- a scoring pass seeds torch once and draws its MC-dropout masks batch after batch: a shard first replays the
  draws of the batches before it (``scoring.replay_mc_draws``), then draws the single pass's masks;
- the Fisher is a sum: shards return their per-batch parts, added here in the single pass's order
  (``model.fold_fisher``); a float sum regrouped by shard would differ in its last bits.

A model without ``batch_plan`` (the fake backend's, whose slices never share a batch's randomness) is split by
``batch_size`` chunks; without ``fisher_parts`` its Fisher is computed here in one piece.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nnal.errors import FolderError
from nnal.ray_session import ray_instance, run_shards
from nnal.threads import available_threads

CaseSlices = list[tuple[str, np.ndarray]]
# seconds a shard task may stay away after this process ran out of work before it scores that shard itself (or as
# long as its own last shard took, if longer): time for a worker to start, load the checkpoint and the data
GRACE_SECONDS = 120.0


class ShardedModel:
    """``ModelLike`` over ``shards`` Ray tasks and this process; use it as a context manager (Ray is joined, or a
    local instance started, for the block, and left or ended with it)."""

    def __init__(self, backend: Any, weights: Mapping[str, Any], checkpoint: Path, shards: int, *,
                 say: Callable[[str], None] = lambda _line: None, grace: float | None = None):
        self.backend = backend
        self.local = backend.model(weights)
        self.checkpoint = Path(checkpoint)
        self.shards = shards
        self.say = say
        self.grace = GRACE_SECONDS if grace is None else grace
        self.threads = max(1, available_threads() // shards)
        self.cuda = str(getattr(backend, "device", "cpu")).startswith("cuda")
        self._clamped = False
        self.origins: list[list[str]] = []  # per call, where each shard was scored: "here" or "ray"
        self._ray = None
        self._task = None
        self._digest = ""
        self._backend_ref = None
        self._session = None

    def __enter__(self) -> ShardedModel:
        self._digest = checkpoint_digest(self.checkpoint, where="in this process")
        self._session = ray_instance(gpu_ids=_spare_gpus() if self.cuda else None)
        self._ray = self._session.__enter__()
        if self.cuda and self._ray.cluster_resources().get("GPU", 0) < 1:
            self.say(f"score_shards: {self.shards}, but Ray has no GPU besides this process's: scored here")
            self.shards = 1
        self._backend_ref = self._ray.put(self.backend)
        self._task = self._ray.remote(score_shard).options(
            num_cpus=self.threads, num_gpus=1 if self.cuda else 0, max_retries=1, retry_exceptions=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._session is not None:
            self._session.__exit__(*exc)
            self._session = self._ray = self._task = self._backend_ref = None

    # --- ModelLike ------------------------------------------------------------------------------------------------

    def parameter_count(self, group: str) -> int:
        return self.local.parameter_count(group)

    def scores(self, cases: CaseSlices, keys: set[str], *, mc_passes: int, batch_size: int, seed: int,
               on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
        shared = dict(keys=keys, mc_passes=mc_passes, batch_size=batch_size, seed=seed)
        parts = self._run("scores", cases, batch_size, lambda _s, _e: shared, on_batch, replay=True)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def gradient_embeddings(self, cases: CaseSlices, *, group: str, index: np.ndarray | None, batch_size: int,
                            loss: str = "log-likelihood", on_batch: Callable[[int], None] | None = None
                            ) -> np.ndarray:
        shared = dict(group=group, index=index, batch_size=batch_size, loss=loss)
        return np.concatenate(self._run("gradient_embeddings", cases, batch_size, lambda _s, _e: shared, on_batch))

    def fisher(self, cases: CaseSlices, counts: np.ndarray, *, group: str, batch_size: int,
               loss: str = "log-likelihood") -> np.ndarray:
        if not hasattr(self.local, "fisher_parts"):
            return self.local.fisher(cases, counts, group=group, batch_size=batch_size, loss=loss)
        import torch

        from nnal.backend.model import fold_fisher

        counts = np.asarray(counts)
        parts = self._run("fisher_parts", cases, batch_size,
                          lambda s, e: dict(counts=counts[s:e], group=group, batch_size=batch_size, loss=loss), None)
        # torch.tensor copies: Ray hands back read-only arrays
        return fold_fisher((torch.tensor(p) for shard in parts for p in shard), counts)

    # --- shards ---------------------------------------------------------------------------------------------------

    def _run(self, method: str, cases: CaseSlices, batch_size: int,
             kwargs_of: Callable[[int, int], dict[str, Any]], on_batch: Callable[[int], None] | None,
             replay: bool = False) -> list[Any]:
        """``method`` over ``cases`` in shards of whole batches, shard 0 here; the results in shard order."""
        planned = self.local.batch_plan(cases, batch_size) if hasattr(self.local, "batch_plan") else None
        sizes = [b.size for b in planned] if planned is not None else _chunks(_count(cases), batch_size)
        ranges = split_batches(sizes, self.shards)
        self._say_clamped(len(ranges), len(sizes), batch_size)
        bounds = [(sum(sizes[:first]), sum(sizes[:stop])) for first, stop in ranges]
        calls = []
        for (first, _), (start, end) in zip(ranges, bounds, strict=True):
            kwargs = kwargs_of(start, end)
            if replay and planned is not None and first > 0:  # the MC draws of the batches before this shard
                kwargs = {**kwargs, "after": planned[:first]}
            calls.append((self._backend_ref, str(self.checkpoint), self._digest, method,
                          take_slices(cases, start, end), kwargs, self.threads))
        scored_here: list[int] = []

        def here(i: int) -> Any:
            scored_here.append(i)
            part, kwargs = calls[i][4], calls[i][5]
            extra = {"on_batch": on_batch} if on_batch is not None and method != "fisher_parts" else {}
            with _torch_threads(None if self.cuda else self.threads):
                return _portable(method, getattr(self.local, method)(part, **kwargs, **extra))

        def arrived(i: int, _result: Any) -> None:
            if on_batch is not None and i not in scored_here:  # those here reported batch by batch
                on_batch(bounds[i][1] - bounds[i][0])

        if len(calls) == 1:
            results = [here(0)]
        else:
            results = run_shards(self._ray, self._task, calls, here, grace=self.grace, on_result=arrived,
                                 say=self.say)
        self.origins.append(["here" if i in scored_here else "ray" for i in range(len(calls))])
        return results

    def _say_clamped(self, used: int, batches: int, batch_size: int) -> None:
        if used < self.shards and not self._clamped and batches > 0:
            self._clamped = True
            self.say(f"score_shards: {self.shards} shards asked, {batches} batch(es) of up to {batch_size} slices "
                     f"(score_batch_size) to score: {used} shard(s), each whole batches")


def score_shard(backend: Any, checkpoint: str, digest: str, method: str, cases: CaseSlices,
                kwargs: dict[str, Any], threads: int) -> Any:
    """One shard, in a Ray task: the round's model from its checkpoint (the one this experiment's process scores
    with: same digest), then ``method`` over the shard's slices."""
    path = Path(checkpoint)
    found = checkpoint_digest(path, where=f"on node {socket.gethostname()}")
    if found != digest:
        raise FolderError(f"{path}: not the checkpoint the experiment's process scores with (it changed while the "
                          f"round was scored in shards, or node {socket.gethostname()} sees another file); run again")
    with _torch_threads(threads):
        model = backend.model(backend.load_weights(path))
        return _portable(method, getattr(model, method)(cases, **kwargs))


def checkpoint_digest(path: Path, *, where: str) -> str:
    """SHA-256 of a checkpoint; a missing one is a FolderError line (nothing has been scored or written yet)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FolderError(f"{path}: the round's checkpoint is missing {where}; sharded scoring (score_shards) "
                          "loads it in every shard, so the experiment folder must be on a filesystem every Ray node "
                          "mounts at the same path; nothing was scored, run again once it is there") from None
    return hashlib.sha256(data).hexdigest()


def split_batches(sizes: list[int], shards: int) -> list[tuple[int, int]]:
    """At most ``shards`` contiguous ranges ``(first, stop)`` of batches, each at least one batch, about equal in
    slices (``sizes``: slices per batch): a range ends at the batch where its share of the slices is reached."""
    count = min(shards, len(sizes))
    if count <= 1:
        return [(0, len(sizes))]
    ends = np.cumsum(sizes)
    bounds = [0]
    for j in range(1, count):
        cut = int(np.searchsorted(ends, ends[-1] * j / count)) + 1  # the batch reaching share j ends the range
        bounds.append(min(max(cut, bounds[-1] + 1), len(sizes) - (count - j)))
    bounds.append(len(sizes))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def take_slices(cases: CaseSlices, start: int, end: int) -> CaseSlices:
    """Slices ``start:end`` of ``cases`` in their order (case, then slice), as ``[(case, slices)]``; a case with no
    slices inside the range is kept where it stands (it may end a batch, as in the single pass)."""
    out, position = [], 0
    for case, slices in cases:
        slices = np.asarray(slices)
        lo, hi = max(start - position, 0), min(end - position, len(slices))
        if lo < hi or (len(slices) == 0 and start <= position < end):
            out.append((case, slices[lo:hi]))
        position += len(slices)
    return out


def _count(cases: CaseSlices) -> int:
    return sum(len(np.asarray(s)) for _, s in cases)


def _chunks(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - start) for start in range(0, n, batch_size)]


def _portable(method: str, result: Any) -> Any:
    """A shard's result as plain numpy (the Fisher's parts leave torch and the device: they are added here)."""
    if method == "fisher_parts":
        return [part.cpu().numpy() for part in result]
    return result


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads for one shard (None: unchanged), restored after: shards on one machine share its cores."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _spare_gpus() -> list[str]:
    """The GPUs a local Ray instance may hand to shards (``CUDA_VISIBLE_DEVICES`` entries): all but this process's."""
    import os

    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [
        str(i) for i in range(torch.cuda.device_count())]
    mine = torch.cuda.current_device()
    return [d for k, d in enumerate(ids) if k != mine]
