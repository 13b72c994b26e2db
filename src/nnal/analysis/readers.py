"""Reading and validating the files of an experiment folder: every problem is a one-line :class:`ReportError`
naming the file (and the line or row where one is at fault)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnal.errors import ReportError
from nnal.experiment import RESULT_COLUMNS

NUMERIC_RESULT_COLUMNS = ["fold", "seed", "round", "n_labeled", "dice"]
INTEGER_RESULT_COLUMNS = ["fold", "seed", "round", "n_labeled"]
KEYS = ["experiment", "strategy", "fold", "seed"]  # one value each per results.csv


def one_line(err: BaseException) -> str:
    """An exception's message on one line of at most 200 characters."""
    return " ".join(str(err).split())[:200] or type(err).__name__


def read_csv(path: Path, columns: Sequence[str], what: str) -> pd.DataFrame:
    """A CSV file with at least ``columns``; missing, empty and unparsable files are refused."""
    if not path.is_file():
        raise ReportError(f"{path}: missing ({what})")
    if path.stat().st_size == 0:
        raise ReportError(f"{path}: empty file")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ReportError(f"{path}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise ReportError(f"{path}: malformed CSV ({one_line(err)})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: malformed, missing column(s) {', '.join(missing)}")
    return frame


def numeric_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path,
                    allow_nan: Sequence[str] = ()) -> pd.DataFrame:
    """``columns`` as numbers; a missing or non-numeric value (NaN only where ``allow_nan``) names its line."""
    frame = frame.copy()
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & (frame[col].notna() if col in allow_nan else True)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # 1-based, after the header line
            raw = frame[col].iloc[row - 2]
            what = f"missing {col}" if pd.isna(raw) else f"non-numeric {col} {raw!r}"
            raise ReportError(f"{path}: malformed, {what} on line {row}")
        frame[col] = values
    return frame


def read_results(path: Path) -> pd.DataFrame:
    """Read and validate one ``results.csv``: one experiment, rounds 0, 1, .. with non-decreasing non-negative
    ``n_labeled``, Dice in [0, 1] or NaN (a class absent in prediction and truth), at least one finite Dice per
    round and no duplicated (round, case, label)."""
    if not path.is_file():
        raise ReportError(f"{path}: missing, the experiment has no results (yet)")
    frame = read_csv(path, RESULT_COLUMNS, "results.csv")
    if frame.empty:
        raise ReportError(f"{path}: no result rows (header only)")
    frame = numeric_columns(frame, NUMERIC_RESULT_COLUMNS, path, allow_nan=["dice"])
    for col in INTEGER_RESULT_COLUMNS:
        values = frame[col].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            raise ReportError(f"{path}: malformed, {col} {_number(values[at])} is not an integer on line {at + 2}")
        frame[col] = values.astype(np.int64)
    for col in ("experiment", "strategy", "label"):
        frame[col] = frame[col].astype(str)
    for col in KEYS:
        values = pd.unique(frame[col])
        if len(values) > 1:
            shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:3])
            raise ReportError(f"{path}: malformed, column {col} takes {len(values)} values ({shown}"
                              f"{', ..' if len(values) > 3 else ''}); a results.csv holds one experiment")
    _check_possible(frame, path)
    return frame[RESULT_COLUMNS]


def _number(value: Any) -> str:
    """A number as written in a message: 1.7, -0.25, inf, 3 (never ``np.float64(1.7)``)."""
    value = float(value)
    return str(int(value)) if np.isfinite(value) and value == int(value) and abs(value) < 1e15 else repr(value)


def _where(row: pd.Series) -> str:
    return f"round {row['round']}, case {row['case']}, label {row['label']}"


def _check_possible(frame: pd.DataFrame, path: Path) -> None:
    """Refuse numbers no experiment can produce, naming the first offending row."""
    outside = frame["dice"].notna() & ~frame["dice"].between(0.0, 1.0)
    if outside.any():
        row = frame[outside].iloc[0]
        raise ReportError(f"{path}: dice {_number(row['dice'])} outside [0, 1] ({_where(row)})")
    for col in ("round", "n_labeled"):
        negative = frame[col] < 0
        if negative.any():
            row = frame[negative].iloc[0]
            raise ReportError(f"{path}: negative {col} {row[col]} ({_where(row)})")
    per_round = frame.groupby("round")["n_labeled"]
    if (per_round.nunique() > 1).any():
        r = int(per_round.nunique().idxmax())
        shown = ", ".join(str(v) for v in sorted(frame.loc[frame["round"] == r, "n_labeled"].unique())[:3])
        raise ReportError(f"{path}: round {r} has more than one n_labeled ({shown})")
    labeled = per_round.first().sort_index()
    if labeled.index[0] != 0:
        raise ReportError(f"{path}: rounds start at {int(labeled.index[0])}, not 0")
    drops = np.flatnonzero(np.diff(labeled.to_numpy()) < 0)
    if len(drops):
        r = int(labeled.index[drops[0] + 1])
        raise ReportError(f"{path}: n_labeled decreases from {int(labeled.iloc[drops[0]])} in round "
                          f"{int(labeled.index[drops[0]])} to {int(labeled.iloc[drops[0] + 1])} in round {r}")
    finite = frame.groupby("round")["dice"].apply(lambda d: np.isfinite(d.to_numpy()).any())
    if not finite.all():
        raise ReportError(f"{path}: round {int(finite[~finite].index[0])} has no finite dice (all NaN)")
    duplicated = frame.duplicated(["round", "case", "label"])
    if duplicated.any():
        at = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise ReportError(f"{path}: duplicated row for {_where(frame.iloc[at])} on line {at + 2}")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object, {} when the file is absent (or holds no object)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: malformed JSON ({one_line(err)})") from None
    return data if isinstance(data, dict) else {}
