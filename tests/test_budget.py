"""The MACs model and the budget R(s, r, g, a) (docs/method.md section 3): values by hand, gradients by differences."""
import pytest
import torch

from models import create_model
from uvc.cost.budget import Budget, SearchSpace
from uvc.cost.cost import MacsCost
from uvc.cost.flops import ViTDims, dense_macs, vit_macs
from uvc.search.masks import Scores, compute_masks
from uvc.search.structure import ArchState

# a small ViT with 3 heads so that "the head removed next" matters: D=24, L=3, H=3, d=8, M=16, 9 patches
SMALL = ViTDims(embed_dim=24, depth=3, num_heads=3, head_dim=8, mlp_hidden=16, num_patches=9,
                num_prefix_tokens=1, patch_size=2, in_chans=3, num_classes=5)
# the test model vit_digits_tiny_patch2_8
TINY = ViTDims(embed_dim=32, depth=4, num_heads=2, head_dim=16, mlp_hidden=128, num_patches=16,
               num_prefix_tokens=1, patch_size=2, in_chans=1, num_classes=10)


pytestmark = pytest.mark.usefixtures("one_thread")


def random_scores(dims: ViTDims, seed: int = 0) -> Scores:
    gen = torch.Generator().manual_seed(seed)
    d = torch.rand(dims.depth, dims.num_heads, dims.head_dim, generator=gen)
    return Scores(heads=d.sum(-1), dims=d, neurons=torch.rand(dims.depth, dims.mlp_hidden, generator=gen))


def arch64(dims: ViTDims, s=None, r=None, gates=None, patches=None) -> ArchState:
    """An ArchState in float64 with the given counts (not fractions) and logits."""
    arch = ArchState(dims).double()
    with torch.no_grad():
        if s is not None:
            arch.s_frac.copy_(torch.as_tensor(s, dtype=torch.float64) / arch.group_counts)
        if r is not None:
            arch.r_frac.copy_(torch.as_tensor(r, dtype=torch.float64) / dims.head_dim)
        if gates is not None:
            arch.gate_logits.copy_(torch.as_tensor(gates, dtype=torch.float64))
        if patches is not None:
            arch.patch_logits.copy_(torch.as_tensor(patches, dtype=torch.float64))
    return arch


def masks_of(arch: ArchState, scores: Scores):
    k_heads, k_neurons, k_dims = arch.removed_counts()
    return compute_masks(scores, k_heads, k_dims, k_neurons)


def test_tiny_model_dims():
    """ViTDims reads the test model's sizes (used by the by-hand numbers below)."""
    assert ViTDims.of(create_model("vit_digits_tiny_patch2_8")) == TINY


def test_dense_deit_macs_match_the_literature():
    """Dense DeiT-Tiny / Small / Base at 224 come to about 1.26 / 4.6 / 17.6 GMACs."""
    for width, heads, gmacs in [(192, 3, 1.26), (384, 6, 4.6), (768, 12, 17.6)]:
        dims = ViTDims(width, 12, heads, 64, 4 * width, 196, 1, 16, 3, 1000)
        assert dense_macs(dims) / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_hard_ratio_of_dense_architecture_is_one():
    """Nothing removed, every gate and patch kept: R = 1 (hard and expected with hard gates)."""
    arch = ArchState(TINY)
    masks = masks_of(arch, random_scores(TINY))
    budget = Budget(TINY, 0.5, SearchSpace())
    assert budget.hard_ratio(arch, masks) == pytest.approx(1.0, abs=1e-9)
    with torch.no_grad():
        arch.gate_logits.copy_(torch.tensor([-40.0, 40.0]).repeat(TINY.depth, 1))
        arch.patch_logits.fill_(40.0)
    assert float(budget.expected_ratio(arch, masks).detach()) == pytest.approx(1.0, abs=1e-6)


def test_hard_ratio_by_hand():
    """A chosen small architecture of the tiny model: hard ratio equals the section-3 terms written out."""
    D, d, M = 32, 16, 128
    arch = arch64(TINY, s=[[1, 0], [0, 64], [0, 0], [0, 0]], r=[[0, 0], [0, 0], [4, 6], [0, 0]],
                  gates=[[0, 1], [0, 1], [0, 1], [1, 0]],  # block 3 skipped
                  patches=[5.0] * 12 + [-5.0] * 4)  # 12 patches kept
    masks = masks_of(arch, random_scores(TINY))

    def block(n, heads, values, neurons):
        qkv = n * D * (2 * heads * d + values)
        qk = n * n * heads * d
        av = n * n * values
        proj = n * values * D
        fc1 = n * D * neurons
        fc2 = n * neurons * D
        return qkv + qk + av + proj + fc1 + fc2

    dense = 4 * block(17, 2, 32, M) + 16 * 1 * 2 * 2 * D + D * 10
    assert dense == 911936
    n = 12 + 1
    # block 2: its heads keep 12 and 10 value dims, deployed padded to 2 x 12 (docs/method.md section 7)
    macs = (block(n, 1, 16, M) + block(n, 2, 32, 64) + block(n, 2, 2 * (16 - 4), M)
            + 12 * 1 * 2 * 2 * D + D * 10)
    budget = Budget(TINY, 0.5, SearchSpace())
    assert budget.dense == dense
    assert budget.hard_ratio(arch, masks) == pytest.approx(macs / dense, rel=1e-6)
    # expected R at saturated gates / patches is the same architecture
    with torch.no_grad():
        arch.gate_logits.mul_(60.0)
        arch.patch_logits.mul_(10.0)
    assert float(budget.expected_ratio(arch, masks).detach()) == pytest.approx(macs / dense, rel=1e-6)


@pytest.mark.parametrize("use_gumbel", [True, False])
def test_ratio_gradient_in_gate_and_patch_logits_matches_finite_differences(use_gumbel):
    """R is smooth in the gate and patch logits: autograd equals central differences (float64)."""
    gen = torch.Generator().manual_seed(3)
    arch = arch64(SMALL, s=[[0.4, 3.2], [1.5, 0.0], [0.0, 7.7]], r=[[1.2, 0.0, 2.5], [0.3, 4.0, 1.0], [0.0] * 3],
                  gates=torch.randn(3, 2, generator=gen, dtype=torch.float64),
                  patches=torch.randn(9, generator=gen, dtype=torch.float64))
    masks = masks_of(arch, random_scores(SMALL))
    budget = Budget(SMALL, 0.5, SearchSpace(use_gumbel=use_gumbel))
    eps_l0 = 0.1
    grads = torch.autograd.grad(budget.expected_ratio(arch, masks, eps_l0), [arch.gate_logits, arch.patch_logits])
    h = 1e-6
    for param, grad in zip([arch.gate_logits, arch.patch_logits], grads):
        fd = torch.zeros_like(param)
        for i in range(param.numel()):
            with torch.no_grad():
                flat = param.view(-1)
                flat[i] += h
                up = float(budget.expected_ratio(arch, masks, eps_l0).detach())
                flat[i] -= 2 * h
                down = float(budget.expected_ratio(arch, masks, eps_l0).detach())
                flat[i] += h
            fd.view(-1)[i] = (up - down) / (2 * h)
        assert grad.abs().max() > 1e-4  # the logits do move R
        assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-9), (grad, fd)


def test_ratio_gradient_in_s_and_r_is_the_marginal_macs_at_the_ceiled_count():
    """ceil makes R piecewise constant in s and r, so differences of R itself are 0 or jumps.

    The straight-through gradient is the derivative of the smooth formula (linear in
    H', V', M') at the ceil'd counts, i.e. the exact MACs change of removing one more
    group: one more head (with the padded value dims of a head), one more neuron, or
    one more value dim of the block's widest kept head (the padding of every other).
    Checked against that difference and against the closed form by hand.
    """
    gen = torch.Generator().manual_seed(4)
    arch = arch64(SMALL, s=[[0.4, 3.2], [1.5, 0.0], [0.0, 7.7]], r=[[1.2, 0.0, 2.5], [0.3, 4.0, 1.0], [0.0] * 3],
                  gates=torch.randn(3, 2, generator=gen, dtype=torch.float64),
                  patches=torch.randn(9, generator=gen, dtype=torch.float64))
    scores = random_scores(SMALL, seed=5)
    k_heads, k_neurons, k_dims = arch.removed_counts()
    masks = compute_masks(scores, k_heads, k_dims, k_neurons)
    budget = Budget(SMALL, 0.5, SearchSpace())
    ratio = budget.expected_ratio(arch, masks)
    g_s, g_r = torch.autograd.grad(ratio, [arch.s_frac, arch.r_frac])

    with torch.no_grad():
        keep = arch.gate_logits.softmax(-1)[:, 1]
        patches = arch.patch_keep_prob().sum()

    def smooth(kh, kn, kd):
        """The section-3 formula at integer counts, with the same soft gates and patch count."""
        m = compute_masks(scores, kh, kd, kn)
        macs = vit_macs(SMALL, m.heads.sum(-1).double(), m.value_dims().double(), m.neurons.sum(-1).double(),
                        keep, patches)
        return float(macs) / budget.dense

    base = smooth(k_heads, k_neurons, k_dims)
    assert float(ratio.detach()) == pytest.approx(base, rel=1e-12)  # forward: the formula at ceil(s), ceil(r)
    H, d, M, D = SMALL.num_heads, SMALL.head_dim, SMALL.mlp_hidden, SMALL.embed_dim
    n = float(patches) + 1
    for l in range(SMALL.depth):
        one = torch.nn.functional.one_hot(torch.tensor(l), SMALL.depth)
        # neurons: d R / d s_frac = M * (R(k + 1) - R(k))
        assert float(g_s[l, 1]) == pytest.approx(M * (smooth(k_heads, k_neurons + one, k_dims) - base), rel=1e-9)
        assert float(g_s[l, 1]) == pytest.approx(-M * float(keep[l]) * 2 * n * D / budget.dense, rel=1e-9)
        # heads (when one more may go): H' times the widest kept head's value dims (padded V')
        kept = masks.heads[l].bool()
        width = masks.dims[l].sum(-1)  # (H,) kept value dims per head
        widest = float(width[kept].max())
        if k_heads[l] < H - 1:
            by_hand = -H * float(keep[l]) * ((2 * n * D + n * n) * d + (2 * n * D + n * n) * widest) / budget.dense
            assert float(g_s[l, 0]) == pytest.approx(by_hand, rel=1e-9)
        ties = int((width[kept] == widest).sum())
        for h in range(H):
            if masks.heads[l, h] == 0 or width[h] < widest:  # removed, or narrower than the padding: free
                assert float(g_r[l, h]) == 0.0
                continue
            heads_kept = float(kept.sum())
            by_hand = -d * float(keep[l]) * heads_kept * (2 * n * D + n * n) / budget.dense / ties
            assert float(g_r[l, h]) == pytest.approx(by_hand, rel=1e-9)
            if ties == 1:  # one dim less on the only widest head: the padded V' drops by H'
                bump = torch.zeros_like(k_dims)
                bump[l, h] = 1
                diff = smooth(k_heads, k_neurons, k_dims + bump) - base
                assert float(g_r[l, h]) == pytest.approx(d * diff, rel=1e-9)


def test_ratio_ignores_disabled_parts():
    """Each part switched off takes its variables out of R (zero gradient); all off, R is the constant 1."""
    gen = torch.Generator().manual_seed(6)
    arch = arch64(SMALL, s=[[0.4, 3.2]] * 3, r=[[1.2, 0.0, 2.5]] * 3,
                  gates=torch.randn(3, 2, generator=gen, dtype=torch.float64),
                  patches=torch.randn(9, generator=gen, dtype=torch.float64))
    masks = masks_of(arch, random_scores(SMALL))
    params = arch.architecture_parameters()  # s, r, gates, patches
    for off, silent in [("pruning", (0, 1)), ("block_gating", (2,)), ("patch_gating", (3,))]:
        budget = Budget(SMALL, 0.5, SearchSpace(**{off: False}))
        grads = torch.autograd.grad(budget.expected_ratio(arch, masks), params, allow_unused=True)
        for i, g in enumerate(grads):
            moved = g is not None and float(g.abs().max()) > 0
            assert moved != (i in silent), (off, i)
    budget = Budget(SMALL, 0.5, SearchSpace(pruning=False, block_gating=False, patch_gating=False))
    ratio = budget.expected_ratio(arch, masks)
    assert float(ratio) == pytest.approx(1.0) and not ratio.requires_grad


def _by_hand_arch(s=((1, 0), (0, 64), (0, 0), (0, 0)), r=((0, 0), (0, 0), (4, 6), (0, 0)),
                  gates=((0, 1), (0, 1), (0, 1), (1, 0)), patches=(5.0,) * 12 + (-5.0,) * 4):
    """test_hard_ratio_by_hand's architecture (block 3 skipped, 12 patches kept), or parts of it."""
    arch = arch64(TINY, s=[list(x) for x in s], r=[list(x) for x in r], gates=[list(g) for g in gates],
                  patches=list(patches))
    return arch, masks_of(arch, random_scores(TINY))


def test_hard_ratio_leaves_out_what_the_search_space_leaves_out():
    """With pruning, block gating or patch gating off, the hard ratio is that of the same
    architecture with every group, every block or every patch kept."""
    ratio = lambda arch_masks, **off: Budget(TINY, 0.5, SearchSpace(**off)).hard_ratio(*arch_masks)  # noqa: E731
    chosen = _by_hand_arch()
    unpruned = _by_hand_arch(s=((0, 0),) * 4, r=((0, 0),) * 4)
    all_blocks = _by_hand_arch(gates=((0, 1),) * 4)
    all_patches = _by_hand_arch(patches=(5.0,) * 16)
    assert len({ratio(chosen), ratio(unpruned), ratio(all_blocks), ratio(all_patches)}) == 4
    assert ratio(chosen, pruning=False) == pytest.approx(ratio(unpruned), rel=1e-12)
    assert ratio(chosen, block_gating=False) == pytest.approx(ratio(all_blocks), rel=1e-12)
    assert ratio(chosen, patch_gating=False) == pytest.approx(ratio(all_patches), rel=1e-12)
    assert ratio(chosen, pruning=False, block_gating=False, patch_gating=False) == pytest.approx(1.0, rel=1e-12)


def test_hard_ratio_counts_on_the_architectures_device(monkeypatch):
    """The counts hard_ratio builds are on the device of the search state (a GPU in training; the
    meta device here stands for any device other than the default)."""
    from uvc.cost import budget as budget_module
    devices = []

    def spy(cost, heads, value_dims, neurons, keep, patches):
        devices.extend(t.device.type for t in (heads, value_dims, neurons, keep))
        return torch.tensor(1.0)

    monkeypatch.setattr(budget_module, "model_cost", spy)
    arch = ArchState(TINY).to("meta")
    budget = Budget(TINY, 0.5, SearchSpace(pruning=False, block_gating=False, patch_gating=False))
    budget.hard_ratio(arch, None)
    budget.expected_cost(arch, None)
    assert devices == ["meta"] * 8


def test_block_gates_count_at_their_keep_probability():
    """A block counts with its gate's keep value: soft-L0 sigmoid(g_keep - g_skip) stretched by
    eps, (1 + 2 eps) p - eps clamped to [0, 1], unstretched by default; a Gumbel gate its softmax
    keep probability, whatever eps."""
    gates = torch.tensor([[0.0, 0.5], [0.0, -1.0], [2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    arch = arch64(TINY, gates=gates)
    block = MacsCost(TINY).block(17, 2, 32, 128)
    p = torch.sigmoid(gates[:, 1] - gates[:, 0])
    for use_gumbel, eps, keep in [(False, None, p), (False, 0.1, (1.2 * p - 0.1).clamp(0, 1)), (True, 0.1, p)]:
        budget = Budget(TINY, 0.5, SearchSpace(pruning=False, patch_gating=False, use_gumbel=use_gumbel))
        ratio = budget.expected_ratio(arch, None) if eps is None else budget.expected_ratio(arch, None, eps)
        expected = (budget.dense - float((1 - keep).sum()) * block) / budget.dense
        assert float(ratio.detach()) == pytest.approx(expected, rel=1e-12), (use_gumbel, eps)
        if eps is None:  # the cost's default too
            assert float(budget.expected_cost(arch, None).detach()) == pytest.approx(expected * budget.dense, rel=1e-12)


def test_the_budget_counts_in_the_cost_model_it_is_given():
    """Budget's cost is the one passed, else MACs with or without the attention terms as the
    search space says."""
    assert Budget(TINY, 0.5, SearchSpace()).dense == dense_macs(TINY)
    assert Budget(TINY, 0.5, SearchSpace(with_attn=False)).dense == dense_macs(TINY, with_attn=False)
    given = MacsCost(TINY, with_attn=False)
    budget = Budget(TINY, 0.5, SearchSpace(), cost=given)
    assert budget.cost is given and budget.dense == dense_macs(TINY, with_attn=False) < dense_macs(TINY)


def test_hard_ratio_of_given_logits_is_that_of_those_logits():
    """hard_ratio(arch, masks, gate_logits, patch_logits) prices the gates and patches given, not the current
    ones (the trials price a flip before making it); block_keep_hard and patch_keep_hard read them the same way."""
    budget = Budget(TINY, 0.5, SearchSpace())
    chosen, masks = _by_hand_arch()  # block 3 skipped, 12 patches kept
    all_blocks, _ = _by_hand_arch(gates=((0, 1),) * 4)
    all_patches, _ = _by_hand_arch(patches=(5.0,) * 16)
    gates, patches = all_blocks.gate_logits.detach(), all_patches.patch_logits.detach()
    assert budget.hard_ratio(chosen, masks, gate_logits=gates) == \
        pytest.approx(budget.hard_ratio(all_blocks, masks), rel=1e-12) != budget.hard_ratio(chosen, masks)
    assert budget.hard_ratio(chosen, masks, patch_logits=patches) == \
        pytest.approx(budget.hard_ratio(all_patches, masks), rel=1e-12) != budget.hard_ratio(chosen, masks)
    assert chosen.block_keep_hard(gates).tolist() == [1.0] * 4 and chosen.block_keep_hard().tolist()[3] == 0.0
    assert int(chosen.patch_keep_hard(patches).sum()) == 16 and int(chosen.patch_keep_hard().sum()) == 12
