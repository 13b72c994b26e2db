"""Label savings: how many labeled slices each variant needs to reach a fraction (default 95%) of the full-label
reference's Dice, and how many fewer than Random (and the foreground-aware random baseline, ``random-fg``) on the
same fold and seed.

Per repetition (one AL experiment): target = fraction x the reference Dice of that repetition (the mean final Dice
of the ``full`` experiments of the same fold and seed; without one, of the same fold; without one, of every
reference in the section). The slices needed are interpolated linearly in n_labeled between the last round below
the target and the first round at or above it; a curve that starts at or above it needs the initial set; one that
never gets there is "not reached" (right-censored: more than its last round's slices). Definitions and the rules
for not-reached repetitions are in ``docs/report.md``, "Label savings".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nnal.analysis.load import FULL, VARIANT
from nnal.analysis.pairwise import t_interval
from nnal.analysis.stats import experiment_curves
from nnal.analysis.style import order_strategies

TARGET_FRACTION = 0.95
BASELINES = ("random", "random-fg")  # what savings are counted against, when present
NO_REFERENCE = "no full-label reference: label savings need one"
EXACT, AT_LEAST, AT_MOST, UNKNOWN = "exact", "at least", "at most", "unknown"  # what one paired saving is
REPETITION_COLUMNS = ["experiment", VARIANT, "fold", "seed", "reference", "reference_from", "target", "slices",
                      "reached", "last_labeled"]
SUMMARY_COLUMNS = [VARIANT, "n", "reached", "median", "mean", "low", "high"]
PAIR_COLUMNS = [VARIANT, "baseline", "fold", "seed", "saving", "kind"]
SAVING_COLUMNS = [VARIANT, "baseline", "pairs", EXACT, AT_LEAST, AT_MOST, UNKNOWN, "mean", "low", "high", "bound"]


def slices_to_reach(n_labeled: np.ndarray, dice: np.ndarray, target: float) -> float:
    """Labeled slices at which a curve first reaches ``target``: linear interpolation between the last point below
    it and the first at or above it; the first point's slices when it starts there; NaN when never reached.

    Points are sorted by n_labeled; NaN Dice are skipped."""
    x, y = np.asarray(n_labeled, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    order = np.argsort(x[keep], kind="stable")
    x, y = x[keep][order], y[keep][order]
    above = np.flatnonzero(y >= target)
    if len(above) == 0:
        return float("nan")
    k = int(above[0])
    if k == 0:
        return float(x[0])
    # y[k - 1] < target <= y[k], so the slope is positive
    return float(x[k - 1] + (target - y[k - 1]) * (x[k] - x[k - 1]) / (y[k] - y[k - 1]))


def references(curves: pd.DataFrame) -> pd.DataFrame:
    """The final Dice of each full-label reference experiment (its last round): fold, seed, dice."""
    full = curves[curves["strategy"] == FULL]
    return full.loc[full.groupby("experiment")["round"].idxmax(), ["fold", "seed", "dice"]].reset_index(drop=True)


def reference_for(refs: pd.DataFrame, fold: int, seed: int) -> tuple[float, str]:
    """The reference Dice a repetition is compared with, and where it comes from: the mean of the references of
    the same fold and seed, else of the same fold (the same test cases), else of every reference."""
    same = refs[(refs["fold"] == fold) & (refs["seed"] == seed)]
    if len(same):
        return float(same["dice"].mean()), "same fold and seed"
    same_fold = refs[refs["fold"] == fold]
    if len(same_fold):
        return float(same_fold["dice"].mean()), "same fold"
    return float(refs["dice"].mean()), "all references"


@dataclass
class LabelSavings:
    """``per_repetition``: one row per AL experiment (REPETITION_COLUMNS; ``slices`` NaN when not reached).
    ``summary``: per variant (SUMMARY_COLUMNS). ``pairs``: per (variant, baseline, fold, seed) the saving
    slices(baseline) - slices(variant) and its kind (PAIR_COLUMNS). ``savings``: per (variant, baseline)
    (SAVING_COLUMNS). ``notes``: why something is missing."""

    fraction: float
    per_repetition: pd.DataFrame
    summary: pd.DataFrame
    pairs: pd.DataFrame
    savings: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return not self.per_repetition.empty


def _repetitions(curves: pd.DataFrame, refs: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """One row per repetition (variant, fold, seed); two experiments of one repetition (a rerun elsewhere) are
    averaged round by round first, as the paired tests average them."""
    rows = []
    al = curves[curves["strategy"] != FULL]
    al = al.groupby([VARIANT, "fold", "seed", "round"], as_index=False).agg(
        experiment=("experiment", lambda names: ", ".join(sorted(set(names)))), n_labeled=("n_labeled", "mean"),
        dice=("dice", "mean"))
    for (variant, fold, seed), g in al.groupby([VARIANT, "fold", "seed"]):
        experiment = g["experiment"].iloc[0]
        reference, source = reference_for(refs, fold, seed)
        slices = slices_to_reach(g["n_labeled"], g["dice"], fraction * reference)
        rows.append({"experiment": experiment, VARIANT: variant, "fold": fold, "seed": seed, "reference": reference,
                     "reference_from": source, "target": fraction * reference, "slices": slices,
                     "reached": bool(np.isfinite(slices)), "last_labeled": float(g["n_labeled"].max())})
    return pd.DataFrame(rows, columns=REPETITION_COLUMNS)


def censored_median(slices: np.ndarray) -> float:
    """Median slices where NaN (not reached) counts as more than every reached value: inf when half or more did
    not reach the target, since the median then lies among the censored ones."""
    values = np.where(np.isfinite(slices), slices, np.inf)
    return float(np.median(values)) if len(values) else float("nan")


def _summary(per: pd.DataFrame) -> pd.DataFrame:
    """Per variant: repetitions, reached, censored median; mean and t-interval only when every one reached."""
    rows = []
    for variant, g in per.groupby(VARIANT):
        slices = g["slices"].to_numpy(dtype=np.float64)
        everyone = bool(g["reached"].all())
        mean = float(slices.mean()) if everyone else float("nan")
        low, high = t_interval(slices) if everyone else (float("nan"), float("nan"))
        rows.append({VARIANT: variant, "n": len(g), "reached": int(g["reached"].sum()),
                     "median": censored_median(slices), "mean": mean, "low": low, "high": high})
    return _ordered(pd.DataFrame(rows, columns=SUMMARY_COLUMNS))


def paired_saving(base: pd.Series, other: pd.Series) -> tuple[float, str]:
    """slices(baseline) - slices(variant) for one (fold, seed), each a per-repetition row. When one of them never
    reached the target its slices are more than its last round's: the saving is a bound ("at least" when only the
    variant reached, "at most" when only the baseline did); neither reached: unknown."""
    if base["reached"] and other["reached"]:
        return float(base["slices"] - other["slices"]), EXACT
    if other["reached"]:
        return float(base["last_labeled"] - other["slices"]), AT_LEAST
    if base["reached"]:
        return float(base["slices"] - other["last_labeled"]), AT_MOST
    return float("nan"), UNKNOWN


def _pairs(per: pd.DataFrame) -> pd.DataFrame:
    rows = []
    indexed = per.set_index([VARIANT, "fold", "seed"])
    for baseline in (b for b in BASELINES if b in set(per[VARIANT])):
        base = indexed.loc[baseline]
        for (variant, fold, seed), other in indexed.iterrows():
            # random against random-fg is counted once, as random-fg's saving against random
            if variant == baseline or (variant in BASELINES[:BASELINES.index(baseline)]):
                continue
            if (fold, seed) not in base.index:
                continue
            saving, kind = paired_saving(base.loc[(fold, seed)], other)
            rows.append({VARIANT: variant, "baseline": baseline, "fold": fold, "seed": seed, "saving": saving,
                         "kind": kind})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _saving_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, baseline): counts by kind; the mean and t-interval when every saving is exact; the mean of
    the values as a bound ("≥" / "≤") when the others all bound it from one side; nothing when mixed."""
    rows = []
    for (variant, baseline), g in pairs.groupby([VARIANT, "baseline"]):
        kinds = g["kind"].value_counts()
        counts = {k: int(kinds.get(k, 0)) for k in (EXACT, AT_LEAST, AT_MOST, UNKNOWN)}
        values = g["saving"].to_numpy(dtype=np.float64)
        mean, (low, high), bound = float("nan"), (float("nan"), float("nan")), ""
        if counts[EXACT] == len(g):
            mean, (low, high), bound = float(values.mean()), t_interval(values), "="
        elif not counts[UNKNOWN] and not (counts[AT_LEAST] and counts[AT_MOST]):
            mean, bound = float(values.mean()), "≥" if counts[AT_LEAST] else "≤"
        rows.append({VARIANT: variant, "baseline": baseline, "pairs": len(g), **counts, "mean": mean, "low": low,
                     "high": high, "bound": bound})
    return _ordered(pd.DataFrame(rows, columns=SAVING_COLUMNS))


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    rank = {v: k for k, v in enumerate(order_strategies(frame[VARIANT]))}
    keys = [VARIANT] + (["baseline"] if "baseline" in frame.columns else [])
    return frame.sort_values(keys, key=lambda c: c.map(rank) if c.name == VARIANT else c, ignore_index=True)


def label_savings(results: pd.DataFrame, fraction: float = TARGET_FRACTION, label: str = "mean") -> LabelSavings:
    """Label savings of one section's results (see the module's docstring); nothing but a note without a
    full-label reference or without AL experiments."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the target fraction must lie in (0, 1], got {fraction}")
    curves = experiment_curves(results, label)
    refs = references(curves)
    empty = LabelSavings(fraction, pd.DataFrame(columns=REPETITION_COLUMNS), pd.DataFrame(columns=SUMMARY_COLUMNS),
                         pd.DataFrame(columns=PAIR_COLUMNS), pd.DataFrame(columns=SAVING_COLUMNS))
    if refs.empty or not np.isfinite(refs["dice"]).any():
        empty.notes.append(NO_REFERENCE)
        return empty
    refs = refs[np.isfinite(refs["dice"])]
    per = _repetitions(curves, refs, fraction)
    if per.empty:
        empty.notes.append("no active-learning experiment: nothing needs labels to reach the reference")
        return empty
    pairs = _pairs(per)
    notes = [] if len(pairs) else ["no random baseline (random or random-fg) with a matching fold and seed: "
                                   "slices needed only, no saving"]
    return LabelSavings(fraction, per, _summary(per), pairs, _saving_summary(pairs), notes)


# --- as text (the page's tables, a terminal) -------------------------------------------------------------------


def slices_text(row: pd.Series) -> str:
    """Slices needed as the page shows them: the mean with its t-interval when every repetition reached the
    target, else the median (not-reached counted as more) or "not reached"."""
    if np.isfinite(row["mean"]):
        interval = f" [{row['low']:.0f}, {row['high']:.0f}]" if np.isfinite(row["low"]) else ""
        return f"{row['mean']:.0f}{interval} (mean)"
    if np.isfinite(row["median"]):
        return f"{row['median']:.0f} (median)"
    return "not reached"


def saving_text(row: pd.Series) -> str:
    """A saving as the page's table shows it: ``+120 [80, 160]``, ``≥ +90 (bound)``, or why there is none."""
    if row["bound"] == "=":
        interval = f" [{row['low']:+.0f}, {row['high']:+.0f}]" if np.isfinite(row["low"]) else ""
        return f"{row['mean']:+.0f}{interval}"
    if row["bound"]:
        return f"{row['bound']} {row['mean']:+.0f} (mean of bounds)"
    return "not determined (neither reached, or bounds both ways)"


def savings_lines(savings: LabelSavings) -> list[str]:
    """One plain line per variant for a terminal or a README: slices needed and the savings against the random
    baselines, or the note saying why there are none."""
    if not savings.available:
        return [f"Label savings: {note}" for note in savings.notes]
    by_variant = savings.savings.groupby(VARIANT)
    lines = []
    for _, row in savings.summary.iterrows():
        slices = slices_text(row)
        where = slices if slices == "not reached" else f"reached at {slices} slices"
        text = (f"{row[VARIANT]}: {savings.fraction:.0%} of the full-label Dice {where} ({row['reached']} of "
                f"{row['n']} repetitions reached it)")
        if row[VARIANT] in by_variant.groups:
            text += "".join(f"; slices saved vs {s['baseline']}: {saving_text(s)}" for _, s in
                            by_variant.get_group(row[VARIANT]).iterrows())
        lines.append(text)
    return lines
