"""Reading experiment folders into tidy pandas tables.

An experiment folder (laid out by ``nnal.experiment``) holds ``config.yaml``, ``pool.csv``, ``results.csv`` and
``round_NNN/`` folders with ``selection.csv`` and ``scores.npz``. Every problem with a folder is a
:class:`ReportError` whose one-line message names the folder or file.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from nnal.errors import ReportError
from nnal.experiment import RESULT_COLUMNS, SELECTION_COLUMNS, ExperimentFolder

NUMERIC_RESULT_COLUMNS = ["fold", "seed", "round", "n_labeled", "dice"]
INTEGER_RESULT_COLUMNS = ["fold", "seed", "round", "n_labeled"]
KEYS = ["experiment", "strategy", "fold", "seed"]
FULL = "full"  # the strategy name of a full-label reference experiment (trains on every pool slice)


@dataclass
class Experiment:
    """One experiment folder, read and validated."""

    path: Path
    config: dict[str, Any]
    environment: dict[str, Any]
    state: dict[str, Any]
    pool: pd.DataFrame
    results: pd.DataFrame
    selections: dict[int, pd.DataFrame] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.results["experiment"].iloc[0])

    @property
    def strategy(self) -> str:
        return str(self.results["strategy"].iloc[0])

    @property
    def fold(self) -> int:
        return int(self.results["fold"].iloc[0])

    @property
    def seed(self) -> int:
        return int(self.results["seed"].iloc[0])

    @property
    def vox_columns(self) -> list[str]:
        return [c for c in self.pool.columns if c.startswith("vox_")]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def find_experiments(dirs: Iterable[Path | str]) -> list[Path]:
    """Experiment folders among ``dirs``; a folder without ``config.yaml`` whose subfolders are experiments
    (e.g. the demo's output folder) stands for them."""
    found: list[Path] = []
    seen: set[Path] = set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ReportError(f"{d}: no such folder")
        if ExperimentFolder(d).holds_experiment():
            children = [d]
        else:
            children = sorted(c for c in d.iterdir() if c.is_dir() and ExperimentFolder(c).holds_experiment())
            if not children:
                raise ReportError(f"{d}: not an nnal experiment folder (no config.yaml) and holds none")
        for child in children:  # a folder given twice (``runs runs/exp``) is read once
            if child.resolve() not in seen:
                seen.add(child.resolve())
                found.append(child)
    if not found:
        raise ReportError("no experiment folders given")
    return found


def _read_csv(path: Path, columns: Sequence[str], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise ReportError(f"{path}: missing ({what})")
    if path.stat().st_size == 0:
        raise ReportError(f"{path}: empty file")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ReportError(f"{path}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise ReportError(f"{path}: malformed CSV ({_one_line(err)})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: malformed, missing column(s) {', '.join(missing)}")
    return frame


def _numeric(frame: pd.DataFrame, columns: Sequence[str], path: Path, allow_nan: Sequence[str] = ()) -> pd.DataFrame:
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
    frame = _read_csv(path, RESULT_COLUMNS, "results.csv")
    if frame.empty:
        raise ReportError(f"{path}: no result rows (header only)")
    frame = _numeric(frame, NUMERIC_RESULT_COLUMNS, path, allow_nan=["dice"])
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


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: malformed JSON ({_one_line(err)})") from None
    return data if isinstance(data, dict) else {}


def load_experiment(path: Path | str) -> Experiment:
    """Read one experiment folder (config, environment, state, pool, results, selections)."""
    path = Path(path)
    folder = ExperimentFolder(path)
    cfg_file = folder.config_file
    if not cfg_file.is_file():
        raise ReportError(f"{path}: not an nnal experiment folder (no config.yaml)")
    try:
        config = yaml.safe_load(cfg_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ReportError(f"{cfg_file}: malformed YAML ({_one_line(err)})") from None
    if not isinstance(config, dict):
        raise ReportError(f"{cfg_file}: malformed, not a mapping")
    results = read_results(folder.results_file)
    pool = _read_csv(folder.pool_file, ["id", "case", "slice", "vox_0"], "pool.csv")
    pool = _numeric(pool, ["id", "slice"] + [c for c in pool.columns if c.startswith("vox_")], folder.pool_file)
    selections = {}
    for r in folder.rounds():
        sel_file = folder.selection_file(r)
        if sel_file.is_file():
            sel = _read_csv(sel_file, SELECTION_COLUMNS, "selection.csv")
            sel = _numeric(sel, ["id", "slice", "score"], sel_file, allow_nan=["score"])
            if not sel["id"].isin(pool["id"]).all():
                raise ReportError(f"{sel_file}: malformed, slice ids not in pool.csv")
            selections[r] = sel.astype({"id": np.int64, "slice": np.int64})
        npz = folder.scores_file(r)
        if npz.is_file():  # opening reads the zip directory only; a truncated file fails here, before any write
            try:
                with np.load(npz) as scores:
                    _ = scores.files
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                raise ReportError(f"{npz}: malformed ({_one_line(err)})") from None
    return Experiment(path, config, _read_json(folder.environment_file), _read_json(folder.state_file),
                      pool.astype({"id": np.int64}), results, selections)


def load_experiments(dirs: Iterable[Path | str]) -> list[Experiment]:
    """Every experiment among ``dirs`` (see :func:`find_experiments`); experiment names must be unique."""
    experiments = [load_experiment(p) for p in find_experiments(dirs)]
    seen: dict[str, Path] = {}
    for exp in experiments:
        if exp.name in seen:
            raise ReportError(f"{exp.path}: experiment {exp.name!r} is also in {seen[exp.name]}")
        seen[exp.name] = exp.path
    return experiments


def labeled_progress(exp: Experiment) -> pd.DataFrame:
    """Per round of ``exp``: labeled slices and annotated voxels.

    Columns: round, pool_size, labeled_fraction (labeled / pool slices), fg_fraction (annotated foreground voxels /
    foreground voxels of the whole pool: the FG-Eff axis) and fg_share (foreground / all annotated voxels).
    Rounds whose selections are missing get NaN voxel columns (a full-label experiment without selections
    counts as the whole pool).
    """
    counts = exp.pool[exp.vox_columns].to_numpy(dtype=np.float64)
    index, n = pd.Index(exp.pool["id"]), len(counts)
    pool_fg = counts[:, 1:].sum()
    rows = []
    for r, n_labeled in exp.results.groupby("round")["n_labeled"].first().items():
        mask: np.ndarray | None = None
        if all(k in exp.selections for k in range(int(r) + 1)):
            mask = np.zeros(n, dtype=bool)
            for k in range(int(r) + 1):
                mask[index.get_indexer(exp.selections[k]["id"])] = True
        elif n_labeled == n:
            mask = np.ones(n, dtype=bool)
        fg = counts[mask, 1:].sum() if mask is not None else np.nan
        total = counts[mask].sum() if mask is not None else np.nan
        rows.append({"round": int(r), "pool_size": n, "labeled_fraction": n_labeled / n,
                     "fg_fraction": fg / pool_fg if pool_fg > 0 else np.nan,
                     "fg_share": fg / total if total > 0 else np.nan})
    return pd.DataFrame(rows)


def _config_columns(exp: Experiment) -> dict[str, Any]:
    out = {"folder": str(exp.path)}
    for key, value in exp.config.items():
        if key in RESULT_COLUMNS:
            continue
        out[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
    return out


def _as_experiments(source: Iterable[Path | str] | Sequence[Experiment]) -> list[Experiment]:
    source = list(source)
    if source and all(isinstance(s, Experiment) for s in source):
        return source  # type: ignore[return-value]
    return load_experiments(source)  # type: ignore[arg-type]


def load_results(dirs: Iterable[Path | str] | Sequence[Experiment]) -> pd.DataFrame:
    """All ``results.csv`` rows of the experiments in ``dirs`` as one table, with each round's labeled
    fractions (:func:`labeled_progress`) and the experiment's config fields (dicts as JSON) as extra columns."""
    parts = []
    for exp in _as_experiments(dirs):
        frame = exp.results.merge(labeled_progress(exp), on="round", how="left")
        parts.append(frame.assign(**_config_columns(exp)))
    return pd.concat(parts, ignore_index=True)


def load_selections(dirs: Iterable[Path | str] | Sequence[Experiment]) -> pd.DataFrame:
    """Every selected slice: experiment, strategy, fold, seed, round, id, case, slice, score, the slice's voxels
    per class (vox_0 ..) from pool.csv and fg_voxels (their foreground sum)."""
    parts = []
    for exp in _as_experiments(dirs):
        vox = exp.vox_columns
        for r, sel in sorted(exp.selections.items()):
            frame = sel[SELECTION_COLUMNS].merge(exp.pool[["id", *vox]], on="id", how="left")
            frame["fg_voxels"] = frame[vox[1:]].sum(axis=1) if len(vox) > 1 else 0
            parts.append(frame.assign(experiment=exp.name, strategy=exp.strategy, fold=exp.fold, seed=exp.seed,
                                      round=r))
    if not parts:
        return pd.DataFrame(columns=[*KEYS, "round", *SELECTION_COLUMNS, "fg_voxels"])
    frame = pd.concat(parts, ignore_index=True)
    first = [*KEYS, "round", *SELECTION_COLUMNS]
    return frame[first + [c for c in frame.columns if c not in first]]


def batch_uncertainty(dirs: Iterable[Path | str] | Sequence[Experiment]) -> pd.DataFrame:
    """Total uncertainty of each selected batch (rounds >= 1), from the round's ``scores.npz``.

    Per slice: ``class_uncertainty`` summed over foreground classes when the strategy computed it (the paper's
    Uncert(X_B), Appendix D); else the strategy's own score recorded in ``selection.csv``. Columns: experiment,
    strategy, fold, seed, round, measure (which of the two), n (slices), uncertainty (sum over the batch).
    Batches with neither (e.g. random sampling) are left out.
    """
    rows = []
    for exp in _as_experiments(dirs):
        for r, sel in sorted(exp.selections.items()):
            if r == 0:
                continue
            ids = sel["id"].to_numpy()
            value, measure = np.nan, None
            npz = ExperimentFolder(exp.path).scores_file(r)
            if npz.is_file():
                try:
                    with np.load(npz) as scores:
                        key = next((k for k in ("class_uncertainty", "class_variance") if k in scores.files), None)
                        if key is not None and "ids" in scores.files:
                            pos = np.searchsorted(scores["ids"], ids)
                            cu = np.asarray(scores[key], dtype=np.float64)
                            cu = cu.reshape(len(cu), -1)
                            if np.all(pos < len(cu)) and np.array_equal(scores["ids"][pos], ids):
                                value, measure = float(cu[pos].sum()), key
                except (OSError, ValueError) as err:
                    raise ReportError(f"{npz}: malformed ({_one_line(err)})") from None
            if measure is None and sel["score"].notna().all() and len(sel):
                value, measure = float(sel["score"].sum()), "score"
            if measure is not None:
                rows.append({"experiment": exp.name, "strategy": exp.strategy, "fold": exp.fold, "seed": exp.seed,
                             "round": r, "measure": measure, "n": len(ids), "uncertainty": value})
    return pd.DataFrame(rows, columns=[*KEYS, "round", "measure", "n", "uncertainty"])


def query_sets(dirs: Iterable[Path | str] | Sequence[Experiment]) -> pd.DataFrame:
    """USIM's query set per round, from the round's ``scores.npz``: Q (draws), the distinct slices drawn, and per
    foreground class the share of draws whose slice holds that class (ground truth of the pool, simulation only).

    Columns: experiment, strategy, fold, seed, round, Q, distinct, share_<class> ... Rounds without a query set
    are left out.
    """
    rows = []
    for exp in _as_experiments(dirs):
        folder = ExperimentFolder(exp.path)
        vox = exp.pool.set_index("id")[exp.vox_columns[1:]]
        for r in folder.rounds():
            npz = folder.scores_file(r)
            if not npz.is_file():
                continue
            try:
                with np.load(npz) as scores:
                    if "query" not in scores.files:
                        continue
                    drawn = np.asarray(scores["ids"])[np.asarray(scores["query"])]
            except (OSError, ValueError) as err:
                raise ReportError(f"{npz}: malformed ({_one_line(err)})") from None
            row = {"experiment": exp.name, "strategy": exp.strategy, "fold": exp.fold, "seed": exp.seed,
                   "round": r, "Q": len(drawn), "distinct": len(np.unique(drawn))}
            present = vox.loc[drawn].to_numpy() > 0
            for k, col in enumerate(vox.columns):
                row[f"share_{col[4:]}"] = float(present[:, k].mean()) if len(drawn) else np.nan
            rows.append(row)
    return pd.DataFrame(rows)
