"""The resource function R(s, r, g, a) = MACs(compressed) / MACs(dense).

Expected value during search: kept counts come from ceil(s), ceil(r) with a
straight-through gradient; each block counts with its gate's keep probability
and the token count uses the expected number of kept patches. The hard value
is the same formula at the argmax architecture (what the frozen model costs).

Which heads go is a hard choice (the lowest scores), so the value dims V' of a
block have no gradient in s[l, 0] by themselves; we give it the marginal one:
removing one more head removes the value dims of the head that goes next.
"""
from dataclasses import dataclass

import torch

from uvc.flops import ViTDims, dense_macs, vit_macs
from uvc.gates import block_keep_prob
from uvc.masks import Masks
from uvc.structure import ArchState


@dataclass
class SearchSpace:
    """Which parts of the architecture the search may change."""
    pruning: bool = True
    block_gating: bool = True
    patch_gating: bool = True
    use_gumbel: bool = True
    with_attn: bool = True  # count the N^2 attention terms (--flops_with_mhsa)


class Budget:
    """R and the constraint R <= budget for one model."""

    def __init__(self, dims: ViTDims, budget: float, space: SearchSpace):
        self.dims, self.budget, self.space = dims, budget, space
        self.dense = dense_macs(dims, space.with_attn)

    def expected_macs(self, arch: ArchState, masks: Masks, eps: float = 0.0) -> torch.Tensor:
        """Differentiable MACs in s, r, gate logits and patch logits."""
        d, sp = self.dims, self.space
        device = arch.s_frac.device
        ones = torch.ones(d.depth, device=device)
        if sp.pruning:
            k_heads, k_neurons, k_dims = arch.ste_counts()
            heads = d.num_heads - k_heads
            neurons = d.mlp_hidden - k_neurons
            value_dims = (masks.heads * (d.head_dim - k_dims)).sum(-1)
            value_dims = value_dims - (k_heads - k_heads.detach()) * masks.next_head_value_dims
        else:
            heads, neurons = ones * d.num_heads, ones * d.mlp_hidden
            value_dims = ones * d.num_heads * d.head_dim
        keep = block_keep_prob(arch.gate_logits, sp.use_gumbel, eps) if sp.block_gating else ones
        patches = arch.patch_keep_prob().sum() if sp.patch_gating else float(d.num_patches)
        return vit_macs(d, heads, value_dims, neurons, keep, patches, sp.with_attn)

    def expected_ratio(self, arch: ArchState, masks: Masks, eps: float = 0.0) -> torch.Tensor:
        return self.expected_macs(arch, masks, eps) / self.dense

    @torch.no_grad()
    def hard_ratio(self, arch: ArchState, masks: Masks) -> float:
        """MACs ratio of the argmax architecture (gates and patches hard, counts ceil'd)."""
        d, sp = self.dims, self.space
        ones = torch.ones(d.depth, device=arch.s_frac.device)
        if sp.pruning:
            heads, value_dims, neurons = masks.heads.sum(-1), masks.value_dims(), masks.neurons.sum(-1)
        else:
            heads, neurons = ones * d.num_heads, ones * d.mlp_hidden
            value_dims = ones * d.num_heads * d.head_dim
        keep = arch.block_keep_hard() if sp.block_gating else ones
        patches = arch.patch_keep_hard().sum().float() if sp.patch_gating else float(d.num_patches)
        return float(vit_macs(d, heads, value_dims, neurons, keep, patches, sp.with_attn)) / self.dense
