"""Smoke tests of nnal.bench: selection and similarity-build benchmarks at small sizes."""

from __future__ import annotations

import json

import pytest

from nnal import bench


def test_bench_selection_smoke() -> None:
    with pytest.raises(ValueError, match="unknown scale"):
        bench.bench_selection("spleen")
    res = bench.bench_selection("hippocampus", with_submodlib=False, repeats=2)
    assert (res["n"], res["q"], res["budget"]) == (7662, 942, 100)
    for key in ("scale", "seconds", "peak_rss_mb", "objective", "submodlib_seconds", "submodlib_objective"):
        assert key in res
    assert res["seconds"] > 0 and res["exact_seconds"] > 0 and res["peak_rss_mb"] > res["s_size_mb"]
    assert res["seconds"] <= res["seconds_median"] and len(res["seconds_all"]) == 2
    assert res["threads"] >= 1 and res["backend"] in ("numba", "numpy") and res["numpy_same_picks"]
    assert 0.99 <= res["objective_ratio"] <= 1.01
    assert res["submodlib_seconds"] is None and "skipped" in res["submodlib_error"]
    assert "ours stochastic" in bench.format_bench(res)
    json.dumps(res)


def test_bench_similarity_smoke() -> None:
    with pytest.raises(ValueError, match="kind"):
        bench.bench_similarity_and_selection("hippocampus", d=8, kind="dot")
    with pytest.raises(ValueError, match="device"):
        bench.bench_similarity_and_selection("hippocampus", d=8, device="tpu")
    for kind in ("fisher", "cosine"):
        res = bench.bench_similarity_and_selection("hippocampus", d=48, kind=kind)
        for key in ("scale", "seconds", "peak_rss_mb", "objective", "submodlib_seconds", "submodlib_objective"):
            assert key in res
        assert res["d"] == 48 and res["gflop"] == pytest.approx(2 * 7662 * 942 * 48 / 1e9)
        assert res["seconds"] == pytest.approx(res["build_seconds"] + res["shift_seconds"] + res["selection_seconds"])
        assert res["gflops"] > 0 and res["peak_rss_mb"] > res["s_size_mb"]
        assert 0.98 <= res["objective_ratio"] <= 1.02
        assert "GFLOP/s" in bench.format_similarity_bench(res)
        json.dumps(res)
