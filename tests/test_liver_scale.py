"""The query step at the paper's Liver scale, scaled down: per-pixel data exists only per batch, the score files are
streamed and read back equal, and the checks make no whole-array temporaries. (Full-size peaks, seconds and bytes:
benchmarks/liver_query_step.py, results/liver-scale-query-step.json.)"""

from __future__ import annotations

import importlib.util
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from nnal.experiment import ExperimentFolder
from nnal.loop import phase_seed
from nnal.strategies import get_strategy
from nnal.strategies.checks import check_scores

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "liver_query_step.py"
PIXELS = (48, 48)  # 2,304 pixels a slice: more entries than any per-slice vector here, so a pixel map would show
BATCH = 16
PARAMETERS = {"bottleneck": 5_000, "last-decoder-conv": 300, "decoder-convs": 1_500, "decoder": 1_800,
              "network": 6_000}
DIMS = {"features": 96, "pooled_features": 16, "head_embeddings": 9}
# the benchmark's strategies, scaled down with the pool: 256-entry embeddings, USIMF's prefilter at 500 of 1,100
SCALED = {"badge": {"embedding_dim": 256}, "usimc": {"embedding_dim": 256}, "usimf": {"embedding_dim": 256}}


def _bench():
    spec = importlib.util.spec_from_file_location("liver_query_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()
LiverShapedModel = bench.LiverShapedModel


def _options(name: str, options: dict) -> dict:
    scaled = {**SCALED.get(name, {}), **options}
    if name == "usimf" and "prefilter" not in options:
        scaled["prefilter"] = 500
    return scaled


def _model() -> LiverShapedModel:
    return LiverShapedModel(pixels=PIXELS, max_batch=BATCH, parameters=PARAMETERS, dims=DIMS)


@pytest.fixture(scope="module")
def pool():
    return bench.liver_pool(slices=1_200, cases=12)


@pytest.mark.parametrize("label", [s[0] for s in bench.STRATEGIES])
def test_query_step_holds_pixels_per_batch_and_keeps_none(label, pool, tmp_path):
    _, name, options = next(s for s in bench.STRATEGIES if s[0] == label)
    config = bench.query_config(name, _options(name, options), budget=20, mc_passes=4, score_batch_size=BATCH)
    model = _model()  # refuses (MemoryError) batches of more than BATCH slices
    chosen = bench.query_step(tmp_path, pool, config, model)

    assert len(chosen) == 20
    for shape in model.pixel_tensors:  # (T, B, C, H, W) or (B, C, H, W): one batch of slices at most
        assert shape[-2:] == PIXELS and shape[-4] <= BATCH, shape
    if get_strategy(name).needs_for(config.strategy_options) or name in ("coreset", "badge", "usimc", "usimf"):
        assert model.pixel_tensors  # the fake did make per-pixel data, one batch at a time
    unlabeled = len(pool) - bench.LABELED
    assert model.largest_return < unlabeled * np.prod(PIXELS)
    with np.load(tmp_path / "round_001" / "scores.npz") as data:  # no dense per-pixel array on disk
        for key in data.files:
            array = data[key]
            per_row = array.size // max(1, len(array)) if array.ndim else 1
            assert array.ndim <= 2 and per_row < np.prod(PIXELS), key


@pytest.mark.parametrize("label", ["coreset", "badge", "usimc", "usimf", "usimf[prefilter=null]", "clasp-pe"])
def test_streamed_scores_read_back_equal_and_select_the_same(label, pool, tmp_path):
    _, name, options = next(s for s in bench.STRATEGIES if s[0] == label)
    config = bench.query_config(name, _options(name, options), budget=20, mc_passes=4, score_batch_size=BATCH)
    chosen = bench.query_step(tmp_path, pool, config, _model())

    folder = ExperimentFolder(tmp_path)
    mapped = folder.read_scores(1)
    with np.load(folder.scores_file(1)) as data:
        loaded = {k: data[k] for k in data.files}
    assert mapped.keys() == loaded.keys()
    for key, value in loaded.items():
        assert mapped[key].dtype == value.dtype and np.array_equal(mapped[key], value), key
    strategy = get_strategy(name)
    budget = config.budget_for(1)
    for scores in (mapped, loaded):  # the selection from the mapped file is the selection from arrays in memory
        rng = np.random.default_rng(phase_seed(config.seed, 1, "select"))
        assert strategy(scores, budget, rng, config.strategy_options).tolist() == chosen.tolist()


def test_scores_file_round_trip_maps_large_members_aligned(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "ids": np.arange(9_000, dtype=np.int64),
        "features": rng.standard_normal((9_000, 40), dtype=np.float32),  # 1.4 MB: mapped
        "fortran": np.asfortranarray(rng.standard_normal((3_000, 50))),
        "strided": rng.standard_normal((4_000, 100))[:, ::2],
        "power_beta": np.array(2.5),
        "empty": np.zeros((0, 7), np.float32),
        "names": np.array(["a", "bc"]),
    }
    folder = ExperimentFolder(tmp_path)
    folder.write_scores(1, arrays)
    back = folder.read_scores(1)
    with np.load(folder.scores_file(1)) as data:  # still an ordinary .npz
        assert sorted(data.files) == sorted(arrays)
        for key, value in arrays.items():
            assert np.array_equal(data[key], value), key
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        assert np.array_equal(back[key], value), key
    for key in ("features", "fortran", "strided"):  # mapped read-only from the file, on 64-byte boundaries
        assert isinstance(back[key].base, np.memmap) and not back[key].flags.writeable
        assert back[key].ctypes.data % 64 == 0
    assert not isinstance(back["ids"].base, np.memmap)  # small members are read into memory
    first = folder.scores_file(1).read_bytes()
    folder.write_scores(1, arrays)
    assert folder.scores_file(1).read_bytes() == first  # the same arrays, the same bytes (resumes compare them)


def _traced_peak(fn) -> int:
    """Bytes allocated at the peak of ``fn`` beyond what was held before (tracemalloc, which sees numpy's arrays)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_write_scores_makes_no_copy_of_an_array(tmp_path):
    big = np.random.default_rng(1).standard_normal((2_000, 5_000), dtype=np.float32)  # 40 MB
    folder = ExperimentFolder(tmp_path)
    extra = _traced_peak(lambda: folder.write_scores(1, {"ids": np.arange(2_000), "features": big}))
    assert extra < big.nbytes // 2  # streamed: neither the file's bytes nor a copy of the array in memory
    assert np.array_equal(folder.read_scores(1)["features"], big)


def test_check_scores_makes_no_whole_array_mask():
    big = np.random.default_rng(2).standard_normal((4_000, 5_000), dtype=np.float32)
    scores = {"ids": np.arange(4_000), "features": big}
    extra = _traced_peak(lambda: check_scores(scores, ("features",)))
    assert extra < big.size // 2  # a mask of the whole array would be big.size bytes
    big[-1, -1] = np.nan  # the last block is checked too
    with pytest.raises(ValueError, match="NaN or inf"):
        check_scores(scores, ("features",))
