"""The active-learning loop. One round, top to bottom: score -> select -> reveal -> train -> evaluate.

The oracle reveals the selected slices' labels (:mod:`nnal.oracle`): the simulated one at once, a
person in annotation mode, where the run stops after selecting and the next run goes on once the masks are in.

Each phase ends by writing its outputs and then the state file, both atomically, through the experiment folder's
owner (:mod:`nnal.experiment`); a killed run resumes at the first unfinished phase. Every phase draws its
randomness from a seed derived from (seed, round, phase), so a resumed run ends identical to an uninterrupted one.
The model comes from a backend (nnU-Net's, or a test double with the same methods).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnal.backend.factories import nnunet_backend, sharded_model
from nnal.config import Config
from nnal.consistency import results_need_rebuild, scores_readable
from nnal.dataset import RawDataset
from nnal.experiment import RESULT_COLUMNS, ExperimentFolder
from nnal.oracle import Oracle, OracleFactory, simulated_oracle
from nnal.pool import SlicePool
from nnal.provenance import environment_record
from nnal.resume import adopt_round0, reconcile
from nnal.run_checks import CheckedRun, check_pool_case, check_run, fold_cases, known_split, user_split
from nnal.run_output import Emit, bar, pass_counter, summary
from nnal.seams import BackendFactory, SegmentationBackend
from nnal.state import PHASES
from nnal.strategies import PoolView, Strategy, get_strategy


def phase_seed(seed: int, round_: int, phase: str) -> int:
    return int(np.random.SeedSequence([seed, round_, PHASES.index(phase)]).generate_state(1)[0])


def run_experiment(config: Config, output: Path, cache: Path | None = None, share_round0: Path | None = None,
                   progress: bool = True, backend_factory: BackendFactory = nnunet_backend,
                   emit: Emit | None = None, oracle_factory: OracleFactory = simulated_oracle) -> pd.DataFrame:
    """Run (or resume) an experiment in ``output``; return its results table. ``emit``: where the start-up summary
    and the preparation's lines go (None: nowhere). ``oracle_factory``: who labels (the simulated oracle unless
    annotation mode hands in its own)."""
    checked = check_run(config, output, cache, backend_factory, oracle_factory)  # before anything is written
    folder = checked.folder
    say = emit or (lambda _line: None)
    with folder.lock():  # first: a folder another process holds is one line, with no summary before it
        run, pool = _open(checked, backend_factory, oracle_factory, share_round0, progress, say)
        weights = None
        for r in range(run.config.rounds + 1):
            labeled = folder.labeled_before(r)
            unlabeled = np.setdiff1d(np.arange(len(pool)), labeled)
            if r > 0 and len(unlabeled) == 0:
                break
            if weights is None and r > 0:
                weights = run.backend.load_weights(folder.checkpoint_file(r - 1))
            pool, weights, labels_given = _round(run, r, pool, labeled, unlabeled, weights)
            if not labels_given:  # the batch waits for a person's masks (DIR/annotate/round_NNN): stop here
                break
    return folder.read_results() if folder.results_file.is_file() else pd.DataFrame(columns=RESULT_COLUMNS)


@dataclass(frozen=True)
class _Run:
    """What every round of one run uses."""

    config: Config
    strategy: Strategy
    folder: ExperimentFolder
    backend: SegmentationBackend
    oracle: Oracle
    test_cases: list[str]
    progress: bool
    say: Emit


def _open(checked: CheckedRun, backend_factory: BackendFactory, oracle_factory: OracleFactory,
          share_round0: Path | None, progress: bool, say: Emit) -> tuple[_Run, SlicePool]:
    """Under the folder's lock: the config and the dataset's identity recorded, nnU-Net prepared (once per
    dataset), the pool and test cases fixed, a shared round 0 adopted."""
    folder, dataset = checked.folder, checked.dataset
    config = reconcile(folder, checked.config)  # again under the lock: another process may have started it meanwhile
    split = known_split(config, dataset, checked.cache, backend_factory)
    for line in summary(config, dataset, split, checked.cache, checked.prepared):
        say(line)
    folder.write_config(config)
    folder.write_fingerprint(checked.identity)
    folder.begin()
    if results_need_rebuild(folder):  # derived from the rounds' metrics
        folder.write_results()
    if not checked.prepared:
        say(f"{config.experiment}: nnU-Net plans and preprocesses {len(dataset.cases)} cases (once per dataset)")
    t = time.perf_counter()
    backend = backend_factory(dataset, checked.cache, config)
    if not checked.prepared:
        say(f"{config.experiment}: prepared in {time.perf_counter() - t:.0f} s")
    folder.write_environment(environment_record(**backend.environment(), argv=sys.argv))
    pool, test_cases = _pool_and_test(backend, config, dataset, folder)
    if share_round0 is not None and not folder.done(0, "evaluate"):
        adopt_round0(folder, ExperimentFolder(share_round0), config)
    run = _Run(config, get_strategy(config.strategy), folder, backend, oracle_factory(config, folder, dataset),
               test_cases, progress, say)
    return run, pool


@contextmanager
def _phase(folder: ExperimentFolder, r: int, phase: str) -> Iterator[None]:
    """Time a phase and record it as finished, only if its body finishes."""
    t = time.perf_counter()
    yield
    folder.finish(r, phase, time.perf_counter() - t)


def _round(run: _Run, r: int, pool: SlicePool, labeled: np.ndarray, unlabeled: np.ndarray,
           weights: Any) -> tuple[SlicePool, Any, bool]:
    """Round ``r``'s phases that have not finished yet; (pool, weights, whether the round's labels were given)."""
    config, folder, backend, oracle = run.config, run.folder, run.backend, run.oracle
    # 1. score the unlabeled pool with the previous round's model (only what the strategy reads); scores lost
    # before their selection are scored again (the same seed gives the same scores)
    lost = not folder.done(r, "select") and not scores_readable(folder, r)
    if r > 0 and (not folder.done(r, "score") or lost):
        with _phase(folder, r, "score"):
            with scoring_model(backend, weights, config, folder.checkpoint_file(r - 1), run.say) as model:
                scores = _score(model, config, run.strategy, pool, unlabeled, labeled, r, run.progress)
            folder.write_scores(r, scores)
            del scores  # select reads them back, mapped from the file: no second copy (GBs at Liver scale)

    # 2. select: the initial random set in round 0, the strategy afterwards
    if not folder.done(r, "select"):
        with _phase(folder, r, "select"):
            chosen, chosen_scores = _select(folder, config, run.strategy, pool, unlabeled, r, oracle)
            if np.isin(chosen, labeled).any():
                raise RuntimeError(f"round {r}: selection contains already labeled slices")
            folder.write_selection(r, pool.table.iloc[chosen][["id", "case", "slice"]].assign(score=chosen_scores))

    # the oracle reveals them: at once (simulated), or a person's masks once `nnal ingest` took them; until then the
    # batch is handed out (DIR/annotate/round_NNN) and the run stops here
    if not oracle.revealed(r, pool):
        if not folder.batch_file(r).is_file():
            oracle.request(r, backend, weights)
        return pool, weights, False

    # 3. train: fine-tune the previous round's weights on every labeled slice
    labeled = folder.labeled_before(r + 1)
    if not folder.done(r, "train"):
        pool = oracle.reveal(backend, pool)
        with _phase(folder, r, "train"):
            weights = _train(backend, config, pool, labeled, weights, folder, r, run.progress)
            folder.write_checkpoint(r, backend.checkpoint_bytes(weights, round=r, n_labeled=len(labeled)))
    else:
        weights = backend.load_weights(folder.checkpoint_file(r))

    # 4. evaluate: 3D Dice on the fold's validation cases (the test set, never in the pool)
    if not folder.done(r, "evaluate"):
        with _phase(folder, r, "evaluate"):
            evaluated = oracle.test_cases(run.test_cases)
            with bar(config.experiment, f"round {r} evaluate", len(evaluated), enabled=run.progress,
                     unit="case") as cases:
                rows = backend.evaluate(weights, evaluated, config.score_batch_size, on_case=cases.update)
            folder.write_metrics(r, _metric_rows(config, r, len(labeled), rows, backend.dataset_json))
            folder.write_results()
    return pool, weights, True


def _pool_and_test(backend, config: Config, dataset: RawDataset,
                   folder: ExperimentFolder) -> tuple[SlicePool, list[str]]:
    """Pool: every slice of the fold's training cases (a duplicated case ``copies`` more times); test: the fold's
    validation cases (of the user's split file, or the backend's split). Seeded subsets."""
    split = user_split(config, dataset) or backend.splits[config.fold]
    train_cases, test_cases = fold_cases(split, config)
    check_pool_case(config, split, train_cases)  # for factories that cannot tell the split beforehand
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
    with sharded_model(backend, weights, checkpoint, config.score_shards, say) as model:
        yield model


def _select(folder: ExperimentFolder, config: Config, strategy: Strategy, pool: SlicePool, unlabeled: np.ndarray,
            r: int, oracle: Oracle) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(phase_seed(config.seed, r, "select"))
    initial = oracle.initial_selection(pool) if r == 0 else None
    if initial is not None:  # annotation mode: the labels already present are round 0's labeled set
        return initial, np.full(len(initial), np.nan)
    if r == 0:
        if strategy.single_round:  # every slice once: a duplicated case's copies hold no label of their own
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
