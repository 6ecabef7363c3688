"""The resource function R(s, r, g, a) = C(compressed) / C(dense).

C is the cost model (uvc.cost.cost): MACs by default (docs/method.md section 3), or the
latency measured on the target device (`--budget_metric latency`, uvc.cost.latency).

Expected value during search: kept counts come from ceil(s), ceil(r) with a
straight-through gradient; each block counts with its gate's keep probability
and the token count uses the expected number of kept patches. The hard value
is the same formula at the argmax architecture (what the frozen model costs).

Value dims are counted as the deployed model computes them: every kept head of
a block padded to the block's widest kept head, V' = H' x max_h (d - ceil r[l,h])
(docs/method.md section 7). So the budget's gradient in r reaches only a block's widest
head (trimming a narrower one saves nothing), and removing one more head saves
that width, the gradient of V' in s[l, 0].
"""
from dataclasses import dataclass

import torch

from uvc.cost.cost import MacsCost, block_share, dense_cost, group_costs, model_cost
from uvc.cost.flops import ViTDims
from uvc.search.gates import block_keep_prob
from uvc.search.masks import Masks, Scores
from uvc.search.structure import ArchState


@dataclass
class SearchSpace:
    """Which parts of the architecture the search may change."""
    pruning: bool = True
    block_gating: bool = True
    patch_gating: bool = True
    use_gumbel: bool = True
    with_attn: bool = True  # count the N^2 attention terms (--flops_with_mhsa)


class Budget:
    """R and the constraint R <= budget for one model, in the units of `cost` (uvc.cost.cost;
    default MACs, with or without the attention terms as `space.with_attn` says)."""

    def __init__(self, dims: ViTDims, budget: float, space: SearchSpace, cost=None):
        self.dims, self.budget, self.space = dims, budget, space
        self.cost = cost if cost is not None else MacsCost(dims, space.with_attn)
        self.dense = dense_cost(self.cost)

    def expected_cost(self, arch: ArchState, masks: Masks, eps: float = 0.0) -> torch.Tensor:
        """Differentiable cost in s, r, gate logits and patch logits."""
        d, sp = self.dims, self.space
        device = arch.s_frac.device
        ones = torch.ones(d.depth, device=device)
        if sp.pruning:
            k_heads, k_neurons, k_dims = arch.ste_counts()
            heads = d.num_heads - k_heads
            neurons = d.mlp_hidden - k_neurons
            kept = masks.heads  # (L, H), consistent with ceil(s)
            widest = ((d.head_dim - k_dims) * kept - (1 - kept) * d.head_dim).amax(-1)  # (L,)
            value_dims = heads * widest
        else:
            heads, neurons = ones * d.num_heads, ones * d.mlp_hidden
            value_dims = ones * d.num_heads * d.head_dim
        keep = block_keep_prob(arch.gate_logits, sp.use_gumbel, eps) if sp.block_gating else ones
        patches = arch.patch_keep_prob().sum() if sp.patch_gating else float(d.num_patches)
        return model_cost(self.cost, heads, value_dims, neurons, keep, patches)

    def group_costs(self) -> Scores:
        """Cost of one group of each kind at the dense token count, over the dense cost:
        a head (its q, k rows, q.k^T and its d value dims), one value dim, one neuron."""
        return group_costs(self.cost, self.dense)

    def block_share(self) -> float:
        """The share of the dense cost one whole block carries."""
        return block_share(self.cost, self.dense)

    def expected_ratio(self, arch: ArchState, masks: Masks, eps: float = 0.0) -> torch.Tensor:
        return self.expected_cost(arch, masks, eps) / self.dense

    def hard_ratio(self, arch: ArchState, masks: Masks, gate_logits: torch.Tensor = None,
                   patch_logits: torch.Tensor = None) -> float:
        """Cost ratio of the argmax architecture (gates and patches hard, counts ceil'd); with
        `gate_logits` / `patch_logits`, of those in place of the current ones."""
        with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
            d, sp = self.dims, self.space
            ones = torch.ones(d.depth, device=arch.s_frac.device)
            if sp.pruning:
                heads, value_dims, neurons = masks.heads.sum(-1), masks.value_dims(), masks.neurons.sum(-1)
            else:
                heads, neurons = ones * d.num_heads, ones * d.mlp_hidden
                value_dims = ones * d.num_heads * d.head_dim
            keep = arch.block_keep_hard(gate_logits) if sp.block_gating else ones
            patches = arch.patch_keep_hard(patch_logits).sum().float() if sp.patch_gating else float(d.num_patches)
            return float(model_cost(self.cost, heads, value_dims, neurons, keep, patches)) / self.dense
