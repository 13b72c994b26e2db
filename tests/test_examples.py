"""The ready configs under examples/ build as they are, and Appendix D's cover the paper's sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnal.config import build, load_yaml, read_run_file
from nnal.demo import BUNDLED
from nnal.grid import expand, load_grid

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
APPENDIX_D = sorted((EXAMPLES / "appendix-d-runs").glob("*.yaml"))


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_and_grid_is_valid(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # paths in a file are relative to the file, wherever the command runs
    if path.name.endswith("-grid.yaml"):  # the name says which kind of file it is
        configs = [e.config for e in expand(load_grid(path), str(path), base=path.parent)]
    elif path.name.endswith("-settings.yaml"):  # settings for every run of a command (nnal regimes --settings)
        configs = [build({**load_yaml(path), "dataset": str(BUNDLED)}, str(path))]
    else:
        assert "strategies" not in load_yaml(path)
        configs = [build(read_run_file(path), str(path))]
    for config in configs:
        assert Path(config.dataset).resolve() == BUNDLED.resolve()  # the bundled data


def test_appendix_d_covers_query_modes_sizes_and_eta():
    configs = [build(read_run_file(p), str(p)) for p in APPENDIX_D]
    assert {c.strategy for c in configs} == {"usimf"}
    assert {(c.preset, c.rounds, c.initial, c.budget) for c in configs} == {("paper", 2, 100, 100)}
    options = [c.strategy_options for c in configs]
    assert {o.get("query_mode", "weighted") for o in options} == {"weighted", "uniform", "max-uncertainty"}
    assert {o["query_size"] for o in options if "query_size" in o} == {200, 400, 1600, "pool", "elbow"}
    assert {o["eta"] for o in options if "eta" in o} == {0.0, 1.0, 10.0, 100.0}
    names = [c.experiment for c in configs]
    assert len(set(names)) == len(names)


def _gpu_hours_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_hours.py"
    spec = importlib.util.spec_from_file_location("gpu_hours", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_hours_counts_the_paper_grid_trainings_and_fits_seconds_per_iteration(monkeypatch):
    gpu_hours = _gpu_hours_module()
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    trainings = gpu_hours.grid_trainings(Path("examples/hippocampus-paper-grid.yaml"))
    kinds = [what for what, _ in trainings]
    # 9 strategies x 2 folds x 12 rounds; one round 0 per fold (seed 0), shared; the full reference per fold
    assert (kinds.count("round 0"), kinds.count("fine-tuning round"), kinds.count("full reference")) == (2, 216, 2)
    assert {n for what, n in trainings if what != "full reference"} == {300 * 250}
    assert {n for what, n in trainings if what == "full reference"} == {1000 * 250}  # the code's stock nnU-Net
    # seconds = 3 + 0.05 x iterations, measured on rounds of 500 and 200 iterations
    measured = {"config": {"epochs_initial": 10, "epochs_per_round": 4, "iterations_per_epoch": 50},
                "seconds_per_phase": {"0": {"train": 28.0}, "1": {"train": 13.0}, "2": {"train": 13.0}}}
    start, per_iteration = gpu_hours.per_iteration_fit(measured)
    assert abs(start - 3.0) < 1e-9 and abs(per_iteration - 0.05) < 1e-12
