"""Render docs/annotate-screenshot.png: ``nnal annotate`` on a batch from the bundled Hippocampus.

The batch is exported by ``nnal query``'s code (``nnal.annotation.batch.query``) in an annotation-mode experiment on
the first 10 cases, 6 of them without labels, with nnal's fake model (seconds on a CPU; its pre-segmentation is
rough). A scripted annotator corrects the selected slices from the ground truth, marking the empty ones, up to the
first slice that shows the hippocampus, and the window is captured there.

    .venv/bin/python tools/annotate_screenshot.py [OUT.png]

It shows the window on an X display (a desktop, or Xvfb with Qt's xcb libraries: libxcb-cursor0, libxcb-icccm4,
libxcb-image0, libxcb-keysyms1, libxcb-render-util0, libxcb-xinerama0, libxcb-xkb1, libxkbcommon-x11-0): under Qt 6
the offscreen platform, which the tests use, leaves napari's OpenGL canvas out of a window capture.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import make_mini_hippocampus  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from nnal.annotation.batch import query  # noqa: E402
from nnal.annotation.viewer import open_view  # noqa: E402
from nnal.backend.fake import fake_backend  # noqa: E402
from nnal.config import Config  # noqa: E402
from nnal.loop import run_experiment  # noqa: E402


def main(out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="nnal-screenshot-"))
    full = make_mini_hippocampus(work / "full" / "Task04_Hippocampus", 10)
    dataset = work / "Task04_Hippocampus"
    shutil.copytree(full, dataset)
    for label in sorted((dataset / "labelsTr").glob("*.nii.gz"))[4:]:
        label.unlink()  # not annotated yet: the person's part
    config = Config(dataset=str(dataset), strategy="random", rounds=1, initial=4, budget=6, iterations_per_epoch=2,
                    epochs_initial=1, epochs_per_round=1, mc_passes=3, oracle="human")
    experiment = work / "hippocampus-annotation"
    run_experiment(config, experiment, progress=False, backend_factory=fake_backend)
    query(experiment, fake_backend)

    view = open_view(experiment, show=True)
    view.viewer.window.resize(1300, 760)
    session, layer = view.session, view.viewer.layers["mask"]
    while True:
        current = session.current
        truth = np.asanyarray(nib.load(full / "labelsTr" / f"{current.case}.nii.gz").dataobj)
        where = tuple(current.index if a == current.axis else slice(None) for a in range(3))
        layer = view.viewer.layers["mask"]
        layer.data[where] = truth[where]
        layer.refresh()
        if truth[where].any():
            break
        view.empty()
        view.next()
    view.save()
    for _ in range(5):  # the window laid out at its size, then the slice fitted to the canvas
        QApplication.processEvents()
    view.viewer.reset_view()
    QApplication.processEvents()
    view.viewer.screenshot(str(out), canvas_only=False)
    view.viewer.close()
    shutil.rmtree(work)
    print(f"{out}: {view.viewer.title}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "annotate-screenshot.png")
