"""Whether a folder may take a run, and what it may reuse: the resume policy (the same experiment or none) and
round-0 sharing between experiments whose round 0 is the same (demos, grids)."""

from __future__ import annotations

import shutil
from typing import Any

import pandas as pd

from nnal.config import RESUMABLE_CHANGES, ROUND0_FIELDS, Config
from nnal.errors import ConfigError
from nnal.experiment import ExperimentFolder
from nnal.strategies import get_strategy


def _setting(config: Config, field: str) -> Any:
    """A field's value as it decides the result: strategy options with their defaults filled in."""
    if field == "strategy_options":
        return get_strategy(config.strategy).resolve(config.strategy_options)
    return getattr(config, field)


def reconcile(folder: ExperimentFolder, config: Config) -> Config:
    """A new folder takes ``config``; an existing one must hold the same experiment (resume)."""
    if not folder.holds_experiment():
        if folder.root.exists() and any(p != folder.lock_file for p in folder.root.iterdir()):
            raise ConfigError(f"{folder.root}: exists, is not empty and holds no nnal experiment (config.yaml)")
        return config
    saved = folder.read_config()
    differ = [f for f in saved.to_dict() if f not in RESUMABLE_CHANGES and _setting(saved, f) != _setting(config, f)]
    if differ:
        raise ConfigError(f"{folder.config_file}: existing experiment differs in {', '.join(differ)}; "
                          "use another --output or the same settings to resume")
    return config


def adopt_round0(folder: ExperimentFolder, source: ExperimentFolder, config: Config) -> bool:
    """Reuse ``source``'s round 0 in ``folder`` when every field that decides it is equal; True if taken."""
    if not source.holds_experiment() or not source.done(0, "evaluate"):
        return False
    other = source.read_config()
    if any(getattr(other, f) != getattr(config, f) for f in ROUND0_FIELDS):
        return False
    if get_strategy(other.strategy).single_round != get_strategy(config.strategy).single_round:  # full: the pool
        return False
    shutil.copytree(source.round_dir(0), folder.round_dir(0), dirs_exist_ok=True)
    metrics = pd.read_csv(folder.metrics_file(0)).assign(experiment=config.experiment, strategy=config.strategy)
    folder.write_metrics(0, metrics)
    folder.write_results()
    folder.state.data["seconds"]["0"] = source.state.data["seconds"].get("0", {})
    digest = source.state.data.get("checkpoint_sha256", {}).get("0")
    if digest is not None:
        folder.state.data.setdefault("checkpoint_sha256", {})["0"] = digest
    folder.finish(0, "evaluate", 0.0)
    return True
