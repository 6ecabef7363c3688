"""What the primal-dual keeps, reports and is built from: its state dict, the logged scalars, the
architecture a trial sees and the evaluation runs, and the config (min_blocks, the optimizers of s
and r, tau and eps), each checked against its definition."""
import copy

import pytest
import torch

from helpers import tree_diff
from test_primal_dual import build, demo_config, set_counts, train
from uvc.deploy.freeze import spec_from_search
from uvc.search.primal_dual import PrimalDual, PrimalDualConfig
from uvc.search.trial import FlipTrial

pytestmark = pytest.mark.usefixtures("one_thread")


def _probe_trial(trials: int = 0, rejected: int = 0) -> FlipTrial:
    trial = FlipTrial(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), 1)
    trial.trials, trial.rejected = trials, rejected
    return trial


def test_the_primal_dual_state_loads_into_a_fresh_search_as_it_was_saved():
    """A checkpoint's primal-dual state (the four optimizers, the step counts, the deepest dip under
    the target, the trial's counts) loaded into a fresh search gives back the same state; one
    saved without a trial loads with the trial's counts at 0."""
    rates = dict(gating_interval=1, rlr=0.02, patchlr=0.02)  # each optimizer's own step size
    model, search = build(**rates)
    train(model, search, steps=3, lr=1e-3)  # every optimizer has stepped
    pd = search.pd
    pd.grad_steps, pd.max_undershoot, pd.trial = 1, 0.125, _probe_trial(5, 2)
    state = pd.state_dict()
    assert state["t"] == 3 and state["trial"] == {"flip_trials": 5, "flips_rejected": 2}
    _, fresh = build(seed=1, **rates)
    fresh.pd.trial = _probe_trial()
    fresh.pd.load_state_dict(copy.deepcopy(state))
    assert tree_diff(state, fresh.pd.state_dict()) == []
    assert (fresh.pd.t, fresh.pd.grad_steps, fresh.pd.max_undershoot) == (3, 1, 0.125)
    fresh.pd.load_state_dict({k: v for k, v in state.items() if k != "trial"})
    assert (fresh.pd.trial.trials, fresh.pd.trial.rejected) == (0, 0)
    pd.trial = None
    assert pd.state_dict()["trial"] == {}


def test_the_logged_controller_scalars_are_the_gain_scale_and_the_deepest_dip():
    _, search = build(zlr_schedule_list="1")
    search.pd.set_epoch(1, 1)
    search.pd.max_undershoot = 0.25
    assert search.pd.record() == {"z_gain_scale": 2.0, "max_undershoot": 0.25}


@pytest.mark.parametrize("gating", [1, 0])
def test_the_architecture_a_trial_sees_follows_the_logits_only_of_the_gating_that_is_on(gating):
    """The spec a patch-drop trial compares (PrimalDual._spec_of): a block whose keep logit ties its
    skip logit is kept, and a patch at logit 0 is kept (the argmax rules); with block and patch
    gating off, every block and patch is kept whatever the logits say. The groups are the current
    masks' (a head, neurons and dims removed)."""
    model, search = build(enable_block_gating=gating, enable_patch_gating=gating)
    set_counts(search.arch, heads=[1, 0, 0, 0], neurons=[5, 0, 0, 0], dims=[[2, 3], [0, 0], [0, 0], [0, 0]])
    search.prepare(model, training=True)
    gates, patches = torch.zeros(4, 2), torch.ones(16)
    gates[1], gates[2] = torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.5])  # skip 1; a tie at 2
    patches[5], patches[6] = -1.0, 0.0  # drop 5; 6 on the boundary
    spec = search.pd._spec_of(model, gates, patches)
    assert [b["skipped"] for b in spec["blocks"]] == [False, bool(gating), False, False]
    assert spec["patches_kept"] == [p for p in range(16) if not (gating and p == 5)]
    assert (len(spec["blocks"][0]["heads"]), len(spec["blocks"][0]["neurons"])) == (1, 123)
    assert spec == spec_from_search(model.vit, "", search.pd.masks, torch.tensor([1.0, 1 - gating, 1, 1]),
                                    torch.arange(16) != (5 if gating else -1))


def test_blocks_are_protected_only_when_min_blocks_or_fewer_are_kept():
    """A gate keeps its block when keep >= skip (a tie keeps it); with min_blocks 2, two kept blocks are
    both protected, three are not. The logits read are the ones given, else the current ones."""
    _, search = build(min_blocks=2)
    pd = search.pd
    two = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [2.0, -1.0]])  # keep, keep (a tie), skip, skip
    three = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.0, 3.0], [2.0, -1.0]])
    assert pd.protected_blocks(two).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert pd.protected_blocks(three).tolist() == [0.0] * 4
    with torch.no_grad():
        search.arch.gate_logits.copy_(two)
    assert pd.protected_blocks().tolist() == [1.0, 1.0, 0.0, 0.0]
    assert pd.protected_blocks(three).tolist() == [0.0] * 4


def test_a_search_step_returns_what_it_computed_and_hands_the_model_to_the_gate_step(monkeypatch):
    """step() logs the expected ratio (SoftL0 gates at the current eps), the hard ratio, the target, z
    and its integral (the controller at the current integral gain scale), the means of y and p, tau
    and the trial's counts; the gate step gets the model (a patch drop's trial runs on it)."""
    model, search = build(use_gumbel=0, zlr_schedule_list="1")
    pd, arch = search.pd, search.arch
    pd.trial = _probe_trial(5, 2)
    pd.set_epoch(1, 1)  # integral gain x2, eps decayed once
    search.prepare(model, training=True)
    with torch.no_grad():
        expected = float(pd.budget.expected_ratio(arch, pd.masks, pd.eps))
        assert expected != float(pd.budget.expected_ratio(arch, pd.masks))  # eps matters here
    hard, integral = pd.budget.hard_ratio(arch, pd.masks), arch.z_integral.clone()
    given = []
    gate_step = pd.gate_step
    monkeypatch.setattr(pd, "gate_step", lambda grads, target, model=None: given.append(model) or
                        gate_step(grads, target, model))
    out = pd.step(model, 1e-3)
    z = pd.controller.update(integral, hard, pd.target(), 2.0)
    assert given == [model] and float(integral) > 0
    assert out == {"expected_ratio": pytest.approx(expected, rel=1e-6), "hard_ratio": hard, "target_ratio": pd.target(),
                   "z": pytest.approx(z, rel=1e-6), "z_integral": pytest.approx(float(integral), rel=1e-6),
                   "y_mean": float(arch.y.mean()), "p_mean": float(arch.p.mean()), "tau": pd.tau,
                   "flip_trials": 5.0, "flips_rejected": 2.0}


@pytest.mark.parametrize("gating", [1, 0])
def test_evaluation_runs_the_argmax_architecture_of_the_gating_that_is_on(gating):
    """prepare(training=False): no gate sample; the blocks whose skip logit beats the keep logit are
    skipped (a tie keeps) and the patches at logit >= 0 kept; with block and patch gating off, none is
    skipped and no patch is gathered, whatever the logits say."""
    model, search = build(enable_block_gating=gating, enable_patch_gating=gating)
    with torch.no_grad():
        search.arch.gate_logits[1], search.arch.gate_logits[2] = torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.5])
        search.arch.patch_logits[5], search.arch.patch_logits[6] = -1.0, 0.0
    search.prepare(model, training=False)
    assert model.block_gates is None and model.skipped == ((1,) if gating else ())
    if gating:
        assert model.patch_index.tolist() == [p for p in range(16) if p != 5]
    else:
        assert model.patch_index is None


@pytest.mark.parametrize("flag,depth,expected", [(0, 4, 2), (0, 5, 3), (1, 4, 1), (3, 4, 3), (9, 4, 4)])
def test_min_blocks_defaults_to_half_the_depth_rounded_up_and_is_at_most_the_depth(flag, depth, expected):
    """--min_blocks 0: (depth + 1) // 2 blocks are never skipped; N > 0: N, at most the depth."""
    assert PrimalDualConfig.from_config(demo_config(min_blocks=flag), depth).min_blocks == expected


@pytest.mark.parametrize("soptim,roptim", [("adam", "sgd"), ("sgd", "adam")])
def test_soptim_and_roptim_choose_the_optimizer_of_s_and_of_r(soptim, roptim):
    """--soptim / --roptim adam: Adam on s (r) at its step size; sgd: plain SGD."""
    _, search = build(soptim=soptim, roptim=roptim, rlr=0.02)
    pd = search.pd
    kinds = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    assert type(pd.s_opt) is kinds[soptim] and type(pd.r_opt) is kinds[roptim]
    assert pd.s_opt.param_groups[0]["params"] == [search.arch.s_frac]
    assert pd.r_opt.param_groups[0]["params"] == [search.arch.r_frac]
    assert (pd.s_opt.param_groups[0]["lr"], pd.r_opt.param_groups[0]["lr"]) == (pd.rates.s_step, pd.rates.r_step)
    assert pd.rates.s_step != pd.rates.r_step


def test_the_units_of_the_s_step_live_on_the_architectures_device():
    """s_unit is made on the device of the search variables (here "meta", standing in for a GPU)."""
    _, search = build()
    arch = search.arch.to("meta")
    pd = PrimalDual(arch, search.budget, search.pd.cfg, search.rates)
    assert pd.s_unit.device == arch.y.device == torch.device("meta")


def test_a_fresh_primal_dual_starts_at_the_base_integral_gain_and_the_configs_tau_and_eps():
    _, search = build()
    trial = _probe_trial()
    pd = PrimalDual(search.arch, search.budget, search.pd.cfg, search.rates, trial)
    assert (pd.ki_scale, pd.tau, pd.eps) == (1.0, pd.cfg.gumbel_tau, pd.cfg.eps)
    assert (pd.t, pd.grad_steps, pd.max_undershoot) == (0, 0, 0.0) and pd.trial is trial


def test_tau_and_eps_decay_per_search_epoch_and_tau_stops_at_0_1():
    """tau = max(0.1, tau0 x decay^e), eps = eps0 x decay^e at search epoch e (0 during the warm-up)."""
    _, search = build()
    pd = search.pd
    assert (pd.cfg.gumbel_tau, pd.cfg.gumbel_tau_decay, pd.cfg.eps, pd.cfg.eps_decay) == (1.0, 0.95, 0.1, 0.92)
    for epoch, search_epoch, tau, eps in ((0, -2, 1.0, 0.1), (2, 0, 1.0, 0.1), (4, 2, 0.9025, 0.08464),
                                          (200, 100, 0.1, 0.1 * 0.92 ** 100)):
        pd.set_epoch(epoch, search_epoch)
        assert (pd.tau, pd.eps) == (pytest.approx(tau), pytest.approx(eps))
