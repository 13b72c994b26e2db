"""``nnal query``, ``nnal ingest`` and ``nnal annotate``: annotation mode's commands, added to ``nnal`` by cli.py
(a user's mistake is a NnalError, one line from ``nnal``'s entry point)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def query(
    experiment: Annotated[Path, typer.Argument(help="an annotation experiment's folder (oracle: human)")],
) -> None:
    """Export the batch waiting for annotation to DIR/annotate/round_NNN (images, known labels, the model's
    presegmentation, manifest, README)."""
    from nnal.annotation.batch import query as export
    from nnal.backend.factories import nnunet_backend

    out = export(experiment, nnunet_backend)
    typer.echo(f"batch: {out} (correct presegmentation/<case>.nii.gz, save as masks/<case>.nii.gz; see README.md)")


def ingest(
    experiment: Annotated[Path, typer.Argument(help="an annotation experiment's folder (oracle: human)")],
    masks: Annotated[Path | None, typer.Argument(help="folder of <case>.nii.gz masks (default: the pending "
                                                 "batch's DIR/annotate/round_NNN/masks)")] = None,
) -> None:
    """Check the annotator's masks and take all of them into the experiment, or none (one line per problem)."""
    from nnal.annotation.ingest import ingest as take

    done = take(experiment, masks)
    if done.changed:
        typer.echo(f"round {done.round}: ingested {done.slices} slices of {done.cases} cases; next: "
                   f"nnal run --output {experiment}")
    else:
        typer.echo(f"round {done.round}: these masks were ingested already; nothing changed")


def annotate(
    experiment: Annotated[Path, typer.Argument(help="annotation-mode experiment folder (its batch from 'nnal query')"
                                               )],
    round_: Annotated[int | None, typer.Option("--round", help="the round's batch to open (default: the newest, "
                                               "annotate/round_NNN)")] = None,
) -> None:
    """Correct the batch of selected slices in napari (optional extra: pip install 'nnal[annotate]')."""
    from nnal.annotation.viewer import run_annotation

    session = run_annotation(experiment, round_=round_)
    typer.echo(f"{session.batch.done_count()} of {len(session.batch.slices)} slices done; masks in "
               f"{session.batch.folder / 'masks'} (then: nnal ingest {experiment})")


ANNOTATION_COMMANDS = (query, ingest, annotate)
