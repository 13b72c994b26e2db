"""How long a grid takes to get past dataset preparation when the machine is busy as it starts, Ray against the
local executor (the Ray grid once hung there for ever).

For each executor and repetition: two processes keep both cores busy for ``--load`` seconds; ``nnal grid GRID``
starts at the same moment into a fresh output folder; the time until nnU-Net's preprocessed data are complete
(the cache's ``.nnal_done`` marker) is recorded; the grid is then stopped with SIGTERM and its process tree is
checked to be gone. Writes a JSON with the figures, the machine and the git commit.

    python benchmarks/grid_start_under_load.py examples/appendix-e-grid.yaml --repeats 2 \\
        --json results/grid-start-under-load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from nnal.provenance import git_commit


def busy(seconds: float) -> list[subprocess.Popen]:
    loop = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count() or 2)]


def one_start(grid: Path, executor: str, load: float, limit: float) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"grid-{executor}-"))
    loaders = busy(load)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "nnal.cli", "grid", str(grid), "--output", str(out / "run"),
                             "--executor", executor, "--no-report"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    prepared = None
    tree: list[psutil.Process] = []
    while time.monotonic() - start < limit and proc.poll() is None:
        try:
            tree = list({p.pid: p for p in [*tree, *psutil.Process(proc.pid).children(recursive=True)]}.values())
        except psutil.Error:
            pass
        if list(out.glob("run/nnunet-cache/*/preprocessed/*/.nnal_done")):
            prepared = time.monotonic() - start
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    _, alive = psutil.wait_procs(tree, timeout=30)
    left = [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for p in loaders:
        p.kill()
    return {"executor": executor, "prepared_after_s": None if prepared is None else round(prepared, 1),
            "exit_code": code, "processes_left": len(left)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--load", type=float, default=40.0, help="seconds of load on every core at the start")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds before a start counts as hung")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = [one_start(args.grid, executor, args.load, args.limit)
            for _ in range(args.repeats) for executor in ("ray", "local")]
    for run in runs:
        print(json.dumps(run))
    result = {"grid": str(args.grid), "load_s": args.load, "limit_s": args.limit, "runs": runs,
              "machine": {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine()},
              "git_commit": git_commit()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
