"""Freezing a search state into a hard architecture spec, and applying a frozen
architecture to a model (fitting it to the budget: uvc.deploy.fit).

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
from typing import Dict

import torch

from models.vit import model_kwargs_of, vit_structure
from uvc.cost.flops import ViTDims, arch_macs, dense_macs
from uvc.search.masks import Masks


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
    return Masks(heads.to(device), dims.to(device), neurons.to(device))


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
