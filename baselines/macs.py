"""MACs and parameter counts of physically pruned timm ViTs, for the peers of the demo
and the benchmarks: fvcore's count (fused attention off, so the attention matmuls are
seen), and the docs/method.md section 3 terms read off a pruned model's layer sizes.
"""
import warnings
from typing import Optional

import torch
import torch.nn as nn

from uvc.cost.flops import ViTDims, block_macs, dense_macs, head_macs, patch_embed_macs


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A random input of the model's resolution, on its device."""
    pe = model.patch_embed
    img = pe.img_size
    h, w = (img, img) if isinstance(img, int) else img
    return torch.randn(batch, pe.proj.in_channels, h, w, device=next(model.parameters()).device)


@torch.no_grad()
def fvcore_macs(model: nn.Module, inputs: Optional[torch.Tensor] = None) -> int:
    """fvcore's count (MACs, batch 1) with fused attention off on every module (then restored)."""
    from fvcore.nn import FlopCountAnalysis

    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    training = model.training
    for m, _ in fused:
        m.fused_attn = False
    try:
        analysis = FlopCountAnalysis(model.eval(), example_input(model) if inputs is None else inputs)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(analysis.total())
    finally:
        for m, state in fused:
            m.fused_attn = state
        model.train(training)


def formula_macs(model: nn.Module, with_attn: bool = True) -> float:
    """The docs/method.md section 3 terms of a (pruned) timm ViT, read off its layer sizes; q, k and v
    all use the block's (pruned) head size."""
    dims = ViTDims.of(model)
    tokens = dims.num_patches + dims.num_prefix_tokens
    blocks = sum(block_macs(tokens, dims.embed_dim, b.attn.num_heads, b.attn.head_dim,
                            b.attn.num_heads * b.attn.head_dim, b.mlp.fc1.out_features, with_attn)
                 for b in model.blocks)
    return float(patch_embed_macs(dims.num_patches, dims) + blocks + head_macs(dims))


def matched_target(dense: nn.Module, compressed: nn.Module) -> float:
    """fvcore MACs ratio of another compressed model (e.g. UVC's compact model): the target
    that puts the Torch-Pruning model at the same MACs by the same counter."""
    return fvcore_macs(compressed) / fvcore_macs(dense)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- closed form of a uniformly pruned ViT (the starting point of the Torch-Pruning bisection) ---
def predicted_ratio(dims: ViTDims, heads_removed: int, r: float, with_attn: bool = True) -> float:
    """Closed-form MACs ratio if a fraction r of head dims and neurons goes (continuous)."""
    tokens = dims.num_patches + dims.num_prefix_tokens
    heads, d = dims.num_heads - heads_removed, dims.head_dim * (1 - r)
    block = block_macs(tokens, dims.embed_dim, heads, d, heads * d, dims.mlp_hidden * (1 - r), with_attn)
    total = patch_embed_macs(dims.num_patches, dims) + dims.depth * block + head_macs(dims)
    return total / dense_macs(dims, with_attn)


def predicted_pruning_ratio(dims: ViTDims, heads_removed: int, target_ratio: float,
                             max_ratio: float = 0.99) -> Optional[float]:
    """The dim/neuron fraction r that the closed form puts at the target (None: out of reach)."""
    k = heads_removed
    if predicted_ratio(dims, k, 0.0) < target_ratio or predicted_ratio(dims, k, max_ratio) > target_ratio:
        return None
    lo, hi = 0.0, max_ratio
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if predicted_ratio(dims, k, mid) > target_ratio else (lo, mid)
    return lo


def choose_heads_removed(dims: ViTDims, target_ratio: float) -> int:
    """Heads removed per block whose fraction is closest to the dim/neuron fraction that then
    hits the target (the most uniform split), from the closed-form prediction."""
    best = None
    for k in range(dims.num_heads):
        r = predicted_pruning_ratio(dims, k, target_ratio)
        if r is None:
            continue
        cand = (abs(k / dims.num_heads - r), k)
        best = cand if best is None or cand < best else best
    if best is None:
        raise ValueError(f"Torch-Pruning cannot reach {target_ratio} of the dense MACs with the embedding "
                         f"width kept")
    return best[1]
