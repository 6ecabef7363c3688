"""Freezing a search state into a hard architecture spec (uvc.deploy.architecture, as its dict), and
applying a frozen architecture to a model (fitting it to the budget: uvc.deploy.fit)."""
from typing import Dict

import torch

from uvc.cost.flops import ViTDims
from uvc.deploy.architecture import Architecture
from uvc.search.masks import Masks


def base_spec(vit, model_type: str) -> dict:
    """The sizes of `vit`, with nothing removed yet (uvc.deploy.architecture, as its dict)."""
    return Architecture.of_vit(vit, model_type).to_dict()


def spec_from_search(vit, model_type: str, masks: Masks, block_keep: torch.Tensor,
                     patch_keep: torch.Tensor) -> dict:
    """The argmax architecture: masks (None: nothing pruned), (L,) 0/1 block keep, (P,) bool patches."""
    return Architecture.from_search(vit, model_type, masks, block_keep, patch_keep).to_dict()


def dims_of_spec(spec: dict) -> ViTDims:
    return Architecture.from_dict(spec).dims


def spec_ratio(spec: dict, pad_value_dims: bool = True, with_attn: bool = True) -> float:
    """MACs of the spec over the dense MACs (padded value dims: what deploys)."""
    return Architecture.from_dict(spec).macs_ratio(pad_value_dims, with_attn)


def masks_from_spec(spec: dict, device=None) -> Masks:
    return Architecture.from_dict(spec).masks(device)


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


def zero_removed_weights(vit, keep: Dict[str, torch.Tensor]) -> None:
    """Physically zero what a frozen spec removes (exact: those weights are unused)."""
    params = dict(vit.named_parameters())
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
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
