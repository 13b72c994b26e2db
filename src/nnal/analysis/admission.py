"""Which experiment folders a report admits: the finished ones, all on one backend, split into sections of one
dataset and protocol (:mod:`nnal.analysis.protocol`).

An unfinished experiment (its ``state.json`` short of its last round's evaluation) is left out of every curve,
table and statistic and named in a note; only its ``config.yaml``, ``environment.json`` and ``state.json`` are read,
as its other files may be mid-run. An experiment run on nnal's fake test double (``environment.json``:
``"backend": "fake"``, ``nnal grid --dry-run``) makes the report a dry run; fake and real experiments are never
reported together. See ``docs/report.md``, "What a report admits".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnal.analysis.load import (
    FULL,
    Experiment,
    check_unique_names,
    find_experiments,
    load_experiment,
    read_config,
)
from nnal.analysis.protocol import Section, sections
from nnal.analysis.readers import read_json
from nnal.config import Config
from nnal.errors import ReportError
from nnal.experiment import ExperimentFolder
from nnal.state import PHASES

FAKE_BACKEND = "fake"  # environment.json's backend of nnal's fake test double (a dry run)
DRY_RUN_BANNER = "DRY RUN: these numbers come from nnal's fake model, not nnU-Net"
DRY_RUN_COLUMN = "dry_run"  # the first column of every table a dry-run report writes, True on every row


@dataclass
class FolderStatus:
    """What a report reads of every folder before deciding whether to read the rest."""

    path: Path
    name: str
    backend: str  # environment.json's backend; "" when it names none (a real run of an older nnal)
    last_round: int  # the round whose evaluation finishes the experiment (0 for a full-label reference)
    state: tuple[int, str] | None  # the last finished (round, phase); None before the first phase finished

    @property
    def finished(self) -> bool:
        if self.state is None:
            return False
        return (self.state[0], PHASES.index(self.state[1])) >= (self.last_round, PHASES.index("evaluate"))

    @property
    def progress(self) -> str:
        done = "no phase finished" if self.state is None else f"finished round {self.state[0]} {self.state[1]}"
        return f"{done}, of rounds 0-{self.last_round}"


@dataclass
class Admission:
    """The experiments a report shows, what it left out, and how it splits them."""

    experiments: list[Experiment]  # finished, read and checked
    unfinished: list[FolderStatus]
    dry_run: bool
    sections: list[Section]

    def notes(self) -> list[str]:
        """What the page says before its first section: unfinished experiments left out, protocols kept apart."""
        notes = []
        if self.unfinished:
            n = len(self.unfinished)
            listed = "; ".join(f"{s.name} ({s.path}: {s.progress})" for s in self.unfinished)
            notes.append(f"Left out: {n} unfinished experiment{'s' if n > 1 else ''}, in no curve, table or "
                         f"statistic: {listed}.")
        for dataset in dict.fromkeys(s.dataset for s in self.sections):
            split = [s.name for s in self.sections if s.dataset == dataset and s.tag]
            if split:
                notes.append(f"{dataset}: the experiments do not share one protocol, so each protocol has its own "
                             f"section and nothing is pooled or compared across them: {', '.join(split)}.")
        return notes


def admit(dirs: Iterable[Path | str]) -> Admission:
    """Read the folders ``dirs`` (see :func:`nnal.analysis.load.find_experiments`) as a report takes them.

    Raises ReportError for a folder that cannot be read, for fake and real experiments given together, and when
    no experiment is finished."""
    statuses = [folder_status(p) for p in find_experiments(dirs)]
    dry_run = _one_backend(statuses)
    unfinished = [s for s in statuses if not s.finished]
    if len(unfinished) == len(statuses):
        listed = "; ".join(f"{s.path} ({s.progress})" for s in unfinished[:3])
        more = f"; and {len(unfinished) - 3} more" if len(unfinished) > 3 else ""
        raise ReportError(f"none of the {len(statuses)} experiment(s) is finished, nothing to report: "
                          f"{listed}{more}")
    experiments = check_unique_names([load_experiment(s.path) for s in statuses if s.finished])
    return Admission(experiments, unfinished, dry_run, sections(experiments))


def folder_status(path: Path) -> FolderStatus:
    """The folder's name, backend, last round and last finished phase (config, environment and state only)."""
    folder = ExperimentFolder(path)
    config = read_config(path)
    environment = read_json(folder.environment_file)
    name = str(config.get("experiment") or path.name)
    return FolderStatus(path, name, str(environment.get("backend") or ""), _last_round(config, folder),
                        _finished_phase(folder))


def _last_round(config: dict[str, Any], folder: ExperimentFolder) -> int:
    if config.get("strategy") == FULL:  # one round on every pool slice, whatever its rounds say
        return 0
    rounds = config.get("rounds", Config.model_fields["rounds"].default)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ReportError(f"{folder.config_file}: malformed, rounds {rounds!r} is not a whole number >= 0")
    return rounds


def _finished_phase(folder: ExperimentFolder) -> tuple[int, str] | None:
    if not folder.state_file.is_file():
        return None
    state = read_json(folder.state_file)
    round_, phase = state.get("round"), state.get("phase")
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < -1 or phase not in PHASES:
        raise ReportError(f"{folder.state_file}: malformed, no last finished round and phase as nnal writes them")
    return None if round_ < 0 else (round_, phase)


def _one_backend(statuses: list[FolderStatus]) -> bool:
    """Whether the report is a dry run; refuses fake experiments given together with real ones."""
    fake = [s for s in statuses if s.backend == FAKE_BACKEND]
    # a run that has not yet written environment.json has no known backend; a finished one without a backend
    # named is a real run of an older nnal
    real = [s for s in statuses if s.backend != FAKE_BACKEND and (s.backend or s.finished)]
    if fake and real:
        raise ReportError(f"{fake[0].path} ran on nnal's fake model (a dry run) and {real[0].path} did not: fake "
                          "numbers are not results and are never reported with real ones; report them separately")
    return bool(fake)
