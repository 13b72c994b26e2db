"""The grid on a real local Ray instance: a real dataset prepared inside a Ray task (nnU-Net's planning and
preprocessing once hung there, in a fork()ed pool), and a grid interrupted by SIGINT or SIGTERM leaving no process
behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import default_sigint, make_mini_hippocampus

from nnal.dataset import load_dataset, write_nnunet_raw

ray = pytest.importorskip("ray")

PREPARE_TIMEOUT = 300  # seconds: preparation of 8 small cases takes about 20 s on 2 idle cores


def test_nnunet_lists_nnal_raw_folders_without_a_forked_pool(tmp_path, monkeypatch):
    """nnU-Net lists a raw folder's files in a fork()ed multiprocessing.Pool unless dataset.json names every case's
    files; nnal's raw folders name them, so planning never forks inside a threaded Ray worker."""
    import nnunetv2.utilities.utils as nnunet_utils

    def no_pool(*_args, **_kwargs):
        raise AssertionError("nnU-Net opened a fork()ed Pool to list the raw folder")

    monkeypatch.setattr(nnunet_utils, "Pool", no_pool)
    dataset = load_dataset(make_mini_hippocampus(tmp_path / "Task04_Hippocampus", 3))
    raw = write_nnunet_raw(dataset, tmp_path / "raw" / "Dataset001_Hippocampus")
    listed = nnunet_utils.get_filenames_of_train_images_and_targets(str(raw))
    assert sorted(listed) == sorted(c.name for c in dataset.cases)
    for case, files in listed.items():
        assert Path(files["label"]).resolve() == (raw / "labelsTr" / f"{case}.nii.gz").resolve()
        assert [Path(f).name for f in files["images"]] == [f"{case}_0000.nii.gz"]


def _busy(seconds: float) -> list[subprocess.Popen]:
    """Two processes keeping both cores busy for ``seconds`` (a machine that is busy as the grid starts)."""
    loop = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(2)]


@pytest.mark.slow
def test_a_real_dataset_is_prepared_inside_a_ray_task_on_a_busy_machine(tmp_path):
    from nnal.grid.run import prepare_step

    dataset = make_mini_hippocampus(tmp_path / "Task04_Hippocampus", 8)
    config = {"dataset": str(dataset), "device": "cpu", "preset": "cpu"}
    load = _busy(20)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        ref = ray.remote(prepare_step).options(num_cpus=1).remote(config, str(tmp_path / "cache"), "nnunet", 1)
        ready, _ = ray.wait([ref], timeout=PREPARE_TIMEOUT)
        assert ready, f"the prepare step did not finish within {PREPARE_TIMEOUT} s inside a Ray task (a hang)"
        assert ray.get(ref) == str(dataset)
    finally:
        ray.shutdown()
        for proc in load:
            proc.kill()
    assert list((tmp_path / "cache").glob("*/preprocessed/*/.nnal_done"))


def _grid_file(tmp_path: Path, dataset: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "datasets": [str(dataset)], "strategies": ["random", "bald"], "folds": [0], "seeds": [0, 1],
        "settings": {"rounds": 3, "initial": 5, "budget": 4, "iterations_per_epoch": 2, "epochs_initial": 1,
                     "epochs_per_round": 1, "mc_passes": 3, "device": "cpu"}}))
    return path


def _lines(stream, into: list[str]) -> threading.Thread:
    def read() -> None:
        for line in iter(stream.readline, ""):
            into.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_ray_grid_leaves_no_process_behind(signum, tmp_path, toy_dataset):
    proc = subprocess.Popen([sys.executable, "-m", "nnal.cli", "grid", str(_grid_file(tmp_path, toy_dataset)),
                             "--output", str(tmp_path / "out"), "--dry-run", "--no-report", "--max-parallel", "2"],
                            env={**os.environ, "NNAL_FAKE_DELAY": "2"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)
    lines: list[str] = []
    _lines(proc.stdout, lines)
    driver = psutil.Process(proc.pid)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not list((tmp_path / "out").glob("*/*/*/.lock")):
        time.sleep(0.2)  # until an experiment's worker is running (it holds its folder's lock)
    assert proc.poll() is None, "".join(lines)
    time.sleep(1.0)
    started = driver.children(recursive=True)
    assert any("ray" in " ".join(p.cmdline()).lower() for p in started if p.is_running())
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == 130, "".join(lines)
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]


BYSTANDER = """
import subprocess, sys, time
from nnal.ray_session import ray_instance
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with ray_instance():
    time.sleep(1.0)
print(helper.pid, helper.poll(), flush=True)
helper.kill()
"""


def test_a_local_ray_instance_ends_its_own_processes_and_no_other():
    """What ran below the driver before Ray started (an X server a test holds, a user's helper) outlives the
    instance: once, every descendant was killed with Ray's, and the test process lost its X display (exit 1)."""
    result = subprocess.run([sys.executable, "-c", BYSTANDER], capture_output=True, text=True, timeout=PREPARE_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    pid, returncode = result.stdout.split()
    assert returncode == "None", "the helper started before Ray was killed with Ray's processes"
