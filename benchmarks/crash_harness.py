"""Crash safety, proved: SIGKILL a tiny real `nnal run` (and `nnal report`) at moments spread over every phase,
resume, and compare with an uninterrupted run of the same seed.

    python benchmarks/crash_harness.py --points 30 [--work DIR] [--json results/crash-harness.json]

Each point starts a fresh experiment (its own fresh cache, or for odd points a cache that another experiment
then reuses while the killed one is still half-done), kills the process group with SIGKILL at a moment of one
phase (the points cycle over preprocessing and every (round, phase), each 10%, 50% or 90% of the way into that
phase as long as it took in the reference run; ``--spread time`` spreads them uniformly over the reference run's
wall time instead), records the phase the kill hit (from the cache marker and state.json), resumes,
and checks: the same selection in every round, the same results.csv, no slice selected twice, and for kills that
hit preprocessing, that a second experiment on the shared half-written cache also ends identical. A few points
kill `nnal report` instead, then rerun it and compare its tables. ``--at`` gives targets instead of times
(``preprocess``, ``train:R``, ``score:R``, ``select:R``, ``evaluate:R``, ``report``): the test suite uses those.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = REPO / "data" / "Task04_Hippocampus"
TINY = dict(strategy="usimf", rounds=2, initial=20, budget=10, pool_cases=4, test_cases=2, batch_size=8,
            iterations_per_epoch=5, epochs_initial=2, epochs_per_round=2, mc_passes=3, score_batch_size=64,
            device="cpu", strategy_options={"embedding_dim": 500})
PHASES = ("score", "select", "train", "evaluate")


@dataclass
class Point:
    target: str  # "t=12.3s" or a named target
    cache: str  # "fresh" or "shared"
    hit: str = ""  # the phase running when the kill landed
    identical: bool = False
    shared_identical: bool | None = None
    problems: list[str] = field(default_factory=list)


def make_dataset(root: Path, n_cases: int) -> Path:
    """The first ``n_cases`` cases of the bundled Hippocampus copy as an MSD task folder."""
    meta = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    meta["training"] = meta["training"][:n_cases]
    meta["numTraining"] = n_cases
    for entry in meta["training"]:
        for key in ("image", "label"):
            (root / entry[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(HIPPOCAMPUS / entry[key], root / entry[key])
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def command(config: Path, output: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "nnal.cli", "run", "--config", str(config), "--output", str(output),
            "--cache", str(cache), "--quiet"]


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def phase_running(output: Path, cache: Path) -> str:
    """The phase a process working on ``output`` was in: preprocess, or the first unfinished (round, phase)."""
    if not list(cache.glob("*/preprocessed/*/.nnal_done")):
        return "preprocess"
    state_file = output / "state.json"
    if not state_file.is_file():
        return "select:0"
    state = json.loads(state_file.read_text())
    r, k = state["round"], PHASES.index(state["phase"])
    if k == len(PHASES) - 1:
        return f"score:{r + 1}" if r >= 0 else "select:0"
    return f"{PHASES[k + 1]}:{r}"


def order(phase: str) -> tuple[int, int]:
    """Where a named phase lies in a run: preprocess first, then (round, phase)."""
    if phase == "preprocess":
        return (-1, 0)
    name, r = phase.split(":")
    return (int(r), PHASES.index(name))


def reached(target: str, output: Path, cache: Path) -> bool:
    """True once the run is inside ``target`` (a named phase) or past it (a phase of milliseconds may slip by
    between two polls), polled while it runs."""
    now = phase_running(output, cache)
    if target == "preprocess":
        return (cache.exists() and any(cache.glob("*/raw"))) and now == "preprocess"
    if target.startswith("train:") and now == target:  # mid-epoch: nnU-Net has logged an epoch of this round
        log = output / f"round_{int(target[6:]):03d}" / "nnunet" / "training_log.txt"
        return log.is_file() and "Epoch 1" in log.read_text(errors="replace")
    return order(now) >= order(target)


def phase_targets(reference: Path, points: int, rounds: int) -> list[tuple[str, float]]:
    """``points`` kills cycling over every phase of the run, each ``fraction`` of the way into that phase (its
    duration from the reference run's state.json): 0.1, 0.5, 0.9, then again."""
    seconds = json.loads((reference / "state.json").read_text())["seconds"]
    phases = ["preprocess"] + [f"{p}:{r}" for r in range(rounds + 1) for p in PHASES if r > 0 or p != "score"]
    out = []
    for i in range(points):
        phase = phases[i % len(phases)]
        fraction = (0.1, 0.5, 0.9)[(i // len(phases)) % 3]
        if phase == "preprocess":
            duration = 10.0  # not in state.json; a few seconds on the tiny dataset
        else:
            name, r = phase.split(":")
            duration = float(seconds.get(r, {}).get(name, 0.0))
        out.append((phase, fraction * duration))
    return out


def kill_run(cmd: list[str], output: Path, cache: Path, *, after: float | None = None, target: str | None = None,
             delay: float = 0.0, timeout: float = 900) -> str:
    """Start ``cmd``, SIGKILL its process group at the moment asked for (``after`` seconds, or ``delay`` seconds
    after ``target`` is reached); return the phase it hit."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                            start_new_session=True)
    start = time.perf_counter()
    while proc.poll() is None and time.perf_counter() - start < timeout:
        if after is not None and time.perf_counter() - start >= after:
            break
        if target is not None and reached(target, output, cache):
            end = time.perf_counter() + delay
            while proc.poll() is None and time.perf_counter() < end:
                time.sleep(0.005)
            break
        time.sleep(0.01)
    hit = phase_running(output, cache) if proc.poll() is None else "finished"
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return hit


def compare(output: Path, reference: Path) -> list[str]:
    """What differs from the reference: selections per round, results, duplicate picks."""
    problems = []
    rounds = sorted(p.name for p in reference.glob("round_*"))
    chosen: list[str] = []
    for name in rounds:
        mine, ref = output / name / "selection.csv", reference / name / "selection.csv"
        if not mine.is_file() or mine.read_bytes() != ref.read_bytes():
            problems.append(f"{name}/selection.csv differs")
        elif mine.is_file():
            chosen += [line.split(",")[0] for line in mine.read_text().splitlines()[1:]]
    if len(chosen) != len(set(chosen)):
        problems.append("a slice was selected twice")
    if (output / "results.csv").read_bytes() != (reference / "results.csv").read_bytes():
        problems.append("results.csv differs")
    return problems


def report_tables(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "tables").glob("*.csv"))}


def _versions() -> dict[str, str]:
    """Git commit, Python and package versions, so the figures can be traced and re-run."""
    from importlib.metadata import version

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    return {"git_commit": commit, "python": sys.version.split()[0],
            **{name: version(name) for name in ("nnal", "nnunetv2", "torch", "numpy")}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=30, help="kills cycling over every phase of the run")
    parser.add_argument("--spread", choices=("phases", "time"), default="phases",
                        help="phases: each kill a fraction of the way into a phase; time: uniform over the run")
    parser.add_argument("--at", nargs="*", default=None, help="named targets (phases) instead")
    parser.add_argument("--report-points", type=int, default=2, help="kills of `nnal report`")
    parser.add_argument("--cases", type=int, default=12, help="bundled cases in the tiny dataset")
    parser.add_argument("--rounds", type=int, default=TINY["rounds"], help="selection rounds of the tiny run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnal-crash-harness"))
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = parser.parse_args(argv)

    shutil.rmtree(args.work, ignore_errors=True)
    dataset = make_dataset(args.work / "data" / "Task04_Hippocampus", args.cases)
    config = args.work / "config.yaml"
    settings = {**TINY, "rounds": args.rounds}
    config.write_text(yaml.safe_dump({"dataset": str(dataset), **settings}))
    reference = args.work / "reference"
    start = time.perf_counter()
    run(command(config, reference, args.work / "reference-cache"))
    total = time.perf_counter() - start
    if args.at is not None:
        targets = [(t, 0.0) for t in args.at]
    elif args.spread == "phases":
        targets = phase_targets(reference, args.points, args.rounds)
    else:
        targets = [(f"t={total * (i + 0.5) / args.points:.2f}s", 0.0) for i in range(args.points)]
    points = []
    for i, (target, delay) in enumerate(targets):
        point = Point(target if not delay else f"{target}+{delay:.2f}s", "shared" if i % 2 else "fresh")
        out, cache = args.work / f"point{i:02d}", args.work / f"cache{i:02d}"
        cmd = command(config, out, cache)
        timed = target.startswith("t=")
        point.hit = kill_run(cmd, out, cache, after=float(target[2:-1]) if timed else None,
                             target=None if timed else target, delay=delay)
        if point.cache == "shared" and point.hit == "preprocess":  # another experiment on the half-made cache
            other = args.work / f"point{i:02d}-other"
            run(command(config, other, cache))
            point.shared_identical = not compare(other, reference)
            point.problems += [f"other experiment: {p}" for p in compare(other, reference)]
        run(cmd)
        problems = compare(out, reference)
        point.problems += problems
        point.identical = not problems
        points.append(point)
        print(f"{i + 1:2d}/{len(targets)} {point.target:>18} hit {point.hit:<12} cache {point.cache:<6} "
              f"{'identical' if point.identical else '; '.join(point.problems)}", flush=True)

    report_points = []
    if args.report_points:
        ref_report = args.work / "report-reference"
        t = time.perf_counter()
        run([sys.executable, "-m", "nnal.cli", "report", str(reference), "--output", str(ref_report)])
        report_total = time.perf_counter() - t
        for k in range(args.report_points):
            folder = args.work / f"report{k}"
            cmd = [sys.executable, "-m", "nnal.cli", "report", str(reference), "--output", str(folder)]
            after = report_total * (k + 1) / (args.report_points + 1)
            kill_run(cmd, reference, args.work / "reference-cache", after=after)
            run(cmd)
            same = report_tables(folder) == report_tables(ref_report) and (folder / "index.html").is_file()
            report_points.append({"after_s": round(after, 2), "identical_tables": same})
            print(f"report kill {k + 1}: {'identical tables' if same else 'DIFFERENT'}", flush=True)

    summary = {"reference_seconds": round(total, 1), "points": [asdict(p) for p in points],
               "identical": sum(p.identical for p in points), "of": len(points),
               "phases_hit": sorted({p.hit for p in points}), "report_points": report_points,
               "config": settings, "cases": args.cases, "environment": _versions()}
    print(f"{summary['identical']} of {summary['of']} resumes identical; "
          f"phases hit: {', '.join(summary['phases_hit'])}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["identical"] == result["of"] and all(p["identical_tables"] for p in result["report_points"])
             else 1)
