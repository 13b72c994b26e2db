"""Experiment folder bookkeeping: atomic writes, the phase state file and the single-process lock."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

PHASES = ("score", "select", "train", "evaluate")


class LockedError(RuntimeError):
    """Another process holds the experiment folder."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write temp file in the same folder, fsync, rename: readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; results are for the whole lab to read
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.lock``; a second process is refused at once."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self._fh = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise LockedError(f"{self.path.parent}: another nnal process is running on this experiment") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()


class State:
    """The last finished (round, phase), plus seconds per phase; rewritten atomically after each phase."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, Any] = {"round": -1, "phase": PHASES[-1], "seconds": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())

    def done(self, round_: int, phase: str) -> bool:
        last = (self.data["round"], PHASES.index(self.data["phase"]))
        return (round_, PHASES.index(phase)) <= last

    def finish(self, round_: int, phase: str, seconds: float) -> None:
        self.data["round"], self.data["phase"] = round_, phase
        self.data["seconds"].setdefault(str(round_), {})[phase] = round(seconds, 3)
        atomic_write_json(self.path, self.data)
