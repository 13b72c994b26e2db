"""Experiment configuration: one typed, validated, frozen record, built from presets, a YAML file and CLI flags.

Every field has a type and a range, checked by pydantic (strict: ``fold: 1.0`` and ``seed: abc`` are refused, not
coerced) when the record is built, before anything is written. The strategy and its options are checked against
the strategy's declaration (:mod:`nnal.strategies`). Every problem is a :class:`ConfigError` of one line that
names the source and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nnal.errors import ConfigError
from nnal.strategies import REGISTRY, get_strategy

# A schedule preset fixes how long nnU-Net trains; everything else keeps the paper's defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # minutes on 2 CPU cores: small batch, short rounds, a longer first round, no augmentation and a higher
    # learning rate so that nnU-Net leaves its all-background start within ~150 iterations (docs/deviations.md)
    # the full-label reference: 1,200 iterations from scratch, twice what passed its doubling check on the CPU
    # protocol (docs/grids.md, results/cpu-full-reference-convergence.json)
    "cpu": dict(batch_size=16, iterations_per_epoch=25, epochs_initial=10, epochs_per_round=2,
                initial_lr=3e-2, augmentation=False, score_batch_size=128, full_epochs=48),
    # a round in well under a minute on an H100 (augmentation workers are the bottleneck)
    "gpu-short": dict(batch_size=None, iterations_per_epoch=50, epochs_initial=10, epochs_per_round=4,
                      initial_lr=1e-2, augmentation=True, score_batch_size=1024, full_epochs=40),
    # the paper: 300 epochs x 250 iterations per round, nnU-Net's planned batch size; the full-label reference as
    # the paper's code trained it, nnU-Net's stock 1000 epochs from scratch
    "paper": dict(batch_size=None, iterations_per_epoch=250, epochs_initial=300, epochs_per_round=300,
                  initial_lr=1e-2, augmentation=True, score_batch_size=1024, full_epochs=1000),
}

# fields that may change when an existing experiment is resumed (they do not change its results)
RESUMABLE_CHANGES = frozenset({"rounds", "device", "num_processes", "score_shards"})
# fields that decide round 0 (the initial random set and the first model): equal ones may share it
# (redundancy: the pool's duplicates shift every id, so pools that differ never share round 0)
ROUND0_FIELDS = ("dataset", "fold", "seed", "initial", "preset", "batch_size", "iterations_per_epoch",
                 "epochs_initial", "initial_lr", "augmentation", "dropout", "dropout_p", "pool_cases", "test_cases",
                 "redundancy", "oracle", "splits", "plans")

PositiveInt = Annotated[int, Field(ge=1)]
OptionalPositiveInt = PositiveInt | None


class Redundancy(BaseModel):
    """The paper's Appendix E: every slice of one training case added ``copies`` more times to the pool."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    case: Annotated[str, Field(min_length=1)]
    copies: PositiveInt


class Config(BaseModel):
    """Everything that decides an experiment's result. Saved as ``config.yaml`` in the experiment folder."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, validate_default=True)

    dataset: Annotated[str, Field(min_length=1)]
    strategy: str = "random"
    experiment: str = ""
    fold: Annotated[int, Field(ge=0, le=4)] = 0
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    rounds: Annotated[int, Field(ge=0)] = 5
    initial: PositiveInt = 100
    budget: PositiveInt | Annotated[list[PositiveInt], Field(min_length=1)] = 100  # per round: a list (rounds 1..)
    preset: Literal["cpu", "gpu-short", "paper"] = "cpu"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # training schedule (None: from the preset; batch_size None: nnU-Net's planned batch size)
    batch_size: OptionalPositiveInt = None
    iterations_per_epoch: OptionalPositiveInt = None
    epochs_initial: OptionalPositiveInt = None
    epochs_per_round: OptionalPositiveInt = None
    full_epochs: OptionalPositiveInt = None  # the full-label reference's own schedule (strategy full), from scratch
    # fine-tuning: reinit the segmentation heads as nnU-Net's pretrained-weights loader does (the paper's code), or
    # keep the previous round's (nnal's earlier choice); docs/fidelity.md
    finetune_heads: Literal["reinit", "keep"] = "reinit"
    initial_lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    augmentation: bool | None = None  # None: from the preset; False uses nnU-Net's nnUNetTrainerNoDA
    # model and scoring. Dropout as the paper's code ran it (docs/fidelity.md): element-wise nn.Dropout after every
    # convolution, p = 0.01 while training; the same modules raised to p = 0.1 for the MC-dropout passes
    dropout: Literal["element", "channel"] = "element"  # channel: nn.Dropout2d (whole feature maps)
    dropout_p: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.01
    # None: the strategy's own (the paper's code: 0.01 for BALD, its own enable-dropout call; 0.1 for the others)
    mc_dropout_p: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    mc_passes: Annotated[int, Field(ge=2)] = 10
    score_batch_size: OptionalPositiveInt = None
    # the scoring phase in this many Ray tasks, each whole batches of the single pass (nnal.backend.shards): how the
    # scores are computed, never what they are (bit-identical on the CPU), so a resumed experiment may change it
    score_shards: PositiveInt = 1
    # pool and test subsets (None: all cases of the fold), for demos and tests
    pool_cases: OptionalPositiveInt = None
    test_cases: OptionalPositiveInt = None
    # Appendix E's redundancy scenario (None: none): a pool case duplicated, checked against the fold's split
    redundancy: Redundancy | None = None
    # nnU-Net worker processes for preprocessing and augmentation (0: augmentation in-process, deterministic)
    num_processes: Annotated[int, Field(ge=0)] = 0
    # nnU-Net's own files, from the user (None: nnal makes them): a splits_final.json whose fold decides the pool
    # and the test cases, and an nnUNetPlans.json used instead of nnU-Net's planner
    splits: Annotated[str, Field(min_length=1)] | None = None
    plans: Annotated[str, Field(min_length=1)] | None = None
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    # who reveals the selected slices' labels: "simulated" (the dataset's ground truth, the paper's benchmark) or
    # "human" (annotation mode: the loop stops after each selection until `nnal ingest` brings a person's masks)
    oracle: Literal["simulated", "human"] = "simulated"

    @property
    def last_round(self) -> int:
        """The round the experiment ends with: ``rounds``, or 0 for a strategy that labels the pool at once."""
        return 0 if self.strategy in REGISTRY and REGISTRY[self.strategy].single_round else self.rounds

    @model_validator(mode="after")
    def _human_oracle(self) -> Config:
        if self.oracle == "human" and self.strategy == "full":
            raise ValueError("oracle: human annotation of every pool slice (strategy full) is not active learning; "
                             "choose a selection strategy")
        if self.oracle == "human" and self.redundancy is not None:
            raise ValueError("redundancy: the duplicated-case scenario is a simulation; use oracle: simulated")
        reads_labels = self.strategy in REGISTRY and REGISTRY[self.strategy].reads_ground_truth  # unknown: below
        if self.oracle == "human" and reads_labels:
            raise ValueError(f"strategy: {self.strategy} reads the labels of unlabeled slices, which a person has not "
                             "drawn yet; it is a simulation baseline: use oracle: simulated, or another strategy")
        return self

    @model_validator(mode="after")
    def _budget_per_round(self) -> Config:
        if isinstance(self.budget, list) and 0 < self.rounds < len(self.budget):
            raise ValueError(f"budget: {len(self.budget)} per-round budgets for {self.rounds} rounds; give at most "
                             "one per round (the last one repeats for later rounds)")
        return self

    def budget_for(self, round_: int) -> int:
        """Slices selected in round ``round_`` >= 1: the budget, or its per-round entry (the last one repeats)."""
        if isinstance(self.budget, int):
            return self.budget
        return self.budget[min(round_, len(self.budget)) - 1]

    @model_validator(mode="after")
    def _strategy_and_options(self) -> Config:
        strategy = get_strategy(self.strategy)  # ConfigError naming the known strategies
        checked = strategy.check_options(self.strategy_options)  # ConfigError naming the option
        object.__setattr__(self, "strategy_options", checked)
        return self

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes``, validated again."""
        return build({**self.to_dict(), **changes}, "config")

    def preset_values(self) -> dict[str, Any]:
        """The schedule fields left at None, from the preset, and the MC-dropout p from the strategy."""
        fill = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) is None}
        if self.mc_dropout_p is None:
            fill["mc_dropout_p"] = get_strategy(self.strategy).mc_dropout_p
        return fill

    def resolved(self) -> Config:
        """Fill schedule fields left at None from the preset, the MC-dropout p from the strategy. Not validated
        again: the values come from nnal's presets and strategy declarations, checked by their own tests."""
        fill = self.preset_values()
        return self.model_copy(update=fill) if fill else self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELDS = frozenset(Config.model_fields)


def build(values: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from a mapping; any problem is one ConfigError line naming ``source`` and the field."""
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(Config.model_fields)}")
    if "dataset" not in values:
        raise ConfigError(f"{source}: 'dataset' is required")
    try:
        return Config(**values)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_error(err)}") from None
    except ConfigError as err:  # raised by the strategy check inside validation
        raise ConfigError(f"{source}: {err}") from None


def describe_error(err: ValidationError) -> str:
    """The first problem of a pydantic error as ``field: what is wrong, got VALUE``."""
    errors = err.errors(include_url=False)
    # a value given to a union (``budget``: a number or a list) fails in every branch: report the branch that got
    # furthest (deepest location), and one that is not only "wrong type" when there is a choice
    first = min(errors, key=lambda e: (-len(e["loc"]), e["type"].endswith("_type")))
    message = first["msg"]
    if message.startswith("Value error, "):  # raised by a validator: already names its field
        return message[len("Value error, "):]
    field = ".".join(str(part) for part in first["loc"] if isinstance(part, int) or part.isidentifier())
    return f"{field}: {message}, got {first['input']!r}"


def upgrade_saved(values: dict[str, Any]) -> dict[str, Any]:
    """A ``config.yaml`` saved by an older nnal, read as what that run did. Saved configs name every field, so a
    missing one marks them: without ``dropout``, ``Dropout2d`` with one p for training and scoring; without
    ``full_epochs``, a full-label reference trained for ``epochs_initial`` (others: the preset's, unused); without
    ``finetune_heads``, fine-tuning that kept the heads, and BADGE(LL) on the log-likelihood."""
    if "dropout" not in values and "dropout_p" in values:
        values = {**values, "dropout": "channel", "mc_dropout_p": values["dropout_p"]}
    if "finetune_heads" not in values and "epochs_initial" in values:  # saved before fine-tuning followed the code
        values = {**values, "finetune_heads": "keep"}
        if values.get("strategy") == "badge":  # and before BADGE(LL) took nnU-Net's loss
            values["strategy_options"] = {"loss": "log-likelihood", **(values.get("strategy_options") or {})}
    if "full_epochs" not in values and "epochs_initial" in values:
        preset = PRESETS.get(values.get("preset", "cpu"), PRESETS["cpu"])
        full = values["epochs_initial"] if values.get("strategy") == "full" else preset["full_epochs"]
        values = {**values, "full_epochs": full}
    return values


def read_run_file(path: Path) -> dict[str, Any]:
    """An experiment's config file: its fields, paths in it (dataset, splits, plans) relative to the file. A grid
    file given here is named as one (it would otherwise fail on every key)."""
    from nnal.dataset import locate_dataset

    values = load_yaml(path)
    if "strategies" in values or "datasets" in values:
        raise ConfigError(f"{path}: a grid file (it has 'strategies'/'datasets'), not an experiment's config; run it "
                          f"with 'nnal grid {path}'")
    if isinstance(values.get("dataset"), str):
        values["dataset"] = str(locate_dataset(values["dataset"], base=Path(path).parent))
    for key in ("splits", "plans"):
        if isinstance(values.get(key), str):
            values[key] = str((Path(path).parent / values[key]).resolve())
    return values


def from_sources(flags: Mapping[str, Any], *, run_file: Path | None = None,
                 saved: Mapping[str, Any] | None = None) -> Config:
    """A run's config from its sources, merged once: the run file (else an experiment's saved settings, when it
    resumes), then the command line's flags (None: not given) over them; errors name the source."""
    values = read_run_file(run_file) if run_file is not None else dict(saved or {})
    given = {k: v for k, v in flags.items() if v is not None}
    values.update(given)
    source = " and ".join(s for s in (run_file and str(run_file), "command line" if given else "") if s)
    return build(values, source or "command line")


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config ({type(err).__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config must be a mapping of field names to values")
    return data
