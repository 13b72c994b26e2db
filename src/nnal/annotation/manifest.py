"""Reading a batch's manifest (``manifest.csv``, ``manifest.json``) as the annotator left it: ``nnal ingest`` takes
the ``empty`` marks from it, and ``nnal query`` carries them over when it exports the batch again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TRUE_WORDS = frozenset({"true", "1", "yes", "y", "x"})
MANIFEST_FILES = ("manifest.csv", "manifest.json")
# what a manifest edited by hand (or broken) raises on reading
MANIFEST_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, pd.errors.ParserError)


def is_marked(flag: object) -> bool:
    """An ``empty`` cell as a person may write it: true, 1, yes, y, x (any case); anything else is false."""
    if isinstance(flag, bool | np.bool_):
        return bool(flag)
    if isinstance(flag, int | float) and not (isinstance(flag, float) and np.isnan(flag)):
        return flag == 1
    return str(flag).strip().lower() in TRUE_WORDS


def manifest_rows(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """The slice rows of ``manifest.csv`` or ``manifest.json``, and the round the JSON names (None: the CSV, which
    names none). Raises one of MANIFEST_READ_ERRORS when the file is unreadable."""
    if path.name.endswith(".csv"):
        return pd.read_csv(path, dtype={"case": str}).to_dict("records"), None
    meta = json.loads(path.read_text())
    rows = meta["slices"]
    if not isinstance(rows, list):
        raise TypeError("'slices' is not a list")
    return rows, meta.get("round")


def slice_key(row: dict[str, Any]) -> tuple[str, int, int]:
    """A manifest row's slice: (case, array axis, index on it); the pool id is nnal's, not the annotator's."""
    return str(row["case"]), int(row["axis"]), int(row["slice"])
