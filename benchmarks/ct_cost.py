"""The cost of CT-sized slices: seconds per 512 x 512 slice for a plain pass, T MC-dropout passes and per-sample
gradient embeddings, and per training sample, on this machine's device; from them, the query step and a round's
training for Spleen and Liver at the paper's settings.

A synthetic Spleen-like set (``nnal synth``, labelled synthetic) is planned and preprocessed by nnU-Net (its own 2d
plan: CT normalisation, its patch size); the network is nnU-Net's planned one with nnal's dropout, at its initial
weights (the cost does not depend on the weights). Each figure is the median of ``--repeats`` timed calls after a
warm-up. Training is timed at ``--train-batch`` samples per iteration, not at the plan's batch: nnU-Net plans 12
slices of 512 x 512 for a GPU, whose float32 activations alone exceed this machine's 24 GB (the first attempt was
killed by the kernel at 24 GB); seconds per iteration at the plan's batch are projected as seconds per sample times
the batch, which holds where a batch's cost is its samples' compute (CPU; on a GPU, time the plan's batch directly
with ``--train-batch 0``). Writes a JSON with the device, the plan (patch, batch, parameters), the measurements,
the projection and the git commit.

    python benchmarks/ct_cost.py --device cpu --json results/ct-cost-cpu.json
    python benchmarks/ct_cost.py --device cuda --json $OUT/ct-cost-gpu.json      (on a GPU machine)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from nnal.bench.process import read_peak_rss_mb
from nnal.provenance import git_commit

# the paper's pools and schedule (Sec. 4; Liver: 104,133 slices in the paper's pool; Spleen: 41 volumes of about 90
# slices, 4 folds' training cases), a round: 300 epochs x 250 iterations
POOLS = {"spleen": 2_650, "liver": 104_133}
PAPER_ITERATIONS = 300 * 250
MC_PASSES = 10
EMBEDDING_DIM = 10_000


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def peak_rss_gb() -> float:
    return read_peak_rss_mb() / 1024  # the process's peak so far (VmHWM, never reset here)


def measure(dataset: Path, cache: Path, device: str, slices: int, repeats: int, train_batch: int) -> dict:
    import numpy as np

    from nnal.backend.factories import nnunet_backend
    from nnal.config import Config
    from nnal.dataset import load_dataset

    config = Config(dataset=str(dataset), device=device, preset="cpu" if device == "cpu" else "gpu-short").resolved()
    backend = nnunet_backend(load_dataset(dataset), cache, config)
    case = sorted(backend.splits[0]["train"])[0]
    counts = backend.slice_counts([case])[case]
    chosen = np.arange(min(slices, len(counts)))
    cases = [(case, chosen)]
    model = backend.model(None)
    batch = min(len(chosen), config.score_batch_size)
    index = np.arange(min(EMBEDDING_DIM, model.parameter_count("network")))
    out: dict = {"slices": len(chosen), "score_batch": batch, "peak_rss_gb_after": {}}
    out["plain_s_per_slice"] = timed(lambda: model.scores(cases, {"entropy"}, mc_passes=2, batch_size=batch,
                                                          seed=0), repeats) / len(chosen)
    out["peak_rss_gb_after"]["plain"] = peak_rss_gb()
    out["mc_s_per_slice"] = timed(lambda: model.scores(cases, {"bald"}, mc_passes=MC_PASSES, batch_size=batch,
                                                       seed=0), repeats) / len(chosen)
    out["peak_rss_gb_after"]["mc"] = peak_rss_gb()
    out["gradients_s_per_slice"] = timed(lambda: model.gradient_embeddings(cases, group="network", index=index,
                                                                          batch_size=batch), repeats) / len(chosen)
    out["peak_rss_gb_after"]["gradients"] = peak_rss_gb()
    plan = backend.plans["configurations"]["2d"]
    timed_batch = train_batch or plan["batch_size"]
    out["train_batch"] = timed_batch
    out["train_s_per_sample"] = train_seconds(backend, config, case, chosen, timed_batch) / timed_batch
    out["train_s_per_iteration"] = out["train_s_per_sample"] * plan["batch_size"]  # at the plan's batch
    out["peak_rss_gb_after"]["train"] = peak_rss_gb()
    out["plan"] = {"patch_size": plan["patch_size"], "batch_size": plan["batch_size"],
                   "normalization": plan["normalization_schemes"], "parameters": model.parameter_count("network")}
    out["environment"] = backend.environment()
    return out


def train_seconds(backend, config, case: str, chosen, batch: int, iterations: int = 5) -> float:
    """Seconds per iteration of nnU-Net's trainer at ``batch`` slices per iteration, after one warm-up iteration."""
    import numpy as np

    log = Path(tempfile.mkdtemp(prefix="ct-cost-train-"))
    stamps: list[float] = []
    labeled = {case: np.asarray(chosen)}
    batched = config.replace(batch_size=batch, iterations_per_epoch=iterations + 1, augmentation=False)
    backend.train(0, labeled, batched, 1, None, log, 0, on_step=lambda _loss: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def projection(m: dict) -> dict:
    """Seconds of one query step (USIMF-like: T MC passes, one plain pass, gradient embeddings of every slice; the
    code's 30,000-slice prefilter bounds the embeddings on Liver) and of one round's training at the paper's 300 x 250
    iterations."""
    out = {}
    for name, pool in POOLS.items():
        embedded = min(pool, 30_000)
        query = pool * (m["mc_s_per_slice"] + m["plain_s_per_slice"]) + embedded * m["gradients_s_per_slice"]
        out[name] = {"pool_slices": pool, "query_step_s": round(query, 1),
                     "round_training_s": round(PAPER_ITERATIONS * m["train_s_per_iteration"], 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=8, help="slices timed per call")
    parser.add_argument("--train-batch", type=int, default=2,
                        help="slices per timed training iteration; 0: the plan's batch (a GPU's memory)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from nnal.synth import synthesize

    work = args.work or Path(tempfile.mkdtemp(prefix="ct-cost-"))
    dataset = work / "Dataset902_SyntheticSpleen"
    if not dataset.is_dir():
        synthesize(kind="spleen", output=dataset, cases=args.cases, size=args.size, slices=(20, 30), seed=0)
    start = time.perf_counter()
    measured = measure(dataset, work / "cache", args.device, args.slices, args.repeats, args.train_batch)
    result = {"benchmark": "ct_cost", "synthetic": True, "data": f"nnal synth --kind spleen --cases {args.cases} "
              f"--size {args.size} (synthetic CT, not patient data)", "device": measured["environment"]["device_name"],
              "measured": measured, "projection_paper_settings": projection(measured),
              "mc_passes": MC_PASSES, "embedding_dim": EMBEDDING_DIM,
              "wall_seconds": round(time.perf_counter() - start, 1),
              "git_commit": git_commit(), "python": platform.python_version(), "machine": platform.machine()}
    print(json.dumps({k: result[k] for k in ("device", "projection_paper_settings")}, indent=1))
    print(json.dumps({k: v for k, v in measured.items() if k.endswith(("slice", "sample", "iteration"))}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
