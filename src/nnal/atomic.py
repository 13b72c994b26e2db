"""Crash-safe files and the folder lock: every file nnal keeps is written atomically (temp file in the same folder,
fsync, rename), so a reader, or a run resumed after a kill, sees the old file or the new one, never half of one; one
process at a time works in an experiment folder (an exclusive ``flock`` on its ``.lock``)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from nnal.errors import EnvironmentProblem, LockedError

# write failures that are the machine's, not a bug: disk full, quota, read-only file system, permissions
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends: temp file in the same folder, fsync, rename; readers
    see the old or the new file, never half. A failure leaves the old file, and no temp file, behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; results are for the whole lab to read
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in MACHINE_ERRNOS:  # the previous file is intact
            raise EnvironmentProblem(f"{path}: cannot write ({os.strerror(err.errno)}); the previous version is "
                                     "kept, free space or fix the folder and run again to resume") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


LOCK_NAME = ".lock"  # the file a FolderLock holds in its folder


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.lock``; a second process is refused at once."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
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


def is_locked(path: Path) -> bool:
    """Whether a process holds an ``flock`` on ``path`` now (an experiment running, a cache being prepared)."""
    if not Path(path).is_file():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
