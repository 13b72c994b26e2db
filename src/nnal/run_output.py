"""What a run tells the person at the terminal: a start-up summary, the preparation's start and end, and progress
bars that name their experiment and count towards a total."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from nnal.config import Config
from nnal.dataset import RawDataset
from nnal.threads import available_threads

Emit = Callable[[str], None]


def summary(config: Config, dataset: RawDataset, split: dict[str, list[str]] | None, cache: Path,
            prepared: bool) -> list[str]:
    """The run's settings in two lines, before any work: what runs on what, where, and how long it trains."""
    pool = test = "?"
    if split is not None:
        pool = str(min(len(split["train"]), config.pool_cases or len(split["train"])))
        test = str(min(len(split["val"]), config.test_cases or len(split["val"])))
    budget = config.budget if isinstance(config.budget, int) else "/".join(map(str, config.budget))
    first = config.full_epochs if config.strategy == "full" else config.epochs_initial
    iterations = (first or 0) * (config.iterations_per_epoch or 0)
    per_round = (config.epochs_per_round or 0) * (config.iterations_per_epoch or 0)
    return [f"{config.experiment}: {config.strategy} on {dataset.name} ({len(dataset.cases)} cases; fold "
            f"{config.fold}: {pool} pool cases, {test} test cases), seed {config.seed}, {config.initial} initial "
            f"slices then {config.rounds} round(s) of {budget}",
            f"  preset {config.preset}: {iterations} iterations for round 0, {per_round} per round, batch "
            f"{config.batch_size or 'planned'}, T = {config.mc_passes}; device {_device(config)}, "
            f"{available_threads()} thread(s); nnU-Net cache {cache}"
            + ("" if prepared else " (to be planned and preprocessed)")]


def _device(config: Config) -> str:
    """The device the run will use; a GPU given the CPU schedule is said so (``--preset`` is not set for you)."""
    from nnal.backend.runtime import cuda_available  # torch loads only here

    device = config.device if config.device != "auto" else ("cuda" if cuda_available() else "cpu")
    note = " (the cpu preset's short schedule on a GPU: --preset gpu-short or paper for the GPU's)"
    return f"{device}{note if device == 'cuda' and config.preset == 'cpu' else ''}"


@contextmanager
def bar(experiment: str, what: str, total: int | None, *, enabled: bool, unit: str = "it") -> Iterator[tqdm]:
    """A progress bar named after its experiment and phase, closed however the phase ends."""
    progress = tqdm(total=total, desc=f"{experiment} {what}", unit=unit, disable=not enabled, leave=False)
    try:
        yield progress
    finally:
        progress.close()


def pass_counter(progress: tqdm, total: int, description: str) -> Callable[[int], None]:
    """``on_batch`` for a scoring phase that may pass over the pool more than once (scores, then gradients): each
    pass counts to the pool's size, the bar's description saying which pass it is."""
    state = {"done": 0, "passes": 1}

    def on_batch(n: int) -> None:
        if state["done"] >= total:
            state["done"], state["passes"] = 0, state["passes"] + 1
            progress.reset(total=total)
            progress.set_description(f"{description} (pass {state['passes']})")
        state["done"] += n
        progress.update(n)

    return on_batch
