"""uvc.cost.cost by hand: the dense and spec costs exact in float64, the share of a block, and the cost of
one group of each kind for costs that are not linear in the widths (a latency table's)."""
import pytest
import torch

from uvc.cost.cost import MacsCost, block_share, dense_cost, full_cost, group_costs, model_cost, spec_cost
from uvc.cost.flops import ViTDims, block_macs, head_macs, patch_embed_macs

DEIT_BASE = ViTDims(embed_dim=768, depth=12, num_heads=12, head_dim=64, mlp_hidden=3072, num_patches=196,
                    num_prefix_tokens=1, patch_size=16, in_chans=3, num_classes=1000)


def _spec(dims: ViTDims, skipped=(), headless=()):
    """The dense architecture spec of `dims`, with some blocks skipped and some without heads."""
    return {"patches_kept": list(range(dims.num_patches)),
            "blocks": [{"heads": [] if l in headless else list(range(dims.num_heads)),
                        "value_dims": [] if l in headless else [list(range(dims.head_dim))] * dims.num_heads,
                        "neurons": list(range(dims.mlp_hidden)), "skipped": l in skipped}
                       for l in range(dims.depth)]}


def _exact(dims: ViTDims, heads, blocks_kept):
    """MACs in Python integers: per block `heads[l]` whole heads, every neuron; blocks_kept of them run."""
    d = dims
    n = d.num_patches + d.num_prefix_tokens
    return patch_embed_macs(d.num_patches, d) + head_macs(d) + sum(block_macs(n, d.embed_dim, h, d.head_dim, h * d.head_dim, d.mlp_hidden)
                       for h, kept in zip(heads, blocks_kept) if kept)


def test_the_dense_and_spec_costs_of_deit_base_are_the_exact_integer_counts():
    """17.6 GMACs are not exact in float32 (steps of 2048 there): the costs are summed in float64."""
    cost = MacsCost(DEIT_BASE)
    exact = _exact(DEIT_BASE, [12] * 12, [True] * 12)
    assert exact > 2 ** 34 and full_cost(cost) == exact and dense_cost(cost) == exact
    assert spec_cost(cost, _spec(DEIT_BASE)) == exact
    heads = [12] * 12
    heads[4] = 0
    kept = [l != 7 for l in range(12)]
    assert spec_cost(cost, _spec(DEIT_BASE, skipped=(7,), headless=(4,))) == _exact(DEIT_BASE, heads, kept)


def test_a_block_share_is_one_dense_block_over_the_dense_cost():
    cost = MacsCost(DEIT_BASE)
    dense = dense_cost(cost)
    none = model_cost(cost, *(torch.full((12,), float(v), dtype=torch.float64) for v in (12, 12 * 64, 3072)),
                      torch.zeros(12, dtype=torch.float64), 196)  # every block skipped
    assert block_share(cost, dense) == pytest.approx(float(dense - none) / 12 / dense, rel=1e-12)


class _Curved:
    """A cost that is not linear in the widths (as a measured latency is not): block = heads^2 + 3 value
    dims + neurons^1.5 (+ tokens), embed and head free."""

    def __init__(self, heads, head_dim, neurons):
        self.dims = ViTDims(embed_dim=8, depth=2, num_heads=heads, head_dim=head_dim, mlp_hidden=neurons,
                            num_patches=4, num_prefix_tokens=1, patch_size=2, in_chans=1, num_classes=3)

    def block(self, tokens, heads, value_dims, neurons):
        return tokens + heads ** 2 + 3 * value_dims + neurons ** 1.5

    def embed(self, patches):
        return 0.0

    def head(self):
        return 0.0


@pytest.mark.parametrize("heads,head_dim,neurons", [(4, 8, 16), (2, 1, 9), (1, 4, 1)])
def test_a_group_costs_the_average_over_removing_all_that_may_go(heads, head_dim, neurons):
    """One of each kind stays in a kept block (none when it is alone): a head costs (full - block with one
    head) / (H - 1), a value dim (full - one per head) / (H (d - 1)), a neuron (full - one) / (M - 1),
    each over the dense cost; alone, the whole of its kind."""
    cost = _Curved(heads, head_dim, neurons)
    dense = 1000.0
    n, H, d, M = 5, heads, head_dim, neurons
    full = cost.block(n, H, H * d, M)
    left = lambda c: 1 if c > 1 else 0  # noqa: E731
    expected = ((full - cost.block(n, left(H), left(H) * d, M)) / (H - left(H)),
                (full - cost.block(n, H, H * left(d), M)) / (H * (d - left(d))),
                (full - cost.block(n, H, H * d, left(M))) / (M - left(M)))
    got = group_costs(cost, dense)
    assert (got.heads, got.dims, got.neurons) == pytest.approx(tuple(e / dense for e in expected), rel=1e-12)
    if heads == 4:  # by hand: (16 - 1) / 3 + 3 * 8 * 3 / 3, 3 * 4 * 7 / 28, (64 - 1) / 15
        assert got.heads * dense == pytest.approx(15 / 3 + 24) and got.dims * dense == pytest.approx(3.0)
        assert got.neurons * dense == pytest.approx(63 / 15)


def test_macs_in_token_steps_price_a_count_at_the_next_multiple_with_its_own_gradient():
    """token_step 8 on DeiT-Base (N0 = 197): 185-192 tokens cost what 192 do, 193-197 what 197 does, a fractional
    count is linear between whole ones, and a tensor count keeps the gradient of the count (straight through);
    token_step 1 is the formula itself."""
    step, plain = MacsCost(DEIT_BASE, token_step=8), MacsCost(DEIT_BASE)
    d = DEIT_BASE
    for n, at in ((185, 192), (192, 192), (193, 197), (197, 197), (184, 184), (100, 104)):
        assert step.block(n, 12, 768, 3072) == plain.block(at, 12, 768, 3072)
        assert step.embed(n - 1) == plain.embed(at - 1)
    assert step.tokens(184.25) == 184 + 0.25 * 8 and step.tokens(192.5) == 192 + 0.5 * 5
    n = torch.tensor([185.5, 193.0], dtype=torch.float64, requires_grad=True)
    step.block(n, 12, 768, 3072).sum().backward()
    plain_n = torch.tensor([192.0, 197.0], dtype=torch.float64, requires_grad=True)
    plain.block(plain_n, 12, 768, 3072).sum().backward()
    assert torch.equal(n.grad, plain_n.grad)  # the padded count's slope, not zero inside a step
    assert spec_cost(step, _spec(d)) == spec_cost(plain, _spec(d)) == dense_cost(step)
    assert MacsCost(d, token_step=1).tokens(185) == 185 and not MacsCost(d).envelope and step.envelope
