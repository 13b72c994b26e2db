"""Fine-tuning from the previous round's weights, as the paper's code ran it: nnU-Net's pretrained-weights loader,
which leaves the segmentation heads at a fresh initialisation (``finetune_heads: reinit``, the default), or every
weight loaded (``keep``). Against nnU-Net's own loader, and through nnU-Net's trainer on a few Hippocampus cases."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_mini_hippocampus, small_unet

from nnal.backend.training import HEAD_KEY, load_round_weights


def perturbed(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Stand-in for a trained round: every weight moved (through the parameters: nnU-Net registers each
    convolution under two keys, ``.conv`` and ``.all_modules.0``, which must stay one tensor)."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_reinit_loads_what_nnunets_pretrained_loader_loads(tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    previous = perturbed(small_unet())
    ours, theirs = small_unet(), small_unet()
    fresh = {k: v.clone() for k, v in ours.state_dict().items()}
    load_round_weights(ours, previous, "reinit")
    torch.save({"network_weights": previous}, tmp_path / "checkpoint.pth")
    with contextlib.redirect_stdout(io.StringIO()):
        load_pretrained_weights(theirs, str(tmp_path / "checkpoint.pth"))
    heads = [k for k in fresh if HEAD_KEY in k]
    assert len(heads) == 2 * len(ours.decoder.seg_layers)  # every head, the deep-supervision ones too
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
        assert torch.equal(value, fresh[key] if key in heads else previous[key]), key


def test_keep_loads_every_weight_and_a_missing_one_is_refused():
    previous = perturbed(small_unet())
    net = small_unet()
    load_round_weights(net, previous, "keep")
    assert all(torch.equal(v, previous[k]) for k, v in net.state_dict().items())
    body = next(k for k in previous if HEAD_KEY not in k)
    with pytest.raises(ValueError, match=body):
        load_round_weights(small_unet(), {k: v for k, v in previous.items() if k != body}, "reinit")


# --- through nnU-Net's trainer ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from nnal.backend.session import Backend
    from nnal.dataset import load_dataset

    data = make_mini_hippocampus(tmp_path_factory.mktemp("data") / "Task04_Hippocampus", 6)
    return Backend(load_dataset(data), tmp_path_factory.mktemp("cache"), dropout="element", dropout_p=0.01,
                   mc_dropout_p=0.1, num_processes=0, device="cpu")


def schedule(heads: str | None, lr: float) -> SimpleNamespace:
    """The fields Backend.train reads from a config; ``heads`` None: the config's default ``finetune_heads``."""
    from nnal.config import Config

    default = Config.model_fields["finetune_heads"].default
    return SimpleNamespace(iterations_per_epoch=3, batch_size=8, initial_lr=lr, augmentation=False,
                           finetune_heads=default if heads is None else heads)


def labeled_set(backend) -> dict[str, np.ndarray]:
    cases = backend.splits[0]["train"][:3]
    return {case: np.arange(len(counts)) for case, counts in backend.slice_counts(cases).items()}


def fresh_network(backend, labeled, seed: int, log_dir) -> dict[str, torch.Tensor]:
    """The network nnU-Net's trainer builds for a round of ``seed`` before any weight is loaded."""
    from nnal.backend import training
    from nnal.backend.runtime import nnunet_environment, seed_everything

    plan = training.Schedule(1, 3, 8, 1e-3, False)
    seed_everything(seed)
    with nnunet_environment(backend.root, 0), contextlib.redirect_stdout(io.StringIO()):
        trainer = training.make_trainer(backend.plans, backend.dataset_json, 0, labeled, plan, log_dir,
                                        backend.device, seed)
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], heads: bool) -> float:
    """||a - b|| / ||b|| over the heads' weights or over every other float weight."""
    keys = [k for k in b if (HEAD_KEY in k) == heads and b[k].is_floating_point() and "num_batches" not in k]
    diff = torch.cat([(a[k] - b[k]).flatten() for k in keys])
    return float(diff.norm() / torch.cat([b[k].flatten() for k in keys]).norm())


@pytest.mark.slow
def test_a_round_fine_tunes_the_previous_rounds_weights_and_reinitialises_its_heads(backend, tmp_path):
    labeled = labeled_set(backend)
    round0 = backend.train(0, labeled, schedule(None, 1e-2), 2, None, tmp_path / "r0", seed=1)
    fresh = fresh_network(backend, labeled, 2, tmp_path / "fresh")
    after = {heads: backend.train(0, labeled, schedule(heads, 1e-3), 1, round0, tmp_path / str(heads), seed=2)
             for heads in (None, "reinit", "keep")}
    for heads, weights in after.items():
        # the body is round 0's, a few small steps on: far from the fresh network this round's trainer built
        assert distance(weights, round0, heads=False) < 0.05 < 0.5 < distance(weights, fresh, heads=False), heads
    # the heads: nnU-Net's fresh ones (the default and reinit) or round 0's (keep)
    for heads in (None, "reinit"):
        assert distance(after[heads], fresh, heads=True) < 0.05 < 0.5 < distance(after[heads], round0, heads=True)
    assert distance(after["keep"], round0, heads=True) < 0.05 < 0.5 < distance(after["keep"], fresh, heads=True)
    for key in after[None]:  # no field: the default, the same run
        assert torch.equal(after[None][key], after["reinit"][key]), key
