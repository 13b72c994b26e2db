"""Where a result came from: the git commit of the running nnal and the software it ran on (results files carry
them, so a figure can be traced and re-run)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from nnal import __version__


def git_commit() -> str | None:
    """HEAD of the checkout nnal runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def environment_record(**extra: Any) -> dict[str, Any]:
    """nnal's version, the git commit, Python, numpy and the machine, plus ``extra`` (a backend's, a grid's)."""
    return {"nnal": __version__, "git_commit": git_commit(), "python": platform.python_version(),
            "numpy": np.__version__, "machine": platform.machine(), **extra}
