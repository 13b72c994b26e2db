"""Batched per-sample gradient embeddings against a per-slice autograd loop, on nnU-Net's planned Hippocampus net.

    python benchmarks/gradient_embeddings.py [--slices 64] [--json]

Plans the bundled dataset once (cached in /tmp/nnal-bench-cache), builds the 2d network with random weights and
times both ways for the bottleneck, decoder and whole-network parameter groups on real preprocessed slices.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch

    from nnal.backend.gradients import parameter_names, per_sample_gradients, per_sample_gradients_loop
    from nnal.backend.scoring import pooled_batches
    from nnal.backend.session import Backend
    from nnal.dataset import load_dataset

    backend = Backend(load_dataset(REPO / "data" / "Task04_Hippocampus"), Path("/tmp/nnal-bench-cache"),
                      dropout="element", dropout_p=0.01, mc_dropout_p=0.1, num_processes=0, device="cpu")
    torch.manual_seed(0)
    net = backend.network(None)
    case = sorted(backend.splits[0]["train"])[0]
    cases = [(case, np.arange(20))] + [(c, np.arange(20)) for c in sorted(backend.splits[0]["train"])[1:4]]
    patch = tuple(backend.plans["configurations"]["2d"]["patch_size"])
    from nnal.backend.inference import total_stride

    batch, mask = next(pooled_batches(backend.folder, cases, args.slices, patch, total_stride(backend.plans)))
    rows = []
    for group in ("bottleneck", "decoder", "network"):
        names = parameter_names(net, group)
        per_sample_gradients(net, batch[:4], mask[:4], names)  # warm-up
        t = time.perf_counter()
        fast = per_sample_gradients(net, batch, mask, names)
        batched = time.perf_counter() - t
        t = time.perf_counter()
        slow = per_sample_gradients_loop(net, batch, mask, names)
        loop = time.perf_counter() - t
        rows.append({"group": group, "params": int(fast.shape[1]), "slices": len(batch),
                     "batched_s": round(batched, 3), "loop_s": round(loop, 3), "speedup": round(loop / batched, 2),
                     "max_abs_diff": float((fast - slow).abs().max())})
    record = {"benchmark": "gradient_embeddings", "threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        print(json.dumps(record))
    else:
        for r in rows:
            print(f"{r['group']:>10}  {r['params']:>8} params  {r['slices']} slices  batched {r['batched_s']:.2f} s"
                  f"  loop {r['loop_s']:.2f} s  speedup {r['speedup']:.1f}x  max|diff| {r['max_abs_diff']:.1e}")


if __name__ == "__main__":
    main()
