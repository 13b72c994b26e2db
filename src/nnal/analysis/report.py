"""``build_report``: figures (PNG and SVG), CSV tables and one self-contained ``index.html`` for experiment folders."""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nnal.analysis import figures as F
from nnal.analysis import panels as P
from nnal.analysis.admission import DRY_RUN_BANNER, DRY_RUN_COLUMN, Admission, admit
from nnal.analysis.load import DATASET, FULL, VARIANT, Experiment, batch_uncertainty, load_results, query_sets
from nnal.analysis.protocol import slug
from nnal.analysis.redundancy import redundancy_shares
from nnal.analysis.report_tables import (
    final_table,
    round_runtime_table,
    round_table,
    runtime_table,
    settings_tables,
    summary_table,
)
from nnal.analysis.stats import FgEfficiency, PenaltyMatrix, fg_efficiency, penalty_matrix, reference_mismatch
from nnal.errors import ReportError
from nnal.preflight import existing_ancestor

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{margin:0 0 4px;font-size:28px}h2{margin-top:40px;border-bottom:2px solid #e3e6eb;padding-bottom:4px}
.meta{color:#5b6573;font-size:14px}.note{color:#5b6573;font-size:14px;margin:6px 0}
.skipped{background:#fff7e6;border-left:4px solid #f0a020;padding:8px 12px;font-size:14px}
.dryrun{background:#fdecea;border:3px solid #c0392b;color:#8e1b10;padding:12px 16px;font-size:18px;font-weight:700}
figure{margin:16px 0}figure img{max-width:100%;height:auto;border:1px solid #e3e6eb}
figcaption{font-size:14px;color:#3d4653;margin-top:6px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:4px 10px;border-bottom:1px solid #e3e6eb;
text-align:right}th{background:#f0f2f5}td:first-child,th:first-child{text-align:left}
.scroll{overflow-x:auto}nav a{margin-right:14px;font-size:14px}ul.guide li{margin:4px 0;font-size:14px}
"""


@dataclass
class SegmentationExample:
    """One example slice for :func:`nnal.analysis.panels.plot_segmentations`."""

    image: np.ndarray
    gt: np.ndarray
    predictions: Mapping[str, np.ndarray]
    title: str = "Example segmentations"


@dataclass
class ReportExtras:
    """Array inputs for the figures that experiment folders do not hold; each left at None is skipped."""

    error: np.ndarray | None = None  # misclassified pixels per slice (paper Fig. 6)
    predictors: Mapping[str, np.ndarray] = field(default_factory=dict)  # {"predictive uncertainty": u, ...}
    embedding: np.ndarray | None = None  # (N, d) gradient embeddings, or (N, 2) coordinates (Fig. 3)
    embedding_status: np.ndarray | None = None  # (N,) labeled / unlabeled / query / selected
    embedding_uncertainty: np.ndarray | None = None  # (N,) marker size
    segmentations: Sequence[SegmentationExample] = ()  # Figs. 10-12


class _Page:
    def __init__(self, output: Path, dry_run: bool = False):
        self.output, self.parts, self.figures, self.dry_run = output, [], [], dry_run
        (output / "figures").mkdir(parents=True, exist_ok=True)
        (output / "tables").mkdir(parents=True, exist_ok=True)

    def add(self, text: str) -> None:
        self.parts.append(text)

    def section(self, key: str, title: str, intro: str = "") -> None:
        self.add(f'<h2 id="{key}">{html.escape(title)}</h2>' + (f'<p class="note">{intro}</p>' if intro else ""))

    def skip(self, what: str, why: str) -> None:
        self.add(f'<p class="skipped">{html.escape(what)} skipped: {html.escape(why)}</p>')

    def figure(self, name: str, make: Callable[[], Figure | None], caption: str, what: str) -> None:
        try:
            fig = make()
        except (ValueError, KeyError, IndexError, np.linalg.LinAlgError) as err:
            self.skip(what, f"could not draw it ({' '.join(str(err).split())[:160]})")
            return
        if fig is None:
            self.skip(what, "no data")
            return
        if self.dry_run:  # a figure copied out of the report still says what its numbers are
            fig.text(0.995, 0.005, "DRY RUN: nnal's fake model, not nnU-Net", ha="right", va="bottom", fontsize=8,
                     color="#c0392b")
        png, svg = self.output / "figures" / f"{name}.png", self.output / "figures" / f"{name}.svg"
        fig.savefig(png, dpi=110)
        fig.savefig(svg)
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.figures.append(name)
        self.add(f'<figure><img data-figure="{name}" alt="{html.escape(what)}" src="data:image/png;base64,{data}">'
                 f'<figcaption>{caption} <a href="figures/{name}.svg">SVG</a></figcaption></figure>')

    def table(self, name: str, frame: pd.DataFrame, index: bool = False) -> None:
        csv = frame
        if self.dry_run:  # a CSV read without the page must not pass for results: its first column says so
            csv = frame.rename_axis(frame.index.name or "").reset_index() if index else frame.copy()
            csv.insert(0, DRY_RUN_COLUMN, True)
        csv.to_csv(self.output / "tables" / f"{name}.csv", index=index and not self.dry_run)
        body = frame.to_html(index=index, border=0, na_rep="–", float_format=lambda v: f"{v:.4f}")
        self.add(f'<div class="scroll">{body}</div>')


@dataclass
class _Section:
    """One section's experiments (one dataset, one protocol) and everything computed from them, before the first
    write."""

    name: str
    tag: str  # the protocol fields that tell it from other sections of its dataset; "" when there are none
    suffix: str  # added to section ids and figure and table names; "" when the report holds one section
    experiments: list[Experiment]
    results: pd.DataFrame
    pm: PenaltyMatrix
    pm_holm: PenaltyMatrix
    fg: FgEfficiency
    batches: pd.DataFrame
    queries: pd.DataFrame
    shares: pd.DataFrame

    @property
    def al(self) -> pd.DataFrame:
        return self.results[self.results["strategy"] != FULL]

    def title(self, what: str) -> str:
        return f"{self.name}: {what}" if self.suffix else what

    def intro(self) -> str:
        """The first words of the section's summary (HTML) when the report has several sections."""
        if not self.suffix:
            return ""
        text = (f"{len(self.experiments)} experiment(s) in this section; nothing here is pooled with or compared to "
                "another section. ")
        if self.tag:
            text += f"Protocol: {html.escape(self.tag)}, where the other sections of this dataset differ. "
        return text


def _sections(admission: Admission, results: pd.DataFrame) -> list[_Section]:
    """The admitted experiments by section (dataset and protocol), each with its statistics; suffixes only for
    several."""
    out, used = [], set()
    for section in admission.sections:
        suffix = ""
        if len(admission.sections) > 1:
            suffix = f"_{slug(section.name)}"
            while suffix in used:  # two names alike once reduced to letters and digits
                suffix += "_"
            used.add(suffix)
        exps = section.experiments
        res = results[results["experiment"].isin({e.name for e in exps})].reset_index(drop=True)
        out.append(_Section(section.name, section.tag, suffix, exps, res, penalty_matrix(res),
                            penalty_matrix(res, correction="holm"), fg_efficiency(res), batch_uncertainty(exps),
                            query_sets(exps), redundancy_shares(exps)))
    return out


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """A loaded table as the page shows it within a dataset's section: variant next to strategy, no dataset."""
    frame = frame.drop(columns=[DATASET], errors="ignore")
    if VARIANT in frame.columns and "strategy" in frame.columns:
        cols = [c for c in frame.columns if c != VARIANT]
        cols.insert(cols.index("strategy") + 1, VARIANT)
        frame = frame[cols]
    return frame


GUIDE = """<ul class="guide">
<li><b>Learning curves</b>: mean foreground Dice on the fold's test cases after each round against labeled slices
and % of the pool; line = mean over repetitions (folds x seeds), band = ±1 SD, dashed = full-label reference.</li>
<li><b>AUBC</b>: area under that curve over the labeled-fraction axis divided by its range (0-1, higher is
better). <b>Final Dice</b>: the last round.</li>
<li><b>Pairwise penalty matrix</b> (paper Fig. 2D): cell (i, j) = fraction of budget steps at which i is
significantly better than j (paired two-sided t-test over (fold, seed), α = 0.05). Φ = column mean: lower is better.
</li>
<li><b>FG-Eff γ</b> (nnActive): how fast Dice approaches the full-label Dice as foreground voxels get annotated.</li>
<li><b>Batch uncertainty</b> (paper Fig. 5), <b>correlation</b> (Fig. 6), <b>t-SNE</b> (Fig. 3), <b>example
segmentations</b> (Figs. 10-12) when their data are present. Definitions: docs/report.md.</li>
<li><b>Variants</b>: a line, row or column is a strategy with its non-default options, e.g. usimf[eta=0.5]; two
settings of one strategy are never pooled. Experiments on different datasets, or with different protocols (rounds,
initial set, budget, redundancy, schedule), get one section each. Unfinished experiments are left out.</li></ul>"""


def build_report(dirs: Iterable[Path | str], output: Path | str, extras: ReportExtras | None = None) -> Path:
    """Write figures (PNG, SVG), tables (CSV) and a self-contained ``output/index.html`` for the experiment
    folders ``dirs``; return the path of ``index.html``. Raises ReportError for an unreadable folder."""
    # nnU-Net's progress plot calls seaborn.set(font_scale=2.5), which changes matplotlib's global style for the
    # rest of a process that trained: draw with matplotlib's defaults whatever ran before
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        return _build_report(dirs, output, extras)


def check_output(output: Path) -> None:
    """Refuse an output path the report cannot be written to (a file, a folder under a file, a read-only folder)
    before anything is read or written."""
    if output.exists() and not output.is_dir():
        raise ReportError(f"{output}: the report output is a file, not a folder")
    parent = existing_ancestor(output)
    if parent != output and not parent.is_dir():
        raise ReportError(f"{output}: cannot create the report folder, {parent} is a file, not a folder")
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise ReportError(f"{output}: cannot write the report, {parent} is not writable")


def _build_report(dirs: Iterable[Path | str], output: Path | str, extras: ReportExtras | None) -> Path:
    output = Path(output)
    check_output(output)
    # everything that can refuse the input (ReportError) runs before the first write: a refused report leaves the
    # output folder as it was (absent, or byte-identical)
    admission = admit(dirs)
    experiments = admission.experiments
    extras = extras or ReportExtras()
    results = load_results(experiments)
    sections = _sections(admission, results)
    page = _Page(output, admission.dry_run)
    _header(page, admission, sections, results)
    for section in sections:
        _section_body(page, section)

    if len(sections) > 1:  # the arrays below come from one experiment each, not from a section's comparison
        page.section("slices", "Per-slice analyses", "From the arrays given to the report (ReportExtras).")
    if extras.error is not None and extras.predictors:
        page.figure("correlation", lambda: P.plot_correlations(extras.error, extras.predictors), "Pearson "
                    "correlation with the number of misclassified pixels per slice.", "Correlation")
    else:
        page.skip("Correlation figure (Fig. 6)", "no per-slice error and uncertainty arrays given")
    if extras.embedding is not None and extras.embedding_status is not None:
        emb = np.asarray(extras.embedding)
        coords, method = (emb, "given") if emb.ndim == 2 and emb.shape[1] == 2 else P.embed_2d(emb)
        page.figure("embedding", lambda: P.plot_embedding(coords, extras.embedding_status,
                                                          extras.embedding_uncertainty),
                    f"Gradient embeddings in 2-D ({method}).", "Embedding")
    else:
        page.skip("t-SNE of gradient embeddings (Fig. 3)", "no embeddings given")

    page.section("examples", "Example segmentations")
    if not extras.segmentations:
        page.skip("Example segmentations (Figs. 10-12)", "no predictions given")
    for k, ex in enumerate(extras.segmentations):
        page.figure(f"segmentation_{k}", lambda ex=ex: P.plot_segmentations(ex.image, ex.gt, ex.predictions,
                                                                            title=ex.title),
                    "Image, ground truth and predictions (overlay).", "Segmentation example")

    page.section("experiments", "Experiments", "Settings (config.yaml) and versions (environment.json).")
    for attr, what in (("config", "Configuration"), ("environment", "Environment")):
        shared, differ = settings_tables(experiments, attr)
        page.add(f"<h3>{what}: shared by all</h3>")
        page.table(f"{attr}_shared", shared)
        if differ.shape[1] > 1:
            page.add(f"<h3>{what}: differing</h3>")
            page.table(f"{attr}_differing", differ)
    page.add("<h3>Runtime per phase (state.json)</h3>")
    page.table("runtime", runtime_table(experiments))
    page.add("<h3>Seconds per phase and round; the query step (score + select) as a share of training</h3>")
    page.table("runtime_per_round", round_runtime_table(experiments))
    page.add("<h3>Folders</h3><ul>" + "".join(f"<li>{html.escape(e.name)} ({html.escape(e.variant)}): "
                                              f"{html.escape(str(e.path))}</li>" for e in experiments) + "</ul>")

    index = output / "index.html"
    title = "nnal report (DRY RUN)" if admission.dry_run else "nnal report"
    index.write_text(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
                     f"<style>{CSS}</style></head><body><main>{''.join(page.parts)}</main></body></html>\n")
    return index


def _header(page: _Page, admission: Admission, sections: list[_Section], results: pd.DataFrame) -> None:
    """The dry-run banner, title, counts, guide, the notes on what was left out or kept apart, and navigation."""
    if admission.dry_run:
        page.add(f'<p class="dryrun">{html.escape(DRY_RUN_BANNER)}. Every table under tables/ starts with the '
                 f'column {DRY_RUN_COLUMN} = True; nothing here is a result.</p>')
    variants = F.order_strategies(results[VARIANT].unique())
    datasets = list(dict.fromkeys(results[DATASET]))
    split = ""
    if any(d.tag for d in sections):
        split = f"; {len(sections)} sections, one per dataset and protocol: {'; '.join(d.name for d in sections)}"
    elif len(sections) > 1:
        split = " (one section each)"
    page.add(f"<h1>nnal active-learning report</h1><p class='meta'>{len(admission.experiments)} experiment(s); "
             f"{'dataset' if len(datasets) == 1 else 'datasets'} {html.escape(', '.join(sorted(datasets)))}"
             f"{html.escape(split)}; variants {html.escape(', '.join(variants))}; "
             f"generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>" + GUIDE)
    for note in admission.notes():
        page.add(f'<p class="skipped">{html.escape(note)}</p>')
    if len(sections) == 1:
        page.add('<nav><a href="#summary">Summary</a><a href="#curves">Learning curves</a><a href="#penalty">'
                 'Penalty matrix</a><a href="#fgeff">FG-Eff</a><a href="#uncertainty">Uncertainty</a>'
                 '<a href="#examples">Examples</a><a href="#experiments">Experiments</a></nav>')
    else:
        page.add("<nav>" + "".join(f'<a href="#summary{d.suffix}">{html.escape(d.name)}</a>' for d in sections)
                 + '<a href="#slices">Per-slice analyses</a><a href="#examples">Examples</a><a href="#experiments">'
                 'Experiments</a></nav>')


def _section_body(page: _Page, d: _Section) -> None:
    """Summary, learning curves, penalty matrix, FG-Eff and the batch and query-set tables of one section (one
    dataset and protocol)."""
    results, al, pm, pm_holm, fg, x = d.results, d.al, d.pm, d.pm_holm, d.fg, d.suffix
    page.section(f"summary{x}", d.title("Summary"), d.intro() + "Mean ± SD over repetitions. AUBC and Φ exclude the "
                 "full-label reference.")
    mismatch = reference_mismatch(results)
    if mismatch:
        page.add(f"<p class='note'>{html.escape(mismatch)}</p>")
    page.table(f"summary{x}", summary_table(results, pm, pm_holm, fg))

    page.section(f"curves{x}", d.title("Learning curves"))
    page.figure(f"learning_curves{x}", lambda: F.plot_learning_curves(results), "Mean foreground Dice (mean over "
                "foreground classes per test case, then over cases) against labeled slices (left) and % of the "
                "pool (right). Band: ±1 SD over repetitions; dashed: full-label reference.", "Learning curves")
    page.figure(f"class_curves{x}", lambda: F.plot_class_curves(results), "Dice per foreground class against "
                "labeled slices.", "Per-class learning curves")
    page.add("<h3>Mean foreground Dice per round</h3><p class='note'>Mean ± SD over repetitions; the full-label "
             "reference is in the summary.</p>")
    page.table(f"dice_per_round{x}", round_table(al))
    page.add("<h3>Final Dice per class</h3>")
    page.table(f"final_dice{x}", final_table(results))

    page.section(f"penalty{x}", d.title("Pairwise penalty matrix"), "Rows: variant i; columns: variant j; cell: "
                 "fraction of the AL rounds (round 0, the shared initial set, excluded) at which i beats j "
                 "significantly.")
    for note in pm.notes:
        page.add(f"<p class='note'>{html.escape(note)}</p>")
    if al[VARIANT].nunique() < 2:
        page.skip("Penalty matrix", "fewer than two active-learning variants")
    elif not pm.n_tests:
        page.skip("Penalty matrix", "no pair of variants has 2 or more matched repetitions (fold, seed)")
    else:
        page.figure(f"penalty_matrix{x}", lambda: F.plot_penalty_matrix(pm), "Uncorrected paired t-tests, α = "
                    "0.05.", "Penalty matrix")
        page.figure(f"penalty_matrix_holm{x}", lambda: F.plot_penalty_matrix(pm_holm), "Holm correction over the "
                    "pairs tested at each step.", "Holm-corrected penalty matrix")
        order = F.order_strategies(pm.matrix.index)
        table = pm.matrix.loc[order, order]
        page.table(f"penalty_matrix{x}", table.assign(**{"row sum": table.sum(axis=1)}), index=True)

    page.section(f"fgeff{x}", d.title("Foreground efficiency"), "Fit of Dice = c − a·exp(−γ (x − x0)), x = "
                 "fraction of the pool's foreground voxels annotated; the curve starts at the mean round-0 point "
                 "(x0, y0), a = c − y0." + (f" c = {fg.c:.4f} ({html.escape(fg.c_source)})." if np.isfinite(fg.c)
                                           else ""))
    for note in fg.notes:
        page.add(f"<p class='note'>{html.escape(note)}</p>")
    if fg.table.empty:
        page.skip("FG-Eff figure", "; ".join(fg.notes) or "no fit")
    else:
        page.figure(f"fg_efficiency{x}", lambda: F.plot_fg_efficiency(fg), "Left: annotated foreground against "
                    "labeled slices. Right: Dice against it, points per (experiment, round), lines: fits.", "FG-Eff")
        page.table(f"fg_efficiency{x}", fg.table)

    page.section(f"uncertainty{x}", d.title("Uncertainty analyses"))
    bu, qs, shares = d.batches, d.queries, d.shares
    if bu.empty:
        page.skip("Batch uncertainty (Fig. 5)", "no selected batch has class_uncertainty or a score (random "
                  "sampling computes none)")
    else:
        missing = sorted(set(al[VARIANT]) - set(bu[VARIANT]))
        if missing:
            page.add(f"<p class='note'>No uncertainty recorded for: {html.escape(', '.join(missing))}.</p>")
        page.figure(f"batch_uncertainty{x}", lambda: F.plot_batch_uncertainty(bu), "Sum over the selected slices "
                    "of the MC-dropout std (class_uncertainty) or variance (class_variance) summed over foreground "
                    "classes when recorded, else the strategy's own score (not comparable across strategies).",
                    "Batch uncertainty")
    if qs.empty:
        page.skip("USIM query sets", "no experiment drew a query set")
    else:
        page.add("<h3>USIM query set per round</h3><p class='note'>Q: draws (with replacement); distinct: slices "
                 "drawn at least once; share_c: fraction of draws whose slice holds foreground class c (label "
                 "value c) in the ground truth.</p>")
        page.table(f"query_sets{x}", _shown(qs).round(4))
    if not shares.empty:
        page.add("<h3>Redundancy scenario (Appendix E)</h3><p class='note'>Per round: draws of the query set (Q) "
                 "and slices of the selected batch that come from the duplicated case, its copies included; "
                 "distinct: different pool slices drawn. The paper: 45% of the query set, 18 of 100 selected by "
                 "USIMF, 45 by uniform sampling from the query set.</p>")
        page.table(f"redundancy{x}", _shown(shares).round(4))
