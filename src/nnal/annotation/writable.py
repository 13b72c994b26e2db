"""Refusing, before any work, a command that could not write where it must (a read-only experiment folder, an
``annotations/`` folder of another user): one line naming the folder, instead of a traceback midway."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from nnal.errors import EnvironmentProblem
from nnal.preflight import existing_ancestor


def can_write(path: Path) -> bool:
    """Whether this process may write ``path``: create, replace and remove entries of a folder, append to a file.
    The one place the permission is asked (tests run as root, whom permissions do not stop, and patch it)."""
    return os.access(path, os.W_OK | os.X_OK) if path.is_dir() else os.access(path, os.W_OK)


def refuse_unwritable(paths: Iterable[Path], command: str) -> None:
    """Raise :class:`EnvironmentProblem` naming the first of ``paths`` (or, for one not there yet, the folder it
    would be created in) that cannot be written."""
    for path in paths:
        target = existing_ancestor(Path(path))
        if not can_write(target):
            what = "folder" if target.is_dir() else "file"
            raise EnvironmentProblem(f"{target}: {what} not writable, and 'nnal {command}' writes there; nothing "
                                     "was changed (make it writable and run again)")
