"""A timm ViT seen through UVC's masks and gates, without forking timm.

Forward pre-hooks on every `attn.proj` (heads and value dims) and `mlp.fc2`
(neurons) multiply their inputs by 0/1 masks. This equals physically zeroing
the removed groups' weights, keeps the checkpoint keys unchanged and keeps the
fused attention path. Block gates and patch gates are applied in `forward`,
which otherwise follows timm's `forward_features` + `forward_head`. A model
that averages its tokens (`global_pool="avg"`) averages the patch tokens with
their keep probabilities pi during the search (docs/method.md section 6), so that a
patch at pi -> 0 leaves the pooled features exactly as if it were dropped.

The wrapper is what DDP wraps; the ViT inside keeps timm's state-dict layout.
"""
from contextlib import contextmanager
from typing import Optional, Sequence

import torch
import torch.nn as nn

from uvc.search.masks import Masks


class MaskedViT(nn.Module):
    """Wraps a timm VisionTransformer; masks and gates are set from outside each step.

    Args:
        vit: timm VisionTransformer (or VisionTransformerDistilled).
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        L = len(vit.blocks)
        attn = vit.blocks[0].attn
        self.proj_mask: Optional[torch.Tensor] = None  # (L, H*d)
        self.fc2_mask: Optional[torch.Tensor] = None  # (L, M)
        self.block_gates: Optional[torch.Tensor] = None  # (L,) soft keep values
        self.skipped: Sequence[int] = ()  # hard-skipped blocks (not computed)
        self.patch_bias: Optional[torch.Tensor] = None  # (1, 1, 1, N) log(pi) bias
        self.patch_index: Optional[torch.Tensor] = None  # (P',) kept patches, physically selected
        self._hooks = []
        for l, blk in enumerate(vit.blocks):
            self._hooks.append(blk.attn.proj.register_forward_pre_hook(self._mask_hook("proj_mask", l)))
            self._hooks.append(blk.mlp.fc2.register_forward_pre_hook(self._mask_hook("fc2_mask", l)))
        self.num_layers, self.num_heads, self.head_dim = L, attn.num_heads, attn.head_dim

    def _mask_hook(self, name: str, layer: int):
        def hook(module, args):
            mask = getattr(self, name)
            if mask is None:
                return None
            return (args[0] * mask[layer].to(args[0].dtype),) + tuple(args[1:])
        return hook

    # --- setting the architecture ----------------------------------------
    def set_masks(self, masks: Optional[Masks]) -> None:
        self.proj_mask = None if masks is None else masks.proj_input
        self.fc2_mask = None if masks is None else masks.neurons

    def set_block_gates(self, gates: Optional[torch.Tensor], skipped: Sequence[int] = ()) -> None:
        """Soft gates (L,) for search, or a list of hard-skipped blocks for the frozen model."""
        self.block_gates = gates
        self.skipped = tuple(int(i) for i in skipped)

    def set_patches(self, bias: Optional[torch.Tensor] = None, index: Optional[torch.Tensor] = None) -> None:
        """A log(pi) attention bias (search) or the kept patch indices (frozen)."""
        self.patch_bias = bias
        self.patch_index = index

    # --- forward -------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        vit = self.vit
        x = vit.patch_embed(x)
        x = vit._pos_embed(x)  # (B, prefix + P, D)
        if self.patch_index is not None:
            prefix = vit.num_prefix_tokens
            x = torch.cat([x[:, :prefix], x[:, prefix:].index_select(1, self.patch_index)], dim=1)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        bias = None if self.patch_bias is None else self.patch_bias.to(x.dtype)
        gates = self.block_gates
        # CPU: torch's SDPA has no fused kernel for a bias that needs a gradient and falls back
        # to its unfused math path; timm's explicit softmax(q k^T + bias) v is cheaper (deit_tiny,
        # batch 32, forward + backward of one attention: +2.3 ms over the bias-free fused kernel,
        # against +8.5 ms for SDPA's math path). The logits are the same.
        explicit = bias is not None and bias.requires_grad and x.device.type == "cpu"
        with _explicit_attention(vit, explicit):
            for l, blk in enumerate(vit.blocks):
                if l in self.skipped:
                    continue
                out = blk(x, attn_mask=bias)
                x = out if gates is None else torch.lerp(x, out, gates[l].to(x.dtype))  # x + g (out - x), one kernel
        x = vit.norm(x)
        return self.forward_head(x)

    def forward_head(self, x: torch.Tensor):
        """timm's forward_head; average pooling weighs patch token i by pi_i under a patch bias."""
        vit = self.vit
        if self.patch_bias is None or vit.global_pool != "avg":
            return vit.forward_head(x)
        weights = self.patch_bias.reshape(-1).exp().to(x.dtype)  # (N,) 1 on prefix tokens, pi on patches
        if not vit.pool_include_prefix:
            x, weights = x[:, vit.num_prefix_tokens:], weights[vit.num_prefix_tokens:]
        pooled = torch.einsum("bnd,n->bd", x, weights / weights.sum())  # (B, D)
        return vit.head(vit.head_drop(vit.fc_norm(pooled)))


@contextmanager
def _explicit_attention(vit: nn.Module, enabled: bool):
    """Run timm's non-fused attention path inside the block (restored afterwards)."""
    if not enabled:
        yield
        return
    attns = [blk.attn for blk in vit.blocks if hasattr(blk.attn, "fused_attn")]
    saved = [attn.fused_attn for attn in attns]
    for attn in attns:
        attn.fused_attn = False
    try:
        yield
    finally:
        for attn, fused in zip(attns, saved):
            attn.fused_attn = fused
