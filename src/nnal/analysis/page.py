"""The report page being written: its style, sections, figures (PNG, SVG and embedded), tables (CSV and HTML) and
collapsed parts."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from nnal.analysis.admission import DRY_RUN_COLUMN

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{margin:0 0 4px;font-size:28px}h2{margin-top:40px;border-bottom:2px solid #e3e6eb;padding-bottom:4px}
.meta{color:#5b6573;font-size:14px}.note{color:#5b6573;font-size:14px;margin:6px 0}
.skipped{background:#fff7e6;border-left:4px solid #f0a020;padding:8px 12px;font-size:14px}
.dryrun{background:#fdecea;border:3px solid #c0392b;color:#8e1b10;padding:12px 16px;font-size:18px;font-weight:700}
.verdict{border-left:6px solid #8a94a3;background:#f3f5f8;padding:10px 14px;margin:12px 0;font-size:15px}
.verdict.difference{border-color:#2e7d32;background:#edf7ee}.verdict p{margin:4px 0}
.verdict .more{font-size:14px;color:#3d4653}
figure{margin:16px 0}figure img{max-width:100%;height:auto;border:1px solid #e3e6eb}
figcaption{font-size:14px;color:#3d4653;margin-top:6px}
details{margin:12px 0}details>summary{cursor:pointer;font-weight:600;font-size:15px;color:#2a3442}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:4px 10px;border-bottom:1px solid #e3e6eb;
text-align:right}th{background:#f0f2f5}td:first-child,th:first-child{text-align:left}
.scroll{overflow-x:auto}nav a{margin-right:14px;font-size:14px}ul.guide li{margin:4px 0;font-size:14px}
"""
LONG_TABLE = 12  # rows; longer tables on the page are collapsed
STAMP = "DRY RUN: nnal's fake model, not nnU-Net"
STAMP_INCHES = 0.2  # the strip below a constrained layout that the dry-run stamp gets to itself


def stamp(fig: Figure) -> None:
    """Mark a figure as a dry run in its bottom-right corner, in a strip the layout leaves free (so the stamp never
    lies on an axis label)."""
    engine = fig.get_layout_engine()
    strip = STAMP_INCHES / fig.get_figheight()
    if isinstance(engine, ConstrainedLayoutEngine):
        engine.set(rect=(0.0, strip, 1.0, 1.0 - strip))
    fig.text(0.995, 0.2 * strip, STAMP, ha="right", va="bottom", fontsize=8, color="#c0392b")


class Page:
    """Collects the page's HTML in order and writes figures and tables under ``output`` as it goes."""

    def __init__(self, output: Path, dry_run: bool = False):
        self.output, self.parts, self.figures, self.dry_run = output, [], [], dry_run
        (output / "figures").mkdir(parents=True, exist_ok=True)
        (output / "tables").mkdir(parents=True, exist_ok=True)

    def add(self, text: str) -> None:
        self.parts.append(text)

    def note(self, text: str) -> None:
        self.add(f"<p class='note'>{html.escape(text)}</p>")

    def section(self, key: str, title: str, intro: str = "") -> None:
        self.add(f'<h2 id="{key}">{html.escape(title)}</h2>' + (f'<p class="note">{intro}</p>' if intro else ""))

    def skip(self, what: str, why: str) -> None:
        self.add(f'<p class="skipped">{html.escape(what)} skipped: {html.escape(why)}</p>')

    @contextmanager
    def collapsed(self, summary: str) -> Iterator[None]:
        """What is added inside stays behind a closed <details> whose line is ``summary`` (HTML)."""
        self.add(f"<details><summary>{summary}</summary>")
        yield
        self.add("</details>")

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
            stamp(fig)
        png, svg = self.output / "figures" / f"{name}.png", self.output / "figures" / f"{name}.svg"
        fig.savefig(png, dpi=110)
        fig.savefig(svg)
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.figures.append(name)
        self.add(f'<figure><img data-figure="{name}" alt="{html.escape(what)}" src="data:image/png;base64,{data}">'
                 f'<figcaption>{caption} <a href="figures/{name}.svg">SVG</a></figcaption></figure>')

    def table(self, name: str, frame: pd.DataFrame, index: bool = False, show: bool = True) -> None:
        """Write ``tables/NAME.csv`` and, when ``show``, the table on the page."""
        csv = frame
        if self.dry_run:  # a CSV read without the page must not pass for results: its first column says so
            csv = frame.rename_axis(frame.index.name or "").reset_index() if index else frame.copy()
            csv.insert(0, DRY_RUN_COLUMN, True)
        csv.to_csv(self.output / "tables" / f"{name}.csv", index=index and not self.dry_run)
        if show:
            self.show(frame, index)

    def show(self, frame: pd.DataFrame, index: bool = False) -> None:
        """A table on the page only: a display form (numbers with their words) of a table written as CSV."""
        body = frame.to_html(index=index, border=0, na_rep="–", float_format=lambda v: f"{v:.4f}")
        self.add(f'<div class="scroll">{body}</div>')

    def titled_table(self, name: str, frame: pd.DataFrame, title: str, note: str = "") -> None:
        """A table under its title (HTML); one of more than LONG_TABLE rows (a row per experiment or round of a
        grid) stays behind a closed <details> line saying how long it is."""
        if len(frame) <= LONG_TABLE:
            self.add(f"<h3>{title}</h3>" + (f"<p class='note'>{note}</p>" if note else ""))
            self.table(name, frame)
            return
        with self.collapsed(f"{title} ({len(frame)} rows)"):
            if note:
                self.add(f"<p class='note'>{note}</p>")
            self.table(name, frame)
