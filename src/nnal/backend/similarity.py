"""A similarity matrix built on the GPU and copied back in chunks (the CUDA arm of ``nnal bench``'s similarity
benchmark): ``S = U @ right`` for row blocks ``U`` drawn on the host, shifted by its minimum."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch


def shifted_similarity_on_cuda(right: np.ndarray, n: int, rows: int, draw_rows: Callable[[int], np.ndarray],
                               cosine: bool) -> tuple[np.ndarray, dict[str, float]]:
    """``(n, q)`` float32 ``S - min(S)`` with ``S[a:b] = U @ right`` for ``U = draw_rows(b - a)`` (unit rows when
    ``cosine``); fp32 products (no TF32), as on the CPU. Returns S and seconds per step."""
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    seconds = dict(fold=0.0, generation=0.0, gemm=0.0, shift=0.0, transfer=0.0)
    t = time.perf_counter()
    right_t = torch.from_numpy(np.ascontiguousarray(right)).to(dev)
    s_dev = torch.empty((n, right.shape[1]), dtype=torch.float32, device=dev)
    torch.cuda.synchronize()
    seconds["fold"] += time.perf_counter() - t
    for a in range(0, n, rows):
        b = min(n, a + rows)
        t = time.perf_counter()
        u = draw_rows(b - a)
        t1 = time.perf_counter()
        u_dev = torch.from_numpy(u).to(dev)
        if cosine:
            u_dev = u_dev / u_dev.norm(dim=1, keepdim=True).clamp_min(1e-30)
        torch.matmul(u_dev, right_t, out=s_dev[a:b])
        seconds["generation"] += t1 - t
        seconds["gemm"] += time.perf_counter() - t1
    t = time.perf_counter()
    torch.cuda.synchronize()
    seconds["gemm"] += time.perf_counter() - t
    t = time.perf_counter()
    s_dev -= s_dev.min()
    torch.cuda.synchronize()
    seconds["shift"] = time.perf_counter() - t
    t = time.perf_counter()  # back to the host in chunks, straight into S (pinning 2.6 GB costs more)
    s = np.empty((n, right.shape[1]), dtype=np.float32)
    for a in range(0, n, rows):
        torch.from_numpy(s[a : a + rows]).copy_(s_dev[a : a + rows])
    seconds["transfer"] = time.perf_counter() - t
    del s_dev, right_t
    torch.cuda.empty_cache()
    return s, seconds
