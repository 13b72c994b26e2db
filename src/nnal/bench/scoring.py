"""``nnal bench scoring``: what the query step costs against its floor, on one round of a real experiment.

The round's unlabeled pool, model (the previous round's checkpoint) and settings come from the experiment folder,
so the numbers are those of that round's scoring phase. Measured, each once after a warm-up batch:

- a plain forward pass (dropout off) over the pool: the unit of the floor;
- T MC-dropout passes stacked in as few forwards as ``MC_ROWS`` allows, against T passes one forward each;
- gradient embeddings (the strategy's parameter group, a 10k-entry subset) per slice;
- the strategy's whole scoring phase (model scores plus its prepare step), against the floor of (T + 3) plain
  forward passes: T for the MC passes, one for the dropout-free pass, two for a backward.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from nnal.errors import ConfigError
from nnal.experiment import ExperimentFolder
from nnal.provenance import environment_record
from nnal.strategies import get_strategy, variant_label

EMBEDDING_ENTRIES = 10_000


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_scoring(experiment: Path, *, round_: int = 1, device: str = "cpu", mc_passes: int | None = None
                  ) -> dict[str, Any]:
    """Time round ``round_``'s query step of the experiment in ``experiment`` (which must have trained round
    ``round_ - 1``) on ``device``; returns a JSON-ready dict."""
    from nnal.backend.factories import nnunet_backend
    from nnal.backend.runtime import check_device
    from nnal.dataset import load_dataset
    from nnal.loop import pool_view

    check_device(device)
    folder = ExperimentFolder(experiment)
    if not folder.holds_experiment():
        raise ConfigError(f"{experiment}: not an nnal experiment folder (no config.yaml)")
    if round_ < 1 or not folder.checkpoint_file(round_ - 1).is_file():
        raise ConfigError(f"{experiment}: no checkpoint of round {round_ - 1} to score round {round_} with")
    config = folder.read_config().resolved()
    config = config.replace(device=device, **({"mc_passes": mc_passes} if mc_passes else {}))
    pool = folder.read_pool()
    labeled = folder.labeled_before(round_)
    unlabeled = np.setdiff1d(np.arange(len(pool)), labeled)
    view = pool_view(config, pool, unlabeled, labeled, round_)
    backend = nnunet_backend(load_dataset(config.dataset), Path(folder.read_environment()["nnunet_root"]).parent,
                             config)
    model = backend.model(backend.load_weights(folder.checkpoint_file(round_ - 1)))
    strategy = get_strategy(config.strategy)
    n, t, batch = len(view.ids), config.mc_passes, config.score_batch_size
    warm = view.cases[:1]
    model.scores(warm, {"entropy", "bald"}, mc_passes=t, batch_size=batch, seed=0)  # warm-up: allocations, caches

    plain = _seconds(lambda: model.scores(view.cases, {"entropy"}, mc_passes=t, batch_size=batch, seed=0))
    model.mc_rows = t * batch  # the T passes of a batch in one forward
    stacked = _seconds(lambda: model.scores(view.cases, {"bald"}, mc_passes=t, batch_size=batch, seed=0))
    model.mc_rows = 1  # one pass per forward: the T single passes
    single = _seconds(lambda: model.scores(view.cases, {"bald"}, mc_passes=t, batch_size=batch, seed=0))
    model.mc_rows = None  # the default the scoring phase runs with
    group = "network"
    total = model.parameter_count(group)
    index = np.sort(np.random.default_rng(0).choice(total, min(EMBEDDING_ENTRIES, total), replace=False))
    embeddings = _seconds(lambda: model.gradient_embeddings(view.cases, group=group, index=index, batch_size=batch))
    phase = _seconds(lambda: strategy.score(model, view, config.strategy_options))
    floor = (t + 3) * plain
    return dict(
        benchmark="scoring", experiment=str(experiment),
        variant=variant_label(config.strategy, config.strategy_options), round=round_,
        device=backend.environment()["device_name"], pool_slices=n, mc_passes=t, score_batch_size=batch,
        plain_forward_s=round(plain, 3), plain_slices_per_s=round(n / plain, 1), mc_stacked_s=round(stacked, 3),
        mc_stacked_slice_passes_per_s=round(n * t / stacked, 1), mc_single_s=round(single, 3),
        mc_single_slice_passes_per_s=round(n * t / single, 1), embedding_group=group,
        embedding_entries=int(len(index)), embedding_s=round(embeddings, 3),
        embedding_slices_per_s=round(n / embeddings, 1), scoring_phase_s=round(phase, 3), floor_s=round(floor, 3),
        phase_over_floor=round(phase / floor, 2),
        recorded_phase_s=folder.state.data.get("seconds", {}).get(str(round_), {}).get("score"),
        config=config.to_dict(),
        environment=environment_record(**backend.environment()))


def format_scoring(result: dict[str, Any]) -> str:
    r = result
    lines = [
        f"{r['variant']}, round {r['round']} of {r['experiment']} on {r['device']}: {r['pool_slices']} pool slices, "
        f"T = {r['mc_passes']}, batch {r['score_batch_size']}",
        f"  plain forward           {r['plain_forward_s']:8.2f} s   {r['plain_slices_per_s']:9.1f} slices/s",
        f"  MC, T passes stacked    {r['mc_stacked_s']:8.2f} s   {r['mc_stacked_slice_passes_per_s']:9.1f} "
        "slice-passes/s",
        f"  MC, T single passes     {r['mc_single_s']:8.2f} s   {r['mc_single_slice_passes_per_s']:9.1f} "
        "slice-passes/s",
        f"  gradient embeddings     {r['embedding_s']:8.2f} s   {r['embedding_slices_per_s']:9.1f} slices/s "
        f"({r['embedding_entries']} entries of the {r['embedding_group']})",
        f"  scoring phase           {r['scoring_phase_s']:8.2f} s   = {r['phase_over_floor']:.2f} x the floor of "
        f"(T + 3) plain passes ({r['floor_s']:.2f} s)",
    ]
    if r.get("recorded_phase_s") is not None:
        lines.append(f"  (the experiment recorded {r['recorded_phase_s']:.2f} s for this phase)")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, default=str)
