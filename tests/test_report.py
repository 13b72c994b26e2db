"""build_report on synthetic experiment folders; the page rendered in headless Chromium (Debian's chromium)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_analysis import write_experiment

from nnal.analysis import ReportExtras, SegmentationExample, build_report

CHROMIUM = Path("/usr/bin/chromium")
ALL_FIGURES = {"learning_curves", "class_curves", "penalty_matrix", "penalty_matrix_holm", "fg_efficiency",
               "batch_uncertainty", "correlation", "embedding", "segmentation_0", "paired_differences",
               "label_savings"}


def _extras() -> ReportExtras:
    rng = np.random.default_rng(0)
    u = rng.random(40)
    gt = np.zeros((24, 20), dtype=np.uint8)
    gt[6:14, 5:12], gt[14:18, 8:14] = 1, 2
    image = rng.normal(size=gt.shape) + gt
    preds = {"full labels": gt, "random, round 1": np.roll(gt, 2, axis=0), "random, round 3": np.roll(gt, 1, axis=1),
             "usimf, round 1": np.roll(gt, 1, axis=0), "usimf, round 3": gt}
    return ReportExtras(error=300 * u + rng.normal(size=40) * 20,
                        predictors={"predictive uncertainty": u, "gradient length": u + rng.random(40)},
                        embedding=rng.normal(size=(40, 2)),
                        embedding_status=np.array(["unlabeled"] * 25 + ["labeled"] * 8 + ["query"] * 5
                                                  + ["selected"] * 2),
                        embedding_uncertainty=u, segmentations=[SegmentationExample(image, gt, preds)])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    for seed, shift in enumerate((0.0, 0.02)):
        write_experiment(runs, "random", 0, seed, [0.3, 0.4 + shift, 0.5 + shift])
        write_experiment(runs, "usimf", 0, seed, [0.3, 0.5 + shift, 0.65 + 2 * shift], class_uncertainty=True,
                         selections=[[0, 1], [3, 9], [2, 6]])
    write_experiment(runs, "full", 0, 0, [0.8], selections=[list(range(10))])
    return build_report([runs], tmp_path_factory.mktemp("report") / "out", _extras())


def test_report_files_and_tables(report):
    assert report.name == "index.html" and report.is_file()
    figures = report.parent / "figures"
    assert {p.stem for p in figures.glob("*.png")} == ALL_FIGURES
    assert {p.stem for p in figures.glob("*.svg")} == ALL_FIGURES
    page = report.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no network resources
    assert page.count("<img ") == len(ALL_FIGURES) and "skipped" not in page.split("<h2")[1]
    for table in ("summary", "dice_per_round", "final_dice", "penalty_matrix", "penalty_matrix_holm", "verdict",
                  "paired_differences", "paired_differences_final", "fg_efficiency", "config_shared",
                  "environment_shared", "runtime", "runtime_per_round", "label_savings", "label_savings_summary",
                  "power"):
        assert (report.parent / "tables" / f"{table}.csv").is_file(), table
    summary = (report.parent / "tables" / "summary.csv").read_text()
    assert summary.splitlines()[0].startswith("variant,repetitions") and "full" in summary


def test_report_skips_absent_inputs(tmp_path):
    write_experiment(tmp_path / "runs", "random", 0, 0, [0.3, 0.4])
    index = build_report([tmp_path / "runs"], tmp_path / "out")
    page = index.read_text()
    for what in ("Penalty matrix", "Batch uncertainty", "Correlation", "t-SNE", "Example segmentations"):
        assert re.search(rf'class="skipped">{what}[^<]* skipped: ', page), what
    assert (tmp_path / "out" / "figures" / "learning_curves.png").is_file()


CHECK_SCRIPT = """<img data-figure="__broken__" src="data:image/png;base64,AAAA"><script>
window.addEventListener('load', () => {
  for (const img of document.images) img.setAttribute('data-ok', img.complete && img.naturalWidth > 0 ? '1' : '0');
  document.body.setAttribute('data-checked', String(document.images.length));
});</script></body>"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium")
def test_report_renders_in_chromium(report, tmp_path):
    # 1. every figure decoded: a copy of the page marks each <img> after the load event (naturalWidth > 0 means
    #    the browser decoded the image); a deliberately broken image checks that the marker can say no
    check = report.parent / "check.html"
    check.write_text(report.read_text().replace("</body>", CHECK_SCRIPT))
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile1'}", "--virtual-time-budget=10000", "--dump-dom",
                    check.as_uri()).stdout
    assert f'data-checked="{len(ALL_FIGURES) + 1}"' in dom
    marks = dict(re.findall(r'<img data-figure="([^"]+)"[^>]*?data-ok="([01])"', dom))
    assert marks == {**{name: "1" for name in ALL_FIGURES}, "__broken__": "0"}
    # 2. the page is not blank: the screenshot of the real page has real contrast, not one flat colour
    shot = tmp_path / "shot.png"
    _chromium(f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", "--window-size=1280,4000",
              report.as_uri())
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (4000, 1280)
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.02


def test_runtime_per_round_gives_the_query_steps_share_of_training():
    from types import SimpleNamespace

    import pandas as pd

    from nnal.analysis.report_tables import round_runtime_table

    exp = SimpleNamespace(name="e", variant="usimf", state={"seconds": {
        "0": {"select": 0.1, "train": 50.0, "evaluate": 2.0},
        "1": {"score": 30.0, "select": 0.5, "train": 20.0, "evaluate": 2.0},
        "10": {"score": 12.0, "select": 0.0, "train": 24.0, "evaluate": 2.0}}})
    table = round_runtime_table([exp])
    assert table["round"].tolist() == [0, 1, 10]  # rounds in number order, not text order
    assert pd.isna(table["query / train"][0])  # round 0 has no query step
    assert table["query / train"][1:].tolist() == [1.52, 0.5]  # (30 + 0.5) / 20 and 12 / 24
    assert table["train (s)"].tolist() == [50.0, 20.0, 24.0]


def test_the_summary_leads_with_the_verdict_and_the_holm_matrix_comes_first(report):
    page = report.read_text()
    # usimf - random at the last round: [0.15, 0.17], t = 16, df 1: p = 1 - 2 arctan(16) / pi = 0.0398
    assert re.search(r"<h2 id=\"summary\">Summary</h2><div class='verdict difference'><p><b>Verdict: usimf &gt; "
                     r"random \(p = 0\.04, Δ = \+0\.160, n = 2\) in final Dice after Holm correction", page)
    holm, fold = page.index('data-figure="penalty_matrix_holm"'), page.index("<details><summary>Uncorrected penalty")
    assert holm < fold < page.index('data-figure="penalty_matrix"') < page.index("</details>", fold)
    assert page.index('id="curves"') < page.index('data-figure="paired_differences"') < page.index('id="penalty"')
    assert re.search(r'<details><summary>Show 1 example slice\(s\) with 5 prediction\(s\)</summary><figure><img '
                     r'data-figure="segmentation_0"', page)
    header = (report.parent / "tables" / "summary.csv").read_text().splitlines()[0]
    assert header.index("Φ (Holm)") < header.index("Φ (uncorrected)")
    assert (report.parent / "verdict.txt").read_text().startswith("Verdict: usimf > random (p = 0.04")
