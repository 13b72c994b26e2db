"""``nnal bench``: the speed benchmarks' commands (a user's mistake is a ConfigError, one line from ``nnal``'s entry
point)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nnal.errors import ConfigError

bench_app = typer.Typer(no_args_is_help=True, help="Speed benchmarks.")


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
        raise ConfigError(f"--scale: unknown {scale!r}; known: {', '.join(SCALES)}")
    result = run_bench(scale, with_submodlib=submodlib)
    typer.echo(json.dumps(result) if json_output else format_bench(result))


@bench_app.command("scoring")
def bench_scoring(
    experiment: Annotated[Path, typer.Option(help="an experiment folder whose round is re-scored (default: the "
                                             "demo's USIMF)")] = Path("demo-output/usimf"),
    round_: Annotated[int, typer.Option("--round", help="the round whose scoring phase is timed (>= 1)")] = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    mc_passes: Annotated[int | None, typer.Option(help="T (default: the experiment's)")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """The query step against its floor: MC passes stacked vs single, gradient embeddings, the scoring phase."""
    from nnal.bench.scoring import bench_scoring as run_bench
    from nnal.bench.scoring import format_scoring, to_json

    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device: unknown {device!r}; known: cpu, cuda")
    result = run_bench(experiment, round_=round_, device=device, mc_passes=mc_passes)
    typer.echo(to_json(result) if json_output else format_scoring(result))
