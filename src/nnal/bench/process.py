"""Process plumbing of :mod:`nnal.bench`: each measurement runs in a fresh spawned process, memory is read from
``/proc/self/status`` (peak reset through ``/proc/self/clear_refs``), and a submodlib worker's address space is capped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
import traceback
from collections.abc import Callable
from typing import Any

TIMEOUT_S = 1800.0
_GUARD = {"note": ""}  # set in a submodlib worker process once its memory is capped


# ----------------------------------------------------------------------------------------------- measurement


def proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def read_peak_rss_mb() -> float:
    kb = proc_status_kb("VmHWM")
    if kb is None:  # not Linux: lifetime peak, an over-estimate
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """Run ``fn``; return (result, seconds, peak RSS MB during the call, RSS MB before it)."""
    before = (proc_status_kb("VmRSS") or 0) / 1024
    reset_peak_rss()
    t0 = time.perf_counter()
    res = fn()
    sec = time.perf_counter() - t0
    return res, sec, read_peak_rss_mb(), before


def limit_memory(s_bytes: int) -> None:
    """Cap this process's address space so submodlib fails with MemoryError instead of exhausting the machine."""
    avail_kb = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail_kb = int(line.split()[1])
    except OSError:
        return
    vm_kb = proc_status_kb("VmSize")
    if avail_kb is None or vm_kb is None:
        return
    allowance = int(min(0.5 * avail_kb * 1024, 3 * s_bytes + (1 << 30)))
    limit = vm_kb * 1024 + allowance
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    _GUARD["note"] = f" (address space capped at {limit / 2**30:.1f} GiB, S {s_bytes / 2**30:.2f} GiB)"


def _child(conn: Any, fn: Callable[..., dict[str, Any]], args: tuple) -> None:
    try:
        res = fn(*args)
    except BaseException as exc:  # reported to the parent as a string
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} `{frames[-1].line}`" if frames else ""
        msg = f": {exc}" if str(exc) else ""
        res = {"error": f"{type(exc).__name__}{msg}{where}{_GUARD['note']}"}
    conn.send(res)
    conn.close()


def run_in_subprocess(fn: Callable[..., dict[str, Any]], args: tuple, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args), daemon=True)
    proc.start()
    send.close()
    try:
        if recv.poll(timeout):
            return recv.recv()
        return {"error": f"timed out after {timeout:.0f} s"}
    except EOFError:
        proc.join(5)
        return {"error": f"process died (exit code {proc.exitcode}; a negative code is the signal, 9: OOM killer?)"}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
