"""The ``nnal`` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from nnal.cli_annotate import ANNOTATION_COMMANDS
from nnal.cli_bench import bench_app

# rich_markup_mode None: help texts are plain text ("pip install 'nnal[annotate]'" keeps its brackets)
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Active learning for medical image segmentation on nnU-Net v2.")

EXIT_USAGE = 2


def _print_version(requested: bool) -> None:
    if requested:
        from nnal import __version__

        typer.echo(f"nnal {__version__}")
        raise typer.Exit()


@app.callback()
def _top_level(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="print nnal's version and exit")] = False,
) -> None:
    """Options of ``nnal`` itself, before any command (a Typer callback is where they live)."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _flag_value(text: str) -> object:
    """A flag's text read as a YAML scalar, so flags and config files are checked alike (``--fold 1.0`` is a float,
    refused for an integer field, not rounded)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _default(field: str) -> str:
    """A config field's default as the help shows it (flags default to None: "not given", so that a config file's
    or a resumed experiment's value stands)."""
    from nnal.config import Config

    return str(Config.model_fields[field].default)


def _threads(threads: int | None) -> None:
    """``--threads``: torch's threads for this process (default: every core it may use)."""
    import os

    if threads is not None:
        if threads < 1:
            _fail(f"--threads: must be at least 1, got {threads}")
        os.environ["NNAL_THREADS"] = str(threads)


Int = dict(metavar="INTEGER")


@app.command()
def run(
    output: Annotated[Path, typer.Option(help="experiment folder (created, or resumed if it exists)")],
    dataset: Annotated[str | None, typer.Option(help="nnU-Net v2 raw dataset folder or MSD TaskNN_Name folder, or "
                                                "an nnU-Net dataset name (DatasetNNN_Name) or id looked up in "
                                                "$nnUNet_raw")] = None,
    strategy: Annotated[str | None, typer.Option(help="random, entropy, meanstd, bald, coreset, badge, "
                                                 "stochastic-batches, usimc, usimf; or full (every pool slice, the "
                                                 "reference). Options: see 'nnal strategies'",
                                                 show_default=_default("strategy"))] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with config fields (flags override it; paths in it "
                                                "are relative to it)")] = None,
    fold: Annotated[str | None, typer.Option(help="nnU-Net 5-fold split fold (0-4); its val cases are the test set",
                                             show_default=_default("fold"), **Int)] = None,
    seed: Annotated[str | None, typer.Option(help="seed for every random choice (integer >= 0)",
                                             show_default=_default("seed"), **Int)] = None,
    rounds: Annotated[str | None, typer.Option(help="selection rounds after the initial round",
                                               show_default=_default("rounds"), **Int)] = None,
    initial: Annotated[str | None, typer.Option(help="initial random labeled slices (paper: 100)",
                                                show_default=_default("initial"), **Int)] = None,
    budget: Annotated[str | None, typer.Option(help="slices selected per round (paper: 100)",
                                               show_default=_default("budget"), **Int)] = None,
    preset: Annotated[str | None, typer.Option(help="training schedule: cpu, gpu-short or paper (on a GPU, choose "
                                               "gpu-short or paper)", show_default=_default("preset"))] = None,
    device: Annotated[str | None, typer.Option(help="auto (CUDA if present), cpu or cuda",
                                               show_default=_default("device"))] = None,
    splits: Annotated[Path | None, typer.Option(help="your nnU-Net splits_final.json (default: nnU-Net's 5-fold "
                                                "split, seed 12345)")] = None,
    plans: Annotated[Path | None, typer.Option(help="your nnUNetPlans.json, used instead of nnU-Net's planner")
                     ] = None,
    cache: Annotated[Path | None, typer.Option(help="folder for nnU-Net's plans and preprocessed data, "
                                               "shareable between experiments (default: OUTPUT/nnunet)")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: every core)")] = None,
    score_shards: Annotated[str | None, typer.Option(help="score each round's pool in this many Ray tasks (the "
                                                     "same scores; needs the grid extra; $RAY_ADDRESS: a cluster)",
                                                     show_default=_default("score_shards"), **Int)] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    oracle: Annotated[str | None, typer.Option(help="simulated (labels from the dataset's ground truth) or human "
                                               "(annotation mode: stop after each selection for a person's masks; "
                                               "see 'nnal query', 'nnal ingest')",
                                               show_default=_default("oracle"))] = None,
) -> None:
    """Run an active-learning experiment (or resume it where it stopped)."""
    numbers = dict(fold=fold, seed=seed, rounds=rounds, initial=initial, budget=budget, score_shards=score_shards)
    files = {k: str(v.resolve()) for k, v in (("splits", splits), ("plans", plans)) if v is not None}
    flags = dict(dataset=dataset, strategy=strategy, preset=preset, device=device, oracle=oracle, **files,
                 **{k: _flag_value(v) for k, v in numbers.items() if v is not None})
    _threads(threads)
    _run(output, flags, config, cache, quiet)


def _run(output: Path, flags: dict, run_file: Path | None, cache: Path | None, quiet: bool) -> None:
    from nnal.analysis.tables import dice_table
    from nnal.annotation.oracle import make_oracle  # the human oracle, when the config asks for one
    from nnal.config import from_sources
    from nnal.experiment import ExperimentFolder
    from nnal.loop import run_experiment
    from nnal.status import waiting_line

    folder = ExperimentFolder(output)
    saved = folder.read_config().to_dict() if run_file is None and folder.holds_experiment() else None
    results = run_experiment(from_sources(flags, run_file=run_file, saved=saved), output, cache=cache,
                             progress=not quiet, emit=lambda line: typer.echo(line, err=True),
                             oracle_factory=make_oracle)
    if len(results):
        typer.echo(dice_table(results))
        typer.echo(f"results: {folder.results_file}")
    waiting = waiting_line(output)
    if waiting is not None:
        typer.echo(waiting)


@app.command()
def status(
    experiment: Annotated[Path, typer.Argument(help="an experiment folder, or a folder of them (a grid's output, "
                                               "the demo's)")],
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Round, labeled slices per class, the batch waiting for masks, time per round, last Dice."""
    import json

    from nnal.experiment import ExperimentFolder
    from nnal.overview import format_overview, overview
    from nnal.status import experiment_status, format_status

    if ExperimentFolder(experiment).holds_experiment():
        found = experiment_status(experiment)
        typer.echo(json.dumps(found) if json_output else format_status(found))
    else:  # a grid's output, the demo's: every experiment below it
        found = overview(experiment)
        typer.echo(json.dumps(found) if json_output else format_overview(found))


@app.command()
def grid(
    grid_file: Annotated[Path, typer.Argument(help="grid YAML: datasets, strategies (variants), folds, seeds, "
                                              "settings, sweep, full_reference, retries (see examples/)")],
    output: Annotated[Path | None, typer.Option(help="folder for the grid's experiments, its status and report "
                                                "(default: runs/<grid file name>, or runs/<grid file name>-dry-run "
                                                "with --dry-run)")] = None,
    address: Annotated[str | None, typer.Option(help="join this Ray cluster (output and cache on a shared "
                                                "filesystem); default: a local Ray instance sized to the machine")
                       ] = None,
    max_parallel: Annotated[int | None, typer.Option(help="experiments at a time (default: one per GPU, or one "
                                                     "per two CPU cores)")] = None,
    executor: Annotated[str, typer.Option(help="ray, or local (in this process, one at a time, for debugging)")
                        ] = "ray",
    dry_run: Annotated[bool, typer.Option(help="run the grid on nnal's fake model (seconds): checks the grid "
                                          "end to end without nnU-Net")] = False,
    report: Annotated[bool, typer.Option(help="write the grid's report at the end")] = True,
) -> None:
    """Run every experiment of a grid (skipping finished ones, resuming cut-short ones), then its report."""
    from nnal.grid import run_grid
    from nnal.grid.driver import default_output

    status = run_grid(grid_file, output or default_output(grid_file, dry_run=dry_run), executor=executor,
                      address=address, max_parallel=max_parallel, backend="fake" if dry_run else "nnunet",
                      report=report, emit=typer.echo)
    if status["failed"]:
        sys.exit(1)


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="folder for the demo's experiments")] = Path("demo-output"),
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: every core)")] = None,
) -> None:
    """Random against USIMF on the bundled MSD Hippocampus copy, CPU schedule, a few rounds, then a report."""
    from nnal.demo import run_demo

    _threads(threads)
    run_demo(output, progress=not quiet)


@app.command()
def report(
    dirs: Annotated[list[Path], typer.Argument(help="experiment folders, or folders holding experiments")],
    output: Annotated[Path, typer.Option(help="folder for index.html, figures/ and tables/")] = Path("report"),
    savings_target: Annotated[float, typer.Option(help="label savings: slices to reach this fraction of the "
                                                  "full-label reference's Dice")] = 0.95,
) -> None:
    """Figures, tables and a self-contained HTML page from one or more experiments."""
    from nnal.analysis.extras import build_full_report
    from nnal.analysis.verdict import report_verdict
    from nnal.backend.predictions import checkpoint_predictions

    page = build_full_report(list(dirs), output, savings_fraction=savings_target, predictions=checkpoint_predictions)
    typer.echo(f"report: {page}")
    for line in report_verdict(page):
        typer.echo(line)


@app.command()
def strategies() -> None:
    """Every strategy with its options, their types and defaults (set them in the config's strategy_options)."""
    from nnal.strategies import REGISTRY

    for name in sorted(REGISTRY):
        typer.echo(REGISTRY[name].describe())


@app.command()
def export(
    experiment: Annotated[Path, typer.Argument(help="an experiment folder")],
    output: Annotated[Path, typer.Option(help="a new or empty folder: nnUNet_raw/ and nnUNet_results/ go in it")],
    round_: Annotated[int | None, typer.Option("--round", min=0, help="the round (default: the last trained one)")
                      ] = None,
    what: Annotated[str, typer.Option(help="labels (the labeled set as an nnU-Net raw dataset), model (the round's "
                                      "model as an nnU-Net results folder) or both")] = "both",
    dataset_id: Annotated[int | None, typer.Option(help="nnU-Net dataset id of the export, 1-999 (default: the "
                                                   "experiment's)")] = None,
) -> None:
    """Hand a round back to nnU-Net: its labeled set (ignore label elsewhere) and its model (see docs/export.md)."""
    from nnal.export import export_experiment

    done = export_experiment(experiment, round_=round_, output=output, what=what, dataset_id=dataset_id)
    number = int(done.dataset_name[len("Dataset"):len("Dataset") + 3])
    if done.raw_folder is not None:
        typer.echo(f"labels: {done.raw_folder} ({done.cases} cases, {done.slices} labeled slices of round "
                   f"{done.round_}); train: nnUNet_raw={done.output / 'nnUNet_raw'} nnUNetv2_plan_and_preprocess "
                   f"-d {number} -c 2d && nnUNetv2_train {number} 2d {done.fold}")
    if done.model_folder is not None:
        typer.echo(f"model: {done.model_folder} (round {done.round_}, fold {done.fold}); predict: nnUNet_results="
                   f"{done.output / 'nnUNet_results'} nnUNetv2_predict -i IN -o OUT -d {number} -c 2d -f {done.fold}")


@app.command()
def regimes(
    dataset: Annotated[str, typer.Argument(help="dataset folder, DatasetNNN_Name or id (as for nnal run)")],
    output: Annotated[Path, typer.Option(help="folder for Random's curve (its grid), the figure, regimes.json and "
                                         "one regime-<name>-grid.yaml per regime")],
    fold: Annotated[int, typer.Option(help="the fold whose pool and test cases are used")] = 0,
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="seeds of the curve (repeat the flag)")] = None,
    start: Annotated[int, typer.Option(help="the smallest labeled set; it doubles up to the pool")] = 8,
    sizes: Annotated[list[int] | None, typer.Option("--size", help="the labeled-set sizes instead (repeat)")] = None,
    settings: Annotated[Path | None, typer.Option(help="YAML mapping of config fields for every run (preset, "
                                                  "pool_cases, test_cases, ...)")] = None,
    strategy: Annotated[list[str] | None, typer.Option("--strategy", help="strategies of the proposed grids "
                                                        "(repeat; default: the comparison set)")] = None,
    comparison_seeds: Annotated[int, typer.Option(help="seeds of the proposed grids (0 .. N-1)")] = 5,
    executor: Annotated[str, typer.Option(help="ray, or local")] = "ray",
    dry_run: Annotated[bool, typer.Option(help="the curve on nnal's fake model (seconds)")] = False,
) -> None:
    """Random's learning curve (labeled sets doubling to the pool, the full-label reference), and a low, a medium
    and a high label regime proposed from it, each as a grid file to run."""
    from nnal.config import load_yaml
    from nnal.regimes import COMPARISON, run_regimes
    from nnal.strategies import REGISTRY

    values = load_yaml(settings) if settings is not None else {}
    chosen = strategy or [s for s in COMPARISON if s in REGISTRY]
    grids = run_regimes(dataset, output, fold=fold, seeds=seeds or [0, 1, 2], start=start, sizes=sizes,
                        settings=values, strategies=chosen, comparison_seeds=list(range(comparison_seeds)),
                        executor=executor, dry_run=dry_run, emit=typer.echo)
    typer.echo(f"curve: {output / 'curve.png'}, regimes: {output / 'regimes.json'}")
    for path in grids:
        typer.echo(f"grid: {path}  (nnal grid {path})")


@app.command()
def synth(
    kind: Annotated[str, typer.Option(metavar="liver|spleen", help="liver (liver 1, lesions 2, as MSD Task03) or "
                                      "spleen (spleen 1, as MSD Task09)")],
    output: Annotated[Path, typer.Option(help="the dataset folder to create, named DatasetNNN_Name (new or empty), or "
                                         "a folder to create Dataset901_SyntheticLiver or Dataset902_SyntheticSpleen "
                                         "in")],
    cases: Annotated[int | None, typer.Option(help="number of cases (default: MSD's, 131 liver, 41 spleen)",
                                              show_default=False, **Int)] = None,
    size: Annotated[int, typer.Option(help="voxels per side of a slice (size x size)", **Int)] = 512,
    slices: Annotated[tuple[int, int], typer.Option(metavar="MIN MAX", help="slices of a case, drawn per case "
                                                    "between MIN and MAX")] = (40, 80),
    seed: Annotated[int, typer.Option(help="seed of every random choice: the same seed writes byte-identical "
                                      "files", **Int)] = 0,
) -> None:
    """Write a synthetic CT-like nnU-Net v2 raw dataset (a stand-in for MSD Liver or Spleen; not patient data,
    so label any result on it synthetic; see docs/synth.md)."""
    from nnal.synth import synthesize

    folder = synthesize(kind=kind, output=output, cases=cases, size=size, slices=slices, seed=seed,
                        emit=lambda line: typer.echo(line, err=True))
    typer.echo(f"synthetic dataset: {folder} (not patient data: label results on it as synthetic)")


app.add_typer(bench_app, name="bench")
for command in ANNOTATION_COMMANDS:
    app.command()(command)


def main(argv: list[str] | None = None) -> None:
    """The console entry point: a user's mistake is one line on stderr and exit code 2, a bug keeps its traceback."""
    import os

    from typer.exceptions import TyperException

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp: docs/deviations.md, Threads

    from nnal.errors import NnalError

    try:
        code = app(args=argv, standalone_mode=False)
    except TyperException as err:  # an unknown command or flag, a flag of the wrong type, a missing argument
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"error: {err.format_message()}{where}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except typer.Abort:
        sys.exit(130)
    except NnalError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # not a user's mistake: a bug
        import traceback

        traceback.print_exc()
        print("nnal: this is a bug in nnal, not a problem with your input; please report it with the traceback above",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
