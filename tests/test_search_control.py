"""The search steers itself: the target schedule, the rates per search length, the budget
controller, gate safety, the freeze guarantee, run-length invariance, no collapse."""
import pytest
import torch
import torch.nn.functional as F

from helpers import demo_search_config, noisy_tiny_vit
from uvc.search.controller import BudgetController
from uvc.deploy.fit import fit_to_budget
from uvc.deploy.freeze import base_spec, spec_ratio
from uvc.search.gates import HYSTERESIS, limit_gate_flips
from uvc.search.masked_model import MaskedViT
from uvc.search.masks import group_scores, stacked_weights
from uvc.search.schedule import LANDING, SPEED_S, SearchRates, target_ratio
from uvc.search import UVCSearch
from uvc.search.structure import ArchState

CPU = torch.device("cpu")
MODEL = "vit_digits_tiny_patch2_8"
pytestmark = pytest.mark.usefixtures("one_thread")


config = demo_search_config


# ----------------------------------------------------------------------------- schedule and rates

def test_target_falls_from_dense_to_the_budget_over_the_ramp_and_stays():
    assert target_ratio(0.0, 0.4, 0.5) == pytest.approx(1.0)
    assert target_ratio(0.5, 0.4, 0.5) == pytest.approx(0.4)
    assert target_ratio(0.9, 0.4, 0.5) == pytest.approx(0.4)
    path = [target_ratio(u / 100, 0.4, 0.5) for u in range(101)]
    assert all(a >= b for a, b in zip(path, path[1:]))  # never rises
    assert path[10] - path[20] > path[40] - path[50]  # cubic: fast first, gently at the end


def test_rates_scale_with_the_search_length_and_the_seed_flags():
    """One config: per-step rates are inversely proportional to the search length; the seed's flag
    values are the unit (--slr 0.02 doubles the rule's speed)."""
    short, long = SearchRates.for_search(config(), 300), SearchRates.for_search(config(), 1200)
    assert short.s_step == pytest.approx(SPEED_S / 300) and long.s_step == pytest.approx(short.s_step / 4)
    assert long.z_ki == pytest.approx(short.z_ki / 4) and long.y_step == pytest.approx(short.y_step / 4)
    assert short.gate_interval == 3 and short.gate_updates == 100  # a short search updates gates more often
    assert SearchRates.for_search(config(), 100_000).gate_interval == 50  # --gating_interval is the most
    fast = SearchRates.for_search(config(slr=0.02, gating_weight=1e-3), 300)
    assert fast.s_step == pytest.approx(2 * short.s_step) and fast.gate_weight == pytest.approx(2.0)


# ----------------------------------------------------------------------------- the controller

def test_controller_pushes_back_at_once_and_does_not_wind_up_below_zero():
    c = BudgetController(kp=30.0, ki=2.0, clip=0.5)
    integral = torch.zeros(())
    z_above = c.update(integral, ratio=0.6, target=0.5)
    assert z_above == pytest.approx(30 * 0.1 + 0.2)  # proportional at once, plus the integral
    for _ in range(20):  # a long time above the target: the integral grows by ki x clip a step
        c.update(integral, ratio=1.5, target=0.5)
    assert float(integral) == pytest.approx(20.2)
    z_under = c.update(integral, ratio=0.3, target=0.5)
    assert z_under < float(integral)  # under the target z drops at once by kp x gap
    for _ in range(100):
        z_under = c.update(integral, ratio=0.3, target=0.5)
    assert float(integral) == 0.0 and z_under == pytest.approx(-6.0)  # no wind-up below 0: it pushes back up


# ----------------------------------------------------------------------------- gate safety

def _arch_with_gates(keep_logit: float = 4.0) -> ArchState:
    from uvc.cost.flops import ViTDims
    dims = ViTDims(embed_dim=8, depth=6, num_heads=2, head_dim=4, mlp_hidden=16, num_patches=4,
                   num_prefix_tokens=1, patch_size=2, in_chans=1, num_classes=10)
    return ArchState(dims, gate_init=keep_logit)


def test_one_update_flips_at_most_one_block():
    arch = _arch_with_gates()
    before = arch.gate_logits.detach().clone()
    with torch.no_grad():
        arch.gate_logits[:4, 1] = torch.tensor([-1.0, -3.0, -0.5, -2.0])  # four blocks pushed to skip
    limit_gate_flips(arch, before, torch.zeros(6), floor_ok=lambda: True)
    skipped = (arch.block_keep_hard() == 0).nonzero().flatten().tolist()
    assert skipped == [1]  # the one pushed furthest
    margin = arch.gate_logits.detach()[1, 0] - arch.gate_logits.detach()[1, 1]
    assert float(margin) >= HYSTERESIS - 1e-6  # settled past the boundary
    assert torch.equal(arch.gate_logits[[0, 2, 3]], before[[0, 2, 3]])


def test_a_flip_that_barely_crosses_is_settled_past_the_boundary():
    """Both ways: a skip and a re-open that cross by a hair end HYSTERESIS logits past the boundary."""
    from uvc.search.gates import settle_flips
    before = torch.tensor([[0.0, 0.1], [0.1, 0.0]])
    logits = torch.tensor([[0.0, -0.05], [0.0, 0.05]])  # block 0 now skips, block 1 now keeps
    settle_flips(logits, before)
    assert float(logits[0, 0] - logits[0, 1]) == pytest.approx(HYSTERESIS)
    assert float(logits[1, 1] - logits[1, 0]) == pytest.approx(HYSTERESIS)


def test_protected_blocks_and_the_floor_stop_a_skip():
    arch = _arch_with_gates()
    before = arch.gate_logits.detach().clone()
    with torch.no_grad():
        arch.gate_logits[2, 1] = -3.0
    limit_gate_flips(arch, before, torch.tensor([0, 0, 1.0, 0, 0, 0]), floor_ok=lambda: True)
    assert bool((arch.block_keep_hard() == 1).all())
    with torch.no_grad():
        arch.gate_logits[2, 1] = -3.0
    limit_gate_flips(arch, before, torch.zeros(6), floor_ok=lambda: False)
    assert bool((arch.block_keep_hard() == 1).all())


def test_min_blocks_protects_the_last_blocks_from_noise():
    """With only --min_blocks blocks left, their training gate is 1: Gumbel noise cannot skip them."""
    vit = noisy_tiny_vit(0)
    model = MaskedViT(vit)
    search = UVCSearch(vit, config(min_blocks=2), CPU, search_steps=100)
    search.set_epoch(0)
    with torch.no_grad():
        search.arch.gate_logits[:2] = torch.tensor([5.0, -5.0])  # blocks 0, 1 skipped; 2 left = min_blocks
    for _ in range(20):
        search.prepare(model, training=True)
        assert model.block_gates[2:].tolist() == [1.0, 1.0]
    assert search.pd.protected_blocks().tolist() == [0, 0, 1, 1]


def test_a_gate_update_never_goes_under_min_blocks():
    """Every gate pushed to skip at once, update after update: the blocks left at --min_blocks stay."""
    vit = noisy_tiny_vit(0)
    model = MaskedViT(vit)
    search = UVCSearch(vit, config(min_blocks=3, gating_interval=1), CPU, search_steps=100)
    search.set_epoch(0)
    pd, arch = search.pd, search.arch
    search.prepare(model, training=True)
    with torch.no_grad():
        arch.z.fill_(5.0)  # the budget pushes down
    pd.t = 10
    for _ in range(20):
        arch.gate_logits.grad = torch.tensor([[-1.0, 1.0]]).repeat(4, 1)  # the loss pushes every gate to skip
        pd.gate_step({"gate": torch.zeros(4, 2), "patch": torch.zeros(16)}, target=0.0)
        assert arch.block_keep_hard().sum() >= 3
    assert arch.block_keep_hard().sum() == 3


# ----------------------------------------------------------------------------- the freeze guarantee

def test_freeze_from_every_block_skipped_puts_blocks_back():
    """Whatever the search did: every block skipped (the collapse) freezes back into the window."""
    vit = noisy_tiny_vit(0)
    spec = base_spec(vit, MODEL)
    for block in spec["blocks"]:
        block["skipped"] = True
    scores = group_scores(*stacked_weights(vit), 2)
    fitted, info = fit_to_budget(spec, scores, 0.5)
    assert 0.49 <= spec_ratio(fitted) <= 0.5
    assert info["restored_blocks"] >= 2 and sum(not b["skipped"] for b in fitted["blocks"]) >= 2
    gates_only, info = fit_to_budget(spec, scores, 0.5, groups=False)  # no pruning: whole blocks only
    assert info["restored_blocks"] >= 1 and spec_ratio(gates_only) <= 0.5


def test_freeze_puts_back_removed_heads():
    vit = noisy_tiny_vit(0)
    spec = base_spec(vit, MODEL)
    for block in spec["blocks"]:  # one head of two kept everywhere
        block["heads"], block["value_dims"] = [0], [block["value_dims"][0]]
    scores = group_scores(*stacked_weights(vit), 2)
    fitted, info = fit_to_budget(spec, scores, 1.0)  # room for all of them: the dense model again
    assert info["restored_heads"] == 4 and spec_ratio(fitted) == pytest.approx(1.0)
    assert all(len(b["heads"]) == 2 and b["value_dims"] == [list(range(16))] * 2 for b in fitted["blocks"])


# ----------------------------------------------------------------------------- whole searches

def _digits_batches(n: int = 512):
    from data.digits import Digits, digits_transform
    ds = Digits(True, digits_transform(False))
    xs = torch.stack([ds[i][0] for i in range(n)])
    ys = torch.tensor([ds[i][1] for i in range(n)])
    return xs, ys


@pytest.fixture(scope="module")
def trained_tiny():
    """The tiny model trained on the real digits for a few hundred steps (~80% top-1)."""
    torch.manual_seed(0)
    vit = noisy_tiny_vit(0, scale=0.0)
    xs, ys = _digits_batches()
    opt = torch.optim.AdamW(vit.parameters(), lr=3e-3)
    for step in range(300):
        i = torch.randint(len(ys), (64,))
        F.cross_entropy(vit(xs[i]), ys[i]).backward()
        opt.step()
        opt.zero_grad()
    return vit.state_dict(), xs, ys


def _search(state, xs, ys, steps: int, **overrides):
    """A search of `steps` steps from the trained model; the hard ratio, target and top-1 after freeze."""
    from uvc.deploy.freeze import apply_spec
    vit = noisy_tiny_vit(0, scale=0.0)
    vit.load_state_dict(state)
    model = MaskedViT(vit)
    search = UVCSearch(vit, config(**overrides), CPU, search_steps=steps)
    search.set_epoch(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    hard, target = [], []
    for _ in range(steps):
        i = torch.randint(len(ys), (64,), generator=gen)
        search.prepare(model, training=True)
        F.cross_entropy(model(xs[i]), ys[i]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        scalars = search.step(model, 1e-3)
        hard.append(scalars["hard_ratio"])
        target.append(scalars["target_ratio"])
    spec, info = search.freeze(model, MODEL)
    apply_spec(model, spec)
    with torch.no_grad():
        model.eval()
        top1 = float((model(xs).argmax(-1) == ys).float().mean())
    return hard, target, info, top1, search


def test_the_collapse_is_gone(trained_tiny):
    """Issue 10's collapse at smoke size: gate rates 100x the seed's (every gate pushed to skip at once
    in the old search). Now at most one block flips per update, half the blocks stay, the search ends in
    the landing window and the model still works."""
    state, xs, ys = trained_tiny
    hard, target, info, top1, search = _search(state, xs, ys, 200, budget=0.4, glr=10.0, gating_weight=0.05,
                                               patchlr=1.0, patch_weight=500.0)
    assert 0.35 <= hard[-1] <= 0.42
    assert 0.4 - LANDING[0] <= info["macs_ratio"] <= 0.4 + LANDING[1]  # README: exported as searched, no WARNING
    assert (search.arch.block_keep_hard().sum()) >= 2  # --min_blocks 0: half the depth
    assert search.pd.max_undershoot <= max(0.03, search.budget.block_share() / 2)  # README: half a block's share
    with torch.no_grad():
        vit = noisy_tiny_vit(0, scale=0.0)
        vit.load_state_dict(state)
        teacher = float((vit.eval()(xs).argmax(-1) == ys).float().mean())
    assert top1 >= 0.5 * teacher


def test_run_length_invariance(trained_tiny):
    """The same config over 150 and 600 steps reaches the budget at the same fraction of the search,
    within the 0.08 docs/design.md states for this 4-block ViT (measured 0.077: a head or a block is a
    coarse step of its ratio, and the cubic target is flat where the ratio crosses B + 0.02)."""
    state, xs, ys = trained_tiny
    reached = []
    for steps in (150, 600):
        hard, target, info, _, _ = _search(state, xs, ys, steps, budget=0.5)
        reached.append(next(i for i, h in enumerate(hard) if h <= 0.52) / steps)
        assert 0.45 <= hard[-1] <= 0.52
    assert abs(reached[0] - reached[1]) <= 0.08  # docs/design.md: at most 0.08 apart on this model
    assert all(0.25 <= r <= 0.75 for r in reached)
