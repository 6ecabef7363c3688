"""The frozen architecture: what a search keeps of a ViT, block by block, and what that costs.

Its dict form (`to_dict` / `from_dict`, the same keys and nesting either way) is what stage
files, reference imports and the compact model's source store:

    {"model_type", "img_size", "patch_size", "in_chans", "num_classes",
     "embed_dim", "num_heads", "head_dim", "mlp_hidden", "depth",
     "num_prefix_tokens", "distilled", "qkv_bias",
     "blocks": [{"skipped", "heads": [h..], "value_dims": [[j..] per kept head],
                 "neurons": [m..]}],
     "patches_kept": [i..],
     the model's structure (models.vit.vit_structure: class/register tokens, pooling,
     norms, layer scale, qk-norm, activation) and "model_kwargs", what rebuilds the
     dense model (models.vit.rebuild; None for a model not built by create_model)}

A skipped block keeps its lists (what it would keep if it ran) but costs nothing.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch

from models.vit import model_kwargs_of, vit_structure
from uvc.cost.flops import ViTDims, arch_macs, dense_macs
from uvc.search.masks import Masks


@dataclass
class BlockArch:
    """One block: kept heads, each kept head's kept value dims, kept MLP neurons; skipped or not."""
    heads: List[int]
    value_dims: List[List[int]]
    neurons: List[int]
    skipped: bool = False

    @classmethod
    def from_dict(cls, block: dict) -> "BlockArch":
        return cls(block["heads"], block["value_dims"], block["neurons"], block["skipped"])

    def to_dict(self) -> dict:
        return {"skipped": self.skipped, "heads": self.heads, "value_dims": self.value_dims,
                "neurons": self.neurons}

    @property
    def value_dims_kept(self) -> int:
        return sum(len(v) for v in self.value_dims)


@dataclass
class Architecture:
    """A ViT's sizes (`sizes`: every key of the dict form but blocks and patches_kept) and what is kept."""
    sizes: Dict[str, Any]
    blocks: List[BlockArch]
    patches_kept: List[int]
    keys: Tuple[str, ...] = field(default=(), repr=False, compare=False)  # the dict form's key order

    @classmethod
    def from_dict(cls, arch: dict) -> "Architecture":
        sizes = {k: v for k, v in arch.items() if k not in ("blocks", "patches_kept")}
        return cls(sizes, [BlockArch.from_dict(b) for b in arch["blocks"]], arch["patches_kept"], tuple(arch))

    def to_dict(self) -> dict:
        parts = {**self.sizes, "blocks": [b.to_dict() for b in self.blocks], "patches_kept": self.patches_kept}
        order = [k for k in self.keys if k in parts] + [k for k in parts if k not in self.keys]
        return {k: parts[k] for k in order}

    @classmethod
    def of_vit(cls, vit, model_type: str) -> "Architecture":
        """The sizes of `vit`, with nothing removed yet."""
        d = ViTDims.of(vit)
        img = vit.patch_embed.img_size
        sizes = {
            "model_type": model_type, "img_size": int(img[0] if isinstance(img, (tuple, list)) else img),
            "patch_size": d.patch_size, "in_chans": d.in_chans, "num_classes": d.num_classes,
            "embed_dim": d.embed_dim, "num_heads": d.num_heads, "head_dim": d.head_dim,
            "mlp_hidden": d.mlp_hidden, "depth": d.depth, "num_prefix_tokens": d.num_prefix_tokens,
            "distilled": d.num_cls_heads == 2, "qkv_bias": vit.blocks[0].attn.qkv.bias is not None}
        blocks = [BlockArch(list(range(d.num_heads)), [list(range(d.head_dim))] * d.num_heads,
                            list(range(d.mlp_hidden))) for _ in range(d.depth)]
        rest = {**vit_structure(vit), "model_kwargs": model_kwargs_of(vit)}
        keys = tuple(sizes) + ("blocks", "patches_kept") + tuple(rest)
        return cls({**sizes, **rest}, blocks, list(range(d.num_patches)), keys)

    @classmethod
    def from_search(cls, vit, model_type: str, masks: Masks, block_keep: torch.Tensor,
                    patch_keep: torch.Tensor) -> "Architecture":
        """The argmax architecture: masks (None: nothing pruned), (L,) 0/1 block keep, (P,) bool patches."""
        arch = cls.of_vit(vit, model_type)
        for l, block in enumerate(arch.blocks):
            block.skipped = not bool(block_keep[l])
            if masks is not None:
                block.heads = torch.nonzero(masks.heads[l]).flatten().tolist()
                block.value_dims = [torch.nonzero(masks.dims[l, h]).flatten().tolist() for h in block.heads]
                block.neurons = torch.nonzero(masks.neurons[l]).flatten().tolist()
        arch.patches_kept = torch.nonzero(patch_keep).flatten().tolist()
        return arch

    # --- sizes and counts -------------------------------------------------------------
    @property
    def dims(self) -> ViTDims:
        s = self.sizes
        return ViTDims(embed_dim=s["embed_dim"], depth=s["depth"], num_heads=s["num_heads"],
                       head_dim=s["head_dim"], mlp_hidden=s["mlp_hidden"], num_patches=self.num_patches,
                       num_prefix_tokens=s["num_prefix_tokens"], patch_size=s["patch_size"],
                       in_chans=s["in_chans"], num_classes=s["num_classes"],
                       num_cls_heads=2 if s["distilled"] else 1)

    @property
    def num_patches(self) -> int:
        return (self.sizes["img_size"] // self.sizes["patch_size"]) ** 2

    @property
    def kept_blocks(self) -> List[BlockArch]:
        return [b for b in self.blocks if not b.skipped]

    @property
    def heads_kept(self) -> int:
        """Heads of the blocks that run."""
        return sum(len(b.heads) for b in self.kept_blocks)

    @property
    def neurons_kept(self) -> int:
        """MLP neurons of the blocks that run."""
        return sum(len(b.neurons) for b in self.kept_blocks)

    # --- cost ---------------------------------------------------------------------------
    def macs(self, pad_value_dims: bool = True, with_attn: bool = True) -> float:
        """MACs by the formula of uvc.cost.flops (padded value dims: what deploys)."""
        return arch_macs(self.dims, self.to_dict(), pad_value_dims, with_attn)

    def macs_ratio(self, pad_value_dims: bool = True, with_attn: bool = True) -> float:
        """MACs over the dense model's."""
        return self.macs(pad_value_dims, with_attn) / dense_macs(self.dims, with_attn)

    def masks(self, device=None) -> Masks:
        """0/1 masks of heads (L, H), value dims (L, H, d) and neurons (L, M)."""
        s = self.sizes
        L, H, d, M = s["depth"], s["num_heads"], s["head_dim"], s["mlp_hidden"]
        heads, dims, neurons = torch.zeros(L, H), torch.zeros(L, H, d), torch.zeros(L, M)
        for l, block in enumerate(self.blocks):
            heads[l, block.heads] = 1
            for h, kept in zip(block.heads, block.value_dims):
                dims[l, h, kept] = 1
            neurons[l, block.neurons] = 1
        return Masks(heads.to(device), dims.to(device), neurons.to(device))
