"""The proximal step of UVC (docs/method.md section 5, step 2), for all blocks at once.

The closed form of the prox of y ||W_G||^2 on a removed group G is a shrink,
W_G <- W_G / (1 + 2 lr y). Here it is applied per unit of the layer's mean group
score S_l / G, W_G / (1 + 2 lr y G / S_l): a group of average score then decays at
the same rate in every layer and model. A group is its scoring columns (proj for
heads and value dims, fc2 for neurons) and, unless `columns_only`, the rows that
feed them (q, k, v and fc1, and their biases).

`reference_prox` is the reference's (uvc_utils.prox_w), for `--search_algorithm reference`.
"""
import torch

from uvc.search.masks import Masks, Scores, lowest_k_mask


def proximal_step(vit, masks: Masks, scores: Scores, y: torch.Tensor, p: torch.Tensor, lr: float,
                  columns_only: bool = False) -> None:
    """Shrink every removed head, value dim and neuron of `vit` in place.

    y (L, 2): duals of heads and neurons; p (L, H): duals of the value dims of each head.
    """
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        m, sc = masks, scores
        mean = lambda t: t.mean(-1).clamp_min(1e-12)  # noqa: E731
        head_f = 1.0 / (1.0 + 2.0 * lr * y[:, 0] / mean(sc.heads))  # (L,)
        neuron_f = 1.0 / (1.0 + 2.0 * lr * y[:, 1] / mean(sc.neurons))
        dim_f = 1.0 / (1.0 + 2.0 * lr * p / mean(sc.dims))  # (L, H)
        heads = m.heads.unsqueeze(-1)  # (L, H, 1)
        removed_head = (1 - heads) * head_f.view(-1, 1, 1)
        removed_dim = heads * (1 - m.dims) * dim_f.unsqueeze(-1)
        value_f = (removed_head + removed_dim + m.dims).flatten(1)  # (L, H*d) factor per value dim
        qk_f = (removed_head + heads).expand_as(m.dims).flatten(1)  # q, k: whole heads only
        row_f = torch.cat([qk_f, qk_f, value_f], dim=1)  # (L, 3*H*d) rows of qkv
        n_f = m.neurons + (1 - m.neurons) * neuron_f.unsqueeze(-1)  # (L, M)
        blocks = vit.blocks
        torch._foreach_mul_([b.attn.proj.weight for b in blocks], list(value_f.unsqueeze(1).unbind(0)))
        torch._foreach_mul_([b.mlp.fc2.weight for b in blocks], list(n_f.unsqueeze(1).unbind(0)))
        if columns_only:
            return
        torch._foreach_mul_([b.attn.qkv.weight for b in blocks], list(row_f.unsqueeze(-1).unbind(0)))
        torch._foreach_mul_([b.mlp.fc1.weight for b in blocks], list(n_f.unsqueeze(-1).unbind(0)))
        if blocks[0].attn.qkv.bias is not None:
            torch._foreach_mul_([b.attn.qkv.bias for b in blocks], list(row_f.unbind(0)))
        torch._foreach_mul_([b.mlp.fc1.bias for b in blocks], list(n_f.unbind(0)))


def reference_prox(vit, scores: Scores, k_heads: torch.Tensor, k_dims: torch.Tensor, k_neurons: torch.Tensor,
                   y: torch.Tensor, p: torch.Tensor, lr: float) -> None:
    """The reference's prox, unscaled, on the scoring columns only (attn.proj, mlp.fc2):

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
