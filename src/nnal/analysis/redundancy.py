"""The redundancy scenario (the paper's Appendix E): how much of each round's query set and selected batch comes
from the duplicated case.

The paper: with hippocampus_172 duplicated 100x, 45% of the query set came from that scan; USIMF selected 18 of
100 slices from it, uniform sampling from the query set 45. Every row counts the case's original slices and all
their copies together (pool.csv's ``copy`` column tells them apart).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nnal.analysis.load import KEYS, Experiment, load_experiments
from nnal.errors import ReportError
from nnal.experiment import ExperimentFolder

COLUMNS = [*KEYS, "selection", "case", "copies", "round", "Q", "query_from_case", "query_share", "distinct",
           "distinct_from_case", "batch", "batch_from_case", "batch_share"]


def _drawn(npz: Path) -> np.ndarray | None:
    """The slice ids of a round's query draws (with repeats), or None when the round drew no query set."""
    if not npz.is_file():
        return None
    try:
        with np.load(npz) as scores:
            if "query" not in scores.files or "ids" not in scores.files:
                return None
            return np.asarray(scores["ids"])[np.asarray(scores["query"], dtype=np.int64)]
    except (OSError, ValueError, IndexError, zipfile.BadZipFile) as err:
        raise ReportError(f"{npz}: malformed ({' '.join(str(err).split())[:200]})") from None


def redundancy_shares(source: Iterable[Path | str] | Sequence[Experiment]) -> pd.DataFrame:
    """Per experiment with ``redundancy`` in its config and per round >= 1 that selected a batch: Q (query draws),
    query_from_case (draws of the duplicated case's slices, copies included) and query_share (their fraction),
    distinct / distinct_from_case (different pool slices drawn, all / of the case), batch (slices selected),
    batch_from_case and batch_share. Q and the query columns are NaN for strategies without a query set.
    Experiments without redundancy are left out; none at all gives an empty table."""
    source = list(source)
    experiments = source if source and all(isinstance(s, Experiment) for s in source) else load_experiments(source)
    rows = []
    for exp in experiments:
        redundancy = exp.config.get("redundancy")
        if not isinstance(redundancy, dict) or "case" not in redundancy:
            continue
        case = str(redundancy["case"])
        of_case = exp.pool.set_index("id")["case"].astype(str) == case
        options = exp.config.get("strategy_options") or {}
        folder = ExperimentFolder(exp.path)
        for r, sel in sorted(exp.selections.items()):
            if r == 0:  # the initial random set, drawn among the original slices before any duplicate counts
                continue
            batch = sel["id"].to_numpy()
            row = {"experiment": exp.name, "strategy": exp.strategy, "fold": exp.fold, "seed": exp.seed,
                   "selection": options.get("selection", "flqmi") if exp.strategy.startswith("usim") else "",
                   "case": case, "copies": redundancy.get("copies"), "round": r,
                   "batch": len(batch), "batch_from_case": int(of_case.loc[batch].sum())}
            row["batch_share"] = row["batch_from_case"] / len(batch) if len(batch) else np.nan
            drawn = _drawn(folder.scores_file(r))
            if drawn is not None:
                if not np.isin(drawn, of_case.index).all():
                    raise ReportError(f"{folder.scores_file(r)}: malformed, query ids not in pool.csv")
                hits = of_case.loc[drawn].to_numpy()
                distinct = np.unique(drawn)
                row.update(Q=len(drawn), query_from_case=int(hits.sum()),
                           query_share=float(hits.mean()) if len(drawn) else np.nan, distinct=len(distinct),
                           distinct_from_case=int(of_case.loc[distinct].sum()))
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
