"""Experiment configuration: one validated, frozen record, built from presets, a YAML file and CLI flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# A schedule preset fixes how long nnU-Net trains; everything else keeps the paper's defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # minutes on 2 CPU cores: small batch, short rounds, a longer first round, no augmentation and a higher
    # learning rate so that nnU-Net leaves its all-background start within ~150 iterations (docs/deviations.md)
    "cpu": dict(batch_size=16, iterations_per_epoch=25, epochs_initial=10, epochs_per_round=2,
                initial_lr=3e-2, augmentation=False, score_batch_size=128),
    # a round in well under a minute on an H100 (augmentation workers are the bottleneck)
    "gpu-short": dict(batch_size=None, iterations_per_epoch=50, epochs_initial=10, epochs_per_round=4,
                      initial_lr=1e-2, augmentation=True, score_batch_size=1024),
    # the paper: 300 epochs x 250 iterations per round, nnU-Net's planned batch size
    "paper": dict(batch_size=None, iterations_per_epoch=250, epochs_initial=300, epochs_per_round=300,
                  initial_lr=1e-2, augmentation=True, score_batch_size=1024),
}


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""


@dataclass(frozen=True)
class Config:
    """Everything that decides an experiment's result. Saved as ``config.yaml`` in the experiment folder."""

    dataset: str
    strategy: str = "random"
    experiment: str = ""
    fold: int = 0
    seed: int = 0
    rounds: int = 5
    initial: int = 100
    budget: int = 100
    preset: str = "cpu"
    device: str = "auto"
    # training schedule (None: from the preset; batch_size None: nnU-Net's planned batch size)
    batch_size: int | None = None
    iterations_per_epoch: int | None = None
    epochs_initial: int | None = None
    epochs_per_round: int | None = None
    initial_lr: float | None = None
    augmentation: bool | None = None  # None: from the preset; False uses nnU-Net's nnUNetTrainerNoDA
    # model and scoring
    dropout_p: float = 0.1
    mc_passes: int = 10
    score_batch_size: int | None = None
    # pool and test subsets (None: all cases of the fold), for demos and tests
    pool_cases: int | None = None
    test_cases: int | None = None
    # nnU-Net worker processes for preprocessing and augmentation (0: augmentation in-process, deterministic)
    num_processes: int = 0
    strategy_options: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> Config:
        """Fill schedule fields left at None from the preset."""
        if self.preset not in PRESETS:
            raise ConfigError(f"preset: unknown {self.preset!r}; known: {', '.join(PRESETS)}")
        fill = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill).validated()

    def validated(self) -> Config:
        checks = [
            ("fold", self.fold in range(5), "must be 0..4"),
            ("rounds", self.rounds >= 0, "must be >= 0"),
            ("initial", self.initial >= 1, "must be >= 1"),
            ("budget", self.budget >= 1, "must be >= 1"),
            ("device", self.device in ("auto", "cpu", "cuda"), "must be auto, cpu or cuda"),
            ("dropout_p", 0.0 <= self.dropout_p < 1.0, "must be in [0, 1)"),
            ("mc_passes", self.mc_passes >= 2, "must be >= 2"),
            ("num_processes", self.num_processes >= 0, "must be >= 0"),
        ]
        for key in ("batch_size", "iterations_per_epoch", "epochs_initial", "epochs_per_round",
                    "score_batch_size", "pool_cases", "test_cases"):
            value = getattr(self, key)
            checks.append((key, value is None or (isinstance(value, int) and value >= 1), "must be a positive integer"))
        checks.append(("initial_lr", self.initial_lr is None or self.initial_lr > 0, "must be > 0"))
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"{key}: {why}, got {getattr(self, key)!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(Config)}


def from_mapping(values: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from a mapping, rejecting unknown keys."""
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    if "dataset" not in values:
        raise ConfigError(f"{source}: 'dataset' is required")
    try:
        return Config(**values).validated()
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config ({type(err).__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config must be a mapping")
    return data


def save_yaml(config: Config, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
