"""An experiment folder held against its own record before a run goes on.

``state.json`` says which phases finished; each finished phase left files behind. A file that is missing or
damaged is rebuilt when it can be derived from the others (``results.csv`` from the rounds' metrics; a round's
scores, by scoring again, while its selection is still to come), and refused in one line otherwise: going on would
silently corrupt the result (a lost ``selection.csv`` makes the labeled set forget slices and select them again; a
truncated checkpoint is not the model the next round must start from).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections import Counter
from pathlib import Path

import pandas as pd

from nnal.errors import FolderError
from nnal.experiment import ExperimentFolder

RESTORE = "restore it from a backup, or start the experiment again in another --output"


def check_folder(folder: ExperimentFolder, rounds: int) -> None:
    """Refuse (FolderError, one line) a folder whose files disagree with its state, for a run up to ``rounds``."""
    if not folder.state_file.is_file():
        if folder.rounds():
            raise FolderError(f"{folder.state_file}: missing, though the folder holds round folders "
                              f"({folder.round_dir(folder.rounds()[0]).name} ..); {RESTORE}")
        return
    state = folder.state  # FolderError when unreadable
    last_round = state.data["round"]
    pool_ids = _pool_ids(folder)
    labeled: set[int] = set()
    for r in range(last_round + 1):
        if folder.done(r, "select"):
            labeled = _check_selection(folder, r, pool_ids, labeled)
        if folder.done(r, "evaluate") and not folder.metrics_file(r).is_file():
            raise FolderError(f"{folder.metrics_file(r)}: missing, though state.json records round {r} as "
                              f"evaluated; {RESTORE}")
    trained = [r for r in range(last_round + 1) if folder.done(r, "train")]
    if trained and (trained[-1] < rounds or not folder.done(trained[-1], "evaluate")):
        check_checkpoint(folder, trained[-1])  # the model the run goes on from


def check_checkpoint(folder: ExperimentFolder, round_: int) -> None:
    """The round's checkpoint is there and is the file that was written (its recorded digest, or at least an
    intact zip archive for folders written before digests were recorded)."""
    path = folder.checkpoint_file(round_)
    if not path.is_file():
        raise FolderError(f"{path}: missing, though state.json records round {round_} as trained and the run goes "
                          f"on from it; {RESTORE}")
    recorded = folder.state.data.get("checkpoint_sha256", {}).get(str(round_))
    if recorded is not None:
        if file_sha256(path) != recorded:
            raise FolderError(f"{path}: changed or truncated since it was written (its digest differs from "
                              f"state.json's); {RESTORE}")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (OSError, zipfile.BadZipFile) as err:
        raise FolderError(f"{path}: unreadable ({type(err).__name__}); {RESTORE}") from None
    if damaged is not None:
        raise FolderError(f"{path}: damaged (member {damaged}); {RESTORE}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def results_need_rebuild(folder: ExperimentFolder) -> bool:
    """Whether ``results.csv`` is missing or unreadable while some round was evaluated (it is derived from the
    rounds' ``metrics.csv``, so a run rebuilds it)."""
    if not folder.state_file.is_file() or not any(folder.done(r, "evaluate") for r in folder.rounds()):
        return False
    try:
        pd.read_csv(folder.results_file, usecols=["round", "dice"])
    except (OSError, ValueError, pd.errors.ParserError):
        return True
    return False


def scores_readable(folder: ExperimentFolder, round_: int) -> bool:
    """Whether the round's scores file opens (a lost one is scored again while its selection is still to come)."""
    try:
        with zipfile.ZipFile(folder.scores_file(round_)) as archive:
            return "ids.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _pool_ids(folder: ExperimentFolder) -> set[int] | None:
    if not folder.pool_file.is_file():
        return None
    try:
        return set(pd.read_csv(folder.pool_file, usecols=["id"])["id"].astype(int))
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise FolderError(f"{folder.pool_file}: unreadable ({type(err).__name__}); {RESTORE}") from None


def _check_selection(folder: ExperimentFolder, round_: int, pool_ids: set[int] | None, labeled: set[int]) -> set[int]:
    path = folder.selection_file(round_)
    if not path.is_file():
        raise FolderError(f"{path}: missing, though state.json records round {round_}'s selection as done (the "
                          f"labeled set cannot be rebuilt without it); {RESTORE}")
    try:
        ids = pd.read_csv(path, usecols=["id"])["id"].astype(int).tolist()
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise FolderError(f"{path}: unreadable ({type(err).__name__}); {RESTORE}") from None
    unknown = sorted(set(ids) - pool_ids) if pool_ids is not None else []
    twice = sorted(set(ids) & labeled) or sorted(i for i, n in Counter(ids).items() if n > 1)
    if unknown or twice:
        what = f"slice id {unknown[0]} is not in pool.csv" if unknown else f"slice id {twice[0]} is labeled twice"
        raise FolderError(f"{path}: {what}; {RESTORE}")
    return labeled | set(ids)

