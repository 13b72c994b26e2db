"""A round's pool scored in shards on Ray (``score_shards``): the single process's scores, bit for bit on the CPU,
and its selection; the shards' batches and MC-dropout draws; bad input; no process left behind.

Ray tests share one local instance of 2 CPUs; every wait on Ray has a timeout (``run_shards`` polls, and a shard not
back in time is scored in the test's process).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import blosc2
import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml
from conftest import assert_one_line_error, default_sigint, run_cli, small_unet

import nnal.backend.shards as shards_module
import nnal.loop as loop
from nnal.backend.fake import fake_backend
from nnal.backend.model import Model
from nnal.backend.scoring import batch_plan, pooled_batches
from nnal.backend.shards import ShardedModel, split_batches, take_slices
from nnal.config import Config
from nnal.dataset import load_dataset
from nnal.errors import FolderError
from nnal.experiment import ExperimentFolder
from nnal.loop import run_experiment

WAIT = 300  # seconds: at most this long for any shard task (a Ray worker starting on a busy machine included)

# --- shards of whole batches, and the MC draws before them (no Ray) ---------------------------------------------

PATCH, STRIDE = (16, 12), (4, 4)
SHAPES = {"a": (7, 5, 6), "b": (5, 22, 13), "c": (6, 9, 10)}  # (z, y, x): padded to 16x12, 24x16, 16x12


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three preprocessed cases, two padded sizes, as nnU-Net's Blosc2 files."""
    root = tmp_path_factory.mktemp("preprocessed")
    rng = np.random.default_rng(4)
    for case, shape in SHAPES.items():
        blosc2.asarray(rng.normal(size=(1, *shape)).astype(np.float32), urlpath=str(root / f"{case}.b2nd"), mode="w")
        blosc2.asarray(rng.integers(0, 3, size=(1, *shape)).astype(np.int16), urlpath=str(root / f"{case}_seg.b2nd"),
                       mode="w")
    return root


PLANS = {"configurations": {"2d": {"patch_size": list(PATCH),
                                   "architecture": {"arch_kwargs": {"strides": [[1, 1], [2, 2], [2, 2]]}}}}}
CASES = [("a", np.array([0, 2, 3, 5, 6])), ("b", np.arange(5)), ("c", np.array([1, 2, 4, 5]))]


def test_split_batches_gives_contiguous_shards_of_whole_batches_about_equal_in_slices():
    assert split_batches([4, 4, 4, 4, 4, 4], 3) == [(0, 2), (2, 4), (4, 6)]
    assert split_batches([8, 8, 8, 8, 3], 2) == [(0, 3), (3, 5)]  # 24 | 11: the batch reaching half ends shard 0
    assert split_batches([4, 4], 5) == [(0, 1), (1, 2)]  # clamped: a shard holds at least one batch
    assert split_batches([4], 3) == [(0, 1)] and split_batches([], 2) == [(0, 0)]
    for shards in range(1, 9):
        ranges = split_batches([5] * 7 + [2], shards)
        assert ranges[0][0] == 0 and ranges[-1][1] == 8 and len(ranges) == min(shards, 8)
        assert all(a < b == c for (a, b), (c, _) in zip(ranges, ranges[1:] + [(ranges[-1][1], 0)], strict=True))


def test_take_slices_cuts_the_pool_order_and_puts_it_back_together():
    flat = [(c, int(z)) for c, s in CASES for z in s]
    for start, end in ((0, 14), (3, 9), (5, 10), (13, 14), (4, 4)):
        part = take_slices(CASES, start, end)
        assert [(c, int(z)) for c, s in part for z in s] == flat[start:end]
    assert take_slices([("a", np.arange(2)), ("x", np.arange(0)), ("b", np.arange(2))], 0, 4)[1][0] == "x"


@pytest.mark.parametrize("batch_size", [1, 3, 4, 6, 64])
def test_batch_plan_is_the_batches_of_pooled_batches(folder, batch_size):
    planned = batch_plan(folder, CASES, batch_size, PATCH, STRIDE)
    formed = [(tuple(b.shape[1:]), len(b)) for b, _ in pooled_batches(folder, CASES, batch_size, PATCH, STRIDE)]
    assert [(p.shape, p.size) for p in planned] == formed
    assert {p.shape for p in planned} == {(1, 16, 12), (1, 24, 16)}  # a padded size change ends a batch


def _model(folder: Path, dropout: type, rows: int | None = None) -> Model:
    model = Model(small_unet(dropout), PLANS, folder, [0, 1, 2], torch.device("cpu"))
    model.mc_rows = rows
    return model


@pytest.mark.parametrize("dropout, rows", [(torch.nn.Dropout, None), (torch.nn.Dropout, 8),
                                           (torch.nn.Dropout2d, None)])
def test_a_shard_replaying_the_earlier_draws_scores_the_single_pass_masks(folder, dropout, rows):
    """Element dropout draws packed words, channel dropout torch's own; rows stacks passes: at every batch
    boundary, the shards' scores put together are the single pass's, bit for bit, and without the replay not."""
    model = _model(folder, dropout, rows)
    keys = {"bald", "variance", "class_uncertainty", "entropy"}
    single = model.scores(CASES, keys, mc_passes=3, batch_size=3, seed=11)
    planned = model.batch_plan(CASES, 3)
    sizes = [p.size for p in planned]
    for cut in range(1, len(planned)):
        at = sum(sizes[:cut])
        first = model.scores(take_slices(CASES, 0, at), keys, mc_passes=3, batch_size=3, seed=11)
        rest = model.scores(take_slices(CASES, at, 14), keys, mc_passes=3, batch_size=3, seed=11,
                            after=planned[:cut])
        for key in keys:
            joined = np.concatenate([first[key], rest[key]])
            assert joined.dtype == single[key].dtype and joined.tobytes() == single[key].tobytes(), (cut, key)
    unreplayed = model.scores(take_slices(CASES, sizes[0], 14), {"bald"}, mc_passes=3, batch_size=3, seed=11)
    assert not np.array_equal(unreplayed["bald"], single["bald"][sizes[0]:])  # the replay is what makes them equal


# --- on a local Ray instance -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def sharded_models(monkeypatch) -> list[ShardedModel]:
    """Every ShardedModel the loop scores with (their ``origins`` say where each shard ran); shard tasks get WAIT
    seconds before the test's process scores them itself."""
    seen: list = []
    real = loop.scoring_model

    @contextmanager
    def recording(*args, **kwargs):
        with real(*args, **kwargs) as model:
            if isinstance(model, ShardedModel):
                seen.append(model)
            yield model

    monkeypatch.setattr(loop, "scoring_model", recording)
    monkeypatch.setattr(shards_module, "GRACE_SECONDS", WAIT)
    return seen


def assert_same_experiment(single: Path, sharded: Path, rounds: int) -> None:
    """Score files bit-identical (every array: dtype, shape, bytes), selections and results equal."""
    a, b = ExperimentFolder(single), ExperimentFolder(sharded)
    for r in range(1, rounds + 1):
        ours, theirs = a.read_scores(r), b.read_scores(r)
        assert sorted(ours) == sorted(theirs)
        for key in ours:
            x, y = np.asarray(ours[key]), np.asarray(theirs[key])
            assert (x.dtype, x.shape) == (y.dtype, y.shape) and x.tobytes() == y.tobytes(), (r, key)
    for r in range(rounds + 1):
        pd.testing.assert_frame_equal(a.read_selection(r), b.read_selection(r))
    pd.testing.assert_frame_equal(pd.read_csv(single / "results.csv"), pd.read_csv(sharded / "results.csv"))


def fake_config(dataset: Path, strategy: str, **changes) -> Config:
    values = dict(dataset=str(dataset), strategy=strategy, rounds=2, initial=5, budget=4, iterations_per_epoch=2,
                  epochs_initial=1, epochs_per_round=1, mc_passes=3, score_batch_size=4)
    return Config(**{**values, **changes})


@pytest.mark.parametrize("strategy", ["bald", "usimf", "badge", "coreset"])
def test_fake_backend_sharded_runs_equal_the_single_process(local_ray, sharded_models, toy_dataset, tmp_path,
                                                            strategy, no_fsync):
    run_experiment(fake_config(toy_dataset, strategy), tmp_path / "single", progress=False,
                   backend_factory=fake_backend)
    run_experiment(fake_config(toy_dataset, strategy, score_shards=3), tmp_path / "sharded", progress=False,
                   backend_factory=fake_backend)
    assert_same_experiment(tmp_path / "single", tmp_path / "sharded", rounds=2)
    assert len(sharded_models) == 2  # one per round
    for model in sharded_models:
        assert model.origins and all(o[0] == "here" and "ray" in o for o in model.origins), model.origins


def test_more_shards_than_batches_are_clamped_and_said(local_ray, sharded_models, toy_dataset, tmp_path, no_fsync):
    said: list[str] = []
    run_experiment(fake_config(toy_dataset, "bald", rounds=1), tmp_path / "single", progress=False,
                   backend_factory=fake_backend)
    run_experiment(fake_config(toy_dataset, "bald", rounds=1, score_shards=500), tmp_path / "sharded", progress=False,
                   backend_factory=fake_backend, emit=said.append)
    assert_same_experiment(tmp_path / "single", tmp_path / "sharded", rounds=1)
    clamped = [line for line in said if line.startswith("score_shards: 500 shards asked")]
    batches = -(-len(ExperimentFolder(tmp_path / "sharded").read_scores(1)["ids"]) // 4)
    assert len(clamped) == 1 and f"{batches} shard(s)" in clamped[0], said
    assert len(sharded_models[0].origins[0]) == batches


def _round0(toy_dataset: Path, out: Path) -> tuple[object, dict, Path]:
    """A fake experiment's round 0: its backend, weights and checkpoint."""
    run_experiment(fake_config(toy_dataset, "bald", rounds=0), out, progress=False, backend_factory=fake_backend)
    backend = fake_backend(load_dataset(str(toy_dataset)), out / "nnunet", None)
    checkpoint = ExperimentFolder(out).checkpoint_file(0)
    return backend, backend.load_weights(checkpoint), checkpoint


def _pool_cases(backend) -> list[tuple[str, np.ndarray]]:
    return [(case, np.arange(len(image))) for case, image in sorted(backend.images.items())]


def test_a_checkpoint_missing_or_changed_during_a_sharded_score_is_one_line(local_ray, toy_dataset, tmp_path):
    backend, weights, checkpoint = _round0(toy_dataset, tmp_path / "exp")
    cases = _pool_cases(backend)
    with ShardedModel(backend, weights, checkpoint, 2, grace=WAIT) as model:
        kept = checkpoint.read_bytes()
        checkpoint.unlink()  # gone after this process read it: the shard task finds nothing
        with pytest.raises(FolderError) as missing:
            model.scores(cases, {"bald"}, mc_passes=3, batch_size=4, seed=0)
        checkpoint.write_bytes(kept[:-8] + b"changed!")
        with pytest.raises(FolderError) as changed:
            model.scores(cases, {"bald"}, mc_passes=3, batch_size=4, seed=0)
    for err, words in ((missing, ["checkpoint is missing", "node"]), (changed, ["not the checkpoint", "run again"])):
        text = str(err.value)
        assert "\n" not in text and str(checkpoint) in text and all(w in text for w in words), text
    checkpoint.unlink()
    with pytest.raises(FolderError, match="checkpoint is missing in this process"):
        ShardedModel(backend, weights, checkpoint, 2).__enter__()


def test_run_shards_never_cancels_a_task_that_came_back(local_ray, monkeypatch):
    """A cancel that meets a task's completion aborts the driver in Ray 2.60 (exit code 1, "Tried to complete
    task that was not pending"): it ended a whole pytest run. Tasks back with a result or an error are left alone."""
    from nnal.ray_session import run_shards

    cancelled: list = []
    real_cancel = local_ray.cancel
    monkeypatch.setattr(local_ray, "cancel", lambda ref, **kw: (cancelled.append(ref), real_cancel(ref, **kw)))
    assert run_shards(local_ray, local_ray.remote(json.dumps), [(i,) for i in range(4)], json.dumps,
                      grace=WAIT) == ["0", "1", "2", "3"]
    failing = local_ray.remote(json.dumps)  # a set is not JSON: each task fails and its shard is scored here
    assert run_shards(local_ray, failing, [({i},) for i in range(3)], str, grace=WAIT) == ["0", "1", "2"]
    assert cancelled == []


def test_run_shards_scores_here_what_ray_cannot_and_raises_a_users_mistake(local_ray):
    from nnal.ray_session import run_shards

    said: list[str] = []
    unschedulable = local_ray.remote(json.dumps).options(resources={"no-such-resource": 1})
    start = time.monotonic()
    assert run_shards(local_ray, unschedulable, [(i,) for i in range(4)], json.dumps, grace=1.0,
                      say=said.append) == ["0", "1", "2", "3"]
    assert time.monotonic() - start < WAIT and len(said) == 3 and all("scored here" in line for line in said)
    failing = local_ray.remote(json.dumps)  # a set is not JSON: the task fails, the shard is scored here
    assert run_shards(local_ray, failing, [({i},) for i in range(3)], str, grace=WAIT, say=said.append) == [
        "0", "1", "2"]
    assert sum("lost on Ray (TypeError)" in line for line in said) == 2
    missing = local_ray.remote(shards_module.score_shard)  # a shard task whose checkpoint is not there
    calls = [(None, f"/nowhere/{i}.pt", "", "scores", [], {}, 1) for i in range(2)]
    with pytest.raises(FolderError, match="checkpoint is missing on node"):
        run_shards(local_ray, missing, calls, str, grace=WAIT)


# --- nnU-Net: real rounds on a few Hippocampus cases -------------------------------------------------------------

TINY = dict(rounds=1, initial=20, budget=10, pool_cases=4, test_cases=2, batch_size=8, iterations_per_epoch=5,
            epochs_initial=2, epochs_per_round=1, mc_passes=3, score_batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def bald_single(mini_hippocampus, nnunet_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bald") / "single"
    run_experiment(Config(dataset=str(mini_hippocampus), strategy="bald", **{**TINY, "rounds": 2}), out,
                   cache=nnunet_cache, progress=False)
    return out


@pytest.mark.slow
def test_nnunet_bald_scored_in_shards_through_the_cli_equals_one_process(local_ray, sharded_models, bald_single,
                                                                        mini_hippocampus, nnunet_cache, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY, "rounds": 2}))
    result = run_cli(["run", "--dataset", mini_hippocampus, "--strategy", "bald", "--config", config, "--output",
                      tmp_path / "sharded", "--cache", nnunet_cache, "--score-shards", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert_same_experiment(bald_single, tmp_path / "sharded", rounds=2)
    assert [m.origins for m in sharded_models] == [[["here", "ray"]], [["here", "ray"]]]


@pytest.mark.slow
def test_nnunet_usimf_scored_in_shards_equals_one_process(local_ray, sharded_models, bald_single, mini_hippocampus,
                                                          nnunet_cache, tmp_path, monkeypatch):
    """USIMF: MC variance over the pool, the Fisher over the query set (parts added in order), the pool's gradient
    embeddings: every call in shards. The single process runs on one torch thread, as each of the 2 shards does:
    oneDNN's weight gradients (the Fisher) can differ in their last bit between thread counts."""
    monkeypatch.setenv("NNAL_THREADS", "1")
    for name, shards in (("single", 1), ("sharded", 2)):
        run_experiment(Config(dataset=str(mini_hippocampus), strategy="usimf", score_shards=shards, **TINY),
                       tmp_path / name, cache=nnunet_cache, share_round0=bald_single, progress=False)
    assert_same_experiment(tmp_path / "single", tmp_path / "sharded", rounds=1)
    (model,) = sharded_models
    assert len(model.origins) == 3 and all("ray" in o for o in model.origins), model.origins


# --- at the edge, and at the end ----------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_shard_counts_and_a_missing_ray_are_one_line_before_anything_is_written(toy_dataset, tmp_path,
                                                                                  monkeypatch):
    base = ["run", "--dataset", toy_dataset, "--output", tmp_path / "exp", "--quiet"]
    for value, words in (("0", ["score_shards", "greater than or equal to 1"]), ("two", ["score_shards"]),
                         ("1.5", ["score_shards"])):
        assert_one_line_error(run_cli([*base, "--score-shards", value]), words)
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the grid extra
    assert_one_line_error(run_cli([*base, "--score-shards", "2"]), ["score_shards: 2", "Ray", "[grid]"])
    assert not (tmp_path / "exp").exists()


def test_changing_score_shards_resumes_the_same_experiment(toy_dataset, tmp_path, no_fsync):
    out = tmp_path / "exp"
    run_experiment(fake_config(toy_dataset, "random", rounds=1), out, progress=False, backend_factory=fake_backend)
    before = _snapshot(out)
    run_experiment(fake_config(toy_dataset, "random", rounds=1, score_shards=4), out, progress=False,
                   backend_factory=fake_backend)  # finished: nothing to do, and no "existing experiment differs"
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k != "config.yaml"} == {k: v for k, v in before.items()
                                                                      if k != "config.yaml"}
    assert yaml.safe_load(after["config.yaml"])["score_shards"] == 4


LOCAL_RAY = """
import sys, time, psutil
from nnal.ray_session import ray_instance
with ray_instance():
    print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_sharded_score_leaves_no_process_behind(sig):
    """The local Ray instance a sharded score starts ends with it: Ctrl-C or SIGTERM, and every process it started
    is gone."""
    pytest.importorskip("ray")
    proc = subprocess.Popen([sys.executable, "-c", LOCAL_RAY], stdout=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        line = _first_line(proc, WAIT)
        started = [psutil.Process(int(pid)) for pid in line.split()]
        assert started, "the local Ray instance started no process"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), f"the local Ray instance did not start within {timeout} s"
    return proc.stdout.readline()


def test_score_shards_is_not_a_protocol_setting():
    from nnal.analysis.protocol import NOT_PROTOCOL
    from nnal.config import RESUMABLE_CHANGES

    assert "score_shards" in NOT_PROTOCOL and "score_shards" in RESUMABLE_CHANGES
    assert json.loads(json.dumps(Config(dataset="x").to_dict()))["score_shards"] == 1
