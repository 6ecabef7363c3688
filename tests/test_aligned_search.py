"""Aligned steps in the search (uvc.search.structure, `round_to` N > 1): the counts the search
uses keep exactly the widths the export allows (uvc.deploy.fit.allowed_widths), and the
LeastSum slope is taken per unit over the next step's groups."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from uvc.cost.flops import ViTDims
from uvc.deploy.fit import allowed_widths
from uvc.search.masks import least_sum
from uvc.search.structure import ArchState, aligned_removed

pytestmark = pytest.mark.usefixtures("one_thread")


def dims(head_dim: int = 16, mlp: int = 40, heads: int = 2, depth: int = 2) -> ViTDims:
    return ViTDims(embed_dim=heads * head_dim, depth=depth, num_heads=heads, head_dim=head_dim, mlp_hidden=mlp,
                   num_patches=4, num_prefix_tokens=1, patch_size=2, in_chans=1, num_classes=10)


def test_aligned_removed_by_hand():
    """Kept widths are the widest multiple of N within full - count (at least N), or full itself."""
    count = torch.tensor([0, 1, 7, 8, 9, 31, 32, 39])
    assert aligned_removed(count, 40, 8).tolist() == [0, 8, 8, 8, 16, 32, 32, 32]
    assert aligned_removed(count, 40, 1).tolist() == count.tolist()
    # a width not a multiple of N: the first removal lands on the multiple below it
    assert aligned_removed(torch.tensor([0, 1, 4, 5]), 20, 8).tolist() == [0, 4, 4, 12]
    # a width under N is never cut
    assert aligned_removed(torch.tensor([0, 1, 3]), 4, 8).tolist() == [0, 0, 0]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(full=st.integers(1, 80), round_to=st.integers(1, 16), count=st.integers(0, 79))
def test_aligned_widths_are_the_exports_widths(full, round_to, count):
    """Whatever s asks for, the kept width is one the fit allows, and never more than s asked to keep."""
    count = min(count, full - 1)
    removed = int(aligned_removed(torch.tensor([count]), full, round_to))
    kept = full - removed
    assert kept in allowed_widths(full, round_to)
    assert removed >= count or kept == min(allowed_widths(full, round_to))


def test_search_counts_are_aligned_and_straight_through():
    """removed_counts and ste_counts give the same aligned counts; the gradient of the
    straight-through counts in s is the identity (one unit of s per unit removed)."""
    arch = ArchState(dims(), round_to=8)
    with torch.no_grad():
        arch.s_frac.copy_(torch.tensor([[0.0, 3.0 / 40], [0.4, 9.5 / 40]]))
        arch.r_frac.copy_(torch.tensor([[0.5 / 16, 8.0 / 16], [9.0 / 16, 15.0 / 16]]))
    k_heads, k_neurons, k_dims = arch.removed_counts()
    assert k_neurons.tolist() == [8, 16]
    assert k_dims.tolist() == [[8, 8], [8, 8]]
    ste_heads, ste_neurons, ste_dims = arch.ste_counts()
    assert ste_heads.tolist() == k_heads.tolist()
    assert ste_neurons.tolist() == k_neurons.tolist() and ste_dims.tolist() == k_dims.tolist()
    (ste_neurons.sum() + ste_dims.sum()).backward()
    assert arch.s_frac.grad[:, 1].tolist() == pytest.approx([40.0, 40.0])  # d count / d s_frac = G
    assert arch.r_frac.grad.flatten().tolist() == pytest.approx([16.0] * 4)


def test_count_steps_follow_round_to_and_the_dense_width():
    assert ArchState(dims(), round_to=8).count_steps() == (1, 8, 8)
    assert ArchState(dims(head_dim=4), round_to=8).count_steps() == (1, 8, 1)
    assert ArchState(dims()).count_steps() == (1, 1, 1)


def test_least_sum_slope_per_unit_of_a_step():
    """With steps of N the slope is the mean of the next N smallest scores (the cost per unit
    of the next step); at N = 1 it is the (k+1)-th smallest."""
    scores = torch.tensor([[4., 1., 3., 2., 5., 8.]])  # sorted 1 2 3 4 5 8
    assert least_sum(scores, torch.tensor([0]), 2)[1].item() == pytest.approx(1.5)
    assert least_sum(scores, torch.tensor([2]), 2)[1].item() == pytest.approx(3.5)
    assert least_sum(scores, torch.tensor([4]), 2)[1].item() == pytest.approx(6.5)
    value, slope = least_sum(scores, torch.tensor([2]), 1)
    assert value.item() == 3.0 and slope.item() == 3.0


def test_no_importance_term_with_dual_init_0_and_no_ascent():
    """--dual_init 0 --ylr 0 --plr 0: y = p = 0 for the whole search (no dual ascent), so nothing but
    z dR/ds moves s and r."""
    from uvc.cost.budget import Budget, SearchSpace
    from uvc.search.masks import Scores, compute_masks
    from uvc.search.primal_dual import PrimalDual, PrimalDualConfig
    from uvc.search.schedule import SearchRates
    from utils.config import load_config_file, set_key
    config = load_config_file("configs/digits_demo.py", "joint")
    config.unlock()
    for key in ("dual_init", "ylr", "plr"):
        set_key(config, key, 0.0)
    d = dims()
    assert ArchState(d, dual_init=0.5).y.tolist() == [[0.5, 0.5]] * d.depth
    arch = ArchState(d, dual_init=float(config.dual_init))
    space = SearchSpace(pruning=True, block_gating=False, patch_gating=False, use_gumbel=True, with_attn=True)
    pd = PrimalDual(arch, Budget(d, 0.5, space), PrimalDualConfig(), SearchRates.for_search(config, 200))
    gen = torch.Generator().manual_seed(0)
    pd.scores = Scores(heads=torch.rand(d.depth, d.num_heads, generator=gen),
                       dims=torch.rand(d.depth, d.num_heads, d.head_dim, generator=gen),
                       neurons=torch.rand(d.depth, d.mlp_hidden, generator=gen))
    with torch.no_grad():
        arch.s_frac[:, 1].fill_(0.2)
        arch.r_frac.fill_(0.3)
    k_heads, k_neurons, k_dims = arch.removed_counts()
    pd.masks = compute_masks(pd.scores, k_heads, k_dims, k_neurons)
    pd.dual_step()
    assert arch.y.abs().sum() == 0 and arch.p.abs().sum() == 0
    before = (arch.s_frac.detach().clone(), arch.r_frac.detach().clone())
    pd.structure_step({"s": torch.zeros_like(arch.s_frac), "r": torch.zeros_like(arch.r_frac)})  # z = 0
    assert torch.equal(arch.s_frac.detach(), before[0]) and torch.equal(arch.r_frac.detach(), before[1])
    arch.y.fill_(1.0)  # the same step with the importance term moves them back
    pd.structure_step({"s": torch.zeros_like(arch.s_frac), "r": torch.zeros_like(arch.r_frac)})
    assert (arch.s_frac.detach()[:, 1] < before[0][:, 1]).all()


def test_the_search_prices_the_next_aligned_step_per_unit():
    """PrimalDual's slopes at round_to 8: the neuron and value-dim slopes are the mean importance of the
    next 8 groups, not the next one's."""
    from uvc.cost.budget import Budget, SearchSpace
    from uvc.search.masks import Scores
    from uvc.search.primal_dual import PrimalDual, PrimalDualConfig
    from uvc.search.schedule import SearchRates
    from utils.config import load_config_file
    d = dims()
    arch = ArchState(d, round_to=8)
    space = SearchSpace(pruning=True, block_gating=False, patch_gating=False, use_gumbel=True, with_attn=True)
    pd = PrimalDual(arch, Budget(d, 0.5, space), PrimalDualConfig(),
                    SearchRates.for_search(load_config_file("configs/digits_demo.py", "joint"), 200))
    gen = torch.Generator().manual_seed(1)
    pd.scores = Scores(heads=torch.rand(d.depth, d.num_heads, generator=gen),
                       dims=torch.rand(d.depth, d.num_heads, d.head_dim, generator=gen),
                       neurons=torch.rand(d.depth, d.mlp_hidden, generator=gen))
    _, neuron_slope, dim_slope = pd._slopes()  # nothing removed yet: the next step is the 8 smallest
    imp = pd._importance()
    assert torch.allclose(neuron_slope, imp.neurons.sort(-1).values[:, :8].mean(-1))
    assert torch.allclose(dim_slope, imp.dims.sort(-1).values[..., :8].mean(-1))


def test_round_to_2_aligns_and_round_to_1_leaves_every_count_the_whole_width_too():
    counts = torch.tensor([0, 3, 8])
    assert aligned_removed(counts, 8, 1).tolist() == [0, 3, 8]
    assert aligned_removed(counts, 8, 2).tolist() == [0, 4, 6]  # kept 8, 5 -> 4, 0 -> at least 2
    assert ArchState(dims(head_dim=8), round_to=8).count_steps() == (1, 8, 8)  # a width equal to N steps by N


def test_a_fresh_aligned_search_removes_nothing_and_its_counts_follow_round_to_2():
    """At the start (s, r at LOWEST) nothing is removed, also with round_to 2; a count of 3 neurons
    (of 40) and 3 dims (of 16) is one aligned step of 2 more in the straight-through counts."""
    arch = ArchState(dims(), round_to=2)
    assert all(float(c.detach().abs().sum()) == 0 for c in arch.ste_counts())
    with torch.no_grad():
        arch.s_frac[:, 1] = 3 / 40
        arch.r_frac.fill_(3 / 16)
    _, neurons, value_dims = arch.ste_counts()
    assert neurons.tolist() == [4.0, 4.0] and value_dims.flatten().tolist() == [4.0] * 4
