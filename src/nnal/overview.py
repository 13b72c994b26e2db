"""``nnal status`` on a folder of experiments (a grid's output, the demo's): one line per experiment, and the
counts of finished, running, waiting and failed ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nnal.errors import NnalError
from nnal.experiment import ExperimentFolder
from nnal.layout import experiment_folders
from nnal.status import experiment_status


def overview(root: Path) -> dict[str, Any]:
    """Every experiment below ``root`` with its status; a grid's ``grid.json`` adds which ones failed."""
    folders = experiment_folders(root)
    if not folders:
        raise NnalError(f"{root}: holds no nnal experiment (no config.yaml here or below)")
    failed = _failed(root)
    rows = []
    for path in folders:
        status = experiment_status(path)
        folder = ExperimentFolder(path)
        last = folder.read_config().last_round
        state = ("done" if folder.finished(last) else "running" if folder.busy()
                 else "failed" if str(path.relative_to(root)) in failed else "waiting")
        rows.append({"folder": str(path.relative_to(root)), "state": state, **status})
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "running", "waiting", "failed")}
    return {"root": str(root), "counts": counts, "experiments": rows}


def _failed(root: Path) -> set[str]:
    status = Path(root) / "grid.json"
    if not status.is_file():
        return set()
    rows = json.loads(status.read_text()).get("experiments", [])
    return {row["folder"] for row in rows if row.get("status") == "failed"}


def format_overview(found: dict[str, Any]) -> str:
    counts = found["counts"]
    lines = [f"{found['root']}: {len(found['experiments'])} experiments, " + ", ".join(
        f"{n} {state}" for state, n in counts.items())]
    width = max(len(r["folder"]) for r in found["experiments"])
    for row in found["experiments"]:
        dice = row["last_dice"]
        lines.append(f"  {row['folder']:<{width}}  {row['state']:<7}  round {row['round']} of {row['rounds']} "
                     f"({row['phase'] or 'not started'})" + ("" if dice is None else f", Dice {dice['mean']}"))
    return "\n".join(lines)
