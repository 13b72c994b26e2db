"""Which experiments a report may pool and compare: those of one *protocol* on one dataset.

Repetitions (folds, seeds) of a variant are averaged, and variants compared round by round, only when every config
field that changes what a curve means agrees: the rounds, the initial set, the budget per round, the redundancy
scenario, the training schedule, the pool and test subsets. Experiments on one dataset with different protocols go
to different *sections* of the report, each labelled with the fields that tell it apart (``Toy [budget=50]``), and
nothing is pooled or compared across sections. See ``docs/report.md``, "Protocols".
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nnal.analysis.load import FULL, Experiment, dataset_names
from nnal.config import Config, upgrade_saved
from nnal.errors import ReportError
from nnal.strategies import REGISTRY

# Config fields that are NOT part of the protocol; every other field is, one this nnal does not know included.
# A repetition's own identity (experiment, fold, seed), where and how fast it ran (device, num_processes,
# score_batch_size, score_shards), and what the report already groups by: the dataset (by folder name and
# fingerprint, never by its absolute path), the strategy and its options (the variant).
NOT_PROTOCOL = frozenset({"experiment", "fold", "seed", "device", "num_processes", "score_batch_size", "dataset",
                          "strategy", "strategy_options", "score_shards"})
# Protocol fields a full-label reference does not use: it trains once on every pool slice and scores nothing.
AL_ONLY = frozenset({"rounds", "initial", "budget", "epochs_per_round", "mc_passes", "mc_dropout_p"})
# and the one an AL experiment does not use: the reference's own schedule
FULL_ONLY = frozenset({"full_epochs"})
# Fields on which a full-label reference must agree with the AL experiments it is drawn with: what the pool and the
# test set are. Its training schedule may differ by design (its ``full_epochs``, a grid's ``full_reference``).
REFERENCE_MATCH = ("pool_cases", "test_cases", "redundancy")

_DEFAULTS = {name: f.default for name, f in Config.model_fields.items() if not f.is_required()}


@dataclass
class Section:
    """Experiments of one dataset and one protocol: what one part of the report pools and compares."""

    name: str  # the dataset's label, plus the protocol fields that tell it from the dataset's other sections
    dataset: str
    tag: str  # "budget=50,rounds=3"; "" when the dataset has one protocol
    experiments: list[Experiment]


def protocol(exp: Experiment) -> dict[str, Any]:
    """The experiment's protocol fields with their values (a field its config lacks at its default; a full-label
    reference without the fields it does not use). ``rounds`` is the last round its results hold."""
    settings = {**_DEFAULTS, **upgrade_saved(dict(exp.config))}
    if exp.strategy in REGISTRY and settings.get("mc_dropout_p") == REGISTRY[exp.strategy].mc_dropout_p:
        settings["mc_dropout_p"] = None  # the strategy's own p (BALD's 0.01, the others' 0.1): one protocol
    fields = {k: v for k, v in settings.items() if k not in NOT_PROTOCOL}
    if exp.strategy == FULL:
        return {k: v for k, v in fields.items() if k not in AL_ONLY}
    return {**{k: v for k, v in fields.items() if k not in FULL_ONLY}, "rounds": int(exp.results["round"].max())}


def _comparable(field: str, value: Any) -> str:
    """A value as text that is equal exactly for equal settings: a budget of 100, [100] and [100, 100] is one."""
    if field == "budget" and isinstance(value, int | list):
        steps = list(value) if isinstance(value, list) else [value]
        while len(steps) > 1 and steps[-1] == steps[-2]:  # the last entry repeats for later rounds
            steps.pop()
        value = steps
    return json.dumps(value, sort_keys=True, default=str)


def differing(a: dict[str, Any], b: dict[str, Any], fields: Sequence[str] | None = None) -> list[str]:
    """The fields (all those of either, or ``fields``) whose values differ; None against a value differs."""
    names = sorted(set(a) | set(b)) if fields is None else list(fields)
    return [f for f in names if _comparable(f, a.get(f)) != _comparable(f, b.get(f))]


def shown(value: Any) -> str:
    """A setting as a label writes it: 50, [100,50], none, {"case":"case_002","copies":2}."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sections(experiments: Sequence[Experiment]) -> list[Section]:
    """The experiments split by dataset (:func:`dataset_names`), then by protocol; datasets in name order."""
    names = dataset_names(experiments)
    out: list[Section] = []
    for dataset in sorted(set(names.values())):
        groups = _protocol_groups([e for e in experiments if names[e.name] == dataset])
        keys = [protocol(g[0]) for g in groups]
        told_apart = [f for f in sorted({f for k in keys for f in k})
                      if len({_comparable(f, k[f]) for k in keys if f in k}) > 1]
        tags = [",".join(f"{f}={shown(key[f])}" for f in told_apart if f in key) for key in keys]
        for tag, group in sorted(zip(tags, groups, strict=True), key=lambda pair: _natural(pair[0])):
            out.append(Section(f"{dataset} [{tag}]" if tag else dataset, dataset, tag, group))
    return out


def _natural(text: str) -> list[tuple[int, int | str]]:
    """A sort key that orders numbers by value: budget=2 before budget=10."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


def _protocol_groups(members: list[Experiment]) -> list[list[Experiment]]:
    """AL experiments grouped by protocol; each full-label reference joins every group whose pool and test set
    (:data:`REFERENCE_MATCH`) it shares, or else a group of references of its own."""
    groups: list[list[Experiment]] = []
    for exp in (e for e in members if e.strategy != FULL):
        home = next((g for g in groups if not differing(protocol(g[0]), protocol(exp))), None)
        if home is None:
            groups.append([exp])
        else:
            home.append(exp)
    own: list[list[Experiment]] = []
    for ref in (e for e in members if e.strategy == FULL):
        homes = [g for g in groups if _same_pool(g[0], ref)] or [g for g in own if _same_pool(g[0], ref)][:1]
        if not homes:
            own.append([ref])
        for group in homes:
            group.append(ref)
    for group in groups + own:
        _check_references(group)
    return groups + own


def _same_pool(exp: Experiment, ref: Experiment) -> bool:
    return not differing(protocol(exp), protocol(ref), REFERENCE_MATCH)


def _check_references(group: list[Experiment]) -> None:
    """Full-label references drawn in one section are its one reference line: they must be repetitions of one
    protocol, or the line would average two schedules."""
    refs = [e for e in group if e.strategy == FULL]
    for ref in refs[1:]:
        fields = differing(protocol(refs[0]), protocol(ref))
        if fields:
            a, b = protocol(refs[0]).get(fields[0]), protocol(ref).get(fields[0])
            raise ReportError(f"{refs[0].path} and {ref.path}: full-label references drawn in one section (one "
                              f"dataset, pool and test set) differ in {fields[0]} ({shown(a)} vs {shown(b)}); their "
                              "mean would mix two protocols, so report them separately")


def slug(name: str) -> str:
    """A section name as a file-name suffix: letters and digits, the rest "-"."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "dataset"
