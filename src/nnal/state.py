"""An experiment's progress: the last finished (round, phase) and the seconds per phase (``state.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nnal.atomic import atomic_write_json
from nnal.errors import FolderError

PHASES = ("score", "select", "train", "evaluate")


class State:
    """The last finished (round, phase), plus seconds per phase; rewritten atomically after each phase."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, Any] = {"round": -1, "phase": PHASES[-1], "seconds": {}}
        if self.path.is_file():
            self.data = _read_state(self.path)

    def done(self, round_: int, phase: str) -> bool:
        last = (self.data["round"], PHASES.index(self.data["phase"]))
        return (round_, PHASES.index(phase)) <= last

    def finish(self, round_: int, phase: str, seconds: float) -> None:
        self.data["round"], self.data["phase"] = round_, phase
        self.data["seconds"].setdefault(str(round_), {})[phase] = round(seconds, 3)
        self.save()

    def phases_done(self) -> int:
        """How many (round, phase) steps have finished, round 0's score phase (never run) counted as one."""
        return (self.data["round"] + 1) * len(PHASES) - (len(PHASES) - 1 - PHASES.index(self.data["phase"]))

    def next_step(self) -> tuple[int, str]:
        """The (round, phase) a run starts with now (round 0 is never scored: it starts with its selection)."""
        last = PHASES.index(self.data["phase"])
        round_ = self.data["round"] + (last == len(PHASES) - 1)
        phase = PHASES[(last + 1) % len(PHASES)]
        return round_, "select" if (round_, phase) == (0, "score") else phase

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def _read_state(path: Path) -> dict[str, Any]:
    """``state.json`` as written by :meth:`State.finish`; anything else is one FolderError line."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FolderError(f"{path}: unreadable ({type(err).__name__}); the record of which phases finished is "
                          "lost: restore it from a backup, or start the experiment again in another --output") from None
    valid = (isinstance(data, dict) and isinstance(data.get("round"), int) and not isinstance(data["round"], bool)
             and data["round"] >= -1 and data.get("phase") in PHASES and isinstance(data.get("seconds"), dict))
    if not valid:
        raise FolderError(f"{path}: malformed (expected round, phase and seconds as nnal writes them); restore it "
                          "from a backup, or start the experiment again in another --output")
    return data
