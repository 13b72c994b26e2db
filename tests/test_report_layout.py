"""The report reads cleanly: no two texts overlap in any figure (checked in matplotlib) or on the page (checked in
headless Chromium at two widths), and the example segmentations do not lengthen the page (collapsed).

Experiment folders come from the fake backend: six variants (a long-named one among them, more than the learning
curves draw bands for) over three seeds, and a one-seed pair as the demo runs it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_nnunet_dataset
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from test_report import CHROMIUM

from nnal.analysis import ReportExtras, SegmentationExample, build_report
from nnal.analysis.panels import plot_correlations
from nnal.backend.fake import fake_backend
from nnal.config import build
from nnal.loop import run_experiment

SETTINGS = dict(rounds=3, initial=6, budget=4, iterations_per_epoch=2, epochs_initial=1, epochs_per_round=1,
                mc_passes=3, device="cpu")
GRID = [("random", {}), ("entropy", {}), ("bald", {}), ("coreset", {}), ("usimf", {}),
        ("usimf", {"eta": 0.5, "query_mode": "uniform"})]
LONG_NAME = "MC-dropout uncertainty (sum of class std)"  # what nnal report passes: titles used to run together


@pytest.fixture(autouse=True)
def matplotlib_defaults():
    """The figures as build_report draws them, with matplotlib's defaults: a test that trained nnU-Net earlier in
    the process leaves seaborn's global style (font_scale=2.5) behind."""
    import matplotlib

    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """{"grid": 6 variants x 3 seeds, "demo": random and usimf, one seed} (read only)."""
    root = tmp_path_factory.mktemp("layout")
    dataset = make_nnunet_dataset(root / "Dataset001_Toy", n_cases=8, shape=(16, 24, 24))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("os.fsync", lambda fd: None)  # most of a fake run's time; the files are the same
        for k, (strategy, options) in enumerate(GRID):
            for seed in range(3):
                name = f"v{k}-{strategy}-s{seed}"
                config = build({"dataset": str(dataset), **SETTINGS, "strategy": strategy, "seed": seed,
                                "strategy_options": options, "experiment": name})
                run_experiment(config, root / "grid" / name, progress=False, backend_factory=fake_backend)
        for strategy in ("random", "usimf"):
            config = build({"dataset": str(dataset), **SETTINGS, "strategy": strategy, "experiment": strategy})
            run_experiment(config, root / "demo" / strategy, progress=False, backend_factory=fake_backend)
    return {"grid": root / "grid", "demo": root / "demo"}


def extras(folders: list[str], segmentations: bool = True) -> ReportExtras:
    """What nnal report draws from real runs: a 300-slice correlation with long predictor names, an embedding,
    and a first- and last-round prediction per folder."""
    rng = np.random.default_rng(0)
    u = rng.gamma(2.0, 0.4, 300)
    gt = np.zeros((48, 48), dtype=np.uint8)
    gt[14:30, 12:28], gt[30:36, 20:32] = 1, 2
    preds = {f"{name}, round {r}": np.roll(gt, int(rng.integers(-3, 4)), axis=r % 2) for name in folders
             for r in (0, 3)}
    return ReportExtras(error=900 * u + rng.normal(size=300) * 150,
                        predictors={LONG_NAME: u, "gradient length (L2)": 40 * u + rng.random(300) * 30},
                        embedding=rng.normal(size=(60, 2)),
                        embedding_status=np.array(["unlabeled"] * 40 + ["labeled"] * 10 + ["query"] * 8
                                                  + ["selected"] * 2),
                        embedding_uncertainty=rng.random(60),
                        segmentations=[SegmentationExample(rng.normal(size=gt.shape) + gt, gt, preds, "case_000")]
                        if segmentations else ())


# --- text in figures ---------------------------------------------------------------------------------------------


def _drawn_texts(fig: Figure, dpi: float = 110) -> list[tuple[str, np.ndarray]]:
    """Every non-empty text the figure draws, as (text, corners of its rotated box in pixels). Recorded while
    drawing, so tick labels outside the view and invisible artists are not counted."""
    drawn: list[Text] = []
    original = Text.draw

    def record(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    Text.draw = record
    try:
        canvas.draw()
    finally:
        Text.draw = original
    renderer = canvas.get_renderer()
    return [(text.get_text(), _corners(text, renderer)) for text in drawn]


def _corners(text: Text, renderer) -> np.ndarray:
    """The text's box rotated with it: the axis-aligned extent of a rotated text overstates it (30° tick labels)."""
    box = text.get_window_extent(renderer)
    angle = np.deg2rad(text.get_rotation())
    rotation = text.get_rotation()
    text.set_rotation(0)
    flat = text.get_window_extent(renderer)
    text.set_rotation(rotation)
    w, h = flat.width / 2, flat.height / 2
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.array([box.x0 + box.width / 2, box.y0 + box.height / 2]) + np.array(
        [[-w, -h], [w, -h], [w, h], [-w, h]]) @ turn.T


def _overlap(a: np.ndarray, b: np.ndarray, tolerance: float = 1.0) -> bool:
    """Separating-axis test of two convex quadrilaterals: they overlap by more than ``tolerance`` pixels along
    every edge normal of both."""
    for poly in (a, b):
        for k in range(4):
            edge = poly[(k + 1) % 4] - poly[k]
            normal = np.array([-edge[1], edge[0]]) / (np.hypot(*edge) or 1.0)
            pa, pb = a @ normal, b @ normal
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) <= tolerance:
                return False
    return True


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    texts = _drawn_texts(fig)
    return [(ta, tb) for i, (ta, a) in enumerate(texts) for tb, b in texts[i + 1:] if _overlap(a, b)]


def test_the_overlap_check_sees_overlapping_and_rotated_texts():
    fig = Figure(figsize=(4, 3))
    fig.text(0.1, 0.5, "one text here")
    fig.text(0.15, 0.5, "another on top")
    fig.text(0.1, 0.1, "far away")
    assert overlapping_texts(fig) == [("one text here", "another on top")]
    # two 30° labels side by side: their axis-aligned boxes intersect, the texts do not
    fig = Figure(figsize=(4, 3))
    for x in (0.3, 0.4):
        fig.text(x, 0.5, "stochastic-batches", rotation=30, ha="right", rotation_mode="anchor")
    assert overlapping_texts(fig) == []
    # the correlation panels of before: one-line titles with a long predictor name run into each other
    fig = Figure(figsize=(9.6, 4.2), layout="constrained")
    for ax, name in zip(fig.subplots(1, 2), (LONG_NAME, "gradient length (L2)"), strict=True):
        ax.set_title(f"{name}: r = 0.96, p = 4.4e-175 (n = 300)")
    assert overlapping_texts(fig)


def test_the_correlation_figure_keeps_its_titles_apart():
    # the arrays of the report below: before titles were wrapped, its two titles ran into each other
    data = extras([])
    assert overlapping_texts(plot_correlations(data.error, data.predictors)) == []
    longer = {**data.predictors, "gradient length of the decoder's last conv (L2)": data.predictors[LONG_NAME]}
    assert overlapping_texts(plot_correlations(data.error, longer)) == []


@pytest.mark.parametrize("which", ["grid", "demo"])
def test_no_figure_of_the_report_has_overlapping_text(runs, tmp_path, monkeypatch, which):
    folders = sorted(p.name for p in runs[which].iterdir())
    found: dict[str, list] = {}
    original = Figure.savefig

    def checked(self, path, *args, **kwargs):
        if str(path).endswith(".png"):  # once per figure, as the page embeds it
            found[Path(path).stem] = overlapping_texts(self)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", checked)
    build_report([runs[which]], tmp_path / "out", extras(folders))
    expected = {"learning_curves", "class_curves", "paired_differences", "correlation", "embedding", "segmentation_0",
                "fg_efficiency"}
    assert expected <= set(found)
    if which == "grid":  # six variants: each band in a panel of its own; the penalty matrices (three seeds)
        assert {"learning_curve_panels", "penalty_matrix", "penalty_matrix_holm", "batch_uncertainty"} <= set(found)
    assert {name: pairs for name, pairs in found.items() if pairs} == {}


# --- text on the page, in Chromium ------------------------------------------------------------------------------

OVERLAP_SCRIPT = """<script>
window.addEventListener('load', () => {
  const boxes = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let k = 0; walker.nextNode(); k++) {
    const node = walker.currentNode, text = node.textContent.trim();
    // a closed <details> keeps its content laid out but hidden (content-visibility): not on screen, not counted
    if (!text || !node.parentElement.checkVisibility()) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    for (const r of range.getClientRects())
      if (r.width > 0 && r.height > 0) boxes.push({k, text: text.slice(0, 40), l: r.left, t: r.top + scrollY,
                                                   r: r.right, b: r.bottom + scrollY});
  }
  boxes.sort((a, b) => a.t - b.t);
  const hits = [];
  for (let i = 0; i < boxes.length; i++)
    for (let j = i + 1; j < boxes.length && boxes[j].t < boxes[i].b; j++) {
      const a = boxes[i], b = boxes[j];
      const w = Math.min(a.r, b.r) - Math.max(a.l, b.l), h = Math.min(a.b, b.b) - Math.max(a.t, b.t);
      if (a.k !== b.k && w > 1 && h > 1) hits.push([a.text, b.text]);
    }
  document.body.setAttribute('data-boxes', String(boxes.length));
  document.body.setAttribute('data-height', String(document.documentElement.scrollHeight));
  document.body.setAttribute('data-overlaps', JSON.stringify(hits.slice(0, 10)));
});</script></body>"""
PLANTED = '<div style="position:absolute;top:30px;left:40px;font-size:28px">planted on the title</div></main>'


def page_layout(index: Path, width: int, profile: Path, plant: bool = False) -> dict:
    """Text boxes counted, page height and overlapping text pairs of the page at ``width`` px, from the DOM that
    the load-event script marks (read back with --dump-dom)."""
    html = index.read_text()
    if plant:
        html = html.replace("</main>", PLANTED)
    check = index.parent / f"layout-{width}{'-planted' if plant else ''}.html"
    check.write_text(html.replace("</body>", OVERLAP_SCRIPT))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-sync",
             "--disable-component-update", "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND"]
    dom = subprocess.run([str(CHROMIUM), *flags, f"--user-data-dir={profile}", f"--window-size={width},900",
                          "--virtual-time-budget=10000", "--dump-dom", check.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    marks = dict(re.findall(r'data-(boxes|height|overlaps)="([^"]*)"', dom))
    assert set(marks) == {"boxes", "height", "overlaps"}, dom[-500:]
    return {"boxes": int(marks["boxes"]), "height": int(marks["height"]),
            "overlaps": json.loads(marks["overlaps"].replace("&quot;", '"').replace("&amp;", "&"))}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium")
def test_no_text_on_the_page_overlaps_at_two_widths(runs, tmp_path):
    index = build_report([runs["grid"]], tmp_path / "out", extras(sorted(p.name for p in runs["grid"].iterdir())))
    for width in (1280, 800):
        layout = page_layout(index, width, tmp_path / f"profile-{width}")
        assert layout["boxes"] > 200 and layout["overlaps"] == [], (width, layout["overlaps"])
    planted = page_layout(index, 1280, tmp_path / "profile-planted", plant=True)  # the check can say no
    assert any("planted on the title" in pair for pair in planted["overlaps"])


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium")
def test_example_segmentations_are_collapsed_and_do_not_lengthen_the_page(runs, tmp_path):
    folders = sorted(p.name for p in runs["grid"].iterdir())
    with_examples = build_report([runs["grid"]], tmp_path / "with", extras(folders))
    without = build_report([runs["grid"]], tmp_path / "without", extras(folders, segmentations=False))
    page = with_examples.read_text()
    assert re.search(r"<details><summary>Show 1 example slice\(s\) with 36 prediction\(s\)</summary><figure><img "
                     r'data-figure="segmentation_0"', page)
    heights = [page_layout(index, 1280, tmp_path / f"profile-{k}")["height"] for k, index in
               enumerate((with_examples, without))]
    # the closed <details> line stands where the 'skipped' note would: a 36-thumbnail figure would add thousands
    assert abs(heights[0] - heights[1]) < 60, heights
