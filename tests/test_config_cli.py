"""Typed configuration and declared strategy options: every mistake is one line, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, make_nnunet_dataset, run_cli
from pydantic import ValidationError

from nnal.config import Config, build
from nnal.errors import ConfigError
from nnal.strategies import REGISTRY, get_strategy

# (YAML fields, CLI flags, words the one-line message must hold); each the same mistake in both forms
MISTAKES = {
    "misspelt strategy option": ({"strategy": "usimf", "strategy_options": {"etaa": 1}}, None,
                                 ["strategy_options", "etaa", "known", "eta"]),
    "unknown config key": ({"fodl": 1}, ["--fodl", "1"], ["fodl"]),
    "float fold": ({"fold": 1.0}, ["--fold", "1.0"], ["fold", "1.0"]),
    "non-integer seed": ({"seed": "abc"}, ["--seed", "abc"], ["seed", "abc"]),
    "fold out of range": ({"fold": 5}, ["--fold", "5"], ["fold"]),
    "unknown strategy": ({"strategy": "bold"}, ["--strategy", "bold"], ["strategy", "bold", "known"]),
    "option of the wrong type": ({"strategy": "usimf", "strategy_options": {"eta": "high"}}, None,
                                 ["strategy_options.eta", "high"]),
    "option of another strategy": ({"strategy": "usimc", "strategy_options": {"damping": 0.1}}, None,
                                   ["usimc", "damping"]),
    "option value not allowed": ({"strategy": "usimf", "strategy_options": {"query_mode": "random"}}, None,
                                 ["query_mode", "random"]),
    "boolean as a number": ({"rounds": True}, None, ["rounds"]),
}


def _assert_refused(result, folder: Path, words: list[str]) -> None:
    assert_one_line_error(result, words)
    assert not folder.exists()


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_yaml_mistake_is_one_line_and_writes_nothing(name, tmp_path):
    fields, _, words = MISTAKES[name]
    dataset = make_nnunet_dataset(tmp_path / "Dataset001_Toy")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"dataset": str(dataset), **fields}))
    result = run_cli(["run", "--config", config, "--output", tmp_path / "exp", "--quiet"])
    _assert_refused(result, tmp_path / "exp", [str(config), *words])


@pytest.mark.parametrize("name", sorted(n for n, (_, flags, _) in MISTAKES.items() if flags))
def test_flag_mistake_is_one_line_and_writes_nothing(name, tmp_path):
    _, flags, words = MISTAKES[name]
    dataset = make_nnunet_dataset(tmp_path / "Dataset001_Toy")
    result = run_cli(["run", "--dataset", dataset, "--output", tmp_path / "exp", "--quiet", *flags])
    _assert_refused(result, tmp_path / "exp", words)


def test_config_is_frozen_and_replace_validates_again():
    config = build({"dataset": "x", "strategy": "usimf", "strategy_options": {"eta": 2}})
    assert config.strategy_options == {"eta": 2.0}
    with pytest.raises(ValidationError, match="frozen"):
        config.fold = 3
    assert config.replace(fold=3).fold == 3
    with pytest.raises(ConfigError, match="fold"):
        config.replace(fold=9)


def test_every_strategy_declares_options_that_its_functions_take():
    for strategy in REGISTRY.values():
        assert strategy.resolve({}) == strategy.defaults
        for option in strategy.options:  # the default passes its own check
            assert strategy.check_options({option.name: option.default}) == {option.name: option.default}


def test_options_reach_the_select_function_keyword_only():
    strategy = get_strategy("stochastic-batches")
    assert strategy.check_options({"reduce": "mean"}) == {"reduce": "mean"}
    with pytest.raises(ConfigError, match="reduce"):
        strategy.check_options({"reduce": "max"})


def test_strategies_command_lists_every_strategy_and_option():
    result = run_cli(["strategies"])
    assert result.exit_code == 0
    for strategy in REGISTRY.values():
        assert f"{strategy.name}:" in result.stdout or result.stdout.startswith(strategy.name)
        for option in strategy.options:
            assert option.name in result.stdout


def test_unknown_command_and_flag_are_one_line(tmp_path):
    for args in (["bogus"], ["run", "--output", tmp_path / "x", "--bogus", "1"]):
        result = run_cli(args)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_config_defaults_are_valid_and_saved_types_roundtrip(tmp_path):
    config = Config(dataset="x", strategy="usimc", strategy_options={"query_size": 300}).resolved()
    again = build(yaml.safe_load(config.to_yaml()))
    assert again == config


@pytest.mark.parametrize("budget,message", [([100, 0], "budget.1"), ([1, 2, 3, 4], "per-round budgets"),
                                            ([], "at least 1"), (1.5, "budget")])
def test_a_bad_budget_schedule_is_refused(budget, message):
    with pytest.raises(ConfigError, match=message):
        build({"dataset": "x", "rounds": 3, "budget": budget})
    assert build({"dataset": "x", "rounds": 3, "budget": [100, 100, 900]}).budget_for(3) == 900


def test_a_run_validates_its_config_once_where_it_comes_in(toy_dataset, tmp_path, monkeypatch):
    """`nnal run`'s path: the flags are validated when they are built; settling the config (preset schedule, one
    round for a single-round strategy, absolute paths, the experiment name) and the whole run validate nothing again,
    yet the saved config holds the settled values."""
    from nnal.backend.fake import fake_backend
    from nnal.config import from_sources
    from nnal.experiment import ExperimentFolder
    from nnal.loop import run_experiment

    config = from_sources({"dataset": str(toy_dataset), "strategy": "entropy", "rounds": 1, "initial": 4,
                           "budget": 2, "epochs_initial": 1, "epochs_per_round": 1, "iterations_per_epoch": 1,
                           "test_cases": 2})
    built = []
    original = Config.__init__

    def counting(self, **values):
        built.append(values)
        original(self, **values)

    monkeypatch.setattr(Config, "__init__", counting)
    run_experiment(config, tmp_path / "exp", cache=tmp_path / "cache", progress=False, backend_factory=fake_backend)
    monkeypatch.undo()
    assert built == []
    saved = ExperimentFolder(tmp_path / "exp").read_config()
    assert saved.experiment == f"{toy_dataset.name}-entropy-f0-s0" and Path(saved.dataset).is_absolute()
    assert saved.mc_dropout_p is not None and saved.batch_size is not None
