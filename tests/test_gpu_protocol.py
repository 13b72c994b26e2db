"""The GPU protocol's script, checked on the CPU: its dry run (nnal's fake model) runs the whole grid, writes its
JSON and archive, and sizes the regime from a regimes.json as `nnal regimes` writes it."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_protocol_dry_run(tmp_path):
    regimes = tmp_path / "regimes.json"
    regimes.write_text(json.dumps({"regimes": [{"name": "medium", "initial": 12, "budget": 6, "rounds": 2}]}))
    out = tmp_path / "gp"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_protocol.py"), "--regimes", str(regimes),
                           "--output", str(out), "--dry-run", "--json", str(tmp_path / "gp.json"),
                           "--archive", str(tmp_path / "gp.tar.gz")], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gp.json").read_text())
    assert result["dry_run"] and result["failed"] == 0 and result["git_commit"]
    assert result["grid"]["strategies"] == ["random", "random-fg", "bald", "usimf"]
    assert (result["grid"]["settings"]["initial"], result["grid"]["settings"]["budget"]) == (12, 6)
    assert len([k for k in result["final_dice"] if not k.startswith("full")]) == 12  # 4 strategies x 3 seeds
    with tarfile.open(tmp_path / "gp.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("random-fg/f0-s2/results.csv") for n in names)
    assert not any(n.endswith((".pt", ".npz")) for n in names)
