"""Everything a grid checks before it writes anything: the datasets, each experiment's settings against its dataset,
and what the output folder already holds (the same backend, the same settings, folders that agree with their state).

A grid rerun with changed settings is refused, not run: its finished experiments would otherwise be skipped as
"done" while grid.yaml and grid.json claimed the new settings for them.
"""

from __future__ import annotations

import json
from pathlib import Path

from nnal.config import build
from nnal.consistency import check_folder
from nnal.dataset import RawDataset, load_dataset, validate
from nnal.errors import ConfigError, NnalError
from nnal.experiment import ExperimentFolder
from nnal.grid.run import GridRun, backend_factory, round0_config
from nnal.grid.spec import GridExperiment
from nnal.resume import reconcile
from nnal.run_checks import check_backend, check_settings, settled


def check_datasets(experiments: list[GridExperiment]) -> dict[str, RawDataset]:
    """Every dataset of the grid read and checked before any work (DatasetError names the file)."""
    datasets = {}
    for path in sorted({e.config.dataset for e in experiments}):
        datasets[path] = load_dataset(path)
        validate(datasets[path])
    return datasets


def check_settings_of(experiments: list[GridExperiment], datasets: dict[str, RawDataset], run: GridRun,
                      source: str) -> None:
    """Each experiment's settings against its dataset and split (the redundancy case, sizes against memory)."""
    factory = backend_factory(run.backend)
    for exp in experiments:
        try:
            check_settings(exp.config, datasets[exp.config.dataset], run.cache, factory)
        except NnalError as err:
            raise type(err)(f"{source} ({exp.folder}): {err}") from None


def check_output(experiments: list[GridExperiment], run: GridRun, source: str) -> None:
    """What the output folder holds must be what this grid would write: results of the same backend (never a
    dry run's fake ones beside real ones), experiments and round-0 folders with the same settings, and folders
    that agree with their own state."""
    recorded = _recorded_backend(run.output)
    if recorded is not None and recorded != run.backend:
        made = "a dry run (nnal's fake model)" if recorded == "fake" else "a real run (nnU-Net)"
        raise ConfigError(f"{run.output}: holds the results of {made}; a grid never mixes the two, use another "
                          "--output")
    factory = backend_factory(run.backend)
    folders = [(run.output / e.folder, e.config) for e in experiments]
    groups = {e.round0_group: e for e in experiments if e.round0_group is not None}
    folders += [(run.round0_folder(g), build(round0_config(e.config.to_dict(), g), source)) for g, e in groups.items()]
    for path, config in folders:
        folder = ExperimentFolder(path)
        if not path.exists():
            continue
        try:
            config = reconcile(folder, settled(config))
            check_backend(folder, factory)
            check_folder(folder, config.rounds)
        except NnalError as err:
            raise type(err)(f"{source}: {_changed_hint(err, run.output)}") from None


def _changed_hint(err: NnalError, output: Path) -> str:
    text = str(err)
    if "existing experiment differs" in text:
        return (f"{text.split(';')[0]}; the grid's output folder holds this experiment with other settings (rerun "
                f"with the grid file it was made with, {output / 'grid.yaml'}, or give another --output)")
    return text


def _recorded_backend(output: Path) -> str | None:
    status = output / "grid.json"
    if not status.is_file():
        return None
    try:
        return json.loads(status.read_text()).get("backend", "nnunet")
    except (OSError, ValueError):
        return None
