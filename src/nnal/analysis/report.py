"""``build_report``: figures (PNG and SVG), CSV tables and one self-contained ``index.html`` for experiment folders."""

from __future__ import annotations

import datetime as dt
import html
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from nnal.analysis import panels as P
from nnal.analysis.admission import DRY_RUN_BANNER, DRY_RUN_COLUMN, Admission, admit
from nnal.analysis.load import DATASET, VARIANT, Experiment, load_results
from nnal.analysis.page import CSS, Page
from nnal.analysis.report_sections import Section, report_sections, section_body
from nnal.analysis.report_tables import round_runtime_table, runtime_table, settings_tables
from nnal.analysis.savings import TARGET_FRACTION
from nnal.analysis.style import order_strategies
from nnal.analysis.verdict import VERDICT_FILE
from nnal.errors import ReportError
from nnal.preflight import existing_ancestor


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


GUIDE = """<details><summary>How to read this report</summary><ul class="guide">
<li><b>Verdict</b> (first in each section): which variants differ in final Dice after Holm correction, from the
same paired t-tests as the penalty matrix; with one repetition it says that nothing can be ranked.</li>
<li><b>Learning curves</b>: mean foreground Dice on the fold's test cases after each round against labeled slices
and % of the pool; line = mean over repetitions (folds x seeds), band = ±1 SD, dashed = full-label reference.
With many variants each gets a panel of its own for its band.</li>
<li><b>Paired differences</b>: each variant's Dice minus random's (or the first variant's) on the same fold and
seed, with the mean and a 95% interval: the comparison the tests make.</li>
<li><b>AUBC</b>: area under that curve over the labeled-fraction axis divided by its range (0-1, higher is
better). <b>Final Dice</b>: the last round.</li>
<li><b>Pairwise penalty matrix</b> (paper Fig. 2D): cell (i, j) = fraction of budget steps at which i is
significantly better than j (paired two-sided t-test over (fold, seed), α = 0.05, Holm-corrected over the pairs
of a step; the uncorrected matrix is collapsed below it). Φ = column mean: lower is better.</li>
<li><b>Label savings</b>: labeled slices each variant needs to reach 95% (configurable) of the full-label
reference's Dice, and how many fewer than random (and random-fg) on the same fold and seed; "not reached" where a
curve never gets there. <b>Power</b>: the smallest difference in final Dice and AUBC the repetitions could detect,
so that "no significant difference" reads as no difference or as too few repetitions.</li>
<li><b>FG-Eff γ</b> (nnActive): how fast Dice approaches the full-label Dice as foreground voxels get annotated.</li>
<li><b>Batch uncertainty</b> (paper Fig. 5), <b>correlation</b> (Fig. 6), <b>t-SNE</b> (Fig. 3), <b>example
segmentations</b> (Figs. 10-12, collapsed) when their data are present. Definitions: docs/report.md.</li>
<li><b>Variants</b>: a line, row or column is a strategy with its non-default options, e.g. usimf[eta=0.5]; two
settings of one strategy are never pooled. Experiments on different datasets, or with different protocols (rounds,
initial set, budget, redundancy, schedule), get one section each. Unfinished experiments are left out.</li>
</ul></details>"""


def build_report(dirs: Iterable[Path | str], output: Path | str, extras: ReportExtras | None = None,
                 savings_fraction: float = TARGET_FRACTION) -> Path:
    """Write figures (PNG, SVG), tables (CSV), ``verdict.txt`` (one line per section) and a self-contained
    ``output/index.html`` for the experiment folders ``dirs``; return the path of ``index.html``. Raises
    ReportError for an unreadable folder. ``savings_fraction``: label savings count the slices to this share of
    the full-label Dice."""
    # nnU-Net's progress plot calls seaborn.set(font_scale=2.5), which changes matplotlib's global style for the
    # rest of a process that trained: draw with matplotlib's defaults whatever ran before
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        return _build_report(dirs, output, extras, savings_fraction)


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


def _build_report(dirs: Iterable[Path | str], output: Path | str, extras: ReportExtras | None,
                  savings_fraction: float) -> Path:
    output = Path(output)
    check_output(output)
    if not 0.0 < savings_fraction <= 1.0:
        raise ReportError(f"the label savings' share of the full-label Dice must lie in (0, 1], got {savings_fraction}")
    # everything that can refuse the input (ReportError) runs before the first write: a refused report leaves the
    # output folder as it was (absent, or byte-identical)
    admission = admit(dirs)
    extras = extras or ReportExtras()
    results = load_results(admission.experiments)
    sections = report_sections(admission, results, savings_fraction)
    page = Page(output, admission.dry_run)
    _header(page, admission, sections, results)
    for section in sections:
        section_body(page, section)
    _per_slice(page, extras, several=len(sections) > 1)
    _examples(page, extras)
    _experiments(page, admission.experiments)
    many = len(sections) > 1
    lines = [d.verdict.line(d.name if many else "", admission.dry_run) for d in sections]
    (output / VERDICT_FILE).write_text("\n".join(lines) + "\n")
    index = output / "index.html"
    title = "nnal report (DRY RUN)" if admission.dry_run else "nnal report"
    index.write_text(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
                     f"<style>{CSS}</style></head><body><main>{''.join(page.parts)}</main></body></html>\n")
    return index


def _per_slice(page: Page, extras: ReportExtras, several: bool) -> None:
    """The correlation (Fig. 6) and embedding (Fig. 3) figures from the arrays given to the report."""
    if several:  # the arrays below come from one experiment each, not from a section's comparison
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


def _examples(page: Page, extras: ReportExtras) -> None:
    """Example segmentations, behind a closed <details>: many near-identical thumbnails would make most of the
    page."""
    page.section("examples", "Example segmentations")
    if not extras.segmentations:
        page.skip("Example segmentations (Figs. 10-12)", "no predictions given")
        return
    n = sum(len(ex.predictions) for ex in extras.segmentations)
    with page.collapsed(f"Show {len(extras.segmentations)} example slice(s) with {n} prediction(s)"):
        for k, ex in enumerate(extras.segmentations):
            page.figure(f"segmentation_{k}", lambda ex=ex: P.plot_segmentations(ex.image, ex.gt, ex.predictions,
                                                                                title=ex.title),
                        "Image, ground truth and predictions (overlay).", "Segmentation example")


def _experiments(page: Page, experiments: list[Experiment]) -> None:
    """Settings shared and differing, runtimes, folders; the long per-experiment tables collapsed."""
    page.section("experiments", "Experiments", "Settings (config.yaml) and versions (environment.json).")
    for attr, what in (("config", "Configuration"), ("environment", "Environment")):
        shared, differ = settings_tables(experiments, attr)
        page.titled_table(f"{attr}_shared", shared, f"{what}: shared by all")
        if differ.shape[1] > 1:
            page.titled_table(f"{attr}_differing", differ, f"{what}: differing")
    page.titled_table("runtime", runtime_table(experiments), "Runtime per phase (state.json)")
    page.titled_table("runtime_per_round", round_runtime_table(experiments), "Seconds per phase and round; the "
                      "query step (score + select) as a share of training")
    with page.collapsed(f"Folders of the {len(experiments)} experiment(s)"):
        page.add("<ul>" + "".join(f"<li>{html.escape(e.name)} ({html.escape(e.variant)}): "
                                  f"{html.escape(str(e.path))}</li>" for e in experiments) + "</ul>")


def _header(page: Page, admission: Admission, sections: list[Section], results: pd.DataFrame) -> None:
    """The dry-run banner, title, counts, the verdict of each section when there are several, the guide, the
    notes on what was left out or kept apart, and navigation."""
    if admission.dry_run:
        page.add(f'<p class="dryrun">{html.escape(DRY_RUN_BANNER)}. Every table under tables/ starts with the '
                 f'column {DRY_RUN_COLUMN} = True; nothing here is a result.</p>')
    variants = order_strategies(results[VARIANT].unique())
    datasets = list(dict.fromkeys(results[DATASET]))
    split = ""
    if any(d.tag for d in sections):
        split = f"; {len(sections)} sections, one per dataset and protocol: {'; '.join(d.name for d in sections)}"
    elif len(sections) > 1:
        split = " (one section each)"
    page.add(f"<h1>nnal active-learning report</h1><p class='meta'>{len(admission.experiments)} experiment(s); "
             f"{'dataset' if len(datasets) == 1 else 'datasets'} {html.escape(', '.join(sorted(datasets)))}"
             f"{html.escape(split)}; variants {html.escape(', '.join(variants))}; "
             f"generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>")
    if len(sections) > 1:  # one section leads with its verdict right below; several are listed here first
        page.add("<div class='verdict'>" + "".join(
            f"<p><a href='#summary{d.suffix}'>{html.escape(d.name)}</a>: {html.escape(d.verdict.headline)}</p>"
            for d in sections) + "</div>")
    page.add(GUIDE)
    for note in admission.notes():
        page.add(f'<p class="skipped">{html.escape(note)}</p>')
    if len(sections) == 1:
        links = [("summary", "Summary"), ("curves", "Learning curves"), ("differences", "Differences"),
                 ("savings", "Label savings"), ("penalty", "Penalty matrix"), ("power", "Power"), ("fgeff", "FG-Eff"),
                 ("uncertainty", "Uncertainty"), ("examples", "Examples"), ("experiments", "Experiments")]
        page.add("<nav>" + "".join(f'<a href="#{key}">{text}</a>' for key, text in links) + "</nav>")
    else:
        page.add("<nav>" + "".join(f'<a href="#summary{d.suffix}">{html.escape(d.name)}</a>' for d in sections)
                 + '<a href="#slices">Per-slice analyses</a><a href="#examples">Examples</a><a href="#experiments">'
                 'Experiments</a></nav>')
