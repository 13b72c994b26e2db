"""Defaults decided by docs/fidelity.md's rule (the paper's text, else its code), pinned; and docs that state a
default agree with the code."""

from __future__ import annotations

import yaml

from nnal.backend.fake import FakeFactory, fake_backend
from nnal.config import PRESETS, build, upgrade_saved
from nnal.loop import run_experiment

SETTINGS = dict(rounds=1, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1, epochs_per_round=1,
                mc_passes=3, device="cpu")


class EpochRecorder(FakeFactory):
    """A fake backend factory that records the epochs each training was given."""

    def __init__(self):
        self.epochs: list[int] = []

    def __call__(self, dataset, cache, config):
        backend = fake_backend(dataset, cache, config)
        train = backend.train

        def record(fold, labeled, cfg, epochs, *args, **kwargs):
            self.epochs.append(epochs)
            return train(fold, labeled, cfg, epochs, *args, **kwargs)

        backend.train = record
        return backend



def test_the_full_reference_trains_its_own_schedule(tmp_path, toy_dataset, no_fsync):
    recorder = EpochRecorder()
    run_experiment(build({"dataset": str(toy_dataset), "strategy": "full", **SETTINGS, "full_epochs": 3}),
                   tmp_path / "full", progress=False, backend_factory=recorder)
    run_experiment(build({"dataset": str(toy_dataset), "strategy": "random", **SETTINGS, "full_epochs": 3}),
                   tmp_path / "random", progress=False, backend_factory=recorder)
    assert recorder.epochs == [3, 1, 1]  # the reference: full_epochs; an AL run: epochs_initial, epochs_per_round
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())
    assert saved["full_epochs"] == 3 and saved["rounds"] == 0


def test_presets_give_the_reference_the_codes_schedule_on_paper():
    assert PRESETS["paper"]["full_epochs"] * PRESETS["paper"]["iterations_per_epoch"] == 1000 * 250
    assert PRESETS["cpu"]["full_epochs"] * PRESETS["cpu"]["iterations_per_epoch"] == 1200
    assert build({"dataset": "x", "strategy": "full", "preset": "paper"}).resolved().full_epochs == 1000


def test_an_older_saved_reference_reads_as_trained_for_epochs_initial():
    old = {"dataset": "x", "strategy": "full", "preset": "cpu", "epochs_initial": 24, "dropout": "element"}
    assert upgrade_saved(old)["full_epochs"] == 24
    assert upgrade_saved({**old, "strategy": "random"})["full_epochs"] == PRESETS["cpu"]["full_epochs"]


def test_bald_scores_at_the_codes_p():
    assert build({"dataset": "x", "strategy": "bald"}).resolved().mc_dropout_p == 0.01
    assert build({"dataset": "x", "strategy": "meanstd"}).resolved().mc_dropout_p == 0.1
    assert build({"dataset": "x", "strategy": "bald", "mc_dropout_p": 0.1}).resolved().mc_dropout_p == 0.1


def _usimf_round(tmp_path, toy_dataset, name: str, **options):
    import numpy as np
    import pandas as pd

    config = build({"dataset": str(toy_dataset), "strategy": "usimf", **SETTINGS, "strategy_options": options})
    run_experiment(config, tmp_path / name, progress=False, backend_factory=fake_backend)
    return dict(np.load(tmp_path / name / "round_001" / "scores.npz")), pd.read_csv(
        tmp_path / name / "round_001" / "selection.csv")["id"].to_numpy()


def test_usimf_prefilters_the_pool_to_its_most_uncertain_slices(tmp_path, toy_dataset, no_fsync):
    import numpy as np

    from nnal.strategies import get_strategy

    assert get_strategy("usimf").defaults["prefilter"] == 30_000  # the paper's code
    scores, chosen = _usimf_round(tmp_path, toy_dataset, "kept", prefilter=12)
    kept = scores["candidates"]
    order = np.argsort(-scores["variance"].astype(np.float64), kind="stable")
    assert sorted(kept.tolist()) == sorted(order[:12].tolist())  # the 12 of highest mean MC variance
    assert len(scores["grad_embeddings"]) == 12 and np.isin(scores["query"], kept).all()
    assert np.isin(chosen, scores["ids"][kept]).all()
    # a pool smaller than the prefilter: no candidates, the same as no prefilter at all
    full, chosen_full = _usimf_round(tmp_path, toy_dataset, "all", prefilter=None)
    default, chosen_default = _usimf_round(tmp_path, toy_dataset, "default")
    assert "candidates" not in default and chosen_default.tolist() == chosen_full.tolist()


# examples of syntax in the default column, not defaults: a budget schedule, Appendix D's Q = U, the scenario's form
NOT_DEFAULTS = {("budget", "[100, 100, 100, 900]"), ("query_size", "pool"), ("redundancy", "{case, copies}")}


def _documented_defaults() -> list[tuple[str, str, str]]:
    """(row, name, value) for every ``name: value`` in the "nnal's default" column of docs/fidelity.md."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "fidelity.md").read_text()
    out = []
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| element") or line.startswith("|---"):
            continue
        cols = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        out += [(cols[0], name, value) for name, value in re.findall(r"`([a-z_]+): ([^`]+)`", cols[3])]
    return out


def _same(default, value: str) -> bool:
    """A documented value against a code default: text as written (``off`` is text, not YAML's false), numbers as
    numbers (``1e-6``), the rest as YAML reads it (``null``, ``[...]``)."""
    if isinstance(default, str):
        return default == value
    if isinstance(default, int | float) and not isinstance(default, bool):
        try:
            return float(value) == default
        except ValueError:
            return False
    return yaml.safe_load(value) == default


def test_every_default_docs_fidelity_states_is_the_codes_default():
    from nnal.config import Config
    from nnal.strategies import REGISTRY

    documented = _documented_defaults()
    assert len(documented) >= 20
    for row, name, value in documented:
        if (name, value) in NOT_DEFAULTS:
            continue
        defaults = [s.defaults[name] for s in REGISTRY.values() if name in s.defaults]
        if name in Config.model_fields:
            defaults.append(Config.model_fields[name].default)
        assert defaults, f"docs/fidelity.md ({row}): {name} is no option or config field"
        assert any(_same(d, value) for d in defaults), \
            f"docs/fidelity.md ({row}) states {name}: {value}, the code's defaults are {defaults}"
