"""The ``nnal`` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Active learning for medical image segmentation on nnU-Net v2.")

EXIT_USAGE = 2


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _user_errors():
    from nnal.config import ConfigError
    from nnal.dataset import DatasetError
    from nnal.state import LockedError

    return (ConfigError, DatasetError, LockedError)


@app.command()
def run(
    dataset: Annotated[Path, typer.Option(help="nnU-Net v2 raw dataset folder or MSD TaskNN_Name folder")],
    output: Annotated[Path, typer.Option(help="experiment folder (created, or resumed if it exists)")],
    strategy: Annotated[str, typer.Option(help="random, entropy, meanstd, bald, coreset, badge, stochastic-batches, "
                                          "usimc, usimf; or full (every pool slice, the reference)")] = "random",
    config: Annotated[Path | None, typer.Option(help="YAML file with config fields")] = None,
    fold: Annotated[int | None, typer.Option(help="nnU-Net 5-fold split fold (0-4); its val cases are the test set")
                    ] = None,
    seed: Annotated[int | None, typer.Option(help="seed for every random choice")] = None,
    rounds: Annotated[int | None, typer.Option(help="selection rounds after the initial round")] = None,
    initial: Annotated[int | None, typer.Option(help="initial random labeled slices (paper: 100)")] = None,
    budget: Annotated[int | None, typer.Option(help="slices selected per round (paper: 100)")] = None,
    preset: Annotated[str | None, typer.Option(help="training schedule: cpu, gpu-short or paper")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda")] = None,
    cache: Annotated[Path | None, typer.Option(help="folder for nnU-Net's plans and preprocessed data, "
                                               "shareable between experiments (default: OUTPUT/nnunet)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Run an active-learning experiment (or resume it where it stopped)."""
    from nnal.config import from_mapping, load_yaml
    from nnal.loop import run_experiment
    from nnal.report_table import dice_table

    try:
        values = load_yaml(config) if config is not None else {}
        flags = dict(dataset=str(dataset), strategy=strategy, fold=fold, seed=seed, rounds=rounds, initial=initial,
                     budget=budget, preset=preset, device=device)
        values.update({k: v for k, v in flags.items() if v is not None})
        results = run_experiment(from_mapping(values, str(config or "command line")), output, cache=cache,
                                 progress=not quiet)
    except _user_errors() as err:
        _fail(str(err))
    except ValueError as err:  # unknown strategy names and similar
        _fail(str(err))
    typer.echo(dice_table(results))
    typer.echo(f"results: {output / 'results.csv'}")


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="folder for the demo's experiments")] = Path("demo-output"),
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Random against USIMF on the bundled MSD Hippocampus copy, CPU schedule, a few rounds, then a report."""
    from nnal.demo import run_demo

    try:
        run_demo(output, progress=not quiet)
    except _user_errors() as err:
        _fail(str(err))


@app.command()
def report(
    dirs: Annotated[list[Path], typer.Argument(help="experiment folders, or folders holding experiments")],
    output: Annotated[Path, typer.Option(help="folder for index.html, figures/ and tables/")] = Path("report"),
) -> None:
    """Figures, tables and a self-contained HTML page from one or more experiments."""
    from nnal.analysis import ReportError
    from nnal.analysis.extras import build_full_report

    try:
        page = build_full_report(list(dirs), output)
    except ReportError as err:
        _fail(str(err))
    typer.echo(f"report: {page}")


bench_app = typer.Typer(no_args_is_help=True, help="Speed benchmarks.")
app.add_typer(bench_app, name="bench")


@bench_app.command("selection")
def bench_selection(
    scale: Annotated[str, typer.Option(help="hippocampus (7662x942), medium (30000x3000) or liver (104133x6606)")
                     ] = "hippocampus",
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    submodlib: Annotated[bool, typer.Option(help="also time submodlib-py (test/bench dependency)")] = True,
) -> None:
    """FLQMI selection (budget 100) on a seeded synthetic similarity matrix, against submodlib."""
    import json

    from nnal.bench import SCALES, format_bench
    from nnal.bench import bench_selection as run_bench

    if scale not in SCALES:
        _fail(f"--scale: unknown {scale!r}; known: {', '.join(SCALES)}")
    result = run_bench(scale, with_submodlib=submodlib)
    typer.echo(json.dumps(result) if json_output else format_bench(result))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
