"""The report's tables as data frames: summary, Dice per round, final Dice per class, settings and runtime.

A row (or column) is a variant (``variant``: a strategy plus its non-default options); callers pass the results of
one dataset at a time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from nnal.analysis.load import VARIANT, Experiment, with_variants
from nnal.analysis.pairwise import PenaltyMatrix
from nnal.analysis.stats import FgEfficiency, aubc_table, final_dice, learning_curves
from nnal.analysis.style import order_strategies


def plus_minus(mean: float, std: float, n: int) -> str:
    """``mean ± std`` with 4 decimals; the mean alone for one repetition, "–" when there is none."""
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.4f}" if n < 2 or not np.isfinite(std) else f"{mean:.4f} ± {std:.4f}"


def summary_table(results: pd.DataFrame, pm: PenaltyMatrix, pm_holm: PenaltyMatrix, fg: FgEfficiency
                  ) -> pd.DataFrame:
    """One row per variant: repetitions, final labeled slices, final Dice, AUBC, Φ (Holm), Φ (uncorrected),
    FG-Eff γ."""
    variants = order_strategies(with_variants(results)[VARIANT].unique())
    au = aubc_table(results).set_index(VARIANT)
    fin = final_dice(results).set_index(VARIANT)
    gam = fg.table.set_index(VARIANT) if len(fg.table) else pd.DataFrame(columns=["gamma", "gamma_se"])
    rows = []
    for s in variants:
        row = {VARIANT: s, "repetitions": int(fin.loc[s, "n"]) if s in fin.index else 0,
               "labeled slices (final)": int(round(fin.loc[s, "n_labeled"])) if s in fin.index else None,
               "final Dice": plus_minus(*fin.loc[s, ["mean", "std", "n"]]) if s in fin.index else "–",
               "AUBC": plus_minus(*au.loc[s, ["mean", "std", "n"]]) if s in au.index else "–",
               "Φ (Holm)": pm_holm.phi.get(s, np.nan) if pm_holm.n_tests else np.nan,
               "Φ (uncorrected)": pm.phi.get(s, np.nan) if pm.n_tests else np.nan,
               "FG-Eff γ": gam["gamma"].get(s, np.nan)}
        rows.append(row)
    return pd.DataFrame(rows)


def round_table(results: pd.DataFrame) -> pd.DataFrame:
    """Rows: rounds (with the mean labeled slices); columns: variants; cells: mean ± SD foreground Dice."""
    curves = learning_curves(results)
    curves["cell"] = [plus_minus(m, s, n) for m, s, n in zip(curves["dice_mean"], curves["dice_std"], curves["n"],
                                                             strict=True)]
    wide = curves.pivot_table(index="round", columns=VARIANT, values="cell", aggfunc="first")
    labeled = curves.groupby("round")["n_labeled"].mean().round().astype(int)
    wide = wide[order_strategies(wide.columns)]
    wide.insert(0, "labeled slices", labeled)
    wide.columns.name = None
    return wide.reset_index()


def final_table(results: pd.DataFrame) -> pd.DataFrame:
    """Rows: variants; columns: mean foreground Dice and each class's Dice at the last round (mean ± SD)."""
    labels = ["mean"] + [lab for lab in pd.unique(results["label"]) if lab != "mean"]
    table = pd.DataFrame({VARIANT: order_strategies(with_variants(results)[VARIANT].unique())}).set_index(VARIANT)
    for lab in labels:
        fin = final_dice(results, lab).set_index(VARIANT)
        table[lab] = [plus_minus(*fin.loc[s, ["mean", "std", "n"]]) if s in fin.index else "–" for s in table.index]
    return table.rename(columns={"mean": "mean foreground"}).reset_index()


ABSENT = "(absent)"  # a key one experiment's file lacks: shown, and a difference from any value


def _setting_text(value: object) -> str:
    """A setting as the tables write it: dicts and lists as JSON, None as null (as config.yaml spells it)."""
    if value is None:
        return "null"
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)


def settings_tables(experiments: Sequence[Experiment], attr: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(shared key/value table, per-experiment table of the keys that differ) of ``config`` or ``environment``.

    Values are compared as text, so a setting that is null (or absent) in one experiment and set in another differs
    (pandas would drop the missing value and call the column shared)."""
    settings = [getattr(exp, attr) for exp in experiments]
    keys = list(dict.fromkeys(k for values in settings for k in values))
    texts = {k: [_setting_text(values[k]) if k in values else ABSENT for values in settings] for k in keys}
    same = [k for k in keys if len(set(texts[k])) == 1]
    shared = pd.DataFrame({"setting": same, "value": [texts[k][0] for k in same]})
    differ = pd.DataFrame({"experiment": [exp.name for exp in experiments],
                           **{k: texts[k] for k in keys if k not in same}})
    return shared, differ


def round_runtime_table(experiments: Sequence[Experiment]) -> pd.DataFrame:
    """Per experiment and round: seconds per phase (state.json) and the query step (scoring plus selection) as a
    share of that round's training. A round whose phases were adopted (a shared round 0) reads 0 s for them."""
    rows = []
    for exp in experiments:
        for round_, phases in sorted(exp.state.get("seconds", {}).items(), key=lambda kv: int(kv[0])):
            secs = {p: float(phases.get(p, 0.0)) for p in ("score", "select", "train", "evaluate")}
            query = secs["score"] + secs["select"]
            rows.append({"experiment": exp.name, "variant": exp.variant, "round": int(round_),
                         **{f"{p} (s)": round(v, 1) for p, v in secs.items()},
                         "query / train": round(query / secs["train"], 2) if int(round_) > 0 and secs["train"] > 0
                         else None})
    return pd.DataFrame(rows)


def runtime_table(experiments: Sequence[Experiment]) -> pd.DataFrame:
    """Seconds per phase summed over rounds (state.json) and the total in minutes, per experiment."""
    rows = []
    for exp in experiments:
        secs: dict[str, float] = {}
        for phases in exp.state.get("seconds", {}).values():
            for phase, s in phases.items():
                secs[phase] = secs.get(phase, 0.0) + float(s)
        rows.append({"experiment": exp.name, **{f"{k} (s)": round(v, 1) for k, v in sorted(secs.items())},
                     "total (min)": round(sum(secs.values()) / 60, 2)})
    return pd.DataFrame(rows)
