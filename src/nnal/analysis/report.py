"""``build_report``: figures (PNG and SVG), CSV tables and one self-contained ``index.html`` for experiment folders."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
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
from nnal.analysis.load import FULL, Experiment, batch_uncertainty, load_experiments, load_results, query_sets
from nnal.analysis.redundancy import redundancy_shares
from nnal.analysis.stats import aubc_table, fg_efficiency, final_dice, learning_curves, penalty_matrix
from nnal.errors import ReportError
from nnal.preflight import existing_ancestor

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{margin:0 0 4px;font-size:28px}h2{margin-top:40px;border-bottom:2px solid #e3e6eb;padding-bottom:4px}
.meta{color:#5b6573;font-size:14px}.note{color:#5b6573;font-size:14px;margin:6px 0}
.skipped{background:#fff7e6;border-left:4px solid #f0a020;padding:8px 12px;font-size:14px}
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
    def __init__(self, output: Path):
        self.output, self.parts, self.figures = output, [], []
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
        png, svg = self.output / "figures" / f"{name}.png", self.output / "figures" / f"{name}.svg"
        fig.savefig(png, dpi=110)
        fig.savefig(svg)
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.figures.append(name)
        self.add(f'<figure><img data-figure="{name}" alt="{html.escape(what)}" src="data:image/png;base64,{data}">'
                 f'<figcaption>{caption} <a href="figures/{name}.svg">SVG</a></figcaption></figure>')

    def table(self, name: str, frame: pd.DataFrame, index: bool = False) -> None:
        frame.to_csv(self.output / "tables" / f"{name}.csv", index=index)
        body = frame.to_html(index=index, border=0, na_rep="–", float_format=lambda v: f"{v:.4f}")
        self.add(f'<div class="scroll">{body}</div>')


def _pm(mean: float, std: float, n: int) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.4f}" if n < 2 or not np.isfinite(std) else f"{mean:.4f} ± {std:.4f}"


def _summary_table(results: pd.DataFrame, pm, pm_holm, fg) -> pd.DataFrame:
    strategies = F.order_strategies(results["strategy"].unique())
    au = aubc_table(results).set_index("strategy")
    fin = final_dice(results).set_index("strategy")
    gam = fg.table.set_index("strategy") if len(fg.table) else pd.DataFrame(columns=["gamma", "gamma_se"])
    rows = []
    for s in strategies:
        row = {"strategy": s, "repetitions": int(fin.loc[s, "n"]) if s in fin.index else 0,
               "labeled slices (final)": int(round(fin.loc[s, "n_labeled"])) if s in fin.index else None,
               "final Dice": _pm(fin.loc[s, "mean"], fin.loc[s, "std"], fin.loc[s, "n"]) if s in fin.index else "–",
               "AUBC": _pm(au.loc[s, "mean"], au.loc[s, "std"], au.loc[s, "n"]) if s in au.index else "–",
               "Φ": pm.phi.get(s, np.nan) if pm.n_tests else np.nan,
               "Φ (Holm)": pm_holm.phi.get(s, np.nan) if pm_holm.n_tests else np.nan,
               "FG-Eff γ": gam["gamma"].get(s, np.nan)}
        rows.append(row)
    return pd.DataFrame(rows)


def _round_table(results: pd.DataFrame) -> pd.DataFrame:
    curves = learning_curves(results)
    curves["cell"] = [_pm(m, s, n) for m, s, n in zip(curves["dice_mean"], curves["dice_std"], curves["n"],
                                                      strict=True)]
    wide = curves.pivot_table(index="round", columns="strategy", values="cell", aggfunc="first")
    labeled = curves.groupby("round")["n_labeled"].mean().round().astype(int)
    wide = wide[[s for s in F.order_strategies(wide.columns)]]
    wide.insert(0, "labeled slices", labeled)
    wide.columns.name = None
    return wide.reset_index()


def _final_table(results: pd.DataFrame) -> pd.DataFrame:
    """Rows: strategies; columns: mean foreground Dice and each class's Dice at the last round (mean ± SD)."""
    labels = ["mean"] + [lab for lab in pd.unique(results["label"]) if lab != "mean"]
    table = pd.DataFrame({"strategy": F.order_strategies(results["strategy"].unique())}).set_index("strategy")
    for lab in labels:
        fin = final_dice(results, lab).set_index("strategy")
        table[lab] = [_pm(*fin.loc[s, ["mean", "std", "n"]]) if s in fin.index else "–" for s in table.index]
    return table.rename(columns={"mean": "mean foreground"}).reset_index()


def _settings(experiments: Sequence[Experiment], attr: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(shared key/value table, per-experiment table of the keys that differ)."""
    rows = []
    for exp in experiments:
        values = {k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
                  for k, v in getattr(exp, attr).items()}
        rows.append({"experiment": exp.name, **values})
    frame = pd.DataFrame(rows).set_index("experiment")
    same = [c for c in frame.columns if frame[c].astype(str).nunique() == 1]
    shared = pd.DataFrame({"setting": same, "value": [frame[c].iloc[0] for c in same]})
    return shared, frame.drop(columns=same).reset_index()


def _runtime(experiments: Sequence[Experiment]) -> pd.DataFrame:
    rows = []
    for exp in experiments:
        secs: dict[str, float] = {}
        for phases in exp.state.get("seconds", {}).values():
            for phase, s in phases.items():
                secs[phase] = secs.get(phase, 0.0) + float(s)
        rows.append({"experiment": exp.name, **{f"{k} (s)": round(v, 1) for k, v in sorted(secs.items())},
                     "total (min)": round(sum(secs.values()) / 60, 2)})
    return pd.DataFrame(rows)


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
segmentations</b> (Figs. 10-12) when their data are present. Definitions: docs/report.md.</li></ul>"""


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
    experiments = load_experiments(dirs)
    extras = extras or ReportExtras()
    results = load_results(experiments)
    al = results[results["strategy"] != FULL]
    bu = batch_uncertainty(experiments)
    shares = redundancy_shares(experiments)  # empty unless some experiment ran the redundancy scenario
    pm, pm_holm = penalty_matrix(results), penalty_matrix(results, correction="holm")
    fg = fg_efficiency(results)
    page = _Page(output)
    strategies = F.order_strategies(results["strategy"].unique())
    datasets = sorted({Path(str(e.config.get("dataset", "?"))).name for e in experiments})
    page.add(f"<h1>nnal active-learning report</h1><p class='meta'>{len(experiments)} experiment(s); dataset "
             f"{html.escape(', '.join(datasets))}; strategies {html.escape(', '.join(strategies))}; generated "
             f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>" + GUIDE)
    page.add('<nav><a href="#summary">Summary</a><a href="#curves">Learning curves</a><a href="#penalty">Penalty '
             'matrix</a><a href="#fgeff">FG-Eff</a><a href="#uncertainty">Uncertainty</a><a href="#examples">'
             'Examples</a><a href="#experiments">Experiments</a></nav>')

    page.section("summary", "Summary", "Mean ± SD over repetitions. AUBC and Φ exclude the full-label reference.")
    page.table("summary", _summary_table(results, pm, pm_holm, fg))

    page.section("curves", "Learning curves")
    page.figure("learning_curves", lambda: F.plot_learning_curves(results), "Mean foreground Dice (mean over "
                "foreground classes per test case, then over cases) against labeled slices (left) and % of the "
                "pool (right). Band: ±1 SD over repetitions; dashed: full-label reference.", "Learning curves")
    page.figure("class_curves", lambda: F.plot_class_curves(results), "Dice per foreground class against labeled "
                "slices.", "Per-class learning curves")
    page.add("<h3>Mean foreground Dice per round</h3><p class='note'>Mean ± SD over repetitions; the full-label "
             "reference is in the summary.</p>")
    page.table("dice_per_round", _round_table(al))
    page.add("<h3>Final Dice per class</h3>")
    page.table("final_dice", _final_table(results))

    page.section("penalty", "Pairwise penalty matrix", "Rows: strategy i; columns: strategy j; cell: fraction of "
                 "the AL rounds (round 0, the shared initial set, excluded) at which i beats j significantly.")
    for note in pm.notes:
        page.add(f"<p class='note'>{html.escape(note)}</p>")
    if al["strategy"].nunique() < 2:
        page.skip("Penalty matrix", "fewer than two active-learning strategies")
    elif not pm.n_tests:
        page.skip("Penalty matrix", "no pair of strategies has 2 or more matched repetitions (fold, seed)")
    else:
        page.figure("penalty_matrix", lambda: F.plot_penalty_matrix(pm), "Uncorrected paired t-tests, α = 0.05.",
                    "Penalty matrix")
        page.figure("penalty_matrix_holm", lambda: F.plot_penalty_matrix(pm_holm), "Holm correction over the "
                    "pairs tested at each step.", "Holm-corrected penalty matrix")
        order = F.order_strategies(pm.matrix.index)
        table = pm.matrix.loc[order, order]
        page.table("penalty_matrix", table.assign(**{"row sum": table.sum(axis=1)}), index=True)

    page.section("fgeff", "Foreground efficiency", "Fit of Dice = c − a·exp(−γ (x − x0)), x = fraction of the "
                 "pool's foreground voxels annotated; the curve starts at the mean round-0 point (x0, y0), a = c − "
                 "y0." + (f" c = {fg.c:.4f} ({html.escape(fg.c_source)})." if np.isfinite(fg.c) else ""))
    for note in fg.notes:
        page.add(f"<p class='note'>{html.escape(note)}</p>")
    if fg.table.empty:
        page.skip("FG-Eff figure", "; ".join(fg.notes) or "no fit")
    else:
        page.figure("fg_efficiency", lambda: F.plot_fg_efficiency(fg), "Left: annotated foreground against labeled "
                    "slices. Right: Dice against it, points per (experiment, round), lines: fits.", "FG-Eff")
        page.table("fg_efficiency", fg.table)

    page.section("uncertainty", "Uncertainty analyses")
    if bu.empty:
        page.skip("Batch uncertainty (Fig. 5)", "no selected batch has class_uncertainty or a score (random "
                  "sampling computes none)")
    else:
        missing = sorted(set(al["strategy"]) - set(bu["strategy"]))
        if missing:
            page.add(f"<p class='note'>No uncertainty recorded for: {html.escape(', '.join(missing))}.</p>")
        page.figure("batch_uncertainty", lambda: F.plot_batch_uncertainty(bu), "Sum over the selected slices of "
                    "the MC-dropout std (class_uncertainty) or variance (class_variance) summed over foreground "
                    "classes when recorded, else the strategy's own score (not comparable across strategies).",
                    "Batch uncertainty")
    qs = query_sets(experiments)
    if qs.empty:
        page.skip("USIM query sets", "no experiment drew a query set")
    else:
        page.add("<h3>USIM query set per round</h3><p class='note'>Q: draws (with replacement); distinct: slices "
                 "drawn at least once; share_c: fraction of draws whose slice holds foreground class c (label "
                 "value c) in the ground truth.</p>")
        page.table("query_sets", qs.round(4))
    if not shares.empty:
        page.add("<h3>Redundancy scenario (Appendix E)</h3><p class='note'>Per round: draws of the query set (Q) "
                 "and slices of the selected batch that come from the duplicated case, its copies included; "
                 "distinct: different pool slices drawn. The paper: 45% of the query set, 18 of 100 selected by "
                 "USIMF, 45 by uniform sampling from the query set.</p>")
        page.table("redundancy", shares.round(4))
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
        shared, differ = _settings(experiments, attr)
        page.add(f"<h3>{what}: shared by all</h3>")
        page.table(f"{attr}_shared", shared)
        if differ.shape[1] > 1:
            page.add(f"<h3>{what}: differing</h3>")
            page.table(f"{attr}_differing", differ)
    page.add("<h3>Runtime per phase (state.json)</h3>")
    page.table("runtime", _runtime(experiments))
    page.add("<h3>Folders</h3><ul>" + "".join(f"<li>{html.escape(e.name)}: {html.escape(str(e.path))}</li>"
                                              for e in experiments) + "</ul>")

    index = output / "index.html"
    index.write_text("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>nnal report</title>"
                     f"<style>{CSS}</style></head><body><main>{''.join(page.parts)}</main></body></html>\n")
    return index
