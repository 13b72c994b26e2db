"""Reading experiment folders into tidy pandas tables.

An experiment folder (laid out by ``nnal.experiment``) holds ``config.yaml``, ``pool.csv``, ``results.csv`` and
``round_NNN/`` folders with ``selection.csv`` and ``scores.npz``. Every problem with a folder is a
:class:`ReportError` whose one-line message names the folder or file.

The report's unit is a *variant* (a strategy with the options that change its result, see
:func:`nnal.strategies.variant_label`) on one *dataset* (:func:`dataset_names`): every loaded table carries both
as the columns ``variant`` and ``dataset_name``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from nnal.analysis.readers import KEYS, numeric_columns, one_line, read_csv, read_json, read_results
from nnal.errors import ConfigError, ReportError
from nnal.experiment import RESULT_COLUMNS, SELECTION_COLUMNS, ExperimentFolder
from nnal.layout import experiment_folders
from nnal.strategies import REGISTRY, format_variant, variant_label

FULL = "full"  # the strategy name of a full-label reference experiment (trains on every pool slice)
VARIANT = "variant"  # the column of the variant label: what the report groups by wherever a strategy is a group
DATASET = "dataset_name"  # the column of the dataset label: the report never pools two of them


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
    variant: str = ""  # strategy plus its non-default result-changing options (config.yaml)
    fingerprint: dict[str, Any] = field(default_factory=dict)  # dataset_fingerprint.json, empty when absent

    @property
    def dataset_folder(self) -> str:
        """The name of the dataset's folder (config ``dataset``): the first part of its identity."""
        return Path(str(self.config.get("dataset", ""))).name or "unknown dataset"

    @property
    def dataset_digest(self) -> str:
        """A digest of the dataset's fingerprint (its files and cases), "" when the folder holds none."""
        if not self.fingerprint:
            return ""
        return hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:12]

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


def find_experiments(dirs: Iterable[Path | str]) -> list[Path]:
    """Experiment folders among ``dirs``; a folder without ``config.yaml`` stands for the experiments below it
    (the demo's output, a grid's output: :func:`nnal.experiment.experiment_folders`)."""
    found: list[Path] = []
    seen: set[Path] = set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ReportError(f"{d}: no such folder")
        if ExperimentFolder(d).holds_experiment():
            children = [d]
        else:
            children = experiment_folders(d)
            if not children:
                raise ReportError(f"{d}: not an nnal experiment folder (no config.yaml) and holds none")
        for child in children:  # a folder given twice (``runs runs/exp``) is read once
            if child.resolve() not in seen:
                seen.add(child.resolve())
                found.append(child)
    if not found:
        raise ReportError("no experiment folders given")
    return found


def read_config(path: Path) -> dict[str, Any]:
    """An experiment folder's ``config.yaml`` as a mapping (not validated as a Config: older nnal wrote others)."""
    cfg_file = ExperimentFolder(path).config_file
    if not cfg_file.is_file():
        raise ReportError(f"{path}: not an nnal experiment folder (no config.yaml)")
    try:
        config = yaml.safe_load(cfg_file.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ReportError(f"{cfg_file}: malformed YAML ({one_line(err)})") from None
    if not isinstance(config, dict):
        raise ReportError(f"{cfg_file}: malformed, not a mapping")
    return config


def load_experiment(path: Path | str) -> Experiment:
    """Read one experiment folder (config, environment, state, pool, results, selections)."""
    path = Path(path)
    folder = ExperimentFolder(path)
    cfg_file = folder.config_file
    config = read_config(path)
    results = read_results(folder.results_file)
    pool = read_csv(folder.pool_file, ["id", "case", "slice", "vox_0"], "pool.csv")
    pool = numeric_columns(pool, ["id", "slice"] + [c for c in pool.columns if c.startswith("vox_")], folder.pool_file)
    selections = {}
    for r in folder.rounds():
        sel_file = folder.selection_file(r)
        if sel_file.is_file():
            sel = read_csv(sel_file, SELECTION_COLUMNS, "selection.csv")
            sel = numeric_columns(sel, ["id", "slice", "score"], sel_file, allow_nan=["score"])
            if not sel["id"].isin(pool["id"]).all():
                raise ReportError(f"{sel_file}: malformed, slice ids not in pool.csv")
            selections[r] = sel.astype({"id": np.int64, "slice": np.int64})
        npz = folder.scores_file(r)
        if npz.is_file():  # opening reads the zip directory only; a truncated file fails here, before any write
            try:
                with np.load(npz) as scores:
                    _ = scores.files
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                raise ReportError(f"{npz}: malformed ({one_line(err)})") from None
    return Experiment(path, config, read_json(folder.environment_file), read_json(folder.state_file),
                      pool.astype({"id": np.int64}), results, selections, _variant(cfg_file, config, results),
                      read_json(folder.fingerprint_file))


def _variant(cfg_file: Path, config: dict[str, Any], results: pd.DataFrame) -> str:
    """The experiment's variant label from its config's ``strategy`` and ``strategy_options``."""
    strategy = str(config.get("strategy", results["strategy"].iloc[0]))
    options = config.get("strategy_options") or {}
    if not isinstance(options, dict):
        raise ReportError(f"{cfg_file}: malformed, strategy_options is not a mapping")
    if strategy not in REGISTRY:
        # a strategy this nnal does not know (renamed, a plug-in): its defaults are unknown, so every given
        # option is part of the label; two such experiments are pooled only when their options are the same
        return format_variant(strategy, options)
    try:
        return variant_label(strategy, options)
    except ConfigError as err:
        raise ReportError(f"{cfg_file}: {one_line(err)}") from None


def dataset_names(experiments: Sequence[Experiment]) -> dict[str, str]:
    """Experiment name -> the label of its dataset, the same for experiments on the same dataset.

    Two experiments share a dataset when their datasets' folder names agree and so do their fingerprints
    (``dataset_fingerprint.json``) where both have one. The label is the folder name; when one folder name covers
    datasets with different fingerprints, each gets the start of its fingerprint's digest (experiments without a
    fingerprint then form their own group, as which dataset they ran on is unknown).
    """
    digests: dict[str, set[str]] = {}
    for exp in experiments:
        digests.setdefault(exp.dataset_folder, set()).add(exp.dataset_digest)
    names = {}
    for exp in experiments:
        if len(digests[exp.dataset_folder] - {""}) <= 1:
            names[exp.name] = exp.dataset_folder
        else:
            names[exp.name] = f"{exp.dataset_folder} ({exp.dataset_digest[:8] or 'no fingerprint'})"
    return names


def load_experiments(dirs: Iterable[Path | str]) -> list[Experiment]:
    """Every experiment among ``dirs`` (see :func:`find_experiments`); experiment names must be unique."""
    return check_unique_names([load_experiment(p) for p in find_experiments(dirs)])


def check_unique_names(experiments: list[Experiment]) -> list[Experiment]:
    """``experiments``, refused when two folders hold experiments of one name (their rows would merge)."""
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


def with_variants(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``variant`` column: a table without one (built by hand, or by an older nnal) reads as every
    strategy at its default options, i.e. variant = strategy."""
    return frame if VARIANT in frame.columns else frame.assign(**{VARIANT: frame["strategy"]})


def _config_columns(exp: Experiment, dataset: str) -> dict[str, Any]:
    out = {"folder": str(exp.path), VARIANT: exp.variant, DATASET: dataset}
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
    fractions (:func:`labeled_progress`), its ``variant`` and ``dataset_name`` and the experiment's config fields
    (dicts as JSON) as extra columns."""
    parts = []
    experiments = _as_experiments(dirs)
    datasets = dataset_names(experiments)
    for exp in experiments:
        frame = exp.results.merge(labeled_progress(exp), on="round", how="left")
        parts.append(frame.assign(**_config_columns(exp, datasets[exp.name])))
    return pd.concat(parts, ignore_index=True)


def load_selections(dirs: Iterable[Path | str] | Sequence[Experiment]) -> pd.DataFrame:
    """Every selected slice: experiment, strategy, fold, seed, round, id, case, slice, score, the slice's voxels
    per class (vox_0 ..) from pool.csv, fg_voxels (their foreground sum), variant and dataset_name."""
    parts = []
    experiments = _as_experiments(dirs)
    datasets = dataset_names(experiments)
    for exp in experiments:
        vox = exp.vox_columns
        for r, sel in sorted(exp.selections.items()):
            frame = sel[SELECTION_COLUMNS].merge(exp.pool[["id", *vox]], on="id", how="left")
            frame["fg_voxels"] = frame[vox[1:]].sum(axis=1) if len(vox) > 1 else 0
            parts.append(frame.assign(experiment=exp.name, strategy=exp.strategy, fold=exp.fold, seed=exp.seed,
                                      round=r, **{VARIANT: exp.variant, DATASET: datasets[exp.name]}))
    if not parts:
        return pd.DataFrame(columns=[*KEYS, "round", *SELECTION_COLUMNS, "fg_voxels", VARIANT, DATASET])
    frame = pd.concat(parts, ignore_index=True)
    first, last = [*KEYS, "round", *SELECTION_COLUMNS], [VARIANT, DATASET]
    return frame[first + [c for c in frame.columns if c not in first + last] + last]


def batch_uncertainty(dirs: Iterable[Path | str] | Sequence[Experiment]) -> pd.DataFrame:
    """Total uncertainty of each selected batch (rounds >= 1), from the round's ``scores.npz``.

    Per slice: ``class_uncertainty`` summed over foreground classes when the strategy computed it (the paper's
    Uncert(X_B), Appendix D); else the strategy's own score recorded in ``selection.csv``. Columns: experiment,
    strategy, fold, seed, round, measure (which of the two), n (slices), uncertainty (sum over the batch), variant,
    dataset_name. Batches with neither (e.g. random sampling) are left out.
    """
    rows = []
    experiments = _as_experiments(dirs)
    datasets = dataset_names(experiments)
    for exp in experiments:
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
                    raise ReportError(f"{npz}: malformed ({one_line(err)})") from None
            if measure is None and sel["score"].notna().all() and len(sel):
                value, measure = float(sel["score"].sum()), "score"
            if measure is not None:
                rows.append({"experiment": exp.name, "strategy": exp.strategy, "fold": exp.fold, "seed": exp.seed,
                             "round": r, "measure": measure, "n": len(ids), "uncertainty": value,
                             VARIANT: exp.variant, DATASET: datasets[exp.name]})
    return pd.DataFrame(rows, columns=[*KEYS, "round", "measure", "n", "uncertainty", VARIANT, DATASET])


def query_sets(dirs: Iterable[Path | str] | Sequence[Experiment]) -> pd.DataFrame:
    """USIM's query set per round, from the round's ``scores.npz``: Q (draws), the distinct slices drawn, and per
    foreground class the share of draws whose slice holds that class (ground truth of the pool, simulation only).

    Columns: experiment, strategy, fold, seed, round, Q, distinct, share_<class> ..., variant, dataset_name. Rounds
    without a query set are left out.
    """
    rows = []
    experiments = _as_experiments(dirs)
    datasets = dataset_names(experiments)
    for exp in experiments:
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
                raise ReportError(f"{npz}: malformed ({one_line(err)})") from None
            row = {"experiment": exp.name, "strategy": exp.strategy, "fold": exp.fold, "seed": exp.seed,
                   "round": r, "Q": len(drawn), "distinct": len(np.unique(drawn))}
            present = vox.loc[drawn].to_numpy() > 0
            for k, col in enumerate(vox.columns):
                row[f"share_{col[4:]}"] = float(present[:, k].mean()) if len(drawn) else np.nan
            rows.append({**row, VARIANT: exp.variant, DATASET: datasets[exp.name]})
    return pd.DataFrame(rows)
