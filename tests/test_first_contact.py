"""What a new user meets first: help with defaults, the start-up summary, progress bars with totals, threads, the
wrong kind of file named as such, and status and report on a folder of experiments (a grid's output)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, run_cli
from tqdm import tqdm

from nnal.backend.fake import fake_backend
from nnal.config import build
from nnal.loop import run_experiment
from nnal.run_output import pass_counter

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SETTINGS = dict(rounds=1, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1, epochs_per_round=1,
                mc_passes=3, device="cpu")


def test_help_shows_defaults_integer_flags_and_keeps_brackets():
    run_help = " ".join(run_cli(["run", "--help"]).stdout.split())  # the help wraps its lines
    for default in ("[default: (random)]", "[default: (5)]", "[default: (cpu)]", "[default: (auto)]"):
        assert default in run_help, default
    assert "--fold INTEGER" in run_help and "--threads" in run_help
    assert "nnal[annotate]" in run_cli(["annotate", "--help"]).stdout


def test_the_command_lets_openmp_threads_sleep_unless_the_user_chose(monkeypatch):
    from nnal.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with contextlib.suppress(SystemExit):
        main(["--version"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with contextlib.suppress(SystemExit):
        main(["--version"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_version():
    from nnal import __version__

    result = run_cli(["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"nnal {__version__}"


def test_a_grid_file_given_to_run_is_named_as_one(tmp_path):
    grid = EXAMPLES / "appendix-e-grid.yaml"
    result = run_cli(["run", "--config", grid, "--output", tmp_path / "exp"])
    assert_one_line_error(result, [str(grid), "grid file", "nnal grid"])
    assert not (tmp_path / "exp").exists()


def test_a_run_config_given_to_grid_is_named_as_one(tmp_path):
    config = EXAMPLES / "appendix-e-run.yaml"
    result = run_cli(["grid", config, "--output", tmp_path / "out", "--dry-run"])
    assert_one_line_error(result, [str(config), "experiment's config", "nnal run --config"])
    assert not (tmp_path / "out").exists()


def test_bad_threads_is_one_line(tmp_path, toy_dataset):
    result = run_cli(["run", "--dataset", toy_dataset, "--output", tmp_path / "exp", "--threads", "0"])
    assert_one_line_error(result, ["--threads", "at least 1"])


def test_the_start_up_summary_names_pool_test_schedule_device_and_cache(tmp_path, toy_dataset, no_fsync):
    lines: list[str] = []
    run_experiment(build({"dataset": str(toy_dataset), **SETTINGS}), tmp_path / "exp", progress=False,
                   backend_factory=fake_backend, emit=lines.append)
    text = "\n".join(lines)
    assert "random on" in text and "fold 0: 4 pool cases, 2 test cases" in text
    assert "2 iterations for round 0" in text and "device cpu" in text and "thread(s)" in text
    assert str(tmp_path / "exp" / "nnunet") in text


def test_the_score_bar_counts_each_pass_to_the_pool_size():
    bar = tqdm(total=10, desc="exp round 1 score", file=io.StringIO())
    on_batch = pass_counter(bar, 10, "exp round 1 score")
    for n in (4, 6, 5, 5):  # a scoring pass over 10 slices, then a gradient pass
        on_batch(n)
    assert bar.n == 10 and bar.total == 10 and "pass 2" in bar.desc  # the second pass, counted to 10 again


@pytest.fixture(scope="module")
def grid_output(tmp_path_factory, toy_dataset) -> Path:
    base = tmp_path_factory.mktemp("grid")
    path = base / "grid.yaml"
    # the dataset path relative to the grid file, which is not where the command runs
    relative = os.path.relpath(toy_dataset, base)
    path.write_text(yaml.safe_dump({"datasets": [relative], "strategies": ["random", "bald"], "seeds": [0, 1],
                                    "settings": SETTINGS}))
    result = run_cli(["grid", path, "--output", base / "out", "--executor", "local", "--dry-run", "--no-report"])
    assert result.exit_code == 0, result.output
    return base / "out"


def test_status_of_a_grid_output_lists_every_experiment(grid_output):
    result = run_cli(["status", grid_output])
    assert result.exit_code == 0, result.output
    assert "4 experiments, 4 done" in result.stdout
    found = json.loads(run_cli(["status", grid_output, "--json"]).stdout)
    assert sorted(r["folder"] for r in found["experiments"]) == sorted(
        f"Dataset001_Toy/{v}/f0-s{s}" for v in ("random", "bald") for s in (0, 1))  # no shared round 0 among them


def test_report_of_a_grid_output(grid_output, tmp_path):
    result = run_cli(["report", grid_output, "--output", tmp_path / "rep"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "index.html").is_file() and "Verdict" in result.stdout


def test_the_grid_yaml_it_keeps_reruns_from_anywhere(grid_output, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli(["grid", grid_output / "grid.yaml", "--output", grid_output, "--executor", "local",
                      "--dry-run", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "4 experiments (4 already done)" in result.stdout


def test_annotate_on_a_simulated_run_says_what_it_is(tmp_path, toy_dataset, no_fsync):
    run_experiment(build({"dataset": str(toy_dataset), **SETTINGS}), tmp_path / "exp", progress=False,
                   backend_factory=fake_backend)
    result = run_cli(["annotate", tmp_path / "exp"])
    assert_one_line_error(result, ["simulated run", "--oracle human"])


def test_grid_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # Ray is the optional grid extra
    result = run_cli(["grid", EXAMPLES / "hippocampus-cpu-grid.yaml", "--output", tmp_path / "out"])
    assert_one_line_error(result, ["Ray", "pip install", "[grid]"])
    assert not (tmp_path / "out").exists()


def test_the_demo_prints_its_reports_verdict(tmp_path, monkeypatch, capsys):
    """The demo's last lines are the report's answer (which strategy, by how much), as nnal report and grid print it."""
    import nnal.demo
    from nnal.analysis.verdict import VERDICT_FILE
    from nnal.backend.fake import fake_backend

    real = nnal.demo.run_experiment
    monkeypatch.setattr(nnal.demo, "run_experiment", lambda *a, **k: real(*a, **k, backend_factory=fake_backend))
    nnal.demo.run_demo(tmp_path / "out", progress=False)
    printed = capsys.readouterr().out.splitlines()
    verdict = (tmp_path / "out" / "report" / VERDICT_FILE).read_text().splitlines()
    assert verdict and printed[-len(verdict):] == verdict
