"""The dropout regime as the paper's code ran it, read from the networks nnU-Net builds: element-wise nn.Dropout
after every convolution with p = 0.01 while training, the same modules at p = 0.1 in the MC-dropout passes only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nnal.backend import training
from nnal.backend.runtime import nnunet_environment
from nnal.backend.session import Backend
from nnal.config import Config
from nnal.dataset import load_dataset
from nnal.experiment import ExperimentFolder

pytestmark = pytest.mark.slow


def _backend(dataset: Path, cache: Path, **regime) -> Backend:
    config = Config(dataset=str(dataset), **regime)
    return Backend(load_dataset(dataset), cache, dropout=config.dropout, dropout_p=config.dropout_p,
                   mc_dropout_p=config.resolved().mc_dropout_p, num_processes=0, device="cpu")


def _conv_blocks(net: torch.nn.Module) -> list[torch.nn.Module]:
    """nnU-Net's conv -> dropout -> norm -> nonlinearity blocks (every 3x3 convolution of the plain U-Net)."""
    return [m for m in net.modules() if type(m).__name__ == "ConvDropoutNormReLU"]


def _dropouts(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]


@pytest.fixture(scope="module")
def backend(mini_hippocampus, nnunet_cache) -> Backend:
    return _backend(mini_hippocampus, nnunet_cache)


def _trained_network(backend: Backend, tmp_path: Path) -> torch.nn.Module:
    """The network of the trainer that ``Backend.train`` runs, built as it builds it (not trained)."""
    fold = backend.splits[0]
    labeled = {sorted(fold["train"])[0]: np.arange(3)}
    schedule = training.Schedule(1, 1, 4, 1e-2, augmentation=False)
    with nnunet_environment(backend.root, 0):  # nnU-Net's trainer wants its results folder set
        trainer = training.make_trainer(backend.plans, backend.dataset_json, 0, labeled, schedule, tmp_path / "log",
                                        backend.device, seed=0)
    return trainer.network


def test_training_network_has_elementwise_dropout_p001_after_every_convolution(backend, tmp_path):
    net = _trained_network(backend, tmp_path)
    blocks = _conv_blocks(net)
    assert len(blocks) >= 14  # 4 encoder stages and 3 decoder stages of two convolutions each
    for block in blocks:
        assert type(block.dropout) is torch.nn.Dropout  # element-wise, not Dropout2d
        assert block.dropout.p == pytest.approx(0.01)
        order = [type(m).__name__ for m in block.all_modules]
        assert order[:2] == ["Conv2d", "Dropout"]  # right after the convolution
    assert len(_dropouts(net)) == len(blocks)


def test_channel_dropout_and_other_p_are_options(mini_hippocampus, nnunet_cache, tmp_path):
    backend = _backend(mini_hippocampus, nnunet_cache, dropout="channel", dropout_p=0.2)
    net = _trained_network(backend, tmp_path)
    assert {type(m) for m in _dropouts(net)} == {torch.nn.Dropout2d}
    assert {round(m.p, 9) for m in _dropouts(net)} == {0.2}


def _record_dropout(net: torch.nn.Module) -> list[tuple[bool, float]]:
    calls: list[tuple[bool, float]] = []
    for module in _dropouts(net):
        module.register_forward_hook(lambda m, _i, _o: calls.append((m.training, m.p)))
    return calls


def _pool_cases(backend: Backend) -> list[tuple[str, np.ndarray]]:
    return [(case, np.arange(4)) for case in sorted(backend.splits[0]["train"])[:2]]


@pytest.mark.parametrize("keys", [{"bald", "class_variance"}, {"std", "entropy"}])
def test_mc_passes_run_the_same_modules_at_p01_and_every_other_pass_without_dropout(backend, keys):
    torch.manual_seed(0)
    model = backend.model(None)
    calls = _record_dropout(model.network)
    model.scores(_pool_cases(backend), keys, mc_passes=3, batch_size=64, seed=0)
    active = [c for c in calls if c[0]]
    modules = len(_dropouts(model.network))
    assert {(t, round(p, 9)) for t, p in active} == {(True, 0.1)}
    assert len(active) == 3 * modules  # T passes of one batch, every module
    deterministic = [c for c in calls if not c[0]]
    assert len(deterministic) == (modules if "entropy" in keys else 0)
    assert all(not m.training for m in _dropouts(model.network))  # back to eval after scoring


def test_max_entropy_scores_with_dropout_off(backend):
    torch.manual_seed(0)
    model = backend.model(None)
    calls = _record_dropout(model.network)
    model.scores(_pool_cases(backend), {"entropy"}, mc_passes=3, batch_size=64, seed=0)
    assert calls and not any(training for training, _ in calls)


@pytest.mark.parametrize("strategy, p", [("bald", 0.01), ("meanstd", 0.1), ("usimf", 0.1)])
def test_each_strategy_scores_at_the_codes_p_by_default(strategy, p, mini_hippocampus, nnunet_cache):
    """The paper's code: BALD's own enable-dropout call at 0.01, the other MC strategies at 0.1."""
    backend = _backend(mini_hippocampus, nnunet_cache, strategy=strategy)
    model = backend.model(None)
    calls = _record_dropout(model.network)
    model.scores(_pool_cases(backend), {"bald", "class_variance"}, mc_passes=2, batch_size=64, seed=0)
    assert {round(p_, 9) for training, p_ in calls if training} == {p}


def test_scoring_p_is_a_setting(mini_hippocampus, nnunet_cache):
    backend = _backend(mini_hippocampus, nnunet_cache, mc_dropout_p=0.3)
    model = backend.model(None)
    calls = _record_dropout(model.network)
    model.scores(_pool_cases(backend), {"bald"}, mc_passes=2, batch_size=64, seed=0)
    assert {round(p, 9) for training, p in calls if training} == {0.3}


def test_a_config_saved_before_the_regime_was_a_setting_reads_as_what_it_ran(tmp_path):
    folder = ExperimentFolder(tmp_path / "old")
    folder.root.mkdir()
    old = Config(dataset="/data/x").to_dict()
    for key in ("dropout", "mc_dropout_p"):
        old.pop(key)
    old["dropout_p"] = 0.1
    folder.config_file.write_text(yaml.safe_dump(old))
    saved = folder.read_config()
    assert (saved.dropout, saved.dropout_p, saved.mc_dropout_p) == ("channel", 0.1, 0.1)
    fresh = Config(dataset="/data/x").resolved()
    assert (fresh.dropout, fresh.dropout_p, fresh.mc_dropout_p) == ("element", 0.01, 0.1)
