"""Defaults decided by docs/fidelity.md's rule (the paper's text, else its code), pinned; and docs that state a
default agree with the code."""

from __future__ import annotations

import yaml

from nnal.backend.fake import fake_backend
from nnal.config import PRESETS, build, upgrade_saved
from nnal.loop import run_experiment

SETTINGS = dict(rounds=1, initial=5, budget=4, iterations_per_epoch=2, epochs_initial=1, epochs_per_round=1,
                mc_passes=3, device="cpu")


class EpochRecorder:
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

    splits = staticmethod(fake_backend.splits)


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
