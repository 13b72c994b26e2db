"""The ready configs under examples/ build as they are, and Appendix D's cover the paper's sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnal.config import build, load_yaml
from nnal.grid import expand, load_grid

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
APPENDIX_D = sorted((EXAMPLES / "appendix-d").glob("*.yaml"))


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_and_grid_is_valid(path, monkeypatch):
    monkeypatch.chdir(EXAMPLES.parent)  # paths in examples are relative to the repository root
    values = load_yaml(path)
    if "strategies" in values:  # a grid file
        configs = [e.config for e in expand(load_grid(path), str(path))]
    else:
        configs = [build(values, str(path))]
    for config in configs:
        assert (EXAMPLES.parent / config.dataset).is_dir()  # the bundled data


def test_appendix_d_covers_query_modes_sizes_and_eta():
    configs = [build(load_yaml(p), str(p)) for p in APPENDIX_D]
    assert {c.strategy for c in configs} == {"usimf"}
    assert {(c.preset, c.rounds, c.initial, c.budget) for c in configs} == {("paper", 2, 100, 100)}
    options = [c.strategy_options for c in configs]
    assert {o.get("query_mode", "weighted") for o in options} == {"weighted", "uniform", "max-uncertainty"}
    assert {o["query_size"] for o in options if "query_size" in o} == {200, 400, 1600, "pool", "elbow"}
    assert {o["eta"] for o in options if "eta" in o} == {0.0, 1.0, 10.0, 100.0}
    names = [c.experiment for c in configs]
    assert len(set(names)) == len(names)
