"""The proximal step of UVC (docs/method.md section 5, step 2), for all blocks at once.

The closed form of the prox of y ||W_G||^2 on a removed group G is a shrink,
W_G <- W_G / (1 + 2 lr y), applied as the reference applies it (uvc_utils.prox_w): unscaled, on a
group's scoring columns only (attn.proj for heads and value dims, mlp.fc2 for neurons). A prox
scaled per unit of the layer's mean group score, also shrinking the q, k, v and fc1 rows, measured
0.14 lower top-1 after stage 2 and 2.7% slower models on the ledger's 8 cells (log/deviations.md).
"""
import torch

from uvc.search.masks import Scores, lowest_k_mask


def proximal_step(vit, scores: Scores, k_heads: torch.Tensor, k_dims: torch.Tensor, k_neurons: torch.Tensor,
                  y: torch.Tensor, p: torch.Tensor, lr: float) -> None:
    """Shrink the removed groups of `vit` in place:

        the k_dims[l, h] lowest dims of every head h, removed heads too:  / (1 + 2 lr p[l, h])
        then every column of the k_heads[l] lowest heads:                 / (1 + 2 lr y[l, 0])
        the k_neurons[l] lowest neurons:                                  / (1 + 2 lr y[l, 1])

    the groups ranked by `scores` (of the weights before this prox). q, k, v and fc1 are untouched.
    """
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        dims_removed = 1 - lowest_k_mask(scores.dims, k_dims)  # (L, H, d)
        heads_removed = 1 - lowest_k_mask(scores.heads, k_heads)  # (L, H)
        neurons_removed = 1 - lowest_k_mask(scores.neurons, k_neurons)  # (L, M)
        dim_div = 1 + dims_removed * (2 * lr * p).unsqueeze(-1)
        head_div = 1 + heads_removed * (2 * lr * y[:, :1])
        column_div = (dim_div * head_div.unsqueeze(-1)).flatten(1)  # (L, H*d)
        neuron_div = 1 + neurons_removed * (2 * lr * y[:, 1:])
        blocks = vit.blocks
        torch._foreach_div_([b.attn.proj.weight for b in blocks], list(column_div.unsqueeze(1).unbind(0)))
        torch._foreach_div_([b.mlp.fc2.weight for b in blocks], list(neuron_div.unsqueeze(1).unbind(0)))
