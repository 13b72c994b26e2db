"""``nnal annotate``: the batch logic without Qt, then the napari view headless (Qt's offscreen platform).

Qt's offscreen platform draws no OpenGL by itself; napari's canvas needs it. When no X display is set, a private
Xvfb (Mesa's software GL) lends its GLX for the run, no window is shown on it. ``make test`` installs Xvfb as it
installs chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import assert_one_line_error, make_nnunet_dataset, run_cli
from conftest import run_as_nnal_run as run_experiment

from nnal.annotation.batch import query
from nnal.annotation.correction import (
    AnnotationBatch,
    AnnotationBatchError,
    CorrectionSession,
    find_round_folder,
)
from nnal.backend.fake import fake_backend
from nnal.config import Config

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

LABELS = {"background": 0, "anterior": 1, "posterior": 2}
SHAPE = (12, 14, 10)
SPACING = (1.5, 1.0, 2.0)
# (case, axis, slice): two cases, listed out of order as a score-sorted manifest would be
HELD_FDS: list[int] = []  # keeps the test X server up until this process exits
SELECTED = [("case_001", 2, 4), ("case_000", 2, 6), ("case_000", 2, 3)]


def _truth(case: str) -> np.ndarray:
    """The hidden ground truth the scripted annotator paints from: a box of class 1 above one of class 2."""
    seg = np.zeros(SHAPE, np.uint8)
    shift = int(case[-1])
    seg[3 + shift:7, 4:10, 2:8] = 1
    seg[7:10, 4:10, 2:8] = 2
    return seg


def make_batch(experiment, *, round_=1, rows=SELECTED):
    """A batch folder laid out as ``nnal query`` writes it (nnal.annotation.batch), with tiny NIfTI volumes."""
    folder = experiment / "annotate" / f"round_{round_:03d}"
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 2.5)
    rng = np.random.default_rng(0)
    for case in sorted({r[0] for r in rows}):
        img = nib.Nifti1Image(rng.normal(size=SHAPE).astype(np.float32) + _truth(case), affine)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        nib.save(img, str(folder / "images" / f"{case}_0000.nii.gz"))
        known = np.zeros(SHAPE, np.uint8)
        preseg = known.copy()
        for c, axis, index in rows:
            if c == case:  # the model's guess on its selected slices: class 1 only, the rest missed
                np.moveaxis(preseg, axis, 0)[index] = np.moveaxis(_truth(case) == 1, axis, 0)[index]
        for sub, data in (("labels", known), ("presegmentation", preseg)):
            (folder / sub).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), str(folder / sub / f"{case}.nii.gz"))
    (folder / "masks").mkdir()
    table = [{"case": c, "axis": a, "slice": s, "world_axis": "xyz"[a], "world_mm": s * SPACING[a],
              "score": 1.0 - 0.1 * i, "empty": False, "id": 10 * i} for i, (c, a, s) in enumerate(rows)]
    pd.DataFrame(table).to_csv(folder / "manifest.csv", index=False)
    manifest = {"labels": LABELS, "round": round_, "strategy": "entropy", "slices": table}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (folder / "README.md").write_text("correct the selected slices\n")
    return folder


@pytest.fixture
def batch_folder(tmp_path):
    return make_batch(tmp_path / "exp")


# --- without Qt --------------------------------------------------------------------------------------------------

def test_the_newest_batch_not_yet_ingested_is_opened(tmp_path):
    exp = tmp_path / "exp"
    make_batch(exp, round_=1)
    make_batch(exp, round_=2)
    assert find_round_folder(exp).name == "round_002"
    (exp / "annotations.json").write_text(json.dumps({"rounds": {"2": {}}}))
    assert find_round_folder(exp).name == "round_001"
    assert find_round_folder(exp, round_=2).name == "round_002"
    with pytest.raises(AnnotationBatchError, match="round_007: no such batch"):
        find_round_folder(exp, round_=7)
    with pytest.raises(AnnotationBatchError, match="no round_NNN batch"):
        find_round_folder(tmp_path / "other")


def test_slices_are_visited_case_by_case_and_a_case_is_saved_when_left(batch_folder):
    session = CorrectionSession(AnnotationBatch(batch_folder))
    visited = [(session.current.case, session.current.index)]
    while session.move(+1) or session.position < len(session.batch.order) - 1:
        visited.append((session.current.case, session.current.index))
    visited.append((session.current.case, session.current.index))
    assert visited[:3] == [("case_000", 3), ("case_000", 6), ("case_001", 4)]
    assert (batch_folder / "masks" / "case_000.nii.gz").is_file()  # left for case_001: saved
    assert not (batch_folder / "masks" / "case_001.nii.gz").exists()
    assert session.move(+1) is False and session.current.case == "case_001"  # the end: stays


def test_a_saved_mask_keeps_the_image_geometry_and_integer_labels(batch_folder):
    session = CorrectionSession(AnnotationBatch(batch_folder))
    session.volumes.mask[...] = _truth("case_000")
    assert session.has_unsaved_changes()
    path = session.save()
    assert not session.has_unsaved_changes()
    image, saved = nib.load(batch_folder / "images" / "case_000_0000.nii.gz"), nib.load(path)
    np.testing.assert_array_equal(saved.affine, image.affine)
    assert saved.shape == image.shape and np.issubdtype(saved.get_data_dtype(), np.integer)
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), _truth("case_000"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["case_000.nii.gz"]  # no temp file left behind


def test_progress_counts_saved_slices_and_those_marked_empty(batch_folder):
    session = CorrectionSession(AnnotationBatch(batch_folder))
    assert session.status() == "case_000, axis 2 index 3: slice 1 of 3, 0 done"
    session.volumes.mask[..., 3] = 0
    session.volumes.mask[..., 6] = _truth("case_000")[..., 6]
    assert "(unsaved changes)" in session.status()
    session.save()
    assert session.batch.done_count() == 1  # slice 6 labeled, slice 3 saved empty: not done until marked
    assert session.toggle_empty() is True
    assert session.status() == "case_000, axis 2 index 3 (marked empty): slice 1 of 3, 2 done"
    rows = pd.read_csv(batch_folder / "manifest.csv")
    assert rows["empty"].tolist() == [False, False, True]  # the manifest's own row order is kept
    assert [r["empty"] for r in json.loads((batch_folder / "manifest.json").read_text())["slices"]] == rows[
        "empty"].tolist()
    reopened = CorrectionSession(AnnotationBatch(batch_folder))  # resumes from masks/, flags from the manifest
    assert reopened.batch.done_count() == 2
    np.testing.assert_array_equal(reopened.volumes.mask[..., 6], _truth("case_000")[..., 6])


def test_a_save_warns_of_what_ingest_would_refuse(batch_folder):
    session = CorrectionSession(AnnotationBatch(batch_folder))
    session.volumes.mask[..., 3] = _truth("case_000")[..., 3]
    session.save()
    assert session.warning == ""
    session.volumes.mask[2, 2, 8] = 1  # a stray stroke on slice 8, which is not in the batch
    session.save()
    assert "slice(s) 8 outside the batch" in session.warning and "ingest will refuse" in session.warning
    session.volumes.mask[2, 2, 8] = 0
    session.volumes.mask[5, 5, 3] = 3  # napari's "new label": no class of dataset.json
    session.save()
    assert session.warning == ("case_000: label value(s) 3 are no class of dataset.json; nnal ingest will refuse "
                               "the mask")
    assert CorrectionSession(AnnotationBatch(batch_folder)).volumes.mask[5, 5, 3] == 3  # reopens, to be undone


def test_a_batch_that_cannot_be_read_is_one_line_naming_the_file(batch_folder):
    (batch_folder / "presegmentation" / "case_000.nii.gz").write_bytes(b"not nifti")
    result = run_cli(["annotate", batch_folder.parents[1]])
    assert_one_line_error(result, ["presegmentation/case_000.nii.gz", "NIfTI"])
    manifest = json.loads((batch_folder / "manifest.json").read_text())
    manifest["slices"][0]["axis"] = 3
    (batch_folder / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli(["annotate", batch_folder.parents[1]]), ["manifest.json row 0", "axis"])
    assert_one_line_error(run_cli(["annotate", batch_folder.parents[1], "--round", "4"]), ["round_004"])


def test_without_napari_the_command_says_how_to_install_it(batch_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "napari", None)  # import napari raises ImportError
    result = run_cli(["annotate", batch_folder.parents[1]])
    assert_one_line_error(result, ["pip install 'nnal[annotate]'"])


# --- the napari view, headless -----------------------------------------------------------------------------------

XVFB_WATCHER = """
import os, subprocess, sys
announce = int(sys.argv[1])
server = subprocess.Popen(["Xvfb", "-displayfd", str(announce), *sys.argv[2:]], pass_fds=(announce,),
                          stdin=subprocess.DEVNULL)
os.close(announce)  # the server's copy alone: if it fails, the reader sees end of file
sys.stdin.buffer.read()
server.terminate()
"""


@pytest.fixture(scope="module")
def gl_display():
    """An X display for OpenGL: the one set, else a private Xvfb for this module (Qt itself stays offscreen)."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        pytest.skip("napari's canvas needs OpenGL: no DISPLAY and no Xvfb (apt-get install xvfb libgl1-mesa-dri)")
    # The server must outlive Qt, which holds its connection until this process exits: a server gone before that
    # makes Xlib end the process with exit code 1 ("fatal IO error") at Qt's teardown. So a watcher keeps it until
    # a pipe whose only write end this process holds reads end of file, at the process's exit (or its kill).
    ready, announce = os.pipe()
    hold, held = os.pipe()
    subprocess.Popen([sys.executable, "-c", XVFB_WATCHER, str(announce), "-screen", "0", "1280x1024x24",
                      "-nolisten", "tcp"], stdin=hold, pass_fds=(announce,), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    os.close(hold)
    os.close(announce)
    HELD_FDS.append(held)  # never closed here: a raw descriptor, so no garbage collection closes it either
    with os.fdopen(ready) as fh:
        number = fh.readline().strip()
    if not number:
        pytest.fail("Xvfb did not start")
    os.environ["DISPLAY"] = f":{number}"
    yield os.environ["DISPLAY"]
    del os.environ["DISPLAY"]  # Qt keeps the display it opened


@pytest.fixture
def open_batch(gl_display):
    pytest.importorskip("napari", reason="the annotate extra is not installed: pip install 'nnal[annotate]'")
    from nnal.annotation.viewer import open_view

    views = []

    def open_(experiment, **kwargs):
        views.append(open_view(experiment, show=False, **kwargs))
        return views[-1]

    yield open_
    for view in views:
        view.viewer.close()


def _press(view, key: str) -> None:
    """A key press as the canvas hands it to napari's key map (viewer bindings under the active layer's)."""
    handler = view.viewer.window._qt_viewer._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def test_the_view_steps_the_selected_slices_and_saves_a_scripted_edit(batch_folder, open_batch):
    view = open_batch(batch_folder.parents[1])
    viewer, session = view.viewer, view.session
    mask_layer = viewer.layers["mask"]
    assert [layer.name for layer in viewer.layers] == ["case_000 channel 0", "mask"]
    assert mask_layer.features.set_index("index")["class"].to_dict() == {0: "background", 1: "anterior",
                                                                        2: "posterior"}
    np.testing.assert_allclose(mask_layer.scale, SPACING)
    assert "slice 1 of 3, 0 done" in viewer.title and "posterior" in view.panel.text()

    for _ in range(len(SELECTED)):  # paint each selected slice from the hidden truth, as a person would
        current = session.current
        assert viewer.dims.order[0] == current.axis and viewer.dims.current_step[current.axis] == current.index
        assert tuple(viewer.dims.displayed) == tuple(a for a in range(3) if a != current.axis)
        layer = viewer.layers["mask"]
        assert layer.data is session.volumes.mask  # what the annotator paints is what is saved
        index = [slice(None)] * 3
        index[current.axis] = current.index
        layer.data[tuple(index)] = _truth(current.case)[tuple(index)]
        layer.refresh()
        _press(view, "n")
    assert session.current.case == "case_001" and viewer.layers[0].name == "case_001 channel 0"
    _press(view, "s")
    assert "3 done" in viewer.title
    _press(view, "Shift-E")
    assert "marked empty" in viewer.title and pd.read_csv(batch_folder / "manifest.csv")["empty"].sum() == 1
    _press(view, "Shift-E")
    _press(view, "Shift-N")  # back into case_000, at its last selected slice
    assert (session.current.case, session.current.index) == ("case_000", 6)

    for case in ("case_000", "case_001"):
        saved = nib.load(batch_folder / "masks" / f"{case}.nii.gz")
        for c, axis, index in SELECTED:
            if c == case:
                np.testing.assert_array_equal(np.take(np.asanyarray(saved.dataobj), index, axis=axis),
                                              np.take(_truth(case), index, axis=axis))


def test_a_batch_from_nnal_query_corrected_in_the_view_is_accepted_by_nnal_ingest(tmp_path, open_batch):
    dataset = make_nnunet_dataset(tmp_path / "Dataset001_Toy", n_cases=8)
    hidden = tmp_path / "hidden"  # the ground truth of the cases nobody has annotated yet: the scripted annotator's
    hidden.mkdir()
    for case in ("case_001", "case_003", "case_006", "case_007"):
        shutil.move(dataset / "labelsTr" / f"{case}.nii.gz", hidden / f"{case}.nii.gz")
    config = Config(dataset=str(dataset), strategy="entropy", rounds=1, initial=4, budget=3, iterations_per_epoch=2,
                    epochs_initial=1, epochs_per_round=1, mc_passes=3, oracle="human")
    experiment = tmp_path / "exp"
    run_experiment(config, experiment, progress=False, backend_factory=fake_backend)  # stops at round 1's batch
    # `nnal query DIR` on the fake model (the command itself loads nnU-Net): the batch exported afresh
    assert query(experiment, fake_backend) == experiment / "annotate" / "round_001"
    refused = run_cli(["ingest", experiment])  # nothing corrected yet: one line per missing mask
    assert refused.exit_code == 2 and refused.stderr.count("missing") == 3, refused.output

    view = open_batch(experiment)
    session = view.session
    for _ in range(len(session.batch.order)):
        current = session.current
        truth = np.asanyarray(nib.load(hidden / f"{current.case}.nii.gz").dataobj)
        index = [slice(None)] * 3
        index[current.axis] = current.index
        view.viewer.layers["mask"].data[tuple(index)] = truth[tuple(index)]
        _press(view, "n")
    _press(view, "s")
    assert f"{len(session.batch.order)} done" in view.viewer.title and session.warning == ""

    result = run_cli(["ingest", experiment])
    assert result.exit_code == 0, result.output
    assert "round 1: ingested 3 slices" in result.stdout


def test_the_command_saves_edits_left_unsaved_when_the_window_closes(batch_folder, gl_display, monkeypatch):
    napari = pytest.importorskip("napari", reason="the annotate extra is not installed: pip install 'nnal[annotate]'")

    def a_person_paints_then_closes_the_window() -> None:  # in place of napari's event loop
        viewer = napari.current_viewer()
        viewer.layers["mask"].data[..., 3] = _truth("case_000")[..., 3]
        viewer.close()

    monkeypatch.setattr(napari, "run", a_person_paints_then_closes_the_window)
    result = run_cli(["annotate", batch_folder.parents[1]])
    assert result.exit_code == 0, result.output
    # slice 3 painted, slice 6 labeled by the pre-segmentation: both saved with labels
    assert "2 of 3 slices done" in result.stdout and "nnal ingest" in result.stdout
    saved = nib.load(batch_folder / "masks" / "case_000.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj)[..., 3], _truth("case_000")[..., 3])
