"""The active-learning loop. One round, top to bottom: score -> select -> reveal -> train -> evaluate.

Each phase ends by writing its outputs and then the state file, both atomically; a killed run resumes at the
first unfinished phase. Every phase draws its randomness from a seed derived from (seed, round, phase), so a
resumed run ends identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from nnal import __version__
from nnal.backend.scoring import KNOWN_KEYS as SCORE_KEYS
from nnal.backend.session import Backend
from nnal.backend.training import Schedule
from nnal.config import Config, ConfigError, from_mapping, load_yaml, save_yaml
from nnal.dataset import load_dataset, validate
from nnal.pool import SlicePool
from nnal.state import FolderLock, State, atomic_write_bytes, atomic_write_text
from nnal.strategies import get_strategy
from nnal.usim_scoring import usim_inputs

RESULT_COLUMNS = ["experiment", "strategy", "fold", "seed", "round", "n_labeled", "case", "label", "dice"]
# fields that may change when an existing experiment is resumed (they do not change its results)
RESUMABLE_CHANGES = {"rounds", "device", "num_processes"}
# fields that decide round 0 (the initial random set and the first model): equal ones may share it
ROUND0_FIELDS = ("dataset", "fold", "seed", "initial", "preset", "batch_size", "iterations_per_epoch",
                 "epochs_initial", "initial_lr", "augmentation", "dropout_p", "pool_cases", "test_cases")


def phase_seed(seed: int, round_: int, phase: str) -> int:
    return int(np.random.SeedSequence([seed, round_, ["score", "select", "train", "evaluate"].index(phase)])
               .generate_state(1)[0])


def run_experiment(config: Config, output: Path, cache: Path | None = None, share_round0: Path | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """Run (or resume) an experiment in ``output``; return its results table."""
    config = config.resolved()
    strategy = get_strategy(config.strategy)
    if strategy.name == "full":  # the full-label reference: one round on every pool slice, same schedule
        config = dataclasses.replace(config, rounds=0)
    output = Path(output)
    config = _reconcile_config(config, output)
    dataset = load_dataset(config.dataset)
    validate(dataset)  # before anything is written: a bad dataset leaves no trace

    with FolderLock(output):
        save_yaml(config, output / "config.yaml")
        state = State(output / "state.json")
        backend = Backend(dataset, cache or output / "nnunet", config.dropout_p, config.num_processes, config.device)
        _write_environment(output, backend)
        pool, test_cases = _pool_and_test(backend, config, output)
        schedule_first, schedule_next = _schedules(config, backend)
        if share_round0 is not None and not state.done(0, "evaluate"):
            _copy_round0(share_round0, output, config, state)

        weights = None
        for r in range(config.rounds + 1):
            rdir = output / f"round_{r:03d}"
            labeled = _labeled_before(output, r)
            unlabeled = np.setdiff1d(np.arange(len(pool)), labeled)
            if r > 0 and len(unlabeled) == 0:
                break
            weights = weights if weights is not None or r == 0 else _load_weights(output / f"round_{r - 1:03d}")

            # 1. score the unlabeled pool with the previous round's model (only what the strategy reads)
            if r > 0 and not state.done(r, "score"):
                t = time.perf_counter()
                scores = _score(backend, config, strategy, pool, unlabeled, labeled, weights, r, progress)
                buf = io.BytesIO()
                np.savez(buf, **scores)
                atomic_write_bytes(rdir / "scores.npz", buf.getvalue())
                state.finish(r, "score", time.perf_counter() - t)

            # 2. select: the initial random set in round 0, the strategy afterwards; the oracle reveals them
            if not state.done(r, "select"):
                t = time.perf_counter()
                rng = np.random.default_rng(phase_seed(config.seed, r, "select"))
                if r == 0:
                    size = len(pool) if strategy.name == "full" else min(config.initial, len(pool))
                    chosen = rng.choice(len(pool), size=size, replace=False)
                    chosen_scores = np.full(len(chosen), np.nan)
                else:
                    scores = dict(np.load(rdir / "scores.npz"))
                    chosen = strategy(scores, min(config.budget, len(unlabeled)), rng, **config.strategy_options)
                    chosen_scores = _scores_of(scores, strategy.score_key, chosen)
                if np.isin(chosen, labeled).any():
                    raise RuntimeError(f"round {r}: selection contains already labeled slices")
                table = pool.table.iloc[chosen][["id", "case", "slice"]].assign(score=chosen_scores)
                atomic_write_text(rdir / "selection.csv", table.to_csv(index=False))
                state.finish(r, "select", time.perf_counter() - t)

            # 3. train: fine-tune the previous round's weights on every labeled slice
            labeled = _labeled_before(output, r + 1)
            if not state.done(r, "train"):
                t = time.perf_counter()
                weights = _train(backend, config, pool, labeled, weights, schedule_first if r == 0 else schedule_next,
                                 rdir, r, progress)
                buf = io.BytesIO()
                torch.save({"network_weights": weights, "round": r, "n_labeled": len(labeled)}, buf)
                atomic_write_bytes(rdir / "checkpoint.pt", buf.getvalue())
                state.finish(r, "train", time.perf_counter() - t)
            else:
                weights = _load_weights(rdir)

            # 4. evaluate: 3D Dice on the fold's validation cases (the test set, never in the pool)
            if not state.done(r, "evaluate"):
                t = time.perf_counter()
                bar = tqdm(total=len(test_cases), desc=f"round {r} evaluate", disable=not progress, leave=False)
                rows = backend.evaluate(weights, test_cases, config.score_batch_size, on_case=bar.update)
                bar.close()
                metrics = _metric_rows(config, r, len(labeled), rows, backend)
                atomic_write_text(rdir / "metrics.csv", metrics.to_csv(index=False))
                _write_results(output)
                state.finish(r, "evaluate", time.perf_counter() - t)
    return pd.read_csv(output / "results.csv")


def _reconcile_config(config: Config, output: Path) -> Config:
    """A new folder takes the config; an existing one must hold the same experiment (resume)."""
    config = dataclasses.replace(config, dataset=str(Path(config.dataset).resolve()))
    if not config.experiment:
        name = Path(config.dataset).name
        config = dataclasses.replace(config, experiment=f"{name}-{config.strategy}-f{config.fold}-s{config.seed}")
    saved_file = output / "config.yaml"
    if not saved_file.is_file():
        if output.exists() and any(p.name != ".lock" for p in output.iterdir()):
            raise ConfigError(f"{output}: exists, is not empty and holds no nnal experiment (config.yaml)")
        return config
    saved = from_mapping(load_yaml(saved_file), str(saved_file))
    differ = [f for f in saved.to_dict() if getattr(saved, f) != getattr(config, f) and f not in RESUMABLE_CHANGES]
    if differ:
        raise ConfigError(f"{saved_file}: existing experiment differs in {', '.join(differ)}; "
                          "use another --output or the same settings to resume")
    return config


def _write_environment(output: Path, backend: Backend) -> None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    from importlib.metadata import version

    env = {"nnal": __version__, "git_commit": commit or None, "python": platform.python_version(),
           "torch": torch.__version__, "nnunetv2": version("nnunetv2"), "numpy": np.__version__,
           "device": str(backend.device), "device_name": torch.cuda.get_device_name(backend.device)
           if backend.device.type == "cuda" else platform.processor() or "cpu", "argv": sys.argv,
           "nnunet_root": str(backend.root.resolve())}
    atomic_write_text(output / "environment.json", json.dumps(env, indent=1) + "\n")


def _pool_and_test(backend: Backend, config: Config, output: Path) -> tuple[SlicePool, list[str]]:
    """Pool: every slice of the fold's training cases; test: the fold's validation cases. Seeded subsets."""
    split = backend.splits[config.fold]
    train_cases, test_cases = sorted(split["train"]), sorted(split["val"])
    rng = np.random.default_rng([config.seed, 12345])
    if config.pool_cases is not None and config.pool_cases < len(train_cases):
        train_cases = sorted(rng.choice(train_cases, config.pool_cases, replace=False).tolist())
    if config.test_cases is not None and config.test_cases < len(test_cases):
        test_cases = sorted(rng.choice(test_cases, config.test_cases, replace=False).tolist())
    pool_file = output / "pool.csv"
    if pool_file.is_file():
        pool = SlicePool.load(pool_file)
    else:
        pool = SlicePool.from_counts(backend.slice_counts(train_cases))
        atomic_write_text(pool_file, pool.save_csv())
    atomic_write_text(output / "test_cases.txt", "\n".join(test_cases) + "\n")
    return pool, test_cases


def _schedules(config: Config, backend: Backend) -> tuple[Schedule, Schedule]:
    batch = config.batch_size or backend.planned_batch_size
    first = Schedule(config.epochs_initial, config.iterations_per_epoch, batch, config.initial_lr, config.augmentation)
    return first, dataclasses.replace(first, epochs=config.epochs_per_round)


def _copy_round0(source: Path, output: Path, config: Config, state: State) -> None:
    """Reuse another experiment's round 0 when every field that decides it is equal (demos, grids)."""
    other_file = source / "config.yaml"
    if not other_file.is_file() or not State(source / "state.json").done(0, "evaluate"):
        return
    other = from_mapping(load_yaml(other_file), str(other_file))
    if any(getattr(other, f) != getattr(config, f) for f in ROUND0_FIELDS):
        return
    shutil.copytree(source / "round_000", output / "round_000", dirs_exist_ok=True)
    metrics = pd.read_csv(output / "round_000" / "metrics.csv")
    metrics = metrics.assign(experiment=config.experiment, strategy=config.strategy)
    atomic_write_text(output / "round_000" / "metrics.csv", metrics.to_csv(index=False))
    _write_results(output)
    state.data["seconds"]["0"] = State(source / "state.json").data["seconds"].get("0", {})
    state.finish(0, "evaluate", 0.0)


def _labeled_before(output: Path, round_: int) -> np.ndarray:
    """Ids selected in rounds ``0 .. round_-1`` (the labeled set when round ``round_`` starts)."""
    ids = [pd.read_csv(output / f"round_{r:03d}" / "selection.csv")["id"].to_numpy() for r in range(round_)
           if (output / f"round_{r:03d}" / "selection.csv").is_file()]
    return np.sort(np.concatenate(ids)) if ids else np.empty(0, dtype=np.int64)


def _load_weights(rdir: Path) -> dict[str, torch.Tensor]:
    return torch.load(rdir / "checkpoint.pt", map_location="cpu", weights_only=True)["network_weights"]


def _score(backend: Backend, config: Config, strategy, pool: SlicePool, unlabeled: np.ndarray,
           labeled: np.ndarray, weights, r: int, progress: bool) -> dict[str, np.ndarray]:
    needs = strategy.needs_for(**config.strategy_options)
    keys = {k for k in needs if k in SCORE_KEYS}
    ids, cases = pool.ordered_by_case(unlabeled)
    scores: dict[str, np.ndarray] = {"ids": ids}
    if keys:
        bar = tqdm(total=len(ids), desc=f"round {r} score", disable=not progress, leave=False)
        scores.update(backend.score(weights, cases, keys, config.mc_passes, config.score_batch_size,
                                    phase_seed(config.seed, r, "score"), on_batch=bar.update))
        bar.close()
    if "labeled_features" in needs:
        _, lcases = pool.ordered_by_case(labeled)
        scores["labeled_features"] = backend.score(weights, lcases, {"features"}, config.mc_passes,
                                                   config.score_batch_size, 0)["features"]
    if "labeled_class_voxels" in needs:
        scores["labeled_class_voxels"] = pool.class_voxels(labeled)[1:]
    if "grad_embeddings" in needs:
        bar = tqdm(total=len(ids), desc=f"round {r} gradients", disable=not progress, leave=False)
        rng = np.random.default_rng(phase_seed(config.seed, r, "score"))
        scores.update(usim_inputs(backend, weights, strategy.name, ids, cases, scores, scores["labeled_class_voxels"],
                                  config.strategy_options, rng, config.score_batch_size, on_batch=bar.update))
        bar.close()
    return scores


def _scores_of(scores: dict[str, np.ndarray], key: str | None, chosen: np.ndarray) -> np.ndarray:
    if key is None:
        return np.full(len(chosen), np.nan)
    return scores[key][np.searchsorted(scores["ids"], chosen)]


def _train(backend: Backend, config: Config, pool: SlicePool, labeled: np.ndarray, weights, schedule: Schedule,
           rdir: Path, r: int, progress: bool):
    total = schedule.epochs * schedule.iterations_per_epoch
    bar = tqdm(total=total, desc=f"round {r} train", disable=not progress, leave=False)

    def step(loss: float) -> None:
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}")

    try:
        return backend.train(config.fold, pool.by_case(labeled), schedule, weights, rdir / "nnunet",
                             phase_seed(config.seed, r, "train"), on_step=step)
    finally:
        bar.close()


def _metric_rows(config: Config, r: int, n_labeled: int, rows: list[tuple[str, int, float]],
                 backend: Backend) -> pd.DataFrame:
    names = {int(v): k for k, v in backend.dataset_json["labels"].items()}
    frame = pd.DataFrame(rows, columns=["case", "label", "dice"])
    mean = frame.groupby("case", as_index=False)["dice"].mean().assign(label="mean")
    frame = pd.concat([frame.assign(label=frame["label"].map(names)), mean], ignore_index=True)
    frame = frame.assign(experiment=config.experiment, strategy=config.strategy, fold=config.fold,
                         seed=config.seed, round=r, n_labeled=n_labeled)
    return frame[RESULT_COLUMNS]


def _write_results(output: Path) -> None:
    parts = [pd.read_csv(p) for p in sorted(output.glob("round_*/metrics.csv"))]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RESULT_COLUMNS)
    atomic_write_text(output / "results.csv", frame[RESULT_COLUMNS].to_csv(index=False))
