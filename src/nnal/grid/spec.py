"""A grid file: datasets x strategies (with their variants) x folds x seeds x swept strategy options.

Every combination is one experiment, its config built and checked here, before any work: a typo in the grid is
one error line naming the grid file and the experiment, exit code 2, and nothing is written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nnal.config import ROUND0_FIELDS, Config, build, describe_error, load_yaml
from nnal.dataset import locate_dataset
from nnal.errors import ConfigError
from nnal.strategies import get_strategy, variant_label

# fields a grid sets per experiment: the rest goes in ``settings``, the same for every experiment
PER_EXPERIMENT = frozenset({"dataset", "strategy", "strategy_options", "fold", "seed", "experiment"})


class StrategyEntry(BaseModel):
    """One strategy of the grid, with options of its own (a variant)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    strategy: Annotated[str, Field(min_length=1)]
    options: dict[str, Any] = Field(default_factory=dict)


class GridSpec(BaseModel):
    """What a grid file holds (YAML)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    datasets: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    strategies: Annotated[list[str | StrategyEntry], Field(min_length=1)]
    folds: Annotated[list[Annotated[int, Field(ge=0, le=4)]], Field(min_length=1)] = [0]
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = [0]
    # every other config field, the same for every experiment (preset, rounds, budget, pool_cases, ...)
    settings: dict[str, Any] = Field(default_factory=dict)
    # strategy options swept over their values, for every strategy of the grid that declares the option
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    # the full-label reference, once per dataset and fold (with the first seed; with every seed when the seed draws
    # a subset of the cases, ``pool_cases`` or ``test_cases``); a mapping is settings of its own
    # over ``settings`` (a longer schedule: it trains once, on every pool slice, where the others fine-tune)
    full_reference: bool | dict[str, Any] = False
    retries: Annotated[int, Field(ge=0, le=10)] = 1


@dataclass(frozen=True)
class GridExperiment:
    """One experiment of a grid: its config, its folder under the grid's output, and its round-0 group."""

    config: Config
    folder: str  # relative to the grid's output
    round0_group: str | None  # experiments of one group share one trained round 0 (None: the full reference)

    @property
    def label(self) -> str:
        return variant_label(self.config.strategy, self.config.strategy_options)


def load_grid(path: Path) -> GridSpec:
    """Read and check a grid file; a problem is one ConfigError line naming the file."""
    values = load_yaml(path)
    if "dataset" in values and "datasets" not in values:
        raise ConfigError(f"{path}: an experiment's config (it has 'dataset'), not a grid file; run it with "
                          f"'nnal run --config {path} --output DIR'")
    try:
        return GridSpec(**values)
    except ValidationError as err:
        raise ConfigError(f"{path}: {describe_error(err)}") from None
    except TypeError as err:
        raise ConfigError(f"{path}: {err}") from None


def expand(spec: GridSpec, source: str, base: Path = Path(".")) -> list[GridExperiment]:
    """Every experiment of the grid, configs built and checked; dataset paths relative to ``base`` (the grid file's
    folder), or nnU-Net dataset names and ids looked up in ``$nnUNet_raw``."""
    for where, values in (("settings", spec.settings), ("full_reference", _own_settings(spec, "full"))):
        fixed = sorted(set(values) & PER_EXPERIMENT)
        if fixed:
            raise ConfigError(f"{source}: {where}: {', '.join(fixed)} is set by the grid itself (datasets, "
                              "strategies, folds, seeds, sweep)")
    entries = [StrategyEntry(strategy=s) if isinstance(s, str) else s for s in spec.strategies]
    for entry in entries:
        _known(entry.strategy, source)
    _check_sweep(spec, entries, source)
    out: list[GridExperiment] = []
    for dataset in spec.datasets:
        path = str(locate_dataset(dataset, base=base))
        name = Path(dataset).name
        for entry, fold, seed in itertools.product(entries, spec.folds, spec.seeds):
            for options in _variants(entry, spec.sweep):
                out.append(_experiment(spec, source, path, name, entry.strategy, options, fold, seed))
        if spec.full_reference is not False:
            first = _experiment(spec, source, path, name, "full", {}, spec.folds[0], spec.seeds[0]).config
            # the seed draws the pool and test subsets: a reference of one seed would be scored on other test
            # cases than the other seeds' experiments, so each seed gets its own
            seeds = spec.seeds if first.pool_cases is not None or first.test_cases is not None else spec.seeds[:1]
            for fold, seed in itertools.product(spec.folds, seeds):
                out.append(_experiment(spec, source, path, name, "full", {}, fold, seed))
    folders = [e.folder for e in out]
    twice = sorted({f for f in folders if folders.count(f) > 1})
    if twice:
        raise ConfigError(f"{source}: the grid names experiment {twice[0]} twice (a strategy listed twice with the "
                          "same options?)")
    return out


def settings_for(spec: GridSpec, strategy: str) -> dict[str, Any]:
    """The config fields the grid gives every experiment of ``strategy`` (the full reference's own over the rest)."""
    return {**spec.settings, **_own_settings(spec, strategy)}


def _own_settings(spec: GridSpec, strategy: str) -> dict[str, Any]:
    return spec.full_reference if strategy == "full" and isinstance(spec.full_reference, dict) else {}


def _check_sweep(spec: GridSpec, entries: list[StrategyEntry], source: str) -> None:
    for option in spec.sweep:
        if not any(option in get_strategy(e.strategy).defaults for e in entries):
            raise ConfigError(f"{source}: sweep: no strategy of the grid has the option {option!r}")


def _known(strategy: str, source: str) -> bool:
    try:
        get_strategy(strategy)
    except ConfigError as err:
        raise ConfigError(f"{source}: strategies: {err}") from None
    return True


def _variants(entry: StrategyEntry, sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The entry's options, times the sweep's values of the options this strategy declares."""
    declared = get_strategy(entry.strategy).defaults
    swept = {k: v for k, v in sweep.items() if k in declared and k not in entry.options}
    if not swept:
        return [dict(entry.options)]
    keys = sorted(swept)
    return [{**entry.options, **dict(zip(keys, values, strict=True))}
            for values in itertools.product(*(swept[k] for k in keys))]


def _experiment(spec: GridSpec, source: str, dataset: str, name: str, strategy: str, options: dict[str, Any],
                fold: int, seed: int) -> GridExperiment:
    values = {**settings_for(spec, strategy), "dataset": dataset, "strategy": strategy, "strategy_options": options,
              "fold": fold, "seed": seed}
    config = build(values, f"{source} ({name}, {strategy}, fold {fold}, seed {seed})")
    label = variant_label(config.strategy, config.strategy_options)
    config = config.replace(experiment=f"{name}-{label}-f{fold}-s{seed}")
    group = None
    if strategy != "full":
        key = json.dumps([getattr(config, f) for f in ROUND0_FIELDS], default=str)
        group = f"{name}-f{fold}-s{seed}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    return GridExperiment(config, f"{name}/{label}/f{fold}-s{seed}", group)
