"""``nnal annotate DIR``: the pending batch in napari, one selected slice after another, to correct by hand.

The view is thin: what is shown, the moves and the saving are :class:`~nnal.annotation.correction.CorrectionSession`'s.
napari (the optional extra ``nnal[annotate]``) is imported only when the view opens, so the rest of nnal runs without
it. Keys (napari's labels layer already takes e, p, f, l, m, z, x, b and the digits, so these avoid them):

  n / Shift-N   next / previous selected slice (crossing into the next case saves the one left)
  s             save the case to masks/<case>.nii.gz
  Shift-E       mark the slice as left empty on purpose (or unmark it): the manifest's ``empty`` column
"""

from __future__ import annotations

import html
from pathlib import Path

from nnal.annotation.correction import AnnotationBatch, CorrectionSession, find_round_folder
from nnal.errors import NnalError

INSTALL_HINT = "nnal annotate needs napari: pip install 'nnal[annotate]'"
KEYS = {"next": "n", "previous": "Shift-N", "save": "s", "empty": "Shift-E"}
MASK_LAYER = "mask"


class NapariMissing(NnalError, ImportError):
    """The optional extra is not installed; the message says how to install it."""


def import_napari():
    """napari, or a one-line error naming the extra (the CLI prints it and exits 2)."""
    try:
        import napari
    except ImportError:
        raise NapariMissing(INSTALL_HINT) from None
    return napari


class AnnotateView:
    """The napari wiring over a :class:`CorrectionSession`: layers for the loaded case, the dims stepping the
    manifest's slicing axis, key bindings, and a dock with the class names, the progress and the keys."""

    def __init__(self, viewer, session: CorrectionSession):
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QLabel

        self.viewer = viewer
        self.session = session
        self.panel = QLabel()
        self.panel.setWordWrap(True)
        self.panel.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        viewer.window.add_dock_widget(self.panel, name="nnal annotate", area="right")
        for action, key in KEYS.items():
            viewer.bind_key(key, self._key_handler(action), overwrite=True)
        self._show_case()

    def _key_handler(self, action: str):
        def handle(_viewer) -> None:
            getattr(self, action)()

        handle.__doc__ = f"nnal annotate: {action}"  # napari lists bound keys by their docstring
        return handle

    # --- the actions, each followed by a redraw of what changed ---------------------------------------------------

    def next(self) -> None:
        self._move(+1)

    def previous(self) -> None:
        self._move(-1)

    def save(self) -> Path:
        path = self.session.save()
        self._update_panel(self.session.warning or f"saved {path.name}")
        return path

    def empty(self) -> None:
        marked = self.session.toggle_empty()
        self._update_panel("marked empty" if marked else "no longer marked empty")

    def _move(self, step: int) -> None:
        before = self.session.position
        if self.session.move(step):  # into another case, the one left saved
            self._show_case(note=self.session.warning)
            return
        self._go_to_slice()
        self._update_panel("" if self.session.position != before else
                           ("end of the batch" if step > 0 else "first selected slice"))

    # --- drawing ---------------------------------------------------------------------------------------------------

    def _show_case(self, *, note: str = "") -> None:
        """Replace the layers by the loaded case's channels and its mask (the array the session saves)."""
        volumes = self.session.volumes
        self.viewer.layers.clear()
        for k, channel in enumerate(volumes.channels):
            self.viewer.add_image(channel, name=f"{volumes.case} channel {k}", scale=volumes.spacing,
                                  visible=k == 0, colormap="gray")
        legend = self.session.legend()
        features = {"index": [v for v, _ in legend], "class": [name for _, name in legend]}
        layer = self.viewer.add_labels(volumes.mask, name=MASK_LAYER, scale=volumes.spacing, features=features,
                                       opacity=0.5)
        layer.mode = "paint"
        layer.selected_label = next((v for v, _ in legend if v > 0), 1)
        self.viewer.layers.selection.active = layer
        self._go_to_slice()
        self._update_panel(note)

    def _go_to_slice(self) -> None:
        """napari shows the last two axes of ``dims.order``: the slicing axis goes first, stepped by the slider."""
        current = self.session.current
        self.viewer.dims.axis_labels = [f"axis {a}" for a in range(3)]  # as the manifest counts them
        self.viewer.dims.order = (current.axis, *[a for a in range(3) if a != current.axis])
        self.viewer.dims.set_current_step(current.axis, current.index)
        self.viewer.reset_view()

    def _update_panel(self, note: str = "") -> None:
        status = self.session.status()
        self.viewer.title = f"nnal annotate: {status}"
        layer = self.viewer.layers[MASK_LAYER]
        rows = []
        for value, name in self.session.legend():
            r, g, b, _ = (int(255 * c) for c in layer.get_color(value)) if value else (0, 0, 0, 0)
            swatch = f'<span style="color: rgb({r},{g},{b})">&#9632;</span>' if value else "&#9633;"
            rows.append(f"{swatch} {value}: {html.escape(name)}")
        keys = ", ".join(f"<b>{key}</b> {action}" for action, key in KEYS.items())
        folder = Path(*self.session.batch.folder.parts[-3:])  # experiment/annotate/round_NNN
        self.panel.setText(f"<b>{html.escape(status)}</b>" + (f"<br><i>{html.escape(note)}</i>" if note else "")
                           + "<br><br>" + "<br>".join(rows) + f"<br><br>{keys}<br><br>saves into "
                           + html.escape(str(folder / "masks")))


def open_view(experiment: str | Path, *, round_: int | None = None, show: bool = True) -> AnnotateView:
    """A napari viewer on the batch of ``experiment`` (the pending round, or ``round_``), at its first slice."""
    napari = import_napari()
    session = CorrectionSession(AnnotationBatch(find_round_folder(experiment, round_=round_)))
    viewer = napari.Viewer(title="nnal annotate", show=show)
    return AnnotateView(viewer, session)


def run_annotation(experiment: str | Path, *, round_: int | None = None) -> CorrectionSession:
    """Open the view and block until its window is closed; edits not yet saved are saved then."""
    napari = import_napari()
    from qtpy.QtCore import QTimer

    view = open_view(experiment, round_=round_)
    QTimer.singleShot(0, view.viewer.reset_view)  # once the window is laid out: the slice fits the canvas
    napari.run()
    if view.session.has_unsaved_changes():
        view.session.save()
    return view.session
