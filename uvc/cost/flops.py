"""The MACs model of a (compressed) ViT: docs/method.md section 3, as pure functions.

Every count may be a Python number or a torch tensor; with tensors the result
is differentiable in the counts, which is how the budget R(s, r, g, a) gets its
gradient. MACs (multiply-accumulates) are what the DeiT/UVC papers call
"FLOPs": dense DeiT-Tiny at 224 is 1.26 GMACs.

Per block, with N tokens, width D, H' kept heads of q/k size d, V' value dims
kept over all kept heads and M' kept MLP neurons:

    qkv   N * D * (2 * H' * d + V')
    q.k^T N^2 * H' * d
    a.v   N^2 * V'
    proj  N * V' * D
    fc1   N * D * M'
    fc2   N * M' * D
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ViTDims:
    """The sizes of a dense ViT that the MACs depend on."""
    embed_dim: int  # D
    depth: int  # L
    num_heads: int  # H
    head_dim: int  # d
    mlp_hidden: int  # M
    num_patches: int  # P
    num_prefix_tokens: int  # 1 (class token) or 2 (+ distillation token)
    patch_size: int
    in_chans: int
    num_classes: int
    num_cls_heads: int = 1  # 2 for the distillation-token variant (head + head_dist)

    @classmethod
    def of(cls, model) -> "ViTDims":
        """Read the sizes off a timm VisionTransformer."""
        attn = model.blocks[0].attn
        patch = model.patch_embed.patch_size
        return cls(
            embed_dim=model.embed_dim,
            depth=len(model.blocks),
            num_heads=attn.num_heads,
            head_dim=attn.head_dim,
            mlp_hidden=model.blocks[0].mlp.fc1.out_features,
            num_patches=model.patch_embed.num_patches,
            num_prefix_tokens=model.num_prefix_tokens,
            patch_size=patch[0] if isinstance(patch, (tuple, list)) else patch,
            in_chans=model.patch_embed.proj.in_channels,
            num_classes=model.num_classes,
            num_cls_heads=2 if getattr(model, "dist_token", None) is not None else 1,
        )


def block_macs(tokens, embed_dim, heads, head_dim, value_dims, mlp_hidden, with_attn: bool = True):
    """MACs of one block (the six terms above); `with_attn=False` drops the N^2 terms."""
    n, dim = tokens, embed_dim
    qkv = n * dim * (2 * heads * head_dim + value_dims)
    proj = n * value_dims * dim
    mlp = 2 * n * dim * mlp_hidden
    attn = n * n * (heads * head_dim + value_dims) if with_attn else 0
    return qkv + attn + proj + mlp


def patch_embed_macs(patches, dims: ViTDims):
    """The patch projection: each kept patch is a (C*p*p) -> D matmul."""
    return patches * dims.in_chans * dims.patch_size ** 2 * dims.embed_dim


def head_macs(dims: ViTDims):
    """Classifier(s) on the prefix token(s)."""
    return dims.num_cls_heads * dims.embed_dim * dims.num_classes


def vit_macs(dims: ViTDims, heads, value_dims, mlp_hidden, block_keep, patches, with_attn: bool = True):
    """MACs of a ViT whose block l keeps `heads[l]` heads, `value_dims[l]` value
    dims in all, `mlp_hidden[l]` neurons, and runs with probability
    `block_keep[l]`; `patches` patch tokens are kept (expected count in search).

    heads, value_dims, mlp_hidden, block_keep: (L,) tensors; patches: scalar.
    """
    tokens = patches + dims.num_prefix_tokens
    per_block = block_macs(tokens, dims.embed_dim, heads, dims.head_dim, value_dims, mlp_hidden, with_attn)
    return patch_embed_macs(patches, dims) + (per_block * block_keep).sum() + head_macs(dims)


def dense_macs(dims: ViTDims, with_attn: bool = True) -> float:
    """MACs of the uncompressed model."""
    full = torch.ones(dims.depth, dtype=torch.float64)
    return float(vit_macs(dims, full * dims.num_heads, full * dims.num_heads * dims.head_dim,
                          full * dims.mlp_hidden, full, dims.num_patches, with_attn))


def arch_macs(dims: ViTDims, arch: dict, pad_value_dims: bool = False, with_attn: bool = True) -> float:
    """MACs of a hard architecture spec (uvc.deploy.architecture): removed groups and
    skipped blocks cost nothing. `pad_value_dims` counts every kept head at the
    block's largest kept value dim, as the exported compact model computes it."""
    heads, values, neurons, keep = [], [], [], []
    for block in arch["blocks"]:
        dims_per_head = [len(v) for v in block["value_dims"]]
        heads.append(len(block["heads"]))
        if pad_value_dims and dims_per_head:
            values.append(len(dims_per_head) * max(dims_per_head))
        else:
            values.append(sum(dims_per_head))
        neurons.append(len(block["neurons"]))
        keep.append(0.0 if block["skipped"] else 1.0)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return float(vit_macs(dims, t(heads), t(values), t(neurons), t(keep), len(arch["patches_kept"]), with_attn))
