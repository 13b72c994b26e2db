"""The report's verdict: which variants differ in final Dice, from the same paired t-tests and Holm correction as
the pairwise penalty matrix (:func:`nnal.analysis.pairwise.pair_tests`), or why none can be named.

:func:`verdict` gives the structured answer and its text for one section's results; :func:`verdict_lines` one plain
line per section of the report of some experiment folders, and :func:`report_verdict` the lines a written report
holds (``verdict.txt``), for a terminal summary. The rule is in ``docs/report.md``, "Verdict".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nnal.analysis.load import VARIANT
from nnal.analysis.pairwise import PairTests, al_curves, pair_tests
from nnal.analysis.power import POWER_COLUMNS, power_sentence, power_table

ALPHA = 0.05
VERDICT_FILE = "verdict.txt"  # one line per section, next to the report's index.html
LISTED = 6  # pairs named in one sentence; the rest are counted (all are in the verdict table)

DIFFERENCE = "difference"  # some pair differs in final Dice after Holm
NO_DIFFERENCE = "no difference"  # pairs were tested and none differs after Holm
ONE_REPETITION = "one repetition"  # a variant has a single repetition: no pair with it can be tested
UNMATCHED = "unmatched"  # repetitions, but no pair shares 2 or more (fold, seed)
ONE_VARIANT = "one variant"  # nothing to compare: one AL variant or none, or no AL round after round 0
FINAL_COLUMNS = ["better", "worse", "n", "difference", "p", "p_holm", "significant"]


@dataclass
class Verdict:
    """``kind``: one of the constants above. ``headline``: one sentence, plain text. ``details``: further
    sentences (pairs that pass only uncorrected, wins over the rounds). ``final``: the tests at the last round,
    one row per tested pair oriented so that ``better`` has the larger mean (``difference`` >= 0). ``power``: the
    detectable differences of :func:`nnal.analysis.power.power_table` (final Dice and AUBC)."""

    kind: str
    headline: str
    details: list[str] = field(default_factory=list)
    final: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FINAL_COLUMNS))
    step: int | None = None
    alpha: float = ALPHA
    power: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=POWER_COLUMNS))

    @property
    def text(self) -> str:
        return " ".join([self.headline, *self.details])

    def line(self, section: str = "", dry_run: bool = False) -> str:
        """The headline as one terminal line: ``Verdict (SECTION): ...``, flagged when the numbers are a dry run."""
        where = f" ({section})" if section else ""
        flag = " [DRY RUN: fake model, not results]" if dry_run else ""
        return f"Verdict{where}{flag}: {self.headline}"


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _count(values: Iterable[int]) -> str:
    values = sorted(set(int(v) for v in values))
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown if len(items) <= LISTED else f"{shown} and {len(items) - LISTED} more"


def _oriented(tests: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Tests of one step as better/worse rows (larger mean first), smallest Holm p first."""
    flip = tests["mean"] < 0
    out = pd.DataFrame({"better": tests["b"].where(flip, tests["a"]), "worse": tests["a"].where(flip, tests["b"]),
                        "n": tests["n"], "difference": tests["mean"].abs(), "p": tests["p"], "p_holm": tests["p_holm"]})
    out["significant"] = (out["p_holm"] < alpha) & (out["difference"] > 0)
    return out.sort_values(["p_holm", "p", "better", "worse"], ignore_index=True)[FINAL_COLUMNS]


def _untestable(results: pd.DataFrame, found: PairTests) -> Verdict:
    """No pair could be tested at the last round: a single repetition, or repetitions on different folds/seeds."""
    per = al_curves(results)
    last = per[per["round"] == max(found.steps)] if found.steps else per
    reps = last.groupby(VARIANT)[["fold", "seed"]].apply(lambda g: len(g.drop_duplicates()))
    single = sorted(reps[reps < 2].index)
    if single:
        who = "" if len(single) == len(reps) else f" for {_listed(single)}"
        return Verdict(ONE_REPETITION, f"n = 1{who}: this cannot rank strategies; with one repetition the "
                       "seed-to-seed spread is unknown and the differences may lie within it (run 3 or more seeds "
                       "or folds).")
    return Verdict(UNMATCHED, "No pair of variants shares 2 or more repetitions (same fold and seed): nothing can "
                   "be tested, so this cannot rank strategies.")


def _headline(final: pd.DataFrame, alpha: float) -> tuple[str, str]:
    won = final[final["significant"]]
    if won.empty:
        return NO_DIFFERENCE, (f"No significant difference in final Dice after Holm correction with n = "
                               f"{_count(final['n'])} repetitions ({_plural(len(final), 'pair')} tested, α = {alpha}).")
    pairs = [f"{t.better} > {t.worse} ({format_p(t.p_holm)}, Δ = {t.difference:+.3f}, n = {t.n})"
             for t in won.itertuples()]
    rest = len(final) - len(won)
    tail = f"; the other {_plural(rest, 'pair')} tested do not differ" if rest else ""
    return DIFFERENCE, f"{_listed(pairs)} in final Dice after Holm correction (α = {alpha}){tail}."


def _uncorrected_only(final: pd.DataFrame, alpha: float) -> str:
    """The pairs that would pass without correction: what the uncorrected penalty matrix counts as wins."""
    only = final[(final["p"] < alpha) & ~final["significant"] & (final["difference"] > 0)]
    if only.empty:
        return ""
    pairs = [f"{t.better} > {t.worse} ({format_p(t.p)})" for t in only.itertuples()]
    return (f"Uncorrected, {_listed(pairs)} would pass, but not after correcting for the "
            f"{_plural(len(final), 'pair')} tested: with that many tests such p-values are expected by chance.")


def _over_rounds(found: PairTests, alpha: float) -> str:
    """Wins after Holm at any AL round (the Holm penalty matrix, counted in rounds)."""
    tests = found.tests
    won = tests[(tests["p_holm"] < alpha) & (tests["mean"] != 0)]
    if won.empty:
        return f"No pair differs at any of the {_plural(len(found.steps), 'AL round')} after Holm correction."
    better = won["a"].where(won["mean"] > 0, won["b"])
    worse = won["b"].where(won["mean"] > 0, won["a"])
    counts = pd.Series(1, index=pd.MultiIndex.from_arrays([better, worse])).groupby(level=[0, 1]).sum()
    steps = len(found.steps)
    pairs = [f"{b} > {w} at {k} of {steps}" for (b, w), k in counts.sort_values(ascending=False, kind="stable").items()]
    return f"Over the {_plural(steps, 'AL round')} (Holm): {_listed(pairs)}."


def _power(final: pd.DataFrame, power: pd.DataFrame, alpha: float) -> str:
    """Whether the pairs not found different mean "no difference" or "too few repetitions": their detectable
    difference in final Dice (:func:`nnal.analysis.power.power_sentence`)."""
    quiet = {frozenset(pair) for pair in final.loc[~final["significant"], ["better", "worse"]].itertuples(index=False)}
    dice = power[power["metric"] == "final Dice"]
    rows = dice[[frozenset(pair) in quiet for pair in dice[["a", "b"]].itertuples(index=False)]]
    if rows.empty:
        return ""
    lead = "That" if len(rows) == len(final) else f"For the {_plural(len(rows), 'pair')} not found different, that"
    return power_sentence(rows, alpha=alpha, lead=lead)


def verdict(results: pd.DataFrame, alpha: float = ALPHA, label: str = "mean") -> Verdict:
    """Which variants differ in the final Dice of ``label`` (one dataset and protocol; references left out).

    The tests are the penalty matrix's at its last budget step: per pair, a two-sided paired t-test over the
    repetitions matched by (fold, seed), Holm-adjusted over the pairs tested at that step; a pair differs when its
    adjusted p < ``alpha``. With no testable pair the verdict says why (one repetition, unmatched repetitions)."""
    variants = sorted(al_curves(results, label, skip_initial=False)[VARIANT].unique())
    if len(variants) < 2:
        what = f"One active-learning variant ({variants[0]})" if variants else "No active-learning variant"
        return Verdict(ONE_VARIANT, f"{what}: nothing to compare.", alpha=alpha)
    found = pair_tests(results, label)
    if not found.steps:
        return Verdict(ONE_VARIANT, "No active-learning round after the shared initial set: nothing to compare.",
                       alpha=alpha)
    step = max(found.steps)
    at_last = found.tests[found.tests["round"] == step]
    if at_last.empty:
        return _untestable(results, found)
    final = _oriented(at_last, alpha)
    kind, headline = _headline(final, alpha)
    untested = len(variants) * (len(variants) - 1) // 2 - len(final)
    power = power_table(results, alpha=alpha, label=label)
    details = [d for d in (_power(final, power, alpha), _uncorrected_only(final, alpha), _over_rounds(found, alpha))
               if d]
    if untested:
        details.append(f"{_plural(untested, 'pair')} could not be tested (fewer than 2 repetitions with the same "
                       "fold and seed).")
    return Verdict(kind, headline, details, final, step, alpha, power)


def verdict_lines(dirs: Iterable[Path | str]) -> list[str]:
    """One line per section of the report of ``dirs`` (the experiments it admits), for a terminal summary; reads
    the folders again, so after a report was written :func:`report_verdict` is cheaper."""
    from nnal.analysis.admission import admit
    from nnal.analysis.load import load_results

    admission = admit(dirs)
    results = load_results(admission.experiments)
    many = len(admission.sections) > 1
    lines = []
    for section in admission.sections:
        names = {e.name for e in section.experiments}
        found = verdict(results[results["experiment"].isin(names)])
        lines.append(found.line(section.name if many else "", admission.dry_run))
    return lines


def report_verdict(report: Path | str) -> list[str]:
    """The verdict lines a written report holds: ``report`` is its folder or its ``index.html``."""
    report = Path(report)
    folder = report.parent if report.suffix == ".html" else report
    return (folder / VERDICT_FILE).read_text().splitlines()
