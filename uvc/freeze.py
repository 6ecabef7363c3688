"""Freezing a search state into a hard architecture, fitting it to the budget,
and applying a frozen architecture to a model.

The architecture spec is a plain JSON-able dict shared with export and the
compact model (models/compact.py):

    {"model_type", "img_size", "patch_size", "in_chans", "num_classes",
     "embed_dim", "num_heads", "head_dim", "mlp_hidden", "depth",
     "num_prefix_tokens", "distilled", "qkv_bias",
     "blocks": [{"skipped", "heads": [h..], "value_dims": [[j..] per kept head],
                 "neurons": [m..]}],
     "patches_kept": [i..],
     the model's structure (models.vit.vit_structure: class/register tokens, pooling,
     norms, layer scale, qk-norm, activation) and "model_kwargs", what rebuilds the
     dense model (models.vit.rebuild; None for a model not built by create_model)}
"""
from typing import Dict, Tuple

import torch

from models.vit import model_kwargs_of, vit_structure
from uvc.flops import ViTDims, arch_macs, dense_macs
from uvc.masks import Masks, Scores


def base_spec(vit, model_type: str) -> dict:
    """The sizes of `vit`, with nothing removed yet."""
    d = ViTDims.of(vit)
    img = vit.patch_embed.img_size
    return {
        "model_type": model_type, "img_size": int(img[0] if isinstance(img, (tuple, list)) else img),
        "patch_size": d.patch_size, "in_chans": d.in_chans, "num_classes": d.num_classes,
        "embed_dim": d.embed_dim, "num_heads": d.num_heads, "head_dim": d.head_dim,
        "mlp_hidden": d.mlp_hidden, "depth": d.depth, "num_prefix_tokens": d.num_prefix_tokens,
        "distilled": d.num_cls_heads == 2, "qkv_bias": vit.blocks[0].attn.qkv.bias is not None,
        "blocks": [{"skipped": False, "heads": list(range(d.num_heads)),
                    "value_dims": [list(range(d.head_dim))] * d.num_heads,
                    "neurons": list(range(d.mlp_hidden))} for _ in range(d.depth)],
        "patches_kept": list(range(d.num_patches)),
        **vit_structure(vit), "model_kwargs": model_kwargs_of(vit),
    }


def spec_from_search(vit, model_type: str, masks: Masks, block_keep: torch.Tensor,
                     patch_keep: torch.Tensor) -> dict:
    """The argmax architecture: masks (None: nothing pruned), (L,) 0/1 block keep, (P,) bool patches."""
    spec = base_spec(vit, model_type)
    for l, block in enumerate(spec["blocks"]):
        block["skipped"] = not bool(block_keep[l])
        if masks is not None:
            heads = torch.nonzero(masks.heads[l]).flatten().tolist()
            block["heads"] = heads
            block["value_dims"] = [torch.nonzero(masks.dims[l, h]).flatten().tolist() for h in heads]
            block["neurons"] = torch.nonzero(masks.neurons[l]).flatten().tolist()
    spec["patches_kept"] = torch.nonzero(patch_keep).flatten().tolist()
    return spec


def dims_of_spec(spec: dict) -> ViTDims:
    return ViTDims(embed_dim=spec["embed_dim"], depth=spec["depth"], num_heads=spec["num_heads"],
                   head_dim=spec["head_dim"], mlp_hidden=spec["mlp_hidden"],
                   num_patches=(spec["img_size"] // spec["patch_size"]) ** 2,
                   num_prefix_tokens=spec["num_prefix_tokens"], patch_size=spec["patch_size"],
                   in_chans=spec["in_chans"], num_classes=spec["num_classes"],
                   num_cls_heads=2 if spec["distilled"] else 1)


def spec_ratio(spec: dict, pad_value_dims: bool = True, with_attn: bool = True) -> float:
    """MACs of the spec over the dense MACs (padded value dims: what deploys)."""
    dims = dims_of_spec(spec)
    return arch_macs(dims, spec, pad_value_dims, with_attn) / dense_macs(dims, with_attn)


def masks_from_spec(spec: dict, device=None) -> Masks:
    L, H, d, M = spec["depth"], spec["num_heads"], spec["head_dim"], spec["mlp_hidden"]
    heads, dims, neurons = torch.zeros(L, H), torch.zeros(L, H, d), torch.zeros(L, M)
    for l, block in enumerate(spec["blocks"]):
        heads[l, block["heads"]] = 1
        for h, kept in zip(block["heads"], block["value_dims"]):
            dims[l, h, kept] = 1
        neurons[l, block["neurons"]] = 1
    nxt = torch.zeros(L)
    return Masks(heads.to(device), dims.to(device), neurons.to(device), nxt.to(device))


# --- fitting to the budget ----------------------------------------------------------
def _equalise_value_dims(spec: dict, scores: Scores) -> None:
    """Give every kept head of a block the block's largest kept dim count, taking its
    best-scoring dims: the compact model pads to that size anyway, so this costs
    nothing more and keeps real weights instead of zero padding."""
    for l, block in enumerate(spec["blocks"]):
        if not block["heads"]:
            continue
        width = max(len(v) for v in block["value_dims"])
        block["value_dims"] = [sorted(scores.dims[l, h].argsort(descending=True)[:width].tolist())
                               for h in block["heads"]]


class _Pool:
    """The kept neurons and value dims of every block, each list sorted by score
    (ascending), so the cheapest next removal is read off the front in O(heads)."""

    def __init__(self, spec: dict, scores: Scores):
        neuron_scores, dim_scores = scores.neurons.tolist(), scores.dims.tolist()
        self.neurons = [sorted(b["neurons"], key=lambda i, l=l: neuron_scores[l][i]) for l, b in
                        enumerate(spec["blocks"])]
        self.dims = [[sorted(v, key=lambda j, l=l, h=h: dim_scores[l][h][j]) for h, v in
                      zip(b["heads"], b["value_dims"])] for l, b in enumerate(spec["blocks"])]
        self.neuron_scores, self.dim_scores = neuron_scores, dim_scores

    def candidates(self, spec: dict, tokens: int, with_attn: bool):
        """Cheapest next removal per block: (score per MAC saved, MACs saved, block, kind)."""
        D = spec["embed_dim"]
        n2 = tokens * tokens if with_attn else 0
        out = []
        for l, block in enumerate(spec["blocks"]):
            if block["skipped"]:
                continue
            if len(self.neurons[l]) > 1:
                saving = 2 * tokens * D
                out.append((self.neuron_scores[l][self.neurons[l][0]] / saving, saving, l, "neuron"))
            if block["heads"] and len(self.dims[l][0]) > 1:
                score = sum(self.dim_scores[l][h][v[0]] for h, v in zip(block["heads"], self.dims[l]))
                saving = len(block["heads"]) * (2 * tokens * D + n2)
                out.append((score / saving, saving, l, "dim"))
        return out

    def remove(self, spec: dict, l: int, kind: str) -> None:
        """Drop block l's lowest-score neuron, or the lowest-score value dim of each of its heads."""
        block = spec["blocks"][l]
        if kind == "neuron":
            self.neurons[l].pop(0)
            block["neurons"] = sorted(self.neurons[l])
        else:
            for v in self.dims[l]:
                v.pop(0)
            block["value_dims"] = [sorted(v) for v in self.dims[l]]


def _restore(spec: dict, scores: Scores, budget: float, ratio: float, dense: float, tokens: int,
             with_attn: bool) -> Tuple[float, int]:
    """Put back the best removed groups (score per MAC) while the budget allows: neurons,
    or one more value dim for every kept head of a block (each head's best removed dim)."""
    D, d = spec["embed_dim"], spec["head_dim"]
    n2 = tokens * tokens if with_attn else 0
    neuron_scores, dim_scores = scores.neurons.tolist(), scores.dims.tolist()
    best_first = lambda groups, score: sorted(groups, key=score, reverse=True)  # noqa: E731
    # the removed groups of every block, best score first: restoring pops from the front
    neurons_out = [best_first(set(range(len(neuron_scores[l]))) - set(b["neurons"]),
                              lambda i, l=l: neuron_scores[l][i]) for l, b in enumerate(spec["blocks"])]
    dims_out = [[best_first(set(range(d)) - set(v), lambda j, l=l, h=h: dim_scores[l][h][j])
                 for h, v in zip(b["heads"], b["value_dims"])] for l, b in enumerate(spec["blocks"])]
    neuron_cost, restored = 2 * tokens * D, 0
    while True:
        cands = []  # (score per MAC, MACs, block, kind)
        for l, block in enumerate(spec["blocks"]):
            if block["skipped"]:
                continue
            if neurons_out[l]:
                cands.append((neuron_scores[l][neurons_out[l][0]] / neuron_cost, neuron_cost, l, "neuron"))
            if block["heads"] and all(dims_out[l]):
                cost = len(block["heads"]) * (2 * tokens * D + n2)
                score = sum(dim_scores[l][h][out[0]] for h, out in zip(block["heads"], dims_out[l]))
                cands.append((score / cost, cost, l, "dim"))
        fits = [c for c in cands if ratio + c[1] / dense <= budget]
        if not fits:
            return ratio, restored
        _, cost, l, kind = max(fits, key=lambda c: c[0])
        block = spec["blocks"][l]
        if kind == "neuron":
            block["neurons"] = sorted(block["neurons"] + [neurons_out[l].pop(0)])
        else:
            block["value_dims"] = [sorted(v + [out.pop(0)]) for v, out in zip(block["value_dims"], dims_out[l])]
        ratio += cost / dense
        restored += 1


def fit_to_budget(spec: dict, scores: Scores, budget: float, with_attn: bool = True,
                  tolerance: float = 0.01) -> Tuple[dict, Dict[str, int]]:
    """Make the deployed MACs ratio land in [budget - tolerance, budget].

    Above budget: remove the lowest-score groups (per MAC saved) greedily, neurons
    or one value dim from every kept head of a block. Below budget - tolerance:
    put back the best removed neurons and value dims while the budget allows
    (skipped blocks and removed heads stay removed: the search chose them). Returns the new
    spec and how many groups each way, for the log.
    """
    spec = {**spec, "blocks": [dict(b, neurons=list(b["neurons"])) for b in spec["blocks"]]}
    scores = Scores(*(t.detach().float().cpu() for t in scores))
    _equalise_value_dims(spec, scores)
    dims = dims_of_spec(spec)
    dense = dense_macs(dims, with_attn)
    tokens = len(spec["patches_kept"]) + spec["num_prefix_tokens"]
    ratio = spec_ratio(spec, True, with_attn)
    removed = restored = 0
    pool = _Pool(spec, scores)
    while ratio > budget:
        cands = pool.candidates(spec, tokens, with_attn)
        if not cands:
            break
        _, saving, l, kind = min(cands)
        pool.remove(spec, l, kind)
        ratio -= saving / dense
        removed += 1
    if ratio < budget - tolerance:
        ratio, restored = _restore(spec, scores, budget, ratio, dense, tokens, with_attn)
    return spec, {"groups_removed_to_fit": removed, "groups_restored_to_fit": restored}


# --- applying a frozen architecture ------------------------------------------------------
def param_keep_masks(vit, spec: dict) -> Dict[str, torch.Tensor]:
    """0/1 masks of the weights a frozen spec removes, by parameter name.

    Removed heads: their q, k, v rows and proj columns; removed dims: v rows and
    proj columns; removed neurons: fc1 rows (+ bias) and fc2 columns. Skipped
    blocks and dropped patches are handled by the forward pass instead.
    """
    m = masks_from_spec(spec, vit.pos_embed.device)
    D = spec["embed_dim"]
    value = m.dims.flatten(1)  # (L, H*d)
    qk = m.heads.unsqueeze(-1).expand_as(m.dims).flatten(1)
    rows = torch.cat([qk, qk, value], 1)  # (L, 3*H*d)
    out = {}
    for l, blk in enumerate(vit.blocks):
        p = f"blocks.{l}."
        out[p + "attn.qkv.weight"] = rows[l].unsqueeze(1).expand(-1, D).contiguous()
        if blk.attn.qkv.bias is not None:
            out[p + "attn.qkv.bias"] = rows[l].clone()
        out[p + "attn.proj.weight"] = value[l].unsqueeze(0).expand(D, -1).contiguous()
        out[p + "mlp.fc1.weight"] = m.neurons[l].unsqueeze(1).expand(-1, D).contiguous()
        out[p + "mlp.fc1.bias"] = m.neurons[l].clone()
        out[p + "mlp.fc2.weight"] = m.neurons[l].unsqueeze(0).expand(D, -1).contiguous()
    return out


@torch.no_grad()
def zero_removed_weights(vit, keep: Dict[str, torch.Tensor]) -> None:
    """Physically zero what a frozen spec removes (exact: those weights are unused)."""
    params = dict(vit.named_parameters())
    torch._foreach_mul_([params[n] for n in keep], list(keep.values()))


def apply_spec(masked_model, spec: dict) -> None:
    """Fix a MaskedViT to a frozen spec: masks, skipped blocks, kept patches."""
    device = masked_model.vit.pos_embed.device
    masked_model.set_masks(masks_from_spec(spec, device))
    skipped = [l for l, b in enumerate(spec["blocks"]) if b["skipped"]]
    masked_model.set_block_gates(None, skipped)
    P = (spec["img_size"] // spec["patch_size"]) ** 2
    index = None if len(spec["patches_kept"]) == P else torch.tensor(spec["patches_kept"], device=device)
    masked_model.set_patches(index=index)
