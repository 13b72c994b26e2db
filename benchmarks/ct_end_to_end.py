"""Every strategy through `nnal run` on a synthetic Spleen-like CT set (labelled synthetic): nnU-Net's own 2d plan
(CT normalisation, its patch size), one selection round each after a shared round 0, on this machine's CPU.

Per strategy, in a process of its own: seconds per phase (from the experiment's state.json), the peak resident
memory of that process, and the size of every file the experiment wrote. Writes a JSON with the data's recipe,
the settings, the plan and the git commit.

    python benchmarks/ct_end_to_end.py --size 512 --cases 6 --json results/ct-end-to-end-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from nnal.provenance import git_commit

STRATEGIES = ["random", "random-fg", "entropy", "meanstd", "bald", "coreset", "badge", "stochastic-batches",
              "usimc", "usimf", "clasp-pe"]
SETTINGS = dict(preset="cpu", device="cpu", rounds=1, initial=20, budget=10, mc_passes=3, iterations_per_epoch=5,
                epochs_initial=2, epochs_per_round=1, batch_size=2, score_batch_size=8, test_cases=2)


def run_strategy(dataset: Path, work: Path, strategy: str, settings: dict) -> dict:
    """One strategy in a child process (round 0 adopted from the first one's folder); its phases, peak RSS, files."""
    folder = work / strategy
    config = work / f"{strategy}.yaml"
    config.write_text(yaml.safe_dump({"dataset": str(dataset), "strategy": strategy, **settings}))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(config), str(folder), str(work / "cache"),
                           str(work / STRATEGIES[0])], capture_output=True, text=True)
    if done.returncode != 0:
        return {"strategy": strategy, "error": done.stderr.strip().splitlines()[-1:]}
    child = json.loads(done.stdout.strip().splitlines()[-1])
    state = json.loads((folder / "state.json").read_text())
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and "nnunet" not in p.parts}
    return {"strategy": strategy, "seconds_per_phase": state["seconds"], "peak_rss_gb": child["peak_rss_gb"],
            "wall_seconds": round(time.perf_counter() - start, 1), "bytes": files,
            "bytes_total": sum(files.values())}


# the child: one experiment, then its own peak RSS (ru_maxrss, KiB on Linux) as the last line
_CHILD = """
import json, resource, sys
from pathlib import Path
from nnal.config import build, load_yaml
from nnal.loop import run_experiment
config, folder, cache, first = sys.argv[1:]
share = Path(first) if Path(first) != Path(folder) and (Path(first) / "state.json").is_file() else None
run_experiment(build(load_yaml(Path(config))), Path(folder), cache=Path(cache), share_round0=share, progress=False)
print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--slices", type=int, nargs=2, default=(20, 30))
    parser.add_argument("--strategies", nargs="*", default=STRATEGIES)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from nnal.synth import synthesize

    work = args.work or Path(tempfile.mkdtemp(prefix="ct-e2e-"))
    dataset = work / "Dataset902_SyntheticSpleen"
    if not dataset.is_dir():
        synthesize(kind="spleen", output=dataset, cases=args.cases, size=args.size, slices=tuple(args.slices), seed=0)
    rows = [run_strategy(dataset, work, s, SETTINGS) for s in args.strategies]
    plans = sorted((work / "cache").glob("*/preprocessed/*/nnUNetPlans.json"))
    plan = json.loads(plans[0].read_text())["configurations"]["2d"] if plans else {}
    result = {"benchmark": "ct_end_to_end", "synthetic": True,
              "data": f"nnal synth --kind spleen --cases {args.cases} --size {args.size} --slices {args.slices[0]} "
                      f"{args.slices[1]} --seed 0 (synthetic CT, not patient data)",
              "settings": SETTINGS, "plan": {k: plan.get(k) for k in ("patch_size", "batch_size",
                                                                       "normalization_schemes", "spacing")},
              "strategies": rows, "machine": {"processor": platform.processor() or platform.machine(),
                                              "python": platform.python_version()},
              "peak_rss_gb_this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "git_commit": git_commit()}
    for row in rows:
        print(json.dumps({k: row.get(k) for k in ("strategy", "peak_rss_gb", "wall_seconds", "bytes_total", "error")}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
