"""CT end to end, reduced: a small synthetic Spleen-like set (labelled synthetic) through nnU-Net's own plan (CT
normalisation) and one selection round of a strategy of each kind of model pass, with the real backend on the CPU
(every strategy at 512 x 512: benchmarks/ct_end_to_end.py, results/ct-end-to-end-cpu.json)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from nnal.config import build
from nnal.loop import run_experiment
from nnal.synth import synthesize

pytestmark = pytest.mark.slow

SETTINGS = dict(preset="cpu", device="cpu", rounds=1, initial=12, budget=4, mc_passes=2, iterations_per_epoch=2,
                epochs_initial=2, epochs_per_round=1, batch_size=4, score_batch_size=16, test_cases=1)


@pytest.fixture(scope="module")
def spleen(tmp_path_factory):
    return synthesize(kind="spleen", output=tmp_path_factory.mktemp("ct") / "Dataset902_SyntheticSpleen", cases=5,
                      size=64, slices=(12, 16), seed=1)


# ground truth (no model pass), MC dropout, dropout-free class scores, last-conv gradients, the Fisher and gradients
KINDS = ["random-fg", "bald", "clasp-pe", "badge", "usimf"]


def test_a_strategy_of_each_kind_completes_a_round_on_synthetic_ct(spleen, tmp_path):
    cache, first = tmp_path / "cache", None
    strategies = ["random", *KINDS]
    for strategy in strategies:
        folder = tmp_path / strategy
        run_experiment(build({"dataset": str(spleen), "strategy": strategy, **SETTINGS}), folder, cache=cache,
                       share_round0=first, progress=False)
        first = first or folder
        results = pd.read_csv(folder / "results.csv")
        assert results["round"].max() == 1, strategy
        assert len(pd.read_csv(folder / "round_001" / "selection.csv")) == 4, strategy
    plans = json.loads(next(cache.glob("*/preprocessed/*/nnUNetPlans.json")).read_text())
    assert plans["configurations"]["2d"]["normalization_schemes"] == ["CTNormalization"]
    assert json.loads((spleen / "dataset.json").read_text())["synthetic"] is True


def test_a_case_whose_slices_differ_in_size_from_the_plan_is_scored_whole(tmp_path):
    """CT sets mix in-plane sizes: a case of 96 x 96 slices in a set planned on 64 x 64 ones (patch 64 x 64) is
    scored on its whole slices, padded to the network's stride, beside the others, and a round completes."""
    import nibabel as nib
    import numpy as np

    spleen = synthesize(kind="spleen", output=tmp_path / "Dataset903_MixedSpleen", cases=5, size=64,
                        slices=(12, 16), seed=3)
    larger = synthesize(kind="spleen", output=tmp_path / "large", cases=1, size=96, slices=(12, 12), seed=4)
    meta = json.loads((spleen / "dataset.json").read_text())
    ending = meta["file_ending"]
    for sub, suffix in (("imagesTr", "_0000"), ("labelsTr", "")):
        (source,) = (larger / sub).glob(f"*{suffix}{ending}")
        (spleen / sub / f"spleen_big{suffix}{ending}").write_bytes(source.read_bytes())
    meta["numTraining"] += 1
    (spleen / "dataset.json").write_text(json.dumps(meta))
    cache, first = tmp_path / "cache", None
    for strategy in ("random", "bald"):
        folder = tmp_path / strategy
        run_experiment(build({"dataset": str(spleen), "strategy": strategy, **{**SETTINGS, "test_cases": 1}}),
                       folder, cache=cache, share_round0=first, progress=False)
        first = first or folder
    pool = pd.read_csv(tmp_path / "bald" / "pool.csv")
    with np.load(tmp_path / "bald" / "round_001" / "scores.npz") as scores:
        scored = set(scores["ids"].tolist())
    assert set(pool["id"]) - set(pd.read_csv(tmp_path / "bald" / "round_000" / "selection.csv")["id"]) == scored
    plans = json.loads(next(cache.glob("*/preprocessed/*/nnUNetPlans.json")).read_text())
    patch = plans["configurations"]["2d"]["patch_size"]
    big = nib.load(str(spleen / "imagesTr" / f"spleen_big_0000{ending}")).shape
    assert max(big[:2]) > max(patch), (big, patch)  # the large case's slices exceed the planned patch
    if "spleen_big" in set(pool["case"]):
        assert (pool["case"] == "spleen_big").sum() > 0
