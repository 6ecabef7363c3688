"""The README's promises about the search, each checked at its stated bound (docs/properties.md).

Properties that range over inputs are checked with hypothesis on a fixed seed and a small budget
of examples, so the suite stays fast and every run draws the same cases."""
import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from helpers import demo_search_config, noisy_tiny_vit
from uvc.search.controller import BudgetController
from uvc.search.gates import HYSTERESIS, REFUSED, limit_gate_flips, limit_patch_drops
from uvc.search.masked_model import MaskedViT
from uvc.search.schedule import Z_KI, Z_KP, SearchRates, target_ratio
from uvc.search import UVCSearch

CPU = torch.device("cpu")
FAST = settings(derandomize=True, max_examples=40, deadline=None)
budgets = st.floats(0.05, 0.95)
ramps = st.floats(0.05, 1.0)


# --- the moving target -----------------------------------------------------------------------

@FAST
@given(budget=budgets, ramp=ramps, u=st.floats(0.0, 1.0))
def test_target_is_cubic_then_holds(budget, ramp, u):
    """README: T(u) = B + (1 - B)(1 - u/ramp)^3 over the first `ramp` of the search, then holds at B."""
    expected = budget + (1 - budget) * (1 - u / ramp) ** 3 if u < ramp else budget
    assert target_ratio(u, budget, ramp) == pytest.approx(expected, abs=1e-12)
    assert target_ratio(0.0, budget, ramp) == pytest.approx(1.0)


@FAST
@given(budget=budgets, ramp=ramps, u=st.floats(0.0, 0.99))
def test_target_falls_fast_first_and_gently_at_the_end(budget, ramp, u):
    """The cubic shape, not just its end points: the remaining gap shrinks as (1 - u/ramp)^3."""
    u1 = u * ramp
    gap = target_ratio(u1, budget, ramp) - budget
    assert gap == pytest.approx((1 - budget) * (1 - u) ** 3, abs=1e-12)
    halfway = target_ratio(ramp / 2, budget, ramp)
    assert halfway == pytest.approx(budget + (1 - budget) / 8)  # a linear ramp would be at half the gap


# --- z, the PI controller -------------------------------------------------------------------

@FAST
@given(error=st.floats(-0.5, 0.5), integral=st.floats(0.0, 1.0))
def test_z_is_proportional_plus_nonnegative_integral(error, integral):
    """README: z = 30 e + I, I accumulating 300 e per search and never below 0."""
    steps, clip = 1000, 10.0
    rates = SearchRates.for_search(demo_search_config(), steps)
    assert rates.z_kp == pytest.approx(Z_KP) and rates.z_ki * steps == pytest.approx(Z_KI)
    state = torch.tensor(integral)
    z = BudgetController(rates.z_kp, rates.z_ki, clip).update(state, 0.5 + error, 0.5)
    expected_integral = max(0.0, integral + Z_KI / steps * error)
    assert float(state) == pytest.approx(expected_integral, abs=1e-6)
    assert z == pytest.approx(Z_KP * error + expected_integral, abs=1e-5)


def test_zlr_schedule_list_doubles_the_integral_gain():
    """README: --zlr_schedule_list, epochs at which the integral gain of z doubles."""
    search = _search(zlr_schedule_list="1,3")
    for epoch, scale in ((0, 1.0), (1, 2.0), (2, 2.0), (3, 4.0), (7, 4.0)):
        search.pd.set_epoch(epoch, epoch)
        assert search.pd.ki_scale == scale
        integral = torch.tensor(0.0)
        search.pd.controller.update(integral, 0.6, 0.5, search.pd.ki_scale)
        assert float(integral) == pytest.approx(scale * search.pd.controller.ki * 0.1)


# --- gate safety -------------------------------------------------------------------------------

def _search(**overrides) -> UVCSearch:
    torch.manual_seed(0)
    vit = noisy_tiny_vit(0)
    search = UVCSearch(vit, demo_search_config(**overrides), CPU, search_steps=100)
    search.set_epoch(0)
    search.prepare(MaskedViT(vit), training=True)
    return search


def _hard(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 1] >= logits[:, 0] if logits.dim() == 2 else logits >= 0


class _Gates:
    def __init__(self, logits):
        self.gate_logits = logits


gate_rows = st.lists(st.tuples(st.floats(-3, 3), st.floats(-3, 3)), min_size=2, max_size=12)


@FAST
@given(before=gate_rows, moves=st.lists(st.floats(-6, 6), min_size=12, max_size=12),
       protected=st.lists(st.booleans(), min_size=12, max_size=12), floor=st.booleans())
def test_at_most_one_block_flips_per_update(before, moves, protected, floor):
    """README: one gate update flips at most one block; --min_blocks are never skipped; a skip
    the floor check refuses does not stand; a flip is settled one logit past the boundary."""
    before = torch.tensor(before)
    after = before.clone()
    after[:, 1] += torch.tensor(moves[:len(before)])
    guard = torch.tensor(protected[:len(before)])
    arch = _Gates(after.clone())
    limit_gate_flips(arch, before, guard, lambda: floor)
    was, now = _hard(before), _hard(arch.gate_logits)
    changed = torch.nonzero(was != now).flatten().tolist()
    assert len(changed) <= 1
    for l in changed:
        if not now[l]:  # a new skip
            assert floor and not guard[l]
        margin = arch.gate_logits[l, 1] - arch.gate_logits[l, 0]
        assert abs(float(margin)) >= HYSTERESIS - 1e-5
    unchanged = [l for l in range(len(before)) if l not in changed]
    for l in unchanged:  # an undone flip is back where it was
        if was[l] != _hard(after)[l]:
            assert torch.equal(arch.gate_logits[l], before[l])


@FAST
@given(before=st.lists(st.floats(-3, 6), min_size=2, max_size=30),
       moves=st.lists(st.floats(-8, 2), min_size=30, max_size=30), ok=st.booleans())
def test_at_most_one_patch_dropped_per_update(before, moves, ok):
    """README: one update drops at most one patch (the one pushed furthest), only when allowed;
    a refused drop goes back to its starting logit."""
    before = torch.tensor(before)
    logits = before + torch.tensor(moves[:len(before)])
    proposed = (before >= 0) & (logits < 0)
    furthest = int(torch.where(proposed, logits, torch.inf).argmin()) if proposed.any() else None
    limit_patch_drops(logits, before, lambda: ok)
    dropped = torch.nonzero((before >= 0) & (logits < 0)).flatten().tolist()
    assert len(dropped) <= (1 if ok else 0)
    if proposed.any():
        assert dropped == ([furthest] if ok else [])
        if not ok:
            assert float(logits[furthest]) == max(float(before[furthest]), REFUSED)


def test_skips_and_drops_only_while_z_is_positive():
    """README: a block skip or patch drop is allowed only while z > 0 (the budget still pushes down)."""
    search = _search()
    pd = search.pd
    hard = pd.budget.hard_ratio(pd.arch, pd.masks)
    for z, allowed in ((-0.5, False), (0.0, False), (1e-6, True), (2.0, True)):
        pd.arch.z.fill_(z)
        assert pd._floor_check(hard)() is allowed, z
        assert pd._patch_check(hard, None, pd.arch.patch_logits.detach().clone())() is allowed, z


def test_a_skip_or_drop_stands_only_if_it_leaves_the_ratio_no_further_from_the_target():
    """README: a skip or drop stands only if the midpoint of the hard ratios before and after it is at or
    above the target: a real block skip from just over half its cost above the target stands, from just
    under it does not."""
    search = _search()
    pd = search.pd
    pd.arch.z.fill_(1.0)
    gates = pd.arch.gate_logits.detach().clone()
    before = pd.budget.hard_ratio(pd.arch, pd.masks)
    with torch.no_grad():
        pd.arch.gate_logits[1] = torch.tensor([4.0, -4.0])  # block 1 skipped
    cost = before - pd.budget.hard_ratio(pd.arch, pd.masks)
    assert cost > 0.05
    assert pd._floor_check(before - cost / 2 - 1e-6, gate_logits=gates)()  # its own half cost, not a fixed share
    assert not pd._floor_check(before - cost / 2 + 1e-6, gate_logits=gates)()


def test_a_block_skip_is_priced_from_the_gates_before_it():
    """The gate update's floor reads the hard ratio of the gate logits before the update: the skip stands
    from just over half its own cost above the target and is undone from just under it."""
    search = _search()
    pd = search.pd
    pd.arch.z.fill_(1.0)
    before = pd.arch.gate_logits.detach().clone()
    ratio = pd.budget.hard_ratio(pd.arch, pd.masks)
    skipped = before.clone()
    skipped[1] = torch.tensor([4.0, -4.0])  # block 1 skipped
    cost = ratio - pd.budget.hard_ratio(pd.arch, pd.masks, gate_logits=skipped)
    assert cost > 0.05
    for offset, stands in ((-1e-6, True), (1e-6, False)):
        with torch.no_grad():
            pd.arch.gate_logits.copy_(skipped)
        pd._limit_gates(before, ratio - cost / 2 + offset, None)
        assert bool(pd.arch.gate_logits[1, 0] > pd.arch.gate_logits[1, 1]) is stands, offset


def test_a_patch_drop_is_priced_from_the_patches_before_it():
    """The patch drop's floor reads the hard ratio of the patch logits before the update: a drop stands
    from just over half its own cost above the target, not from just under it."""
    search = _search()
    pd = search.pd
    pd.arch.z.fill_(1.0)
    before = pd.arch.patch_logits.detach().clone()
    assert bool((before >= 0).all())
    ratio = pd.budget.hard_ratio(pd.arch, pd.masks)
    with torch.no_grad():
        pd.arch.patch_logits[0] = -1.0  # patch 0 dropped
    cost = ratio - pd.budget.hard_ratio(pd.arch, pd.masks)
    assert cost > 0
    assert pd._patch_check(ratio - cost / 2 - 1e-6, None, before)()
    assert not pd._patch_check(ratio - cost / 2 + 1e-6, None, before)()


@pytest.mark.parametrize("ramp", [0.5, 0.8])
def test_gates_and_patches_settle_at_half_past_the_ramp(ramp):
    """README: gates and patches stop moving at u = (1 + ramp) / 2."""
    search = _search(target_ramp=ramp, gating_interval=1)
    pd, steps = search.pd, search.pd.rates.steps
    assert pd.coarse_end == pytest.approx((1 + ramp) / 2)
    last = int(pd.coarse_end * steps)
    for t, moves in ((last, True), (last + 1, False)):
        pd.t, pd.grad_steps = t, 0
        gates, patches = pd.arch.gate_logits.detach().clone(), pd.arch.patch_logits.detach().clone()
        pd.arch.gate_logits.grad = torch.ones_like(gates)
        pd.arch.patch_logits.grad = torch.ones_like(patches)
        pd.arch.z.fill_(1.0)
        grads = {"gate": torch.ones_like(gates), "patch": torch.ones_like(patches)}
        pd.gate_step(grads, 1.0)
        moved = not torch.equal(gates, pd.arch.gate_logits) or not torch.equal(patches, pd.arch.patch_logits)
        assert moved is moves, (t, last)
        assert pd.arch.gate_logits.grad is None and pd.arch.patch_logits.grad is None


def test_target_without_a_ramp_is_the_budget_from_the_start():
    """--target_ramp 0: T(u) = B at every u (no division by the ramp)."""
    for u in (0.0, 0.3, 1.0):
        assert target_ratio(u, 0.4, 0.0) == pytest.approx(0.4)


@FAST
@given(steps=st.integers(1, 5000), interval=st.integers(1, 400), factor=st.sampled_from([0.5, 1.0, 3.0]))
@example(steps=100, interval=7, factor=1.0)  # exactly MIN_GATE_UPDATES steps
@example(steps=1, interval=1, factor=1.0)
@example(steps=250, interval=3, factor=1.0)  # 250 // 3 gate updates, not 250 / 3
def test_search_rates_follow_the_rules_per_search_length(steps, interval, factor):
    """schedule.py's rules: rate = rule(S) x (flag / seed value); gate updates every --gating_interval
    steps, or often enough for MIN_GATE_UPDATES updates in a search that long."""
    from uvc.search.schedule import (DUAL_Y, GATE_TRAVEL, MIN_GATE_UPDATES, PATCH_L1, PATCH_TRAVEL, RATE_UNITS,
                              SPEED_S)
    scale = {name: factor * (i + 1) for i, name in enumerate(RATE_UNITS)}  # a different multiple per flag
    config = demo_search_config(gating_interval=interval,
                                **{name: seed * scale[name] for name, seed in RATE_UNITS.items()})
    r = SearchRates.for_search(config, steps)
    expected_interval = min(interval, steps)
    if steps >= MIN_GATE_UPDATES:
        expected_interval = max(min(expected_interval, steps // MIN_GATE_UPDATES), 1)
    assert r.steps == steps and r.gate_interval == expected_interval
    assert r.gate_updates == max(steps // expected_interval, 1)
    if steps >= MIN_GATE_UPDATES:
        assert r.gate_updates >= MIN_GATE_UPDATES
    expected = {"s_step": SPEED_S / steps * scale["slr"], "r_step": SPEED_S / steps * scale["rlr"],
                "y_step": DUAL_Y / steps * scale["ylr"], "p_step": DUAL_Y / steps * scale["plr"],
                "z_kp": Z_KP, "z_ki": Z_KI / steps * scale["zlr"],
                "gate_lr": GATE_TRAVEL / r.gate_updates * scale["glr"],
                "patch_lr": PATCH_TRAVEL / r.gate_updates * scale["patchlr"],
                "gate_weight": scale["gating_weight"], "patch_weight": scale["patch_weight"],
                "patch_l1": PATCH_L1 * scale["patch_l1_weight"]}
    for name, value in expected.items():
        assert getattr(r, name) == pytest.approx(value, rel=1e-9), name


@pytest.mark.parametrize("ratio,target,integral,z,after", [
    (0.9, 0.5, 0.0, 3.0 + 0.1 * 0.1, 0.01),    # e clipped to +0.1: z = 30 x 0.1 + I
    (0.1, 0.5, 0.5, -3.0 + 0.49, 0.49),         # e clipped to -0.1: I falls by 0.1 ki only
    (0.6, 0.5, 2.999, 3.0 + 3.009, 3.009),      # no cap on I (the reference's)
    (0.4, 0.5, 0.005, -3.0 + 0.0, 0.0)])        # I never below 0
def test_z_error_is_clipped_and_the_integral_never_negative(ratio, target, integral, z, after):
    """controller.py: e = clip(R - T, +-z_grad_clip); I <- max(I + ki e, 0); z = kp e + I."""
    state = torch.tensor(integral, dtype=torch.float64)
    out = BudgetController(30.0, 0.1, 0.1).update(state, ratio, target)
    assert float(state) == pytest.approx(after, abs=1e-9)
    assert out == pytest.approx(z, abs=1e-9)


def test_z_integral_gain_scales_with_ki_scale():
    state = torch.tensor(0.0, dtype=torch.float64)
    BudgetController(30.0, 0.1, 1.0).update(state, 0.6, 0.5, ki_scale=4.0)
    assert float(state) == pytest.approx(0.04)
