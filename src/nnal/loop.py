"""The active-learning loop. One round, top to bottom: score -> select -> reveal -> train -> evaluate.

The oracle reveals the selected slices' labels (:mod:`nnal.annotation.oracle`): the simulated one at once, a
person in annotation mode, where the run stops after selecting and the next run goes on once the masks are in.

Each phase ends by writing its outputs and then the state file, both atomically, through the experiment folder's
owner (:mod:`nnal.experiment`); a killed run resumes at the first unfinished phase. Every phase draws its
randomness from a seed derived from (seed, round, phase), so a resumed run ends identical to an uninterrupted one.
The model comes from a backend (nnU-Net's, or a test double with the same methods).
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnal import __version__
from nnal.annotation.oracle import Oracle, make_oracle
from nnal.config import Config
from nnal.consistency import check_folder, results_need_rebuild, scores_readable
from nnal.dataset import RawDataset, fingerprint, load_dataset, locate_dataset, validate
from nnal.dataset_checks import read_plans, read_splits
from nnal.errors import ConfigError
from nnal.experiment import PHASES, RESULT_COLUMNS, ExperimentFolder
from nnal.pool import SlicePool
from nnal.preflight import (
    check_device,
    check_disk,
    check_memory,
    check_writable_folder,
    cuda_available,
    is_preprocessed,
)
from nnal.provenance import git_commit
from nnal.ray_session import require_ray
from nnal.run_output import Emit, bar, pass_counter, summary
from nnal.strategies import PoolView, Strategy, get_strategy

# A backend factory may also offer ``splits(dataset, cache)``: the fold split without building the backend, so that
# settings which depend on it are checked before anything is written (else once the backend gives the split).
BackendFactory = Callable[[RawDataset, Path, Config], Any]


def phase_seed(seed: int, round_: int, phase: str) -> int:
    return int(np.random.SeedSequence([seed, round_, PHASES.index(phase)]).generate_state(1)[0])


def nnunet_backend(dataset: RawDataset, cache: Path, config: Config):
    """nnU-Net planned and preprocessed for ``dataset`` in ``cache`` (torch and nnU-Net load only here)."""
    from nnal.backend.session import Backend

    return Backend(dataset, cache, dropout=config.dropout, dropout_p=config.dropout_p,
                   mc_dropout_p=config.mc_dropout_p, num_processes=config.num_processes, device=config.device,
                   plans_file=config.plans)


def run_experiment(config: Config, output: Path, cache: Path | None = None, share_round0: Path | None = None,
                   progress: bool = True, backend_factory: BackendFactory = nnunet_backend,
                   emit: Emit | None = None) -> pd.DataFrame:
    """Run (or resume) an experiment in ``output``; return its results table. ``emit``: where the start-up summary
    and the preparation's lines go (None: nowhere)."""
    config = settled(config)
    strategy = get_strategy(config.strategy)
    folder = ExperimentFolder(output)
    cache = Path(cache or folder.root / "nnunet")
    # every check before anything is written: a mistake leaves no trace and costs no work
    check_writable_folder(folder.root, "output")
    check_writable_folder(cache, "cache")
    config = folder.reconcile(config)
    check_backend(folder, backend_factory)
    check_folder(folder, config.rounds)
    dataset = load_dataset(config.dataset, labels_optional=config.oracle == "human")
    validate(dataset)
    _check_annotation_cache(config, folder, cache)
    check_settings(config, dataset, cache, backend_factory)
    identity = fingerprint(dataset)
    folder.check_dataset(identity)
    check_device(config.device)
    if config.score_shards > 1:
        require_ray(f"score_shards: {config.score_shards}")
    prepared = is_preprocessed(dataset, cache)
    check_disk(dataset, cache, cache_ready=prepared, output=folder.root)
    say = emit or (lambda _line: None)

    with folder.lock():  # first: a folder another process holds is one line, with no summary before it
        config = folder.reconcile(config)  # again under the lock: another process may have started it meanwhile
        for line in summary(config, dataset, _known_split(config, dataset, cache, backend_factory), cache, prepared):
            say(line)
        folder.write_config(config)
        folder.write_fingerprint(identity)
        folder.begin()
        if results_need_rebuild(folder):  # derived from the rounds' metrics
            folder.write_results()
        if not prepared:
            say(f"{config.experiment}: nnU-Net plans and preprocesses {len(dataset.cases)} cases (once per dataset)")
        t = time.perf_counter()
        backend = backend_factory(dataset, cache, config)
        if not prepared:
            say(f"{config.experiment}: prepared in {time.perf_counter() - t:.0f} s")
        folder.write_environment(_environment(backend))
        pool, test_cases = _pool_and_test(backend, config, dataset, folder)
        oracle = make_oracle(config, folder, dataset)
        if share_round0 is not None and not folder.done(0, "evaluate"):
            folder.adopt_round0(ExperimentFolder(share_round0), config)

        weights = None
        for r in range(config.rounds + 1):
            labeled = folder.labeled_before(r)
            unlabeled = np.setdiff1d(np.arange(len(pool)), labeled)
            if r > 0 and len(unlabeled) == 0:
                break
            if weights is None and r > 0:
                weights = backend.load_weights(folder.checkpoint_file(r - 1))

            # 1. score the unlabeled pool with the previous round's model (only what the strategy reads); scores lost
            # before their selection are scored again (the same seed gives the same scores)
            lost = not folder.done(r, "select") and not scores_readable(folder, r)
            if r > 0 and (not folder.done(r, "score") or lost):
                t = time.perf_counter()
                with scoring_model(backend, weights, config, folder.checkpoint_file(r - 1), say) as model:
                    scores = _score(model, config, strategy, pool, unlabeled, labeled, r, progress)
                folder.write_scores(r, scores)
                del scores  # select reads them back, mapped from the file: no second copy (GBs at Liver scale)
                folder.finish(r, "score", time.perf_counter() - t)

            # 2. select: the initial random set in round 0, the strategy afterwards; the oracle reveals them
            if not folder.done(r, "select"):
                t = time.perf_counter()
                chosen, chosen_scores = _select(folder, config, strategy, pool, unlabeled, r, oracle)
                if np.isin(chosen, labeled).any():
                    raise RuntimeError(f"round {r}: selection contains already labeled slices")
                folder.write_selection(r, pool.table.iloc[chosen][["id", "case", "slice"]].assign(score=chosen_scores))
                folder.finish(r, "select", time.perf_counter() - t)

            # the oracle reveals them: at once (simulated), or a person's masks once `nnal ingest` took them; until
            # then the batch is handed out (DIR/annotate/round_NNN) and the run stops here
            if not oracle.revealed(r, pool):
                if not folder.batch_file(r).is_file():
                    oracle.request(r, backend, weights)
                break

            # 3. train: fine-tune the previous round's weights on every labeled slice
            labeled = folder.labeled_before(r + 1)
            if not folder.done(r, "train"):
                pool = oracle.reveal(backend, pool)
                t = time.perf_counter()
                weights = _train(backend, config, pool, labeled, weights, folder, r, progress)
                folder.write_checkpoint(r, backend.checkpoint_bytes(weights, round=r, n_labeled=len(labeled)))
                folder.finish(r, "train", time.perf_counter() - t)
            else:
                weights = backend.load_weights(folder.checkpoint_file(r))

            # 4. evaluate: 3D Dice on the fold's validation cases (the test set, never in the pool)
            if not folder.done(r, "evaluate"):
                t = time.perf_counter()
                evaluated = oracle.test_cases(test_cases)
                with bar(config.experiment, f"round {r} evaluate", len(evaluated), enabled=progress,
                         unit="case") as cases:
                    rows = backend.evaluate(weights, evaluated, config.score_batch_size, on_case=cases.update)
                folder.write_metrics(r, _metric_rows(config, r, len(labeled), rows, backend.dataset_json))
                folder.write_results()
                folder.finish(r, "evaluate", time.perf_counter() - t)
    return folder.read_results() if folder.results_file.is_file() else pd.DataFrame(columns=RESULT_COLUMNS)


def _check_annotation_cache(config: Config, folder: ExperimentFolder, cache: Path) -> None:
    """Annotation mode rewrites nnU-Net's preprocessed labels as masks come in: its cache is the experiment's own."""
    if config.oracle == "human" and cache.resolve() != (folder.root / "nnunet").resolve():
        raise ConfigError(f"cache: annotation mode (oracle: human) keeps nnU-Net's preprocessed data in the "
                          f"experiment folder ({folder.root / 'nnunet'}), as it holds the experiment's own labels; "
                          "leave --cache unset")


def settled(config: Config) -> Config:
    """The config as an experiment folder saves it: schedule filled from the preset, the full-label reference as
    one round (every pool slice, the same schedule), the dataset as an absolute path (an nnU-Net dataset name or id
    looked up in ``$nnUNet_raw``), a default experiment name."""
    config = config.resolved()
    if config.strategy == "full":
        config = config.replace(rounds=0)
    config = config.replace(dataset=str(locate_dataset(config.dataset)),
                            **{k: str(Path(v).resolve()) for k in ("splits", "plans") if (v := getattr(config, k))})
    if config.experiment:
        return config
    return config.replace(experiment=f"{Path(config.dataset).name}-{config.strategy}-f{config.fold}-s{config.seed}")


def check_backend(folder: ExperimentFolder, backend_factory: BackendFactory) -> None:
    """A folder never mixes nnU-Net's results with the fake model's (a dry run): the two are refused in one line."""
    recorded = folder.read_environment().get("backend", "nnunet") if folder.environment_file.is_file() else None
    wanted = "nnunet" if backend_factory is nnunet_backend else "fake"
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
    split = _known_split(config, dataset, cache, backend_factory)
    _check_redundancy(config, dataset, split)
    pool_cases = fold_cases(split, config)[0] if split is not None else None
    duplicate = config.redundancy.case if config.redundancy is not None else None
    copies = config.redundancy.copies if config.redundancy is not None else 0
    on_cpu = config.device == "cpu" or (config.device == "auto" and not cuda_available())
    check_memory(dataset, pool_cases=pool_cases, duplicate=duplicate, copies=copies,
                 mc_passes=config.mc_passes if on_cpu else 1, batch_size=config.score_batch_size or 1)


def _environment(backend) -> dict[str, Any]:
    return {"nnal": __version__, "git_commit": git_commit(), "python": platform.python_version(),
            "numpy": np.__version__, **backend.environment(), "argv": sys.argv}


def nnunet_splits(dataset: RawDataset, cache: Path) -> list[dict[str, list[str]]]:
    """The fold split ``nnunet_backend`` will use, without planning or writing anything."""
    from nnal.backend.splits import fold_splits

    return fold_splits(dataset, cache)


nnunet_backend.splits = nnunet_splits  # type: ignore[attr-defined]


def fold_cases(split: dict[str, list[str]], config: Config) -> tuple[list[str], list[str]]:
    """(pool cases, test cases) of one fold's split: all of them, or the config's seeded subsets."""
    train_cases, test_cases = sorted(split["train"]), sorted(split["val"])
    rng = np.random.default_rng([config.seed, 12345])
    if config.pool_cases is not None and config.pool_cases < len(train_cases):
        train_cases = sorted(rng.choice(train_cases, config.pool_cases, replace=False).tolist())
    if config.test_cases is not None and config.test_cases < len(test_cases):
        test_cases = sorted(rng.choice(test_cases, config.test_cases, replace=False).tolist())
    return train_cases, test_cases


def _known_split(config: Config, dataset: RawDataset, cache: Path,
                 backend_factory: BackendFactory) -> dict[str, list[str]] | None:
    """The fold's split before the backend is built: the user's split file, else the factory's split where it can
    tell it (None: the backend gives it)."""
    user = _user_split(config, dataset)
    if user is not None:
        return user
    splits = getattr(backend_factory, "splits", None)
    return splits(dataset, cache)[config.fold] if splits is not None else None


def _user_split(config: Config, dataset: RawDataset) -> dict[str, list[str]] | None:
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
        _check_pool_case(config, split, fold_cases(split, config)[0])


def _check_pool_case(config: Config, split: dict[str, list[str]], pool_cases: list[str]) -> None:
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


def _pool_and_test(backend, config: Config, dataset: RawDataset,
                   folder: ExperimentFolder) -> tuple[SlicePool, list[str]]:
    """Pool: every slice of the fold's training cases (a duplicated case ``copies`` more times); test: the fold's
    validation cases (of the user's split file, or the backend's split). Seeded subsets."""
    split = _user_split(config, dataset) or backend.splits[config.fold]
    train_cases, test_cases = fold_cases(split, config)
    _check_pool_case(config, split, train_cases)  # for factories that cannot tell the split beforehand
    folder.check_split(train_cases, test_cases)
    if folder.has_pool():
        pool = folder.read_pool()
    elif config.redundancy is None:
        pool = SlicePool.from_counts(backend.slice_counts(train_cases))
    else:
        pool = SlicePool.from_counts(backend.slice_counts(train_cases), duplicate=config.redundancy.case,
                                     copies=config.redundancy.copies)
    folder.write_split(pool, test_cases)
    return pool, test_cases


def pool_view(config: Config, pool: SlicePool, unlabeled: np.ndarray, labeled: np.ndarray, r: int,
              on_batch=None) -> PoolView:
    """What round ``r``'s scoring phase sees of the pool (the loop's, and ``nnal bench scoring``'s)."""
    ids, cases = pool.ordered_by_case(unlabeled)
    _, labeled_cases = pool.ordered_by_case(labeled)
    foreground = [f"vox_{k}" for k in range(1, pool.num_classes)]
    return PoolView(ids=ids, cases=cases, labeled_cases=labeled_cases,
                    labeled_class_voxels=pool.class_voxels(labeled)[1:], mc_passes=config.mc_passes,
                    batch_size=config.score_batch_size, seed=phase_seed(config.seed, r, "score"),
                    budget=min(config.budget_for(r), len(ids)), on_batch=on_batch,
                    class_voxels=pool.table[foreground].to_numpy()[ids], round=r, rounds=config.rounds)


def _score(model, config: Config, strategy: Strategy, pool: SlicePool, unlabeled: np.ndarray, labeled: np.ndarray,
           r: int, progress: bool) -> dict[str, np.ndarray]:
    what = f"round {r} score"
    with bar(config.experiment, what, len(unlabeled), enabled=progress, unit="slice") as slices:
        counter = pass_counter(slices, len(unlabeled), f"{config.experiment} {what}")
        view = pool_view(config, pool, unlabeled, labeled, r, counter)
        return strategy.score(model, view, config.strategy_options)


@contextmanager
def scoring_model(backend, weights, config: Config, checkpoint: Path, say: Emit) -> Iterator[Any]:
    """The round's model for its scoring phase: in this process, or ``config.score_shards`` shards on Ray, scoring
    the same numbers (:mod:`nnal.backend.shards`; torch loads there only)."""
    if config.score_shards == 1:
        yield backend.model(weights)
        return
    from nnal.backend.shards import ShardedModel

    with ShardedModel(backend, weights, checkpoint, config.score_shards, say=say) as model:
        yield model


def _select(folder: ExperimentFolder, config: Config, strategy: Strategy, pool: SlicePool, unlabeled: np.ndarray,
            r: int, oracle: Oracle) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(phase_seed(config.seed, r, "select"))
    initial = oracle.initial_selection(pool) if r == 0 else None
    if initial is not None:  # annotation mode: the labels already present are round 0's labeled set
        return initial, np.full(len(initial), np.nan)
    if r == 0:
        if strategy.name == "full":  # every slice once: a duplicated case's copies hold no label of their own
            originals = pool.original_ids()
            return originals[rng.choice(len(originals), size=len(originals), replace=False)], np.full(
                len(originals), np.nan)
        # the initial set among the original slices only, by the same draw as without duplicates: the redundancy
        # scenario starts from the labeled slices (and model) of the run without it (the paper: "after round 0")
        originals = pool.original_ids()
        chosen = originals[rng.choice(len(originals), size=min(config.initial, len(originals)), replace=False)]
        return chosen, np.full(len(chosen), np.nan)
    scores = folder.read_scores(r)
    chosen = strategy(scores, min(config.budget_for(r), len(unlabeled)), rng, config.strategy_options)
    if strategy.score_key is None:
        return chosen, np.full(len(chosen), np.nan)
    return chosen, scores[strategy.score_key][np.searchsorted(scores["ids"], chosen)]


def _train(backend, config: Config, pool: SlicePool, labeled: np.ndarray, weights, folder: ExperimentFolder,
           r: int, progress: bool):
    if config.strategy == "full":  # the reference's own schedule (the paper's code: nnU-Net's stock 1000 epochs)
        epochs = config.full_epochs
    else:
        epochs = config.epochs_initial if r == 0 else config.epochs_per_round
    with bar(config.experiment, f"round {r} train", epochs * config.iterations_per_epoch, enabled=progress) as steps:
        def step(loss: float) -> None:
            steps.update()
            steps.set_postfix(loss=f"{loss:.3f}")

        return backend.train(config.fold, pool.by_case(labeled), config, epochs, weights, folder.training_log_dir(r),
                             phase_seed(config.seed, r, "train"), on_step=step)


def _metric_rows(config: Config, r: int, n_labeled: int, rows: list[tuple[str, int, float]],
                 dataset_json: dict) -> pd.DataFrame:
    names = {int(v): k for k, v in dataset_json["labels"].items()}
    frame = pd.DataFrame(rows, columns=["case", "label", "dice"])
    mean = frame.groupby("case", as_index=False)["dice"].mean().assign(label="mean")
    frame = pd.concat([frame.assign(label=frame["label"].map(names)), mean], ignore_index=True)
    frame = frame.assign(experiment=config.experiment, strategy=config.strategy, fold=config.fold,
                         seed=config.seed, round=r, n_labeled=n_labeled)
    return frame[RESULT_COLUMNS]
