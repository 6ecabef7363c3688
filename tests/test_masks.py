"""The mask rule and LeastSum (docs/method.md sections 2 and 4), checked by hand on small tensors."""
import pytest
import torch

from uvc.cost.flops import ViTDims
from uvc.search.masks import Scores, as_importance, compute_masks, full_masks, group_scores, least_sum, lowest_k_mask
from uvc.search.structure import LOWEST, ArchState

L, H, D_HEAD, M = 2, 3, 4, 5  # blocks, heads, dims per head, neurons


pytestmark = pytest.mark.usefixtures("one_thread")


def small_dims() -> ViTDims:
    return ViTDims(embed_dim=H * D_HEAD, depth=L, num_heads=H, head_dim=D_HEAD, mlp_hidden=M, num_patches=4,
                   num_prefix_tokens=1, patch_size=2, in_chans=1, num_classes=10)


def hand_scores() -> Scores:
    """Distinct scores whose order is easy to read off."""
    dims = torch.tensor([
        [[5., 1., 7., 3.], [0.5, 0.25, 9., 8.], [2., 2.5, 6., 4.]],  # head sums 16, 17.75, 14.5
        [[1., 2., 3., 4.], [10., 20., 30., 40.], [0.1, 0.2, 0.3, 0.4]],  # head sums 10, 100, 1
    ])
    neurons = torch.tensor([[3., 1., 4., 1.5, 9.], [2., 7., 1., 8., 2.8]])
    return Scores(heads=dims.sum(-1), dims=dims, neurons=neurons)


def test_group_scores_are_squared_column_norms():
    """Head / dim scores are squared proj column norms (per head, per dim), neuron scores fc2 column norms."""
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(L, 7, H * D_HEAD, generator=gen)
    fc2 = torch.randn(L, 7, M, generator=gen)
    sc = group_scores(proj, fc2, H)
    for l in range(L):
        for h in range(H):
            for j in range(D_HEAD):
                col = proj[l, :, h * D_HEAD + j]
                assert torch.allclose(sc.dims[l, h, j], (col ** 2).sum())
            block = proj[l, :, h * D_HEAD:(h + 1) * D_HEAD]
            assert torch.allclose(sc.heads[l, h], (block ** 2).sum())
        for m in range(M):
            assert torch.allclose(sc.neurons[l, m], (fc2[l, :, m] ** 2).sum())


def test_mask_rule_by_hand():
    """The ceil(s) lowest-score heads, dims (per head) and neurons are removed, each block with its own count."""
    sc = hand_scores()
    k_heads = torch.tensor([1, 2])
    k_dims = torch.tensor([[2, 1, 3], [0, 3, 1]])
    k_neurons = torch.tensor([2, 4])
    m = compute_masks(sc, k_heads, k_dims, k_neurons)
    # block 0: head 2 (14.5) goes; block 1: heads 2 (1) and 0 (10) go
    assert m.heads.tolist() == [[1, 1, 0], [0, 1, 0]]
    # dims: block 0 head 0 drops dims 1, 3; head 1 drops dim 1; head 2 is gone as a whole
    assert m.dims[0].tolist() == [[1, 0, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0]]
    # block 1: head 1 drops its 3 lowest (10, 20, 30); heads 0 and 2 are gone
    assert m.dims[1].tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert m.neurons.tolist() == [[1, 0, 1, 0, 1], [0, 0, 0, 1, 0]]
    # deployed value dims: 2 kept heads padded to the widest (3 dims), and 1 x 1
    assert m.value_dims().tolist() == [6, 1]
    assert m.proj_input.shape == (L, H * D_HEAD)


def test_lowest_k_mask_ties_and_zero():
    """k = 0 keeps everything; ties are broken by index (the lower index goes first)."""
    scores = torch.tensor([[1., 1., 1., 0.]])
    assert lowest_k_mask(scores, torch.tensor([0])).tolist() == [[1, 1, 1, 1]]
    assert lowest_k_mask(scores, torch.tensor([2])).tolist() == [[0, 1, 1, 0]]


def test_masks_vectorised_match_a_per_layer_loop():
    """All blocks at once (one call on stacked scores) equal the rule applied block by block."""
    gen = torch.Generator().manual_seed(1)
    Lb, Hb, db, Mb = 6, 4, 8, 16
    dims = torch.rand(Lb, Hb, db, generator=gen)
    sc = Scores(heads=dims.sum(-1), dims=dims, neurons=torch.rand(Lb, Mb, generator=gen))
    k_heads = torch.randint(0, Hb, (Lb,), generator=gen)
    k_dims = torch.randint(0, db, (Lb, Hb), generator=gen)
    k_neurons = torch.randint(0, Mb, (Lb,), generator=gen)
    m = compute_masks(sc, k_heads, k_dims, k_neurons)
    for l in range(Lb):
        removed = set(sc.heads[l].argsort()[:k_heads[l]].tolist())
        assert {h for h in range(Hb) if m.heads[l, h] == 0} == removed
        removed_n = set(sc.neurons[l].argsort()[:k_neurons[l]].tolist())
        assert {i for i in range(Mb) if m.neurons[l, i] == 0} == removed_n
        for h in range(Hb):
            kept = set(range(db)) - set(sc.dims[l, h].argsort()[:k_dims[l, h]].tolist())
            expect = set() if h in removed else kept
            assert {j for j in range(db) if m.dims[l, h, j] == 1} == expect


def test_projection_keeps_one_head_dim_and_neuron():
    """However far s and r are pushed, the counts stay in range: one head, dim and neuron survive."""
    arch = ArchState(small_dims())
    with torch.no_grad():
        arch.s_frac.fill_(5.0)
        arch.r_frac.fill_(5.0)
    arch.project_()
    k_heads, k_neurons, k_dims = arch.removed_counts()
    assert k_heads.tolist() == [H - 1] * L
    assert k_neurons.tolist() == [M - 1] * L
    assert k_dims.tolist() == [[D_HEAD - 1] * H] * L
    ste_heads, ste_neurons, ste_dims = arch.ste_counts()
    assert ste_heads.tolist() == [H - 1] * L and ste_neurons.tolist() == [M - 1] * L
    assert ste_dims.tolist() == [[D_HEAD - 1] * H] * L
    m = compute_masks(hand_scores(), k_heads, k_dims, k_neurons)
    assert m.heads.sum(-1).tolist() == [1] * L
    assert m.neurons.sum(-1).tolist() == [1] * L
    assert m.value_dims().tolist() == [1] * L  # one dim of the one kept head
    with torch.no_grad():
        arch.s_frac.fill_(-1.0)
        arch.r_frac.fill_(-1.0)
    arch.project_()
    assert all(int(k.sum()) == 0 for k in arch.removed_counts())
    assert all(int(k.sum()) == 0 for k in arch.ste_counts())
    assert torch.allclose(arch.s, torch.full_like(arch.s, LOWEST))  # one unit under the first group


def test_the_first_group_takes_a_unit_of_travel_like_the_others():
    """A new search removes nothing, and it takes s one whole unit to remove the first group."""
    arch = ArchState(small_dims())
    assert all(int(k.sum()) == 0 for k in arch.removed_counts())
    with torch.no_grad():
        arch.s_frac.add_(0.9 / arch.group_counts)
    assert all(int(k.sum()) == 0 for k in arch.removed_counts()[:2])
    with torch.no_grad():
        arch.s_frac.add_(0.2 / arch.group_counts)
    assert arch.removed_counts()[0].tolist() == [1] * L


def test_counts_are_ceil_of_s():
    """The integer count is ceil(s): s = 0.2 heads removes one head, s = 1.0 exactly one, s = 0 none."""
    arch = ArchState(small_dims())
    with torch.no_grad():
        arch.s_frac.copy_(torch.tensor([[0.2 / H, 2.5 / M], [1.0 / H, 0.0]]))
        arch.r_frac.copy_(torch.tensor([[0.0, 0.1, 2.0], [3.0, 1.5, 0.9]]) / D_HEAD)
    k_heads, k_neurons, k_dims = arch.removed_counts()
    assert k_heads.tolist() == [1, 1]
    assert k_neurons.tolist() == [3, 0]
    assert k_dims.tolist() == [[0, 1, 2], [3, 2, 1]]
    ste = arch.ste_counts()
    assert [t.tolist() for t in ste] == [[1, 1], [3, 0], [[0, 1, 2], [3, 2, 1]]]


def test_least_sum_value_and_slope_by_hand():
    """LeastSum = sum of the k smallest; its slope in k is the (k+1)-th smallest score."""
    scores = torch.tensor([[4., 1., 3., 2., 5.], [0.5, 0.1, 0.9, 0.3, 0.7]])
    for k0, k1 in [(0, 0), (1, 3), (2, 4), (4, 1)]:
        value, slope = least_sum(scores, torch.tensor([k0, k1]))
        ordered = scores.sort(-1).values
        assert torch.allclose(value, torch.stack([ordered[0, :k0].sum(), ordered[1, :k1].sum()]))
        assert torch.allclose(slope, torch.stack([ordered[0, k0], ordered[1, k1]]))
    value, slope = least_sum(scores, torch.tensor([2, 3]))
    assert torch.allclose(value, torch.tensor([1. + 2., 0.1 + 0.3 + 0.5]))
    assert torch.allclose(slope, torch.tensor([3., 0.7]))
    # the slope is the forward difference of the value in k
    nxt, _ = least_sum(scores, torch.tensor([3, 4]))
    assert torch.allclose(nxt - value, slope)


def test_least_sum_slope_of_last_removable_group():
    """At k = G-1 (the most a projection allows) the slope is the one score that is left."""
    scores = torch.tensor([[4., 1., 3.]])
    value, slope = least_sum(scores, torch.tensor([2]))
    assert value.item() == 4.0 and slope.item() == 4.0


def test_least_sum_gradient_reaches_selected_scores():
    """d LeastSum / d scores is 1 on the k selected (smallest) groups and 0 on the others."""
    scores = torch.tensor([[4., 1., 3., 2., 5.], [0.5, 0.1, 0.9, 0.3, 0.7]], dtype=torch.float64,
                          requires_grad=True)
    k = torch.tensor([2, 3])
    value, _ = least_sum(scores, k)
    (value * torch.tensor([1.0, 2.0], dtype=torch.float64)).sum().backward()
    assert scores.grad.tolist() == [[0, 1, 0, 1, 0], [2, 2, 0, 2, 0]]
    # and the selection is exactly the removal mask
    assert ((1 - lowest_k_mask(scores.detach(), k)) * torch.tensor([[1.], [2.]], dtype=torch.float64)
            ).tolist() == scores.grad.tolist()


@pytest.mark.parametrize("step", [1, 4])
def test_least_sum_of_value_dims_is_taken_per_head(step):
    """On (L, H, d) dim scores, LeastSum and its slope (the mean of the next `step` smallest) are those
    of each head's own d scores, with k (L, H)."""
    dims = hand_scores().dims  # (2, 3, 4)
    k = torch.tensor([[0, 1, 3], [2, 0, 1]])
    value, slope = least_sum(dims, k, step)
    for l in range(L):
        for h in range(H):
            ordered = dims[l, h].sort().values
            n = int(k[l, h])
            nxt = ordered[min(n + step, D_HEAD) - step:min(n + step, D_HEAD)]
            assert value[l, h] == pytest.approx(float(ordered[:n].sum()))
            assert slope[l, h] == pytest.approx(float(nxt.mean()))


def test_importance_makes_the_average_group_of_each_kind_worth_its_cost_share():
    """as_importance: score / (the mean score of its kind) x the group's cost share, at any scale of
    the scores (tiny ones too)."""
    sc = Scores(heads=torch.tensor([[1.0, 3.0]]), dims=torch.tensor([[[2.0, 6.0]]]),
                neurons=torch.tensor([[4.0, 12.0]]))
    costs = Scores(heads=0.5, dims=0.25, neurons=0.125)
    for scale in (1.0, 1e-6):
        imp = as_importance(Scores(*(t * scale for t in sc)), costs)
        assert torch.allclose(imp.heads, torch.tensor([[0.25, 0.75]]))
        assert torch.allclose(imp.dims, torch.tensor([[[0.125, 0.375]]]))
        assert torch.allclose(imp.neurons, torch.tensor([[0.0625, 0.1875]]))


def test_full_masks_keep_every_group():
    masks = full_masks(L, H, D_HEAD, M, device=torch.device("meta"))
    assert [tuple(t.shape) for t in masks] == [(L, H), (L, H, D_HEAD), (L, M)]
    assert all(t.device == torch.device("meta") for t in masks)
    masks = full_masks(L, H, D_HEAD, M)
    assert all(bool((t == 1).all()) for t in masks)


def test_ties_are_removed_by_index_in_rows_of_any_length():
    """Equal scores go by index, also in rows long enough for an unstable sort to reorder them (32)."""
    scores = (torch.arange(32) % 3 == 0).float().repeat(2, 1)  # ties at 0 (i % 3 != 0) and at 1
    mask = lowest_k_mask(scores, torch.tensor([4, 12]))
    assert (mask[0] == 0).nonzero().flatten().tolist() == [1, 2, 4, 5]
    assert (mask[1] == 0).nonzero().flatten().tolist() == [i for i in range(32) if i % 3][:12]


def test_a_fresh_arch_state_removes_nothing_keeps_every_block_and_patch_and_starts_its_duals():
    """s and r at LOWEST in groups (ceil gives 0), gates (skip 0, keep 4), patch logits 4, y = p = 1,
    z = 0 and its integral 0 saved with the rest."""
    arch = ArchState(small_dims())
    assert torch.allclose(arch.s, torch.full((L, 2), LOWEST)) and torch.allclose(arch.r, torch.full((L, H), LOWEST))
    assert arch.gate_logits.tolist() == [[0.0, 4.0]] * L and arch.patch_logits.tolist() == [4.0] * 4
    assert arch.y.tolist() == [[1.0, 1.0]] * L and arch.p.tolist() == [[1.0] * H] * L
    assert float(arch.z) == 0.0 and float(arch.state_dict()["z_integral"]) == 0.0


def test_hard_keeps_break_ties_towards_keeping():
    """A gate keeps its block when keep >= skip; a patch stays at logit >= 0; pi = sigmoid(logit)."""
    arch = ArchState(small_dims())
    with torch.no_grad():
        arch.gate_logits.copy_(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
        arch.patch_logits.copy_(torch.tensor([0.0, -0.5, 0.5, 2.0]))
    assert arch.block_keep_hard().tolist() == [1.0, 0.0]
    assert arch.patch_keep_hard().tolist() == [True, False, True, True]
    assert torch.allclose(arch.patch_keep_prob(), torch.sigmoid(arch.patch_logits))


def test_removed_counts_stay_within_one_group_left_and_nothing_below_zero():
    arch = ArchState(small_dims())
    with torch.no_grad():
        arch.s_frac.fill_(2.0)  # far past every bound
        arch.r_frac.copy_(torch.tensor([[2.0, -3.0, 0.5], [-3.0, 2.0, 0.5]]))
    k_heads, k_neurons, k_dims = arch.removed_counts()
    assert k_heads.tolist() == [H - 1] * L and k_neurons.tolist() == [M - 1] * L
    assert k_dims.tolist() == [[D_HEAD - 1, 0, 2], [0, D_HEAD - 1, 2]]
