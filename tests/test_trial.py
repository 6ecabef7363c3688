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
from uvc.search.gates import HYSTERESIS, REFUSED
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


def _search_with_moves_proposed(trial, with_model: bool = True, before_update=None, **flags):
    """A search whose next gate update both skips block 1 and drops patch 5 (their logits pushed
    just past the boundary by the budget); the update is given the model unless `with_model` is False.
    `trial`: the patch trial; `before_update(search)`: called just before the update."""
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
    if before_update is not None:
        before_update(search)
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


def test_a_patch_drop_stands_only_if_its_trial_passes_and_the_patch_trial_does_not_try_skips():
    """The trial sees the architecture with and without the proposed patch drop (the block skip of
    the same update already in both); a refused drop goes back to REFUSED, an accepted one is
    settled HYSTERESIS past the boundary. Without a skip trial the skip stands untried."""
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


def test_the_probe_loss_is_the_mean_cross_entropy_over_every_image_in_batches_of_any_size():
    """loss() = sum of the per-image cross-entropy over the whole probe / its size, whatever the batch
    size (here one that does not divide the 64 images), as one pass over it computes it."""
    model, trial = _model_and_trial()
    base = base_spec(model.vit, "")
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(model(trial.images).float(), trial.targets))
    for batch in (64, 24, 1):
        trial.batch_size = batch
        assert trial.loss(model, base) == pytest.approx(expected, rel=1e-5)
    assert trial.loss(model, _skip(base, 1)) != pytest.approx(expected, rel=1e-3)  # evaluated as the spec says


class _Recorder:
    """A stand-in model on the meta device that records the inputs of each forward pass."""
    def __init__(self):
        self.vit = type("V", (), {"pos_embed": torch.empty(1, device="meta")})()
        self.training, self.seen = True, []

    def eval(self):
        self.training = False

    def train(self, mode):
        self.training = mode

    def __call__(self, x):
        self.seen.append(x)
        self.out = torch.empty(len(x), 10, device=x.device), torch.empty(len(x), 10, device=x.device)
        return self.out


def test_the_probe_runs_on_the_models_device_in_batches_and_reads_the_class_token_head(monkeypatch):
    """Images, targets and the running sum go to the device of the model (meta here, as a GPU's would
    be), in batches of batch_size (at least 1); of a (cls, dist) output pair the first is scored; the
    model's training mode is restored."""
    from uvc.search import trial as trial_module
    model, scored = _Recorder(), []
    monkeypatch.setattr(trial_module, "apply_spec", lambda m, spec: None)
    monkeypatch.setattr(trial_module.F, "cross_entropy",
                        lambda out, y, reduction: scored.append((out, y, reduction)) or torch.zeros(len(y), device=y.device))
    monkeypatch.setattr(trial_module, "all_reduce_mean", lambda t: scored.append(t) or torch.tensor(0.0))
    images, targets = torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)
    for batch, calls in ((0, 3), (1, 3), (2, 2)):
        model.seen, scored[:] = [], []
        FlipTrial(images, targets, batch_size=batch).loss(model, {})
        assert [len(x) for x in model.seen] == ([1, 1, 1] if calls == 3 else [2, 1])
        assert all(x.device.type == "meta" for x in model.seen) and model.training
        out, y, reduction = scored[-2]
        assert out is model.out[0] and y.device.type == "meta" and reduction == "none"
        assert scored[-1].device.type == "meta"  # the mean, averaged over ranks


class _Cost:
    """A cost model of its own (a latency table's stand-in): what the trial must price with."""


def test_the_alternative_is_fitted_to_the_flips_ratio_under_the_budgets_cost_model(monkeypatch):
    """accept() prices both architectures with the budget's cost model (MACs, with the attention
    matmuls as configured, when there is none), fits the flip with no change (budget 1, tolerance 1:
    the same value-dim padding) and the alternative to the flip's cost ratio, and counts the trials
    and the refusals over calls."""
    from uvc.search import trial as trial_module
    calls = []
    monkeypatch.setattr(trial_module, "spec_cost", lambda cost, spec: 3.0)
    monkeypatch.setattr(trial_module, "dense_cost", lambda cost: 4.0)
    monkeypatch.setattr(trial_module, "fit_to_budget",
                        lambda spec, scores, budget, **kw: calls.append((spec, budget, kw)) or (spec, {}))
    losses = iter([2.0, 1.0, 1.0, 2.0])  # refused, then accepted
    monkeypatch.setattr(FlipTrial, "losses", lambda self, model, spec: torch.tensor([next(losses)]))
    images, targets = torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long)
    model = noisy_tiny_vit()
    base = base_spec(model, "")
    flip = _skip(base, 1)
    own = _Cost()
    trial = FlipTrial(images, targets, 1, cost=own)
    assert trial.last == {}  # nothing tried yet
    assert not trial.accept(None, flip, base, None)
    assert [(c[0], c[1], c[2]) for c in calls] == [(flip, 1.0, {"tolerance": 1.0, "cost": own}),
                                                    (base, 0.75, {"tolerance": 1.0, "cost": own})]
    assert trial.accept(None, flip, base, None)
    assert (trial.trials, trial.rejected) == (2, 1)  # counted over the calls
    assert trial.last == {"trial_loss_flip": 1.0, "trial_loss_instead": 2.0, "trial_loss_se": 0.0}
    for with_attn in (True, False):
        calls.clear()
        losses = iter([1.0, 1.0])
        kwargs = {} if with_attn else {"with_attn": False}
        FlipTrial(images, targets, 1, **kwargs).accept(None, flip, base, None)
        cost = calls[0][2]["cost"]
        assert isinstance(cost, trial_module.MacsCost) and cost.with_attn is with_attn and calls[1][2]["cost"] is cost


def test_a_margin_asks_the_flip_to_be_cheaper_by_that_many_paired_standard_errors(monkeypatch):
    """d = per-image CE(flip) - CE(instead) = [-0.5, 0.1, -0.2, 0]: mean -0.15, paired standard error
    sqrt(0.07 / 4) = 0.1323. The flip stands at margins 0 and 1 (-0.018), not at 1.2 (+0.009); a tie on
    every image stands at any margin."""
    from uvc.search import trial as trial_module
    monkeypatch.setattr(trial_module, "spec_cost", lambda cost, spec: 3.0)
    monkeypatch.setattr(trial_module, "dense_cost", lambda cost: 4.0)
    monkeypatch.setattr(trial_module, "fit_to_budget", lambda spec, scores, budget, **kw: (spec, {}))
    per_image = {"flip": torch.ones(4), "instead": torch.tensor([1.5, 0.9, 1.2, 1.0])}
    monkeypatch.setattr(FlipTrial, "losses", lambda self, model, spec: per_image[spec])
    images, targets = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    verdicts = {m: FlipTrial(images, targets, 4, cost=_Cost(), margin=m).accept(None, "flip", "instead", None)
                for m in (0.0, 1.0, 1.2)}
    assert verdicts == {0.0: True, 1.0: True, 1.2: False}
    trial = FlipTrial(images, targets, 4, cost=_Cost(), margin=1.0)
    trial.accept(None, "flip", "instead", None)
    assert trial.last["trial_loss_se"] == pytest.approx((0.07 / 4) ** 0.5)
    assert trial.last["trial_loss_instead"] == pytest.approx(1.15) and trial.last["trial_loss_flip"] == 1.0
    per_image["instead"] = torch.ones(4)
    assert FlipTrial(images, targets, 4, cost=_Cost(), margin=3.0).accept(None, "flip", "instead", None)
    per_image["instead"] = torch.tensor([1.3, 0.7, 1.1, 1.0])  # d: mean -0.025, standard error 0.125
    assert FlipTrial(images, targets, 4, cost=_Cost()).accept(None, "flip", "instead", None)  # default: 0
    assert not FlipTrial(images, targets, 4, cost=_Cost(), margin=0.5).accept(None, "flip", "instead", None)
    per_image.update(flip=torch.ones(2), instead=torch.tensor([1.2, 1.0]))  # two images: var (0.02 - 0.01) * 2
    trial = FlipTrial(images[:2], targets[:2], 2, cost=_Cost(), margin=1.0)
    trial.accept(None, "flip", "instead", None)
    assert trial.last["trial_loss_se"] == pytest.approx(0.1)


def test_the_standard_error_counts_the_probe_images_of_every_rank(monkeypatch):
    """Two ranks with 4 probe images each (the same per-image differences; the mean over ranks is
    the identity): n = 8, var = (0.075 - 0.0225) * 8 / 7 = 0.06, standard error sqrt(0.06 / 8)."""
    from uvc.search import trial as trial_module
    monkeypatch.setattr(trial_module, "spec_cost", lambda cost, spec: 3.0)
    monkeypatch.setattr(trial_module, "dense_cost", lambda cost: 4.0)
    monkeypatch.setattr(trial_module, "fit_to_budget", lambda spec, scores, budget, **kw: (spec, {}))
    monkeypatch.setattr(trial_module, "get_world_size", lambda: 2)
    per_image = {"flip": torch.ones(4), "instead": torch.tensor([1.5, 0.9, 1.2, 1.0])}
    monkeypatch.setattr(FlipTrial, "losses", lambda self, model, spec: per_image[spec])
    trial = FlipTrial(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 4, cost=_Cost(), margin=1.0)
    trial.accept(None, "flip", "instead", None)
    assert trial.last["trial_loss_se"] == pytest.approx((0.06 / 8) ** 0.5)


def test_the_trial_counters_are_saved_and_restored():
    trial = FlipTrial(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), 1)
    trial.trials, trial.rejected = 7, 3
    state = trial.state_dict()
    assert state == {"flip_trials": 7, "flips_rejected": 3}
    fresh = FlipTrial(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), 1)
    fresh.load_state_dict({"flip_trials": torch.tensor(7), "flips_rejected": 3.0})  # as a checkpoint may hold them
    assert (fresh.trials, fresh.rejected) == (7, 3) and type(fresh.trials) is int and type(fresh.rejected) is int
    fresh.load_state_dict({})  # a checkpoint written without a trial
    assert (fresh.trials, fresh.rejected) == (0, 0)


class _SkipVerdict(FlipTrial):
    def __init__(self, ok: bool):
        super().__init__(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), 1, kind="skip")
        self.ok, self.seen = ok, []

    def accept(self, model, flip, base, scores):
        self.seen.append(([b["skipped"] for b in flip["blocks"]], [b["skipped"] for b in base["blocks"]],
                          flip["patches_kept"], base["patches_kept"]))
        self.inputs = (model, scores)
        return self.ok


def _search_with_a_skip_trial(verdict: bool, with_model: bool = True, **flags):
    trial = _SkipVerdict(verdict)

    def proposed(search):
        search.pd.skip_trial = trial
    gates, patches = _search_with_moves_proposed(None, with_model, before_update=proposed, **flags)
    return trial, gates, patches


def test_a_block_skip_stands_only_if_its_skip_trial_passes():
    """The skip trial sees the architecture with and without the proposed skip, before this update's
    patch drop (patches move after gates). Passed, the skip is settled HYSTERESIS past the boundary;
    refused, the gate goes back to keep - skip = REFUSED about its midpoint (0.005), like a fresh gate."""
    everything = list(range(16))
    for verdict in (False, True):
        trial, gates, patches = _search_with_a_skip_trial(verdict)
        assert trial.seen == [([False, True, False, False], [False] * 4, everything, everything)]
        skip, keep = gates[1].tolist()
        if verdict:
            assert skip - keep >= HYSTERESIS - 1e-6
        else:
            assert (keep - skip, (keep + skip) / 2) == (pytest.approx(REFUSED), pytest.approx(0.005))
        assert patches[5] == -1.0  # no patch trial here: the drop stands
        model, scores = trial.inputs
        assert isinstance(model, MaskedViT)
        assert torch.equal(scores.neurons, group_scores(*stacked_weights(model.vit), 2).neurons)


@pytest.mark.parametrize("pruning,with_model", [(0, True), (1, False)])
def test_a_block_skip_stands_untried_without_pruning_or_without_the_model(pruning, with_model):
    trial, gates, _ = _search_with_a_skip_trial(False, with_model, enable_pruning=pruning)
    assert trial.seen == [] and gates[1, 0] - gates[1, 1] >= HYSTERESIS - 1e-6


def test_with_no_gate_safety_the_skip_trial_still_tries_the_proposed_skip():
    trial, gates, _ = _search_with_a_skip_trial(False, reference_rules="no_gate_safety")
    assert len(trial.seen) == 1 and gates[1, 1] - gates[1, 0] == pytest.approx(REFUSED)


def test_each_trial_takes_the_first_images_of_the_probe_its_flag_asks_for():
    """--patch_probe and --skip_probe images: the first ones of one probe (drawn at the larger size,
    data.probe: a prefix is the probe of that size). 0: that move is not tried."""
    vit = noisy_tiny_vit()
    images, targets = torch.randn(10, 1, 8, 8), torch.arange(10)
    search = UVCSearch(vit, demo_search_config(patch_probe=4, skip_probe=7), CPU, 40, probe=(images, targets))
    assert torch.equal(search.trial.images, images[:4]) and torch.equal(search.skip_trial.targets, targets[:7])
    assert search.pd.trial is search.trial and search.pd.skip_trial is search.skip_trial
    assert search.trial_state() == {"flip_trials": 0, "flips_rejected": 0, "skip_trials": 0, "skips_rejected": 0}
    search.skip_trial.trials, search.skip_trial.rejected = 3, 2
    assert search.pd.trial_counts() == {"flip_trials": 0.0, "flips_rejected": 0.0, "skip_trials": 3.0,
                                        "skips_rejected": 2.0}
    fresh = UVCSearch(vit, demo_search_config(patch_probe=4, skip_probe=7), CPU, 40, probe=(images, targets))
    fresh.pd.load_state_dict(search.pd.state_dict())
    assert (fresh.skip_trial.trials, fresh.skip_trial.rejected, fresh.trial.trials) == (3, 2, 0)
    alone = UVCSearch(vit, demo_search_config(patch_probe=0, skip_probe=7), CPU, 40, probe=(images, targets))
    assert alone.trial is None and len(alone.skip_trial.images) == 7
    assert UVCSearch(vit, demo_search_config(skip_probe=0), CPU, 40, probe=(images, targets)).skip_trial is None


def test_a_smaller_probe_is_the_first_images_of_a_larger_one():
    """joint_train.py draws one probe at max(--patch_probe, --skip_probe); each trial's prefix is then
    the probe it would have drawn alone."""
    small, large = probe_batch(_Noisy(), 5, seed=3), probe_batch(_Noisy(), 9, seed=3)
    assert torch.equal(small[0], large[0][:5]) and torch.equal(small[1], large[1][:5])
