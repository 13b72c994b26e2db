"""Every check of a run before anything is written: a mistake leaves no trace and costs no work. The settings
are settled once here (:func:`settled`), checked against the folder, the dataset, its fold split and the machine."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from nnal.backend.factories import check_device, cuda_available
from nnal.config import Config
from nnal.consistency import check_folder
from nnal.dataset import RawDataset, fingerprint, load_dataset, locate_dataset, validate
from nnal.dataset_checks import read_plans, read_splits
from nnal.errors import ConfigError
from nnal.experiment import ExperimentFolder
from nnal.oracle import OracleFactory
from nnal.preflight import check_disk, check_memory, check_writable_folder, is_preprocessed
from nnal.ray_session import require_ray
from nnal.resume import reconcile
from nnal.seams import BackendFactory


class CheckedRun(NamedTuple):
    """What the checks settled: the run's config, its folder and cache, the dataset and its fingerprint, and
    whether nnU-Net's preprocessed data is in the cache already."""

    config: Config
    folder: ExperimentFolder
    cache: Path
    dataset: RawDataset
    identity: dict
    prepared: bool


def check_run(config: Config, output: Path, cache: Path | None, backend_factory: BackendFactory,
              oracle_factory: OracleFactory) -> CheckedRun:
    """Every check of ``run_experiment`` that needs no lock, in order, before anything is written."""
    config = settled(config)
    folder = ExperimentFolder(output)
    cache = Path(cache or folder.cache_dir)
    check_writable_folder(folder.root, "output")
    check_writable_folder(cache, "cache")
    config = reconcile(folder, config)
    check_backend(folder, backend_factory)
    check_folder(folder, config.rounds)
    dataset = load_dataset(config.dataset, labels_optional=config.oracle == "human")
    validate(dataset)
    oracle_factory(config, folder, dataset)  # refuses an oracle it cannot serve; writes nothing
    _check_annotation_cache(config, folder, cache)
    check_settings(config, dataset, cache, backend_factory)
    identity = fingerprint(dataset)
    folder.check_dataset(identity)
    check_device(config.device)
    if config.score_shards > 1:
        require_ray(f"score_shards: {config.score_shards}")
    prepared = is_preprocessed(dataset, cache)
    check_disk(dataset, cache, cache_ready=prepared, output=folder.root)
    return CheckedRun(config, folder, cache, dataset, identity, prepared)


def _check_annotation_cache(config: Config, folder: ExperimentFolder, cache: Path) -> None:
    """Annotation mode rewrites nnU-Net's preprocessed labels as masks come in: its cache is the experiment's own."""
    if config.oracle == "human" and cache.resolve() != folder.cache_dir.resolve():
        raise ConfigError(f"cache: annotation mode (oracle: human) keeps nnU-Net's preprocessed data in the "
                          f"experiment folder ({folder.cache_dir}), as it holds the experiment's own labels; "
                          "leave --cache unset")


def settled(config: Config) -> Config:
    """The config as an experiment folder saves it: schedule filled from the preset, the full-label reference as
    one round (every pool slice, the same schedule), the dataset as an absolute path (an nnU-Net dataset name or id
    looked up in ``$nnUNet_raw``), a default experiment name."""
    dataset = locate_dataset(config.dataset)
    settle = {**config.preset_values(), "rounds": config.last_round, "dataset": str(dataset),
              **{k: str(Path(v).resolve()) for k in ("splits", "plans") if (v := getattr(config, k))}}
    if not config.experiment:
        settle["experiment"] = f"{dataset.name}-{config.strategy}-f{config.fold}-s{config.seed}"
    # validated once, where it came in (config.build): these values are nnal's own, so no second validation
    return config.model_copy(update=settle)


def check_backend(folder: ExperimentFolder, backend_factory: BackendFactory) -> None:
    """A folder never mixes nnU-Net's results with the fake model's (a dry run): the two are refused in one line."""
    recorded = folder.read_environment().get("backend", "nnunet") if folder.environment_file.is_file() else None
    wanted = backend_factory.name
    if recorded is not None and recorded != wanted:
        made = "nnal's fake model (a dry run)" if recorded == "fake" else "nnU-Net"
        raise ConfigError(f"{folder.root}: holds results of {made}; a run on "
                          f"{'nnU-Net' if wanted == 'nnunet' else 'the fake model'} never mixes with them, use "
                          "another output folder")


def check_settings(config: Config, dataset: RawDataset, cache: Path, backend_factory: BackendFactory) -> None:
    """The settings checked against the dataset (and its fold split, where the backend factory can tell it
    beforehand), before anything is written: the redundancy case, and sizes that would not fit in memory."""
    if config.plans is not None:
        read_plans(Path(config.plans))
    split = known_split(config, dataset, cache, backend_factory)
    _check_redundancy(config, dataset, split)
    pool_cases = fold_cases(split, config)[0] if split is not None else None
    duplicate = config.redundancy.case if config.redundancy is not None else None
    copies = config.redundancy.copies if config.redundancy is not None else 0
    on_cpu = config.device == "cpu"
    if config.device == "auto":
        on_cpu = not cuda_available()
    check_memory(dataset, pool_cases=pool_cases, duplicate=duplicate, copies=copies,
                 mc_passes=config.mc_passes if on_cpu else 1, batch_size=config.score_batch_size or 1)


def fold_cases(split: dict[str, list[str]], config: Config) -> tuple[list[str], list[str]]:
    """(pool cases, test cases) of one fold's split: all of them, or the config's seeded subsets."""
    train_cases, test_cases = sorted(split["train"]), sorted(split["val"])
    rng = np.random.default_rng([config.seed, 12345])
    if config.pool_cases is not None and config.pool_cases < len(train_cases):
        train_cases = sorted(rng.choice(train_cases, config.pool_cases, replace=False).tolist())
    if config.test_cases is not None and config.test_cases < len(test_cases):
        test_cases = sorted(rng.choice(test_cases, config.test_cases, replace=False).tolist())
    return train_cases, test_cases


def known_split(config: Config, dataset: RawDataset, cache: Path,
                 backend_factory: BackendFactory) -> dict[str, list[str]] | None:
    """The fold's split before the backend is built: the user's split file, else the factory's split where it can
    tell it (None: the backend gives it)."""
    user = user_split(config, dataset)
    if user is not None:
        return user
    splits = backend_factory.splits(dataset, cache)
    return splits[config.fold] if splits is not None else None


def user_split(config: Config, dataset: RawDataset) -> dict[str, list[str]] | None:
    if config.splits is None:
        return None
    splits = read_splits(Path(config.splits), [c.name for c in dataset.cases])
    if config.fold >= len(splits):
        raise ConfigError(f"fold: {config.fold}, but the split file {config.splits} has {len(splits)} fold(s)")
    return splits[config.fold]


def _check_redundancy(config: Config, dataset: RawDataset, split: dict[str, list[str]] | None) -> None:
    """The duplicated case must be a case of the dataset, and of the pool when the split is known."""
    if config.redundancy is None:
        return
    case = config.redundancy.case
    if case not in {c.name for c in dataset.cases}:
        raise ConfigError(f"redundancy.case: the dataset {dataset.name} has no case {case!r}; name one of fold "
                          f"{config.fold}'s training cases")
    if split is not None:
        check_pool_case(config, split, fold_cases(split, config)[0])


def check_pool_case(config: Config, split: dict[str, list[str]], pool_cases: list[str]) -> None:
    if config.redundancy is None or config.redundancy.case in pool_cases:
        return
    case, fold = config.redundancy.case, config.fold
    if case in split["val"]:
        raise ConfigError(f"redundancy.case: {case} is a test case of fold {fold} (its validation split), never in "
                          "the pool; name one of the fold's training cases")
    if case not in split["train"]:
        raise ConfigError(f"redundancy.case: {case} is in none of fold {fold}'s training cases; name one of them")
    # a pool subset that left the case out is refused, not redrawn: the pool stays the one the same seed gives
    # without redundancy (plus the copies), so the two scenarios start from the same round 0
    shown = ", ".join(pool_cases[:10]) + (", .." if len(pool_cases) > 10 else "")
    raise ConfigError(f"redundancy.case: {case} is not among the {len(pool_cases)} pool cases drawn for seed "
                      f"{config.seed} (pool_cases: {config.pool_cases}): {shown}; name one of them, or change "
                      "pool_cases or seed")
