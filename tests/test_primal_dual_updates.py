"""The primal-dual updates of docs/method.md section 5 by hand, one term at a time: the dual ascent,
the s step, the gate and patch gradients and their averaging, the floor check, the protected blocks,
the training gate sample and the re-ranking of groups at each training forward pass."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from test_primal_dual import build, set_counts
from uvc.search import gate_update
from uvc.search.gates import soft_l0_keep
from uvc.search.masks import as_importance
from uvc.search.gate_update import _normalised
from uvc.search.primal_dual import PrimalDual
from uvc.search.structure import LOWEST

pytestmark = pytest.mark.usefixtures("one_thread")


def _sum_of_smallest(scores: torch.Tensor, k) -> torch.Tensor:
    """Per row of `scores`, the sum of its k[row] smallest entries."""
    ordered = scores.sort(-1).values
    k = torch.as_tensor(k)
    return torch.stack([row[:int(n)].sum() for row, n in zip(ordered.flatten(0, -2), k.flatten())]).view(k.shape)


def test_dual_ascent_grows_y_and_p_by_the_least_sum_of_the_removed_groups_and_keeps_them_nonnegative():
    """Step 5 by hand: y[:, 0] += y_step x the importance of the removed heads, y[:, 1] += y_step x that
    of the removed neurons, p += p_step x that of the removed dims of each kept head (a removed head's
    p stays); then y, p >= 0 (entries set negative, with nothing removed, come back to 0)."""
    model, search = build()
    pd, arch = search.pd, search.arch
    heads, neurons, dims = [1, 0, 0, 1], [5, 0, 100, 1], [[2, 3], [0, 7], [15, 1], [4, 4]]
    set_counts(arch, heads=heads, neurons=neurons, dims=dims)
    search.prepare(model, training=True)
    assert [t.tolist() for t in arch.removed_counts()] == [heads, neurons, dims]
    with torch.no_grad():
        arch.y.copy_(torch.tensor([[3.0, 5.0], [-1.0, -0.5], [4.0, 2.0], [2.0, 7.0]]))
        arch.p.copy_(torch.tensor([[1.0, 2.0], [-2.0, 3.0], [4.0, 0.5], [2.0, 6.0]]))
    y, p = arch.y.clone(), arch.p.clone()
    imp = as_importance(pd.scores, pd.costs)
    pd.dual_step()
    grown_y = torch.stack([pd.rates.y_step * _sum_of_smallest(imp.heads, heads),
                           pd.rates.y_step * _sum_of_smallest(imp.neurons, neurons)], 1)
    assert (grown_y[[0, 0, 2, 3], [0, 1, 1, 0]] > 0).all()
    assert torch.allclose(arch.y, (y + grown_y).clamp_min(0), rtol=1e-5, atol=0)
    grown_p = pd.rates.p_step * _sum_of_smallest(imp.dims, dims) * pd.masks.heads
    assert (pd.masks.heads == 0).any() and (grown_p[pd.masks.heads.bool() & (torch.tensor(dims) > 0)] > 0).all()
    assert torch.allclose(arch.p, (p + grown_p).clamp_min(0), rtol=1e-5, atol=0)
    assert arch.y[1].tolist() == [0.0, 0.0] and arch.p[1, 0] == 0.0


def test_normalised_terms_have_mean_magnitude_one_at_any_scale():
    """Each gate and patch gradient term is divided by its mean magnitude: direction and ranking kept,
    the units gone, also for a tiny gradient; an all-zero gradient stays zero."""
    t = torch.tensor([2.0, -6.0])
    assert torch.equal(_normalised(t), torch.tensor([0.5, -1.5]))
    assert torch.allclose(_normalised(t * 1e-20), torch.tensor([0.5, -1.5]))
    assert torch.equal(_normalised(torch.zeros(3)), torch.zeros(3))


def test_the_gate_loss_gradient_is_averaged_over_the_steps_it_was_summed_over():
    param = torch.nn.Parameter(torch.zeros(3))
    assert torch.equal(PrimalDual._averaged_grad(param, 4), torch.zeros(3))  # no gradient yet
    param.grad = torch.tensor([4.0, 8.0, -4.0])
    assert torch.equal(PrimalDual._averaged_grad(param, 4), torch.tensor([1.0, 2.0, -1.0]))


def test_a_flip_may_stand_only_if_it_leaves_the_ratio_no_further_from_the_target(monkeypatch):
    """The floor check: z > 0 and (before + after) / 2 >= target, its end included: from 0.7 to 0.5
    (a move of 0.2) the target may be at most 0.1 under where the ratio was."""
    _, search = build()
    pd = search.pd
    before = torch.zeros(4, 2)
    monkeypatch.setattr(pd.budget, "hard_ratio", lambda arch, masks, gates=None, patches=None:
                        0.7 if gates is before else 0.5)
    with torch.no_grad():
        search.arch.z.fill_(1.0)
    assert pd._floor_check(0.6, gate_logits=before)() and pd._floor_check(0.5, gate_logits=before)()
    assert not pd._floor_check(0.6 + 1e-9, gate_logits=before)() and not pd._floor_check(0.55)()
    with torch.no_grad():
        search.arch.z.fill_(0.0)
    assert not pd._floor_check(0.6, gate_logits=before)()


def test_least_sum_pulls_s_back_by_each_kinds_own_dual_and_slope():
    """Step 3 by hand with z = 0: s_frac <- s_frac - s_step x (y[:, 0] x the head slope, y[:, 1] x the
    neuron slope) x the group counts / the MAC-share unit; the step leaves no gradient behind in s, r
    (a checkpoint's per-rank gradients hold only the gate and patch loss gradients)."""
    model, search = build()
    pd, arch = search.pd, search.arch
    set_counts(arch, heads=[0] * 4, neurons=[20] * 4, dims=[[3, 3]] * 4)
    search.prepare(model, training=True)
    pd.scores = pd.scores_now(model.vit)
    with torch.no_grad():
        arch.z.fill_(0.0)
        arch.y.copy_(torch.tensor([[1e-3, 3e-3]] * 4))
    imp = as_importance(pd.scores, pd.costs)
    heads = imp.heads.sort(-1).values[:, 0]  # the next (first) head
    neurons = imp.neurons.sort(-1).values[:, 20]  # the 21st smallest neuron
    unit = torch.tensor([pd.costs.heads * 2, pd.costs.neurons * 128])  # the MAC share of a layer's heads, neurons
    grad = torch.stack([1e-3 * heads, 3e-3 * neurons], 1) * arch.group_counts / unit
    before = arch.s_frac.detach().clone()
    pd.structure_step({"s": torch.zeros(4, 2), "r": torch.zeros(4, 2)})
    assert torch.allclose(arch.s_frac.detach(), before - pd.rates.s_step * grad, rtol=1e-5, atol=1e-9)
    assert (arch.s_frac.detach() < before).all() and (arch.s_frac.detach() > LOWEST / arch.group_counts).all()
    grads = search.local_state_dict()
    assert grads["s_frac"] is None and grads["r_frac"] is None


def test_least_sum_pulls_r_back_by_p_times_the_next_dims_slope_in_each_kept_head():
    """Step 3 for r by hand with z = 0: r_frac <- r_frac - r_step x p x (the next value dim's importance)
    x head_dim x (the head is kept) / the MAC share of a layer's value dims; d/dr_frac = head_dim d/d(count),
    as G d/ds for s. A removed head's r does not move."""
    model, search = build()
    pd, arch = search.pd, search.arch
    set_counts(arch, heads=[1, 0, 1, 0], neurons=[0] * 4, dims=[[3, 3]] * 4)
    search.prepare(model, training=True)
    pd.scores = pd.scores_now(model.vit)
    assert arch.count_steps()[2] == 1  # value dims one by one: the slope is the next dim's importance
    with torch.no_grad():
        arch.z.fill_(0.0)
        arch.y.fill_(0.0)
        arch.p.copy_(torch.tensor([[2e-3, 1e-3]] * 4))
    nxt = as_importance(pd.scores, pd.costs).dims.sort(-1).values[..., 3]  # (L, H): the 4th smallest dim
    kept, d = pd.masks.heads, arch.dims.head_dim
    assert kept.sum(-1).tolist() == [1, 2, 1, 2]
    grad = arch.p * nxt * d * kept / (pd.costs.dims * d)
    before = arch.r_frac.detach().clone()
    pd.structure_step({"s": torch.zeros(4, 2), "r": torch.zeros(4, 2)})
    assert torch.allclose(arch.r_frac.detach(), before - pd.rates.r_step * grad, rtol=1e-5, atol=1e-9)
    moved = arch.r_frac.detach() != before
    assert moved.tolist() == kept.bool().tolist()


def test_gates_update_every_gate_interval_steps_on_the_gradients_of_exactly_those_steps(monkeypatch):
    """The loss gradients summed by backward are averaged over the `gate_interval` steps since the last
    update, and the count starts again from 0 after each update."""
    _, search = build(steps=400, gating_interval=4)
    pd, n = search.pd, search.pd.rates.gate_interval
    averaged_over = []
    monkeypatch.setattr(pd, "_averaged_grad", lambda p, steps: averaged_over.append(steps) or torch.zeros_like(p))
    grads = {"gate": torch.zeros(4, 2), "patch": torch.zeros(16)}
    for step in range(1, 2 * n + 1):
        pd.gate_step(grads, target=0.5)
        assert pd.grad_steps == step % n
    assert n == 4 and averaged_over == [n, n] * 2  # gates and patches, at each of the two updates


def test_discarding_the_loss_gradients_clears_them_and_restarts_the_gate_interval():
    """After a skipped AMP step: the summed gate and patch loss gradients are dropped and the next update
    waits a whole gate_interval again."""
    _, search = build(steps=400, gating_interval=4)
    pd, a = search.pd, search.arch
    a.gate_logits.grad, a.patch_logits.grad = torch.ones(4, 2), torch.ones(16)
    pd.grad_steps = 3
    pd.discard_loss_grads()
    assert a.gate_logits.grad is None and a.patch_logits.grad is None and pd.grad_steps == 0


def test_no_block_is_protected_without_gate_safety_on_the_logits_device():
    """With no_gate_safety protected_blocks is all zeros, made on the gate logits' device, not the default
    device (checked with the default device set elsewhere, as a CUDA run's would be)."""
    _, search = build()
    pd = search.pd
    pd.cfg = dataclasses.replace(pd.cfg, rules=dataclasses.replace(pd.cfg.rules, no_gate_safety=True))
    with torch.device("meta"):
        protected = pd.protected_blocks()
    assert protected.device == search.arch.gate_logits.device and torch.equal(protected, torch.zeros(4))


def test_gate_and_patch_steps_take_the_normalised_loss_plus_z_times_weight_times_the_normalised_budget_term(
        monkeypatch):
    """Step 4's gradients by hand: gates, loss/|loss| + z w_gate budget/|budget|; patches, the same
    with w_patch plus patch_l1 x pi(1 - pi) normalised (|t| the mean magnitude)."""
    _, search = build(gating_interval=1)
    pd, a = search.pd, search.arch
    pd.rates = dataclasses.replace(pd.rates, gate_weight=2.0, patch_weight=3.0, patch_l1=0.5)
    gen = torch.Generator().manual_seed(0)
    gate_loss, patch_loss = torch.randn(4, 2, generator=gen), torch.randn(16, generator=gen)
    grads = {"gate": torch.randn(4, 2, generator=gen), "patch": torch.randn(16, generator=gen)}
    with torch.no_grad():
        a.patch_logits.copy_(torch.linspace(0.5, 4.0, 16))
        a.z.fill_(0.5)
    a.gate_logits.grad, a.patch_logits.grad = gate_loss.clone(), patch_loss.clone()
    stepped = {}
    monkeypatch.setattr(pd.gate_opt, "step", lambda: stepped.update(gate=a.gate_logits.grad.clone()))
    monkeypatch.setattr(pd.patch_opt, "step", lambda: stepped.update(patch=a.patch_logits.grad.clone()))
    pd.gate_step(grads, target=0.0)
    unit = lambda t: t / t.abs().mean()  # noqa: E731
    pi = torch.sigmoid(torch.linspace(0.5, 4.0, 16))
    assert torch.allclose(stepped["gate"], unit(gate_loss) + 0.5 * 2.0 * unit(grads["gate"]), atol=1e-6)
    patch = unit(patch_loss) + 0.5 * 3.0 * unit(grads["patch"]) + 0.5 * unit(pi * (1 - pi))
    assert torch.allclose(stepped["patch"], patch, atol=1e-6)


@pytest.mark.parametrize("min_blocks,kept", [(1, False), (2, True)])
def test_the_blocks_protected_are_those_kept_before_the_update(min_blocks, kept):
    """With min_blocks 2 and two blocks kept, an update that pushes block 0 past the boundary is undone:
    the blocks are protected as they were before it (after it, one kept block would protect only
    itself). With min_blocks 1 the same skip stands."""
    model, search = build(gating_interval=1, min_blocks=min_blocks)
    pd, a = search.pd, search.arch
    search.prepare(model, training=True)  # the masks the floor check prices
    with torch.no_grad():
        a.gate_logits.copy_(torch.tensor([[0.0, 0.01], [0.0, 4.0], [4.0, 0.0], [4.0, 0.0]]))
        a.z.fill_(1.0)
    grads = {"gate": torch.zeros(4, 2), "patch": torch.zeros(16)}
    grads["gate"][0] = torch.tensor([-1.0, 1.0])  # the budget pushes block 0 towards skip
    pd.gate_step(grads, target=0.0)
    assert bool(a.gate_logits[0, 1] >= a.gate_logits[0, 0]) == kept


def test_every_patch_update_checks_its_proposed_drop_across_ranks(monkeypatch):
    """Each patch update hands same_on_every_rank the drop it proposes to the trial, by name: of the
    patches kept before (logit >= 0) and dropped after (< 0), the one furthest past; -1 for none (a patch
    at 0 after the update is kept)."""
    model, search = build(gating_interval=1)
    pd, a = search.pd, search.arch
    search.prepare(model, training=True)  # the masks the floor check prices
    checked = []
    monkeypatch.setattr(gate_update, "same_on_every_rank", lambda value, what: checked.append((value, what)) or value)
    with torch.no_grad():
        a.z.fill_(1.0)
    grads = {"gate": torch.zeros(4, 2), "patch": torch.zeros(16)}
    for before, after in (({3: 0.0, 5: 2.0, 11: -3.0}, {3: -2.0, 5: -1.0, 11: -3.0}), ({9: 0.5}, {9: 0.0})):
        start, end = torch.full((16,), 4.0), torch.full((16,), 4.0)
        start[list(before)], end[list(after)] = torch.tensor(list(before.values())), torch.tensor(list(after.values()))
        with torch.no_grad():
            a.patch_logits.copy_(start)
        monkeypatch.setattr(pd.patch_opt, "step", lambda end=end: a.patch_logits.data.copy_(end))
        pd.gate_step(grads, target=0.0)
    assert checked == [(3, "the patch drop proposed to the trial"), (-1, "the patch drop proposed to the trial")]


@pytest.mark.parametrize("use_gumbel", [1, 0])
def test_the_training_gate_sample_is_gumbel_softmax_or_soft_l0_as_use_gumbel_says(use_gumbel):
    """--use_gumbel 1: a Gumbel-softmax sample at the current tau; 0: the SoftL0 keep at the current eps."""
    model, search = build(use_gumbel=use_gumbel)
    pd, logits = search.pd, search.arch.gate_logits.detach()
    torch.manual_seed(0)
    search.prepare(model, training=True)
    torch.manual_seed(0)
    expected = F.gumbel_softmax(logits, tau=pd.tau, hard=False, dim=-1)[:, 1] if use_gumbel else \
        soft_l0_keep(logits, pd.eps)
    assert torch.allclose(model.block_gates, expected) and pd.protected_blocks().sum() == 0


def test_each_training_forward_ranks_groups_by_the_weights_it_sees():
    """The scores are taken again at each training prepare (the weights change after its forward
    pass): a kept head whose weights shrink without a search step is the one removed next time."""
    model, search = build()
    set_counts(search.arch, heads=[1, 0, 0, 0], neurons=[0] * 4, dims=[[0, 0]] * 4)
    search.prepare(model, training=True)
    kept = int(search.pd.masks.heads[0].argmax())
    with torch.no_grad():
        model.vit.blocks[0].attn.proj.weight[:, kept * 16:(kept + 1) * 16] *= 1e-3
    search.prepare(model, training=True)
    assert search.pd.masks.heads[0].tolist() == [float(h != kept) for h in range(2)]


def test_with_a_skip_trial_every_gate_update_checks_its_proposed_skip_across_ranks(monkeypatch):
    """With a skip trial each gate update hands same_on_every_rank the skip it proposes: of the blocks
    kept before (keep >= skip) and skipped after, the one furthest past; -1 for none (a tie is kept).
    Without a skip trial there is nothing collective to agree on."""
    from uvc.search.trial import FlipTrial
    model, search = build(gating_interval=1, enable_patch_gating=0)
    pd, a = search.pd, search.arch
    search.prepare(model, training=True)
    checked = []
    monkeypatch.setattr(gate_update, "same_on_every_rank", lambda value, what: checked.append((value, what)) or value)
    monkeypatch.setattr(pd, "_limit_gates", lambda *args: None)  # what is checked, not what stands
    grads = {"gate": torch.zeros(4, 2), "patch": torch.zeros(16)}
    steps = (([[0, 1], [0, 2], [0, 1], [3, 0]], [[2, 1], [5, 2], [0, 1], [9, 0]]),  # 0 and 1 skip; 1 further
             ([[0, 1], [0, 1], [0, 1], [0, 1]], [[1, 1], [0, 1], [0, 1], [0, 1]]),  # a tie: none
             ([[0, 1], [0, 1], [0, 1], [0, 1]], [[0, 1], [0, 1], [0.5, 0], [0, 1]]),  # 2, half a logit past
             ([[0, 1], [1, 1], [0, 1], [0, 1]], [[0, 1], [2, 1], [0, 1], [0, 1]]))  # 1 was at a tie: kept
    for trial in (None, FlipTrial(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), 1, kind="skip")):
        pd.skip_trial = trial
        for start, end in steps:
            with torch.no_grad():
                a.gate_logits.copy_(torch.tensor(start, dtype=torch.float))
            end = torch.tensor(end, dtype=torch.float)
            monkeypatch.setattr(pd.gate_opt, "step", lambda end=end: a.gate_logits.data.copy_(end))
            pd.gate_step(grads, target=0.0)
    assert checked == [(v, "the block skip proposed to the trial") for v in (1, -1, 2, 1)]
