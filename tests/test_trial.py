"""The trial of coarse moves (uvc.search.trial) and its fixed probe (data.probe)."""
import random

import numpy as np
import pytest
import torch

from data.probe import probe_batch
from uvc.deploy.freeze import base_spec
from uvc.search.masked_model import MaskedViT
from uvc.search.masks import group_scores, stacked_weights
from uvc.search.primal_dual import PrimalDual
from uvc.search import UVCSearch
from uvc.search.trial import FlipTrial
from tests.helpers import demo_search_config, noisy_tiny_vit

CPU = torch.device("cpu")


class _Noisy(torch.utils.data.Dataset):
    """A data set whose transform draws from all three global random streams."""

    def __len__(self):
        return 50

    def __getitem__(self, i):
        jitter = torch.rand(()) + np.random.rand() + random.random()
        return torch.full((1, 8, 8), float(i)) + jitter, i % 10


def test_probe_is_the_same_every_time_and_leaves_the_random_streams_alone():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(()), np.random.rand(), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    a = probe_batch(_Noisy(), 8, seed=3)
    assert (torch.rand(()), np.random.rand(), random.random()) == expected
    b = probe_batch(_Noisy(), 8, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (8, 1, 8, 8) and len(set(a[1].tolist())) > 1
    assert not torch.equal(probe_batch(_Noisy(), 8, seed=4)[0], a[0])
    assert len(probe_batch(_Noisy(), 500, seed=3)[0]) == 50 and len(probe_batch(_Noisy(), 0, seed=3)[0]) == 0


def _model_and_trial(free_block: int = None):
    """The tiny ViT whose fc2 columns 64.. are zero in every block (free to remove: score 0); with
    `free_block`, that block's proj and fc2 are all zero, biases too (it computes nothing). The probe's
    targets are the model's own predictions, with a sharpened head."""
    vit = noisy_tiny_vit(seed=0, scale=0.2)
    with torch.no_grad():
        vit.head.weight.mul_(20)
        for blk in vit.blocks:
            blk.mlp.fc2.weight[:, 64:] = 0
        if free_block is not None:
            for layer in (vit.blocks[free_block].attn.proj, vit.blocks[free_block].mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()
    model = MaskedViT(vit).eval()
    images = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = model(images).argmax(-1)
    return model, FlipTrial(images, targets, batch_size=32)


def _skip(spec: dict, block: int) -> dict:
    out = {**spec, "blocks": [dict(b) for b in spec["blocks"]]}
    out["blocks"][block]["skipped"] = True
    return out


def test_a_block_that_matters_fails_its_trial_against_free_groups():
    model, trial = _model_and_trial()
    base = base_spec(model.vit, "")
    scores = group_scores(*stacked_weights(model.vit), model.num_heads)
    assert not trial.accept(model, _skip(base, 1), base, scores)
    assert trial.last["trial_loss_flip"] > trial.last["trial_loss_instead"]
    assert (trial.trials, trial.rejected) == (1, 1)


def test_a_block_that_computes_nothing_passes_its_trial():
    model, trial = _model_and_trial(free_block=2)
    base = base_spec(model.vit, "")
    scores = group_scores(*stacked_weights(model.vit), model.num_heads)
    assert trial.accept(model, _skip(base, 2), base, scores)
    assert trial.last["trial_loss_flip"] <= trial.last["trial_loss_instead"]
    assert (trial.trials, trial.rejected) == (1, 0)


def _search_with_moves_proposed(trial, with_model: bool = True, **flags):
    """A search whose next gate update both skips block 1 and drops patch 5 (their logits pushed
    just past the boundary by the budget); the update is given the model unless `with_model` is False."""
    vit = noisy_tiny_vit()
    model = MaskedViT(vit)
    search = UVCSearch(vit, demo_search_config(gating_interval=1, **flags), CPU, search_steps=400)
    search.set_epoch(0)
    search.pd.trial = trial
    pd: PrimalDual = search.pd
    search.prepare(model, training=True)
    with torch.no_grad():
        search.arch.gate_logits[1] = torch.tensor([0.0, 0.01])
        search.arch.patch_logits[5] = 0.01
        search.arch.z.fill_(1.0)
    pd.t = 1
    pd.scores = pd.scores_now(vit)
    grads = {"gate": torch.zeros(4, 2), "patch": torch.zeros(16)}
    grads["gate"][1] = torch.tensor([-1.0, 1.0])  # the budget pushes block 1 towards skip
    grads["patch"][5] = 1.0  # and patch 5 towards drop
    search.arch.gate_logits.grad = torch.zeros(4, 2)
    search.arch.patch_logits.grad = torch.zeros(16)
    pd.gate_step(grads, target=0.0, model=model if with_model else None)
    return search.arch.gate_logits.detach(), search.arch.patch_logits.detach()


class _Verdict(FlipTrial):
    def __init__(self, ok: bool):
        super().__init__(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), 1)
        self.ok, self.seen = ok, []

    def accept(self, model, flip, base, scores):
        self.seen.append((flip["patches_kept"], base["patches_kept"], [b["skipped"] for b in flip["blocks"]]))
        self.inputs = (model, scores)
        return self.ok


def test_a_patch_drop_stands_only_if_its_trial_passes_and_block_skips_are_not_tried():
    """The trial sees the architecture with and without the proposed patch drop (the block skip of
    the same update already in both); a refused drop goes back to REFUSED, an accepted one is
    settled HYSTERESIS past the boundary. The skip stands without a trial."""
    everything = list(range(16))
    for verdict in (False, True):
        trial = _Verdict(verdict)
        gates, patches = _search_with_moves_proposed(trial)
        assert trial.seen == [([p for p in everything if p != 5], everything, [False, True, False, False])]
        assert gates[1, 0] - gates[1, 1] >= 1.0 - 1e-6  # skipped, no trial
        assert patches[5] == (-1.0 if verdict else 4.0)
        model, scores = trial.inputs  # the search's model, and the group scores of its weights
        assert isinstance(model, MaskedViT)
        assert torch.equal(scores.dims, group_scores(*stacked_weights(model.vit), 2).dims)


@pytest.mark.parametrize("pruning,with_model", [(0, True), (1, False)])
def test_a_patch_drop_stands_untried_without_pruning_or_without_the_model(pruning, with_model):
    """Without pruning there are no groups to take the same MACs from, and without the model there is
    nothing to evaluate: the proposed drop stands without a trial (one that would refuse it)."""
    trial = _Verdict(False)
    _, patches = _search_with_moves_proposed(trial, with_model, enable_pruning=pruning)
    assert trial.seen == [] and patches[5] == -1.0
