"""Group scores, the mask rule and LeastSum, for all blocks at once.

The mask rule (docs/method.md section 2): in every block the ceil(s) groups with the
smallest scores are removed, re-ranked at every step. Scores are squared
column norms of the output projections:

    dim j of head h   ||proj.weight[:, h*d + j]||^2
    head h            sum of its d dim scores
    neuron m          ||fc2.weight[:, m]||^2

Everything is computed on weights stacked over blocks, shape (L, ...), with
sort/gather; there is no Python loop over heads or blocks.
"""
from typing import NamedTuple

import torch


class Scores(NamedTuple):
    heads: torch.Tensor  # (L, H)
    dims: torch.Tensor  # (L, H, d)
    neurons: torch.Tensor  # (L, M)


class Masks(NamedTuple):
    """Keep masks (1.0 keep, 0.0 removed) and what the budget's gradient needs."""
    heads: torch.Tensor  # (L, H)
    dims: torch.Tensor  # (L, H, d), already zero for removed heads
    neurons: torch.Tensor  # (L, M)

    @property
    def proj_input(self) -> torch.Tensor:
        """(L, H*d) mask on the input of attn.proj: heads and dims together."""
        return self.dims.flatten(1)

    def value_dims(self) -> torch.Tensor:
        """(L,) value dims the deployed block computes: every kept head padded to the
        block's widest kept head (docs/method.md section 7), V' = H' x max_h d'_h."""
        return self.heads.sum(-1) * self.dims.sum(-1).amax(-1)


def stacked_weights(model):
    """(proj (L, D, H*d), fc2 (L, D, M)) weights of a timm ViT, detached."""
    proj = torch.stack([blk.attn.proj.weight.detach() for blk in model.blocks])
    fc2 = torch.stack([blk.mlp.fc2.weight.detach() for blk in model.blocks])
    return proj, fc2


def group_scores(proj_weight: torch.Tensor, fc2_weight: torch.Tensor, num_heads: int) -> Scores:
    """Squared column norms of stacked proj (L, D, H*d) and fc2 (L, D, M) weights."""
    L = proj_weight.shape[0]
    columns = proj_weight.float().pow(2).sum(1)  # (L, H*d)
    dims = columns.view(L, num_heads, -1)  # (L, H, d)
    return Scores(heads=dims.sum(-1), dims=dims, neurons=fc2_weight.float().pow(2).sum(1))


def as_importance(scores: Scores, costs: Scores) -> Scores:
    """Scores in MAC-share units: score / (mean score of its kind over the whole model)
    x (MACs the group costs) / (dense MACs).

    One scale for all layers (the reference's absolute scores, made unit-free): a
    group of average score is worth exactly its share of the MACs, so y dLeastSum/ds
    and z dR/ds are comparable numbers, the search removes groups whose importance
    per MAC is under z / y, and layers are pruned by different amounts from their
    different scores and costs. `costs` holds each kind's MACs per group over the
    dense MACs (uvc.cost.budget.Budget.group_costs), broadcastable to the scores.
    """
    unit = lambda t, c: t / t.mean().clamp_min(1e-30) * c  # noqa: E731
    return Scores(heads=unit(scores.heads, costs.heads), dims=unit(scores.dims, costs.dims),
                  neurons=unit(scores.neurons, costs.neurons))


def lowest_k_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """1.0 except for the k[...] smallest entries along the last dim (ties by index).

    scores (..., G), k (...) integer -> (..., G) float mask.
    """
    rank = scores.argsort(dim=-1, stable=True).argsort(dim=-1)
    return (rank >= k.unsqueeze(-1)).to(scores.dtype)


def least_sum(scores: torch.Tensor, k: torch.Tensor, step: int = 1):
    """LeastSum(scores, k) = sum of the k smallest scores, and its derivative in k.

    The derivative is the marginal cost of removing one more unit (docs/method.md section 4):
    the (k+1)-th smallest score, or with counts that move `step` groups at a time (aligned
    widths, uvc.search.structure) the mean of the next `step` smallest. Returns (value (...), slope (...)).
    """
    ordered = scores.sort(dim=-1).values
    csum = torch.nn.functional.pad(ordered.cumsum(-1), (1, 0))  # csum[..., k] = sum of k smallest
    value = csum.gather(-1, k.unsqueeze(-1)).squeeze(-1)
    step = min(step, scores.shape[-1])
    hi = (k + step).clamp_max(scores.shape[-1]).unsqueeze(-1)
    slope = (csum.gather(-1, hi) - csum.gather(-1, hi - step)).squeeze(-1) / step
    return value, slope


def compute_masks(scores: Scores, k_heads: torch.Tensor, k_dims: torch.Tensor,
                  k_neurons: torch.Tensor) -> Masks:
    """Masks for removed counts k_heads (L,), k_dims (L, H), k_neurons (L,)."""
    heads = lowest_k_mask(scores.heads, k_heads)  # (L, H)
    dims = lowest_k_mask(scores.dims, k_dims) * heads.unsqueeze(-1)  # (L, H, d)
    neurons = lowest_k_mask(scores.neurons, k_neurons)
    return Masks(heads=heads, dims=dims, neurons=neurons)


def full_masks(num_layers: int, num_heads: int, head_dim: int, mlp_hidden: int, device=None) -> Masks:
    """Masks that keep everything."""
    ones = lambda *s: torch.ones(*s, device=device)  # noqa: E731
    return Masks(ones(num_layers, num_heads), ones(num_layers, num_heads, head_dim), ones(num_layers, mlp_hidden))
