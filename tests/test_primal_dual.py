"""The primal-dual step (docs/method.md sections 4-5): proximal step, update directions, toggles, a short search."""
import copy

import pytest
import torch
from helpers import demo_search_config, noisy_tiny_vit
import torch.nn.functional as F

from uvc.search.masked_model import MaskedViT
from uvc.search import UVCSearch
from uvc.search.structure import LOWEST

MODEL = "vit_digits_tiny_patch2_8"  # D=32, L=4, H=2, d=16, M=128, 16 patches
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(seed: int = 0):
    return noisy_tiny_vit(seed)


demo_config = demo_search_config


def build(seed: int = 0, steps: int = 100, **overrides):
    """The tiny model and a search planned for `steps` search steps."""
    vit = tiny_vit(seed)
    model = MaskedViT(vit)
    search = UVCSearch(vit, demo_config(**overrides), CPU, search_steps=steps)
    search.set_epoch(0)
    return model, search


def set_counts(arch, heads, neurons, dims):
    """Set s and r so that the removed counts are exactly these integers."""
    with torch.no_grad():
        arch.s_frac.copy_(torch.tensor([heads, neurons], dtype=torch.float32).T / arch.group_counts)
        arch.r_frac.copy_(torch.tensor(dims, dtype=torch.float32) / arch.dims.head_dim)


def train(model, search, steps: int, lr: float, seed: int = 0, on_step=None):
    """The engine's stage-1 step on synthetic batches: prepare, forward, backward, W step, search step."""
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(256, 1, 8, 8, generator=gen)
    ys = torch.randint(10, (256,), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        i = torch.randint(256, (32,), generator=gen)
        search.prepare(model, training=True)
        F.cross_entropy(model(xs[i]), ys[i]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        search.step(model, lr)
        if on_step is not None:
            on_step(step)


# ----------------------------------------------------------------------------- proximal step

def test_proximal_step_touches_exactly_the_removed_groups():
    """The reference's prox: the proj columns of removed heads / (1 + 2 lr y[l, 0]), of the removed dims of
    every head / (1 + 2 lr p[l, h]) (both for a removed head's lowest dims), the fc2 columns of removed
    neurons / (1 + 2 lr y[l, 1]); every other number, q, k, v and fc1 among them, unchanged."""
    model, search = build()
    vit, pd, arch = model.vit, search.pd, search.arch
    set_counts(arch, heads=[1, 0, 0, 1], neurons=[5, 0, 100, 1], dims=[[2, 3], [0, 7], [15, 1], [4, 4]])
    with torch.no_grad():
        arch.y.copy_(torch.tensor([[3.0, 5.0], [1.0, 2.0], [4.0, 0.5], [2.0, 7.0]]))
        arch.p.copy_(torch.tensor([[6.0, 1.0], [2.0, 3.0], [0.7, 9.0], [1.5, 2.5]]))
    masks = pd.update_masks(vit)
    sc = pd.scores
    lr = 0.05
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    pd.proximal_step(vit, lr)
    after = vit.state_dict()

    H, d, M = 2, 16, 128
    dims = [[2, 3], [0, 7], [15, 1], [4, 4]]
    expected = {k: v.clone() for k, v in before.items()}
    for l in range(4):
        proj, fc2 = f"blocks.{l}.attn.proj.weight", f"blocks.{l}.mlp.fc2.weight"
        for h in range(H):
            low = set(sc.dims[l, h].argsort()[:dims[l][h]].tolist())
            if masks.heads[l, h] == 1:
                assert low == set((masks.dims[l, h] == 0).nonzero().flatten().tolist())
            for j in range(d):
                div = (1 + 2 * lr * arch.p[l, h]) if j in low else 1.0
                div = div * (1 + 2 * lr * arch.y[l, 0]) if masks.heads[l, h] == 0 else div
                expected[proj][:, h * d + j] = before[proj][:, h * d + j] / div
        removed = masks.neurons[l] == 0
        expected[fc2][:, removed] = before[fc2][:, removed] / (1 + 2 * lr * arch.y[l, 1])
    assert int((masks.neurons == 0).sum()) == 106 and int((masks.heads == 0).sum()) == 2
    for k in before:
        assert torch.allclose(after[k], expected[k], rtol=1e-6, atol=0), k
        assert torch.equal(after[k], before[k]) == torch.equal(expected[k], before[k]), k
        if not k.endswith(("attn.proj.weight", "mlp.fc2.weight")):
            assert torch.equal(after[k], before[k]), k


def test_proximal_step_with_zero_duals_changes_nothing():
    """y = p = 0: the prox is the identity even on removed groups."""
    model, search = build()
    set_counts(search.arch, heads=[1] * 4, neurons=[50] * 4, dims=[[3, 3]] * 4)
    with torch.no_grad():
        search.arch.y.zero_()
        search.arch.p.zero_()
    search.pd.update_masks(model.vit)
    before = copy.deepcopy(model.vit.state_dict())
    search.pd.proximal_step(model.vit, 0.1)
    assert all(torch.equal(before[k], v) for k, v in model.vit.state_dict().items())


# ----------------------------------------------------------------------------- update directions

def test_budget_pressure_grows_s_and_r_and_least_sum_pulls_them_back():
    """With z > 0 alone, s and r grow (R falls with them); with y, p > 0 alone they shrink; both stay in range."""
    model, search = build()
    pd, arch = search.pd, search.arch
    set_counts(arch, heads=[1, 1, 0, 0], neurons=[10] * 4, dims=[[3, 3]] * 4)
    start_s, start_r = arch.s_frac.detach().clone(), arch.r_frac.detach().clone()
    search.prepare(model, training=True)
    ratio = pd.budget.expected_ratio(arch, pd.masks, pd.eps)
    grads = pd._budget_grads(ratio)
    pd.scores = pd.scores_now(model.vit)
    kept = pd.masks.heads.bool()
    widest = grads["r"] < 0  # the budget's r gradient reaches each block's widest kept head only

    def pushed(z, duals, steps=1):
        set_counts(arch, heads=[1, 1, 0, 0], neurons=[10] * 4, dims=[[3, 3]] * 4)
        with torch.no_grad():
            arch.z.fill_(z)
            arch.y.fill_(duals)
            arch.p.fill_(duals)
        for _ in range(steps):
            pd.structure_step(grads)

    assert (widest.sum(-1) >= 1).all() and (widest <= kept).all()  # ties share the gradient
    pushed(z=1.0, duals=0.0)
    assert (arch.s_frac[:, 1] > start_s[:, 1]).all()  # neurons
    assert (arch.s_frac[2:, 0] > start_s[2:, 0]).all()  # heads, where one more may go
    assert (arch.r_frac[widest] > start_r[widest]).all()
    assert torch.equal(arch.r_frac[~widest], start_r[~widest])
    pushed(z=0.0, duals=1.0)
    assert (arch.s_frac[:, 1] < start_s[:, 1]).all()
    assert (arch.s_frac[:2, 0] < start_s[:2, 0]).all()
    assert (arch.r_frac[kept] < start_r[kept]).all()
    # projection: pushed far, nothing removed (s, r rest one unit under the first group), or
    # still one head / neuron / dim left
    pushed(z=0.0, duals=1e6, steps=40)
    k_heads, k_neurons, k_dims = arch.removed_counts()
    assert int(k_heads.sum() + k_neurons.sum() + k_dims[kept].sum()) == 0
    assert torch.allclose(arch.s, torch.full_like(arch.s, LOWEST))
    assert torch.allclose(arch.r[kept], torch.full_like(arch.r[kept], LOWEST))
    pushed(z=1e6, duals=0.0, steps=40)
    k_heads, k_neurons, k_dims = arch.removed_counts()
    assert (k_heads == 1).all() and (k_neurons == 127).all() and (k_dims[widest] == 15).all()


def test_importance_sets_the_allocation_across_layers():
    """Equal budget pressure, different scores: the layer whose next neuron matters least per MAC
    loses neurons fastest, the one whose next neuron matters most gets them back (no lockstep)."""
    model, search = build()
    pd, arch = search.pd, search.arch
    with torch.no_grad():  # block 0's fc2 columns are 10x weaker, block 3's 10x stronger
        model.vit.blocks[0].mlp.fc2.weight.mul_(0.1)
        model.vit.blocks[3].mlp.fc2.weight.mul_(10.0)
    set_counts(arch, heads=[0] * 4, neurons=[10] * 4, dims=[[0, 0]] * 4)
    search.prepare(model, training=True)
    pd.scores = pd.scores_now(model.vit)
    grads = pd._budget_grads(pd.budget.expected_ratio(arch, pd.masks, pd.eps))
    with torch.no_grad():
        arch.z.fill_(1.0)  # the price of one MAC-share: an average neuron is worth exactly that
    before = arch.s_frac[:, 1].detach().clone()
    pd.structure_step(grads)
    moved = arch.s_frac[:, 1].detach() - before
    assert moved[0] > 0 and moved[3] < 0
    assert moved[0] > moved[1] and moved[0] > moved[2]


# ----------------------------------------------------------------------------- toggles

TOGGLES = {
    "pruning": dict(enable_pruning=1, enable_block_gating=0, enable_patch_gating=0),
    "block_gating": dict(enable_pruning=0, enable_block_gating=1, enable_patch_gating=0),
    "patch_gating": dict(enable_pruning=0, enable_block_gating=0, enable_patch_gating=1),
    "all": dict(enable_pruning=1, enable_block_gating=1, enable_patch_gating=1),
    "none": dict(enable_pruning=0, enable_block_gating=0, enable_patch_gating=0),
}


@pytest.mark.parametrize("name", list(TOGGLES))
def test_each_toggle_changes_only_its_variables(name):
    """A few search steps move s, r, y, p only with pruning on, the gate logits only with block gating,
    the patch logits only with patch gating; z moves in every case."""
    flags = TOGGLES[name]
    model, search = build(gating_interval=2, **flags)
    arch = search.arch
    start = {k: v.detach().clone() for k, v in list(arch.named_parameters()) + list(arch.named_buffers())}
    train(model, search, steps=6, lr=1e-3)
    moved = {k: not torch.equal(start[k], v.detach()) for k, v in
             list(arch.named_parameters()) + list(arch.named_buffers())}
    pruning, gates, patches = (bool(flags[k]) for k in ("enable_pruning", "enable_block_gating",
                                                        "enable_patch_gating"))
    assert moved["s_frac"] == pruning and moved["r_frac"] == pruning
    assert moved["y"] == pruning and moved["p"] == pruning
    assert moved["gate_logits"] == gates
    assert moved["patch_logits"] == patches
    assert moved["z"] and not moved["group_counts"]
    assert (model.proj_mask is not None) == pruning and (model.fc2_mask is not None) == pruning
    assert (model.block_gates is not None) == gates
    assert (model.patch_bias is not None) == patches


def test_gradient_accumulation_in_the_engine():
    """train_one_epoch with 2 micro-batches per step prepares a fresh gate/patch graph per micro-batch,
    so both backward, and the search steps once per optimizer step."""
    from engine import train_one_epoch
    from utils.amp import make_scaler

    class CE(torch.nn.Module):
        def forward(self, inputs, outputs, targets):
            return F.cross_entropy(outputs, targets)

    model, search = build(gating_interval=2)
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(10, (4,))) for _ in range(4)]
    before = search.arch.gate_logits.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = train_one_epoch(model, CE(), loader, opt, make_scaler(CPU, False), CPU, 0, arch_step=search,
                            accumulation=2)
    assert stats["global_step"] == 2
    assert not torch.equal(search.arch.gate_logits.detach(), before)  # the gate update ran after 2 steps


# ----------------------------------------------------------------------------- a short search

BUDGET = 0.5
SEARCH_STEPS = 300


@pytest.fixture(scope="module")
def short_search():
    """300 steps of the full search (pruning, block and patch gates) on synthetic batches, with the
    demo config's rates as they are: the pace is set per search length (uvc.search.schedule)."""
    torch.set_num_threads(1)
    model, search = build(steps=SEARCH_STEPS, budget=BUDGET)
    hard, target = [search.ratios(model)["hard_macs_ratio"]], [1.0]

    def record(step):
        r = search.ratios(model)
        hard.append(r["hard_macs_ratio"])
        target.append(r["target_macs_ratio"])
    train(model, search, SEARCH_STEPS, lr=5e-3, on_step=record)
    return model, search, hard, target


def test_short_search_follows_the_target(short_search):
    """From the dense 1.0 the hard MACs ratio follows the falling target into the budget window, never
    dips under it by more than the margin, and ends in [B - 0.05, B + 0.02] by itself."""
    model, search, hard, target = short_search
    assert hard[0] == pytest.approx(1.0)
    margin = max(0.03, search.budget.block_share())
    assert min(h - t for h, t in zip(hard, target)) >= -margin
    assert search.pd.max_undershoot <= margin
    reached = next(i for i, r in enumerate(hard) if r <= BUDGET + 0.02)
    # not before a flip's allowed dip under the target (half a block's share) could reach the budget, nor
    # late: the target reaches the budget at 0.5 of the search
    earliest = next(i for i, t in enumerate(target) if t - search.budget.block_share() / 2 <= BUDGET + 0.02)
    assert earliest <= reached <= 0.8 * SEARCH_STEPS
    assert BUDGET - 0.05 <= hard[-1] <= BUDGET + 0.02


def test_short_search_freezes_into_the_window(short_search):
    """Frozen as searched, the export is where the search ended, in [B - 0.05, B + 0.02], and the greedy
    fit would change few groups; with --greedy_fit it lands in [B - 0.01, B], changing as few."""
    model, search, hard, _ = short_search
    spec, info = search.freeze(model, MODEL)
    assert info["exported_as_searched"] and info["macs_ratio"] == pytest.approx(hard[-1])
    assert BUDGET - 0.05 <= info["macs_ratio"] <= BUDGET + 0.02 and info["greedy_would_change_frac"] <= 0.05
    search.greedy_fit = True
    spec, info = search.freeze(model, MODEL)
    assert BUDGET - 0.01 <= info["macs_ratio"] <= BUDGET
    assert info["greedy_changed_frac"] <= 0.05


# ----------------------------------------------------------------------------- soft masking (the reference's)

def test_soft_masking_trains_unmasked_and_evaluates_masked():
    """--search_masking soft: the training forward sees every group; evaluation, the hard ratio and the
    freeze use the masks of the ceil(s) lowest-score groups."""
    model, search = build(search_masking="soft")
    set_counts(search.arch, heads=[1, 0, 0, 0], neurons=[40] * 4, dims=[[0, 0], [2, 2], [0, 0], [0, 0]])
    search.prepare(model, training=True)
    assert model.proj_mask is None and model.fc2_mask is None
    assert search.pd.masks.neurons.sum(-1).tolist() == [88] * 4  # computed all the same
    search.prepare(model, training=False)
    assert model.fc2_mask is not None and model.fc2_mask.sum(-1).tolist() == [88] * 4
    assert search.ratios(model)["hard_macs_ratio"] < 0.9
    spec, _ = search.freeze(model, MODEL)
    assert len(spec["blocks"][1]["neurons"]) < 128


@pytest.mark.parametrize("masking", ["hard", "soft"])
def test_prox_shrinks_the_selected_groups_in_both_modes(masking):
    """Both modes shrink the scoring columns (proj, fc2) of the selected groups and leave their rows
    (q, k, v, fc1) to the loss, as the reference does."""
    model, search = build(search_masking=masking)
    set_counts(search.arch, heads=[0] * 4, neurons=[10] * 4, dims=[[0, 0]] * 4)
    search.pd.update_masks(model.vit)
    removed = (search.pd.masks.neurons[0] == 0)
    fc2, fc1 = model.vit.blocks[0].mlp.fc2.weight, model.vit.blocks[0].mlp.fc1.weight
    before_fc2, before_fc1 = fc2.detach().clone(), fc1.detach().clone()
    search.pd.proximal_step(model.vit, 0.05)
    assert (fc2[:, removed].abs() < before_fc2[:, removed].abs()).all()
    assert torch.equal(fc2[:, ~removed], before_fc2[:, ~removed])
    assert torch.equal(fc1, before_fc1)


def test_a_skipped_amp_step_drops_the_gathered_gate_gradients():
    """After AMP skips a weight step (inf gradients), the search does not step and the gate and patch
    loss gradients gathered since the last gate update are dropped, so no inf reaches the gates."""
    model, search = build(steps=400, gating_interval=4)  # 400 steps: 100 gate updates at the flag's 4
    train(model, search, steps=2, lr=1e-3)
    assert search.pd.grad_steps == 2 and search.arch.gate_logits.grad is not None
    search.arch.gate_logits.grad.fill_(float("inf"))
    before = {k: v.detach().clone() for k, v in search.arch.named_parameters()}
    search.skip_step(model)
    assert search.pd.grad_steps == 0 and search.arch.gate_logits.grad is None
    assert search.arch.patch_logits.grad is None
    assert all(torch.equal(before[k], v) for k, v in search.arch.named_parameters())

