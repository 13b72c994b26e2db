"""Every strategy's query step at the paper's Liver scale: peak resident memory, seconds and bytes on disk.

    python benchmarks/liver_query_step.py [--strategies coreset usimc ..] [--slices 104133]
        [--pixel-batches 1 4] [--work DIR] [--cap-gib 16] [--json results/liver-scale-query-step.json]

The query step is the loop's, in its order (``nnal.loop``: ``_score`` -> ``ExperimentFolder.write_scores`` ->
``_select``): ``Strategy.score`` (the model's pass over the unlabeled pool and the strategy's prepare step), the
scores written to the round's ``scores.npz``, read back, and ``Strategy.__call__`` (checks, then the strategy's
select), the selection written to ``selection.csv``. Only the model is a stand-in:
``LiverShapedModel`` (below) gives the output shapes of a Liver-sized 2d nnU-Net (per-slice scalars,
(N, 2) per-class scores, Core-Set features (N, 10,000), BADGE's last-conv gradients (N, 9,248), USIM's gradient
embeddings (N, 10,000), a Fisher diagonal over the whole network's 46.3 M parameters) as seeded noise, batch by
batch, without the per-pixel work. Round 1 of a pool of 104,133 slices over 105 cases, 100 of them labeled
(round 0's initial set), budget 100, T = 10, batches of 128 slices (the cpu preset's).

Each strategy runs in a fresh process (its peak never mixes with another's), its address space capped at
``--cap-gib`` so that a step that would not fit fails with MemoryError instead of waking the OOM killer on a shared
machine. Peaks are the kernel's VmHWM, reset before each phase (it counts the pages of memory-mapped files that the
step touches), in GB of 1e9 bytes; seconds are wall time on a machine that may be busy (the load average is
recorded). ``--keep-scores`` holds the scoring phase's arrays through the selection, as the loop did before.

The real scoring's per-pixel work is measured apart (``--pixel-batches``): one batch of 512 x 512 slices through a
Liver-sized PlainConvUNet with random weights, a dropout-free and T MC-dropout forwards and their reductions
(``nnal.backend.scoring``), in a fresh process: what the process holds before (torch, the network) and what one
scoring batch adds, which ``score_batch_size`` multiplies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nnal.backend.names import LOSSES, PARAMETER_GROUPS
from nnal.strategies.base import CaseSlices

REPO = Path(__file__).resolve().parents[1]
POOL_SLICES = 104_133  # the paper's Liver pool
CASES = 105  # fold 0's training cases of MSD Task03_Liver's 131
LABELED = 100  # round 0's initial random slices
SETTINGS = dict(budget=100, mc_passes=10, score_batch_size=128, seed=0)
# (label, strategy, options): every strategy with its defaults, USIMF also without its 30,000-slice prefilter
STRATEGIES: list[tuple[str, str, dict[str, Any]]] = [
    ("random", "random", {}), ("random-fg", "random-fg", {}), ("entropy", "entropy", {}),
    ("meanstd", "meanstd", {}), ("bald", "bald", {}), ("coreset", "coreset", {}), ("badge", "badge", {}),
    ("stochastic-batches", "stochastic-batches", {}), ("usimc", "usimc", {}), ("usimf", "usimf", {}),
    ("usimf[prefilter=null]", "usimf", {"prefilter": None}), ("clasp-pe", "clasp-pe", {}),
]


def liver_pool(slices: int = POOL_SLICES, cases: int = CASES, seed: int = 0):
    """A SlicePool of ``slices`` slices over ``cases`` CT volumes of uneven depth, voxels per class (background,
    liver, tumour): the liver in a band of 40% of each volume's slices, a tumour in part of it."""
    from nnal.pool import SlicePool

    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.2, 1.8, cases)
    depth = np.maximum(1, np.floor(depth / depth.sum() * slices)).astype(np.int64)
    depth[: slices - depth.sum()] += 1  # the rounding's remainder, one slice each
    counts = {}
    for k, n in enumerate(depth):
        z = np.arange(n)
        liver = np.abs(z - n / 2) < 0.2 * n
        vox = np.zeros((n, 3), dtype=np.int64)
        vox[:, 1] = liver * rng.integers(2_000, 40_000, n)
        vox[:, 2] = liver * (rng.random(n) < 0.3) * rng.integers(50, 5_000, n)
        vox[:, 0] = 512 * 512 - vox[:, 1] - vox[:, 2]
        counts[f"liver_{k:03d}"] = vox
    return SlicePool.from_counts(counts)


def query_config(strategy: str, options: dict[str, Any], **settings: Any):
    from nnal.config import Config

    return Config(dataset="Task03_Liver-shaped", strategy=strategy, rounds=5, initial=LABELED,
                  strategy_options=options, **{**SETTINGS, **settings})


Phase = Callable[[str], Any]


@contextmanager
def _untimed(_name: str) -> Iterator[None]:
    yield


def query_step(folder_root: Path, pool, config, model, phase: Phase = _untimed, round_: int = 1,
               keep_scores: bool = False) -> np.ndarray:
    """Round ``round_``'s query step as the loop runs it; ``phase(name)`` is a context manager around each part.
    ``keep_scores``: hold the scoring phase's arrays through the selection, as the loop did before it let them go.
    Returns the selected ids."""
    from nnal.experiment import ExperimentFolder
    from nnal.loop import phase_seed, pool_view
    from nnal.strategies import get_strategy

    folder = ExperimentFolder(folder_root)
    strategy = get_strategy(config.strategy)
    labeled = np.sort(np.random.default_rng(config.seed).choice(len(pool), LABELED, replace=False))
    unlabeled = np.setdiff1d(np.arange(len(pool)), labeled)
    with phase("score"):
        view = pool_view(config, pool, unlabeled, labeled, round_)
        kept = strategy.score(model, view, config.strategy_options)
        folder.write_scores(round_, kept)
    if not keep_scores:
        del kept
    with phase("read"):
        scores = folder.read_scores(round_)
    with phase("select"):
        rng = np.random.default_rng(phase_seed(config.seed, round_, "select"))
        chosen = strategy(scores, min(config.budget_for(round_), len(unlabeled)), rng, config.strategy_options)
        values = (np.full(len(chosen), np.nan) if strategy.score_key is None
                  else scores[strategy.score_key][np.searchsorted(scores["ids"], chosen)])
        folder.write_selection(round_, pool.table.iloc[chosen][["id", "case", "slice"]].assign(score=values))
    return chosen


# --------------------------------------------------------------------------- the stand-in model: Liver-sized outputs

# MSD Task03_Liver in nnU-Net v2's 2d configuration: background, liver, tumour; a 512 x 512 patch and 8 stages of
# 32 .. 512 features (PlainConvUNet). Parameters per group as nnal.backend.gradients counts them on that network.
LIVER_CLASSES = 3
LIVER_PARAMETERS = {"bottleneck": 2_359_296, "last-decoder-conv": 9_248, "decoder-convs": 23_587_776,
                    "decoder": 27_445_973, "network": 46_326_581}
# Core-Set's flattened bottleneck at the backend's cap (scoring.FEATURE_DIM; the planned network's 512 x 4 x 4 grid
# gives 8,192, so 10,000 is the upper bound), the pooled bottleneck (512 channels), the 1x1 head's closed-form
# gradients (3 classes x (32 inputs + bias))
LIVER_DIMS = {"features": 10_000, "pooled_features": 512, "head_embeddings": LIVER_CLASSES * 33}
FOREGROUND_SHARE = 0.4  # slices showing liver; the rest are nearly certain background


class LiverShapedModel:
    """``nnal.strategies.ModelLike`` with the output shapes of a Liver-sized nnU-Net, its numbers seeded noise.

    Outputs are drawn batch by batch and put together as the real backend does (per-batch blocks, one
    concatenation at the end), so a measured peak includes that concatenation. With ``pixels`` (tests), every batch
    also materialises its per-pixel probabilities, ``(T, B, C, H, W)``, and reduces them to per-slice scores: each
    such tensor is recorded in ``pixel_tensors``, and a call asking for batches larger than ``max_batch`` slices is
    refused (MemoryError), so a test sees that per-pixel data only ever exists per batch.
    """

    def __init__(self, seed: int = 0, *, pixels: tuple[int, int] | None = None, max_batch: int | None = None,
                 parameters: Mapping[str, int] = LIVER_PARAMETERS, dims: Mapping[str, int] = LIVER_DIMS,
                 classes: int = LIVER_CLASSES):
        self.seed, self.pixels, self.max_batch = seed, pixels, max_batch
        self.parameters, self.dims, self.classes = dict(parameters), dict(dims), classes
        self.pixel_tensors: list[tuple[int, ...]] = []  # shape of every per-pixel tensor made
        self.largest_return = 0  # elements of the largest array one call returned

    def parameter_count(self, group: str) -> int:
        return self.parameters[group]

    def scores(self, cases: CaseSlices, keys: set[str], *, mc_passes: int, batch_size: int, seed: int,
               on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, seed, 1])
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for b in self._batches(cases, batch_size):
            values = self._pixel_scores(rng, b, mc_passes, self.pixels) if self.pixels else self._slice_scores(rng, b)
            for k in keys:
                parts[k].append(values[k] if k in values else self._noise(rng, b, self.dims[k]))
            if on_batch is not None:
                on_batch(b)
        return {k: self._joined(v) for k, v in parts.items()}

    def gradient_embeddings(self, cases: CaseSlices, *, group: str, index: np.ndarray | None, batch_size: int,
                            loss: str = "log-likelihood", on_batch: Callable[[int], None] | None = None
                            ) -> np.ndarray:
        rng = np.random.default_rng([self.seed, PARAMETER_GROUPS.index(group), LOSSES.index(loss), 2])
        width = self.parameters[group] if index is None else len(index)
        rows = []
        for b in self._batches(cases, batch_size):
            if self.pixels:  # the backward's per-pixel loss map of the batch
                self._pixel_tensor(rng, (b, self.classes, *self.pixels))
            rows.append(self._noise(rng, b, width))
            if on_batch is not None:
                on_batch(b)
        return self._joined(rows)

    def fisher(self, cases: CaseSlices, counts: np.ndarray, *, group: str, batch_size: int,
               loss: str = "log-likelihood") -> np.ndarray:
        rng = np.random.default_rng([self.seed, PARAMETER_GROUPS.index(group), LOSSES.index(loss), 3])
        for b in self._batches(cases, batch_size):
            if self.pixels:
                self._pixel_tensor(rng, (b, self.classes, *self.pixels))
        return self._joined([rng.gamma(2.0, 0.5, self.parameters[group]) + 1e-3])

    def _batches(self, cases: CaseSlices, batch_size: int) -> list[int]:
        if self.max_batch is not None and batch_size > self.max_batch:
            raise MemoryError(f"asked for batches of {batch_size} slices, more than {self.max_batch}")
        n = sum(len(s) for _, s in cases)
        return [min(batch_size, n - start) for start in range(0, n, batch_size)]

    def _joined(self, blocks: list[np.ndarray]) -> np.ndarray:
        out = np.concatenate(blocks) if blocks else np.empty(0, np.float32)
        self.largest_return = max(self.largest_return, out.size)
        return out

    @staticmethod
    def _noise(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32)

    def _slice_scores(self, rng: np.random.Generator, b: int) -> dict[str, np.ndarray]:
        """Per-slice values drawn directly: a log-normal uncertainty on liver slices, near zero elsewhere."""
        level = np.exp(rng.normal(0.0, 0.7, b)) * np.where(rng.random(b) < FOREGROUND_SHARE, 1.0, 0.02)
        per_class = (level[:, None] * rng.uniform(0.2, 1.0, (b, self.classes - 1))).astype(np.float32)
        scalar = level.astype(np.float32)
        return {"entropy": 0.5 * scalar, "bald": 0.1 * scalar, "std": 0.3 * scalar, "variance": 0.05 * scalar,
                "class_entropy": 0.5 * per_class, "class_uncertainty": 0.3 * per_class,
                "class_variance": 0.05 * per_class}

    def _pixel_scores(self, rng: np.random.Generator, b: int, passes: int, pixels: tuple[int, int]
                      ) -> dict[str, np.ndarray]:
        """Per-slice values reduced from the batch's per-pixel probabilities (dropout-free and ``passes`` MC)."""
        mc = self._pixel_tensor(rng, (passes, b, self.classes, *pixels))
        p = mc.mean(0)
        pixel_entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(1)
        mc_entropy = -(mc * np.log(np.clip(mc, 1e-12, None))).sum(2).mean(0)
        var = mc.var(0)
        return {"entropy": pixel_entropy.mean((1, 2)), "bald": (pixel_entropy - mc_entropy).mean((1, 2)),
                "std": np.sqrt(var).mean((1, 2, 3)), "variance": var.mean((1, 2, 3)),
                "class_entropy": (pixel_entropy[:, None] * p[:, 1:]).mean((2, 3)),
                "class_uncertainty": np.sqrt(var[:, 1:]).mean((2, 3)), "class_variance": var[:, 1:].mean((2, 3))}

    def _pixel_tensor(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Softmax probabilities over the class axis (third from last), float32; recorded."""
        self.pixel_tensors.append(tuple(shape))
        logits = rng.standard_normal(shape, dtype=np.float32)
        logits = np.exp(logits - logits.max(-3, keepdims=True))
        return logits / logits.sum(-3, keepdims=True)


# ----------------------------------------------------------------------------------------- one strategy, one process


def _gb(kib: int | None) -> float:
    """Decimal GB (the 12 GB bound) from the kernel's kB (KiB)."""
    return round((kib or 0) * 1024 / 1e9, 3)


def _child(label: str, slices: int, work: Path, keep_scores: bool) -> dict[str, Any]:
    from nnal.bench.process import proc_status_kb, reset_peak_rss

    _, name, options = next(s for s in STRATEGIES if s[0] == label)
    pool = liver_pool(slices)
    config = query_config(name, options)
    root = Path(tempfile.mkdtemp(prefix="liver-", dir=work))
    phases: dict[str, dict[str, float]] = {}

    @contextmanager
    def phase(part: str) -> Iterator[None]:
        reset_peak_rss()
        start = time.perf_counter()
        yield
        phases[part] = {"seconds": round(time.perf_counter() - start, 2), "peak_rss_gb": _gb(proc_status_kb("VmHWM"))}

    before = _gb(proc_status_kb("VmRSS"))
    try:
        query_step(root, pool, config, LiverShapedModel(), phase, keep_scores=keep_scores)
        files = {p.name: p.stat().st_size for p in sorted((root / "round_001").iterdir())}
        with np.load(root / "round_001" / "scores.npz") as data:
            arrays = {k: _header(data, k) for k in data.files}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    query = arrays.get("query", {}).get("shape", [None])[0]
    return {"label": label, "strategy": name, "options": options, "pool_slices": slices,
            "unlabeled_slices": slices - LABELED, "query_size": query, "rss_before_gb": before,
            "peak_rss_gb": max(p["peak_rss_gb"] for p in phases.values()),
            "seconds": round(sum(p["seconds"] for p in phases.values()), 2), "phases": phases,
            "bytes_on_disk": sum(files.values()), "files": files, "arrays": arrays}


def _header(data, key: str) -> dict[str, Any]:
    """A member's shape and dtype from its header, without reading the data."""
    from numpy.lib import format as npy

    with data.zip.open(f"{key}.npy") as fh:
        version = npy.read_magic(fh)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(fh)
    return {"shape": list(shape), "dtype": str(dtype)}


def _pixel_child(batch: int, passes: int) -> dict[str, Any]:
    """The real scoring's per-batch pixel work (``nnal.backend.scoring``: a dropout-free forward, ``passes``
    MC-dropout forwards, their per-slice reductions) on one batch of ``batch`` random 512 x 512 slices through a
    Liver-sized 2d PlainConvUNet with random weights: what one scoring batch costs beyond the process."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnal.backend.inference import set_dropout, use_packed_dropout
    from nnal.backend.scoring import mc_probabilities, reduce_deterministic, reduce_mc
    from nnal.bench.process import proc_status_kb, reset_peak_rss

    torch.manual_seed(0)
    net = PlainConvUNet(1, 8, [min(32 * 2**i, 512) for i in range(8)], torch.nn.Conv2d, 3, [1] + [2] * 7, 2, 3, 2,
                        conv_bias=True, norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        dropout_op=torch.nn.Dropout, dropout_op_kwargs={"p": 0.1}, nonlin=torch.nn.LeakyReLU,
                        nonlin_kwargs={"inplace": True}).eval()
    use_packed_dropout(net, True)
    x = torch.randn(batch, 1, 512, 512)
    mask = torch.ones(batch, 512, 512, dtype=torch.bool)
    process = _gb(proc_status_kb("VmRSS"))
    reset_peak_rss()
    start = time.perf_counter()
    with torch.inference_mode():
        reduce_deterministic(net(x).float().softmax(1), mask)
        set_dropout(net, True)
        reduce_mc(mc_probabilities(net, x, passes), mask)
    return {"batch": batch, "mc_passes": passes, "process_rss_gb": process,
            "peak_rss_gb": _gb(proc_status_kb("VmHWM")), "seconds": round(time.perf_counter() - start, 1),
            "parameters": sum(p.numel() for p in net.parameters())}


def _run(args: list[str], cap_gb: float) -> dict[str, Any]:
    """``args`` of this script in a fresh process, its address space capped; its JSON line, or the error."""
    def cap() -> None:  # a step that would not fit fails here, not in the OOM killer among the machine's jobs
        limit = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        with open("/proc/self/oom_score_adj", "w") as fh:  # and should memory run out, this process goes first
            fh.write("1000")

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, preexec_fn=cap,
                          cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return {"error": tail, "address_space_cap_gib": cap_gb, "seconds_until_failure": round(time.perf_counter() - start)}


# ------------------------------------------------------------------------------------------------ the whole table


def _machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "memory_gb": _gb(mem),
            "system": platform.platform(), "python": platform.python_version()}


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for package in ("nnal", "numpy", "numba", "pandas", "pydantic", "torch", "dynamic-network-architectures"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", nargs="*", default=[s[0] for s in STRATEGIES])
    ap.add_argument("--slices", type=int, default=POOL_SLICES)
    ap.add_argument("--pixel-batches", type=int, nargs="*", default=[1, 4],
                    help="also measure the real scoring's per-batch pixel work for these batch sizes")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--cap-gib", type=float, default=16.0, help="address-space cap of each measured process")
    ap.add_argument("--json", type=Path, help="write the table here")
    ap.add_argument("--keep-scores", action="store_true",
                    help="hold the scoring phase's arrays through the selection (the loop before it let them go)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--pixel-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.slices, args.work, args.keep_scores)))
        return 0
    if args.pixel_child:
        print(json.dumps(_pixel_child(args.pixel_child, SETTINGS["mc_passes"])))
        return 0
    from nnal.provenance import git_commit

    load_before = os.getloadavg()
    rows = []
    for label in args.strategies:
        extra = ["--keep-scores"] if args.keep_scores else []
        rows.append({"label": label, **_run(["--child", label, "--slices", str(args.slices), "--work", str(args.work),
                                             *extra], args.cap_gib)})
        print(_line(rows[-1]), flush=True)
    pixels = [{"batch": b, **_run(["--pixel-child", str(b)], args.cap_gib)} for b in args.pixel_batches]
    for row in pixels:
        print(f"pixel batch of {row['batch']}: " + (row["error"] if "error" in row else
              f"peak {row['peak_rss_gb']:.2f} GB ({row['process_rss_gb']:.2f} GB before it), {row['seconds']} s"))
    config = {**SETTINGS, "pool_slices": args.slices, "cases": CASES, "labeled": LABELED, "round": 1,
              "address_space_cap_gib": args.cap_gib, "keep_scores": args.keep_scores, "units": "GB = 1e9 bytes",
              "model": "nnal.backend.fake.LiverShapedModel: output shapes of a Liver-sized 2d nnU-Net, seeded values"}
    result = {"benchmark": "liver-scale query step", "config": config, "strategies": rows,
              "pixel_batches": pixels, "machine": _machine(),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "versions": _versions(),
              "git_commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['label']:<24} {'did not fit' if 'MemoryError' in row['error'] else 'failed'}: {row['error']}"
    return (f"{row['label']:<24} peak {row['peak_rss_gb']:6.2f} GB  {row['seconds']:8.1f} s  "
            f"{row['bytes_on_disk'] / 1e6:9.1f} MB on disk  Q {row['query_size']}")


if __name__ == "__main__":
    sys.exit(main())
