"""What a grid is doing, read from its experiment folders: done / running / failed / waiting, each running
experiment's round and phase, the elapsed time and an estimate of what is left."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nnal.atomic import is_locked
from nnal.cache_layout import CacheLayout
from nnal.dataset import RawDataset
from nnal.experiment import ExperimentFolder
from nnal.grid.spec import GridExperiment
from nnal.state import PHASES


def _minutes(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


@dataclass(frozen=True)
class Preparation:
    """A step before the experiments (a dataset's planning and preprocessing, a shared round 0) and the lock its
    process holds while it runs."""

    label: str
    lock: Path


def preparation_steps(steps: list, datasets: dict[str, RawDataset], run) -> list[Preparation]:
    """The grid's prepare and round-0 steps, with their locks (the cache's, the round-0 folder's)."""
    out = []
    for step in steps:
        if step.kind == "prepare":
            dataset = datasets[step.args[0]["dataset"]]
            out.append(Preparation(f"preparing {dataset.name} (nnU-Net planning and preprocessing)",
                                   CacheLayout.for_dataset(run.cache, dataset).lock_file))
        elif step.kind == "round0":
            out.append(Preparation(f"round 0 of {Path(step.args[1]).name} (shared initial model)",
                                   Path(step.args[1]) / ".lock"))
    return out


@dataclass
class Progress:
    experiments: list[GridExperiment]
    output: Path
    outcomes: dict[str, dict]
    parallel: int
    emit: Callable[[str], None] = print
    preparing: list[Preparation] = field(default_factory=list)
    every: float = 10.0
    start: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _last_text: str = ""

    def started(self, key: str) -> None:
        self.emit(f"start {key}")

    def snapshot(self) -> dict:
        """Counts, the running experiments with their (round, phase), and done fractions."""
        counts = {"done": 0, "running": 0, "failed": 0, "waiting": 0}
        running, fractions, seconds_done = [], [], []
        for exp in self.experiments:
            folder = ExperimentFolder(self.output / exp.folder)
            total = (exp.config.last_round + 1) * len(PHASES)
            outcome = self.outcomes.get(exp.folder, {}).get("status")
            if outcome == "failed":
                counts["failed"] += 1
                continue
            if outcome == "done" or folder.finished(exp.config.last_round):
                counts["done"] += 1
                fractions.append(1.0)
                seconds_done.append(sum(sum(p.values()) for p in folder.state.data.get("seconds", {}).values()))
                continue
            fractions.append(max(0, folder.state.phases_done()) / total)
            if folder.busy():
                counts["running"] += 1
                round_, phase = folder.state.next_step()
                running.append(f"{exp.folder} (round {round_}, {phase})")
            else:
                counts["waiting"] += 1
        return {"counts": counts, "running": running, "fractions": fractions, "seconds_done": seconds_done}

    def text(self) -> str:
        snap = self.snapshot()
        elapsed = time.monotonic() - self.start
        c = snap["counts"]
        line = (f"[{_minutes(elapsed)}] {c['done']} done, {c['running']} running, {c['failed']} failed, "
                f"{c['waiting']} waiting")
        left = sum(1.0 - f for f in snap["fractions"])
        if snap["seconds_done"] and left > 0:
            per = sum(snap["seconds_done"]) / len(snap["seconds_done"])
            line += f"; about {_minutes(left * per / max(1, self.parallel))} left"
        elif left > 0 and 0 < sum(snap["fractions"]):
            line += f"; about {_minutes(elapsed * left / sum(snap['fractions']))} left"
        steps = [p.label for p in self.preparing if is_locked(p.lock)]
        return "\n".join([line, *(f"    running: {s}" for s in steps), *(f"    running: {r}" for r in snap["running"])])

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        text = self.text()
        if force or text != self._last_text:
            self.emit(text)
        self._last, self._last_text = now, text
