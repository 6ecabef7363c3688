"""Torch-Pruning (Fang et al., CVPR 2023, github.com/VainF/Torch-Pruning) as a peer
baseline: structured magnitude pruning of the same timm ViT to the same MACs.

What is removed, per block: whole attention heads, head dims (Torch-Pruning
removes a dim from q, k and v together, and the matching attn.proj columns),
and MLP neurons (fc1 rows, fc2 columns). The embedding width is untouched:
every mlp.fc2 and the classifier head(s) are in `ignored_layers`, so no group
rooted at the residual stream is pruned. Pruning is local (every block loses
the same fraction) with `tp.importance.GroupMagnitudeImportance(p=2)`.

Heads are coarse, so the number of heads removed per block is chosen first,
by the same rule as the uniform magnitude baseline (the split whose head
fraction is closest to the dim/neuron fraction, predicted by the closed-form
MACs of the result); the shared `pruning_ratio` of head dims and neurons is
then bisected, each trial pruning a fresh deepcopy, until the MACs land within
1% (relative) of the target. If a head-dim step jumps over the 1% window, the
head dims stay at the last ratio above the target and the neuron ratio alone is
bisected (fc1 in `pruning_ratio_dict`), whose steps are finer than the window.

Counting. Unlike UVC, Torch-Pruning shrinks q and k with the head dims, which
the UVC formula (q/k at the full head size) cannot express per block; here
every kept head of every block has the same size, so the same six terms
(uvc.flops.block_macs) with the pruned head size for q, k and v give the count
(`formula_macs`). The MACs ratio that is matched and reported is fvcore's
(fused attention off) on the pruned model over fvcore on the dense model;
fvcore additionally counts the LayerNorms, which pruning leaves unchanged, so
during the search `formula_macs + (fvcore - formula on the dense model)` is
used as a fast exact stand-in, and the result is checked with fvcore itself.
To compare with a UVC model at the same MACs, pass as target
`fvcore_macs(compact UVC model) / fvcore_macs(dense model)` (`matched_target`):
UVC's own budget is by the formula, which ignores the LayerNorms.

After pruning, every attention's num_heads, head_dim, attn_dim and scale
(head_dim ** -0.5, what the fused path's scaled_dot_product_attention uses
by default) are set to the pruned sizes.

The pruned model is saved as a whole pickled module (timm cannot rebuild a
per-block-sized ViT from a config): reload with `load_pruned`, which calls
torch.load(..., weights_only=False); only load such files from a trusted source.

    python -m baselines.torch_pruning --config configs/digits_demo.py:post --model_path dense.pth \\
        --target_ratio 0.5 --output_dir runs/tp
"""
import argparse
import copy
import json
import os
import sys
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp

from uvc.flops import ViTDims, block_macs, dense_macs, head_macs, patch_embed_macs

METHOD = "torch-pruning"
PRUNED_FORMAT = "tp-pruned-v1"


# --- counting --------------------------------------------------------------------------------
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
    """The UVC_SPEC section 3 terms of a (pruned) timm ViT, read off its layer sizes; q, k and v
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


# --- pruning ---------------------------------------------------------------------------------
def ignored_layers(model: nn.Module) -> List[nn.Module]:
    """fc2 of every block and the classifier head(s): the embedding width stays."""
    out = [blk.mlp.fc2 for blk in model.blocks] + [model.head]
    if getattr(model, "head_dist", None) is not None:
        out.append(model.head_dist)
    return out


def _unwrapped_parameters(model: nn.Module):
    """Tokens and position embedding, prunable along their last dim (which stays: embed untouched)."""
    names = ("cls_token", "dist_token", "reg_token", "pos_embed")
    params = [getattr(model, n, None) for n in names]
    return [(p, p.dim() - 1) for p in params if isinstance(p, nn.Parameter)]


def set_attention_shapes(model: nn.Module, num_heads: Dict[nn.Module, int]) -> None:
    """Make every timm Attention agree with its pruned qkv (its forward reshapes by these)."""
    for blk in model.blocks:
        attn = blk.attn
        attn.num_heads = int(num_heads[attn.qkv])
        attn.head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        if hasattr(attn, "attn_dim"):
            attn.attn_dim = attn.num_heads * attn.head_dim
        attn.scale = attn.head_dim ** -0.5


def tp_prune(vit: nn.Module, pruning_ratio: float, heads_removed: int = 0, mlp_ratio: Optional[float] = None,
             inputs: Optional[torch.Tensor] = None) -> nn.Module:
    """A pruned deepcopy of `vit` (vit itself is untouched).

    Args:
        pruning_ratio: fraction of head dims (and of MLP neurons unless `mlp_ratio`) removed per block.
        heads_removed: whole heads removed per block (lowest mean magnitude).
        mlp_ratio: a separate neuron ratio for every fc1 (None: `pruning_ratio`).
        inputs: example input for tracing (default: a random image of the model's size).
    """
    model = copy.deepcopy(vit).eval()
    H = model.blocks[0].attn.num_heads
    if not 0 <= heads_removed < H:
        raise ValueError(f"heads_removed must be in 0..{H - 1}, got {heads_removed}")
    # Torch-Pruning removes ceil(ratio * H) heads; aim between counts so float error cannot round up
    head_ratio = (heads_removed - 0.5) / H if heads_removed else 0.0
    ratio_dict = {blk.mlp.fc1: float(mlp_ratio) for blk in model.blocks} if mlp_ratio is not None else None
    # fresh dicts everywhere: the library's defaults are shared mutable dicts that it updates
    pruner = tp.pruner.MetaPruner(
        model, example_input(model) if inputs is None else inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=float(pruning_ratio), pruning_ratio_dict=ratio_dict,
        ignored_layers=ignored_layers(model),
        num_heads={blk.attn.qkv: blk.attn.num_heads for blk in model.blocks},
        prune_num_heads=heads_removed > 0, prune_head_dims=True, head_pruning_ratio=head_ratio,
        in_channel_groups={}, out_channel_groups={}, channel_groups={},
        unwrapped_parameters=_unwrapped_parameters(model))
    pruner.step()
    set_attention_shapes(model, pruner.num_heads)
    return model


def _predicted_ratio(dims: ViTDims, heads_removed: int, r: float, with_attn: bool = True) -> float:
    """Closed-form MACs ratio if a fraction r of head dims and neurons goes (continuous)."""
    tokens = dims.num_patches + dims.num_prefix_tokens
    heads, d = dims.num_heads - heads_removed, dims.head_dim * (1 - r)
    block = block_macs(tokens, dims.embed_dim, heads, d, heads * d, dims.mlp_hidden * (1 - r), with_attn)
    total = patch_embed_macs(dims.num_patches, dims) + dims.depth * block + head_macs(dims)
    return total / dense_macs(dims, with_attn)


def _predicted_pruning_ratio(dims: ViTDims, heads_removed: int, target_ratio: float,
                             max_ratio: float = 0.99) -> Optional[float]:
    """The dim/neuron fraction r that the closed form puts at the target (None: out of reach)."""
    k = heads_removed
    if _predicted_ratio(dims, k, 0.0) < target_ratio or _predicted_ratio(dims, k, max_ratio) > target_ratio:
        return None
    lo, hi = 0.0, max_ratio
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _predicted_ratio(dims, k, mid) > target_ratio else (lo, mid)
    return lo


def choose_heads_removed(dims: ViTDims, target_ratio: float) -> int:
    """Heads removed per block whose fraction is closest to the dim/neuron fraction that then
    hits the target (the most uniform split), from the closed-form prediction."""
    best = None
    for k in range(dims.num_heads):
        r = _predicted_pruning_ratio(dims, k, target_ratio)
        if r is None:
            continue
        cand = (abs(k / dims.num_heads - r), k)
        best = cand if best is None or cand < best else best
    if best is None:
        raise ValueError(f"Torch-Pruning cannot reach {target_ratio} of the dense MACs with the embedding "
                         f"width kept")
    return best[1]


def prune_to_macs(vit: nn.Module, target_ratio: float, tolerance: float = 0.01,
                  heads_removed: Optional[int] = None, max_trials: int = 30,
                  inputs: Optional[torch.Tensor] = None) -> Tuple[nn.Module, dict]:
    """Prune a deepcopy of `vit` with Torch-Pruning until its fvcore MACs ratio is within
    `tolerance` (relative) of `target_ratio`.

    Returns:
        (pruned model in eval mode, info): info holds the fvcore and formula counts and
        ratios, the ratios used, the per-block shapes, parameter counts and the trial count.
    Raises:
        ValueError: the target cannot be reached within `max_trials` prunings.
    """
    if not 0.0 < target_ratio <= 1.0:
        raise ValueError(f"--target_ratio must be in (0, 1], got {target_ratio}")
    training = vit.training
    vit.eval()
    inputs = example_input(vit) if inputs is None else inputs
    dense_fv, dense_formula = fvcore_macs(vit, inputs), formula_macs(vit)
    unpruned = dense_fv - dense_formula  # what fvcore counts beyond the formula: the LayerNorms
    dims = ViTDims.of(vit)
    k = choose_heads_removed(dims, target_ratio) if heads_removed is None else int(heads_removed)
    trials = []

    def attempt(r: float, mlp: Optional[float] = None):
        model = tp_prune(vit, r, k, mlp, inputs)
        ratio = (formula_macs(model) + unpruned) / dense_fv
        trials.append((r, mlp, ratio))
        return model, ratio, abs(ratio / target_ratio - 1) <= tolerance

    resolution = 0.5 / max(dims.mlp_hidden, dims.head_dim)

    def bisect(trial, lo: float, first: Optional[float] = None):
        """Bisect a pruning ratio in [lo, 0.99]: (model, ratio) on success, else (None, lowest ratio above)."""
        hi = 0.99
        while hi - lo > resolution and len(trials) < max_trials:
            mid = first if first is not None else (lo + hi) / 2
            first = None
            model, ratio, ok = trial(mid)
            if ok:
                return model, mid
            lo, hi = (mid, hi) if ratio > target_ratio else (lo, mid)
        return None, lo

    # head dims and neurons together, the closed form's ratio first; then neurons alone
    model, r = bisect(attempt, 0.0, _predicted_pruning_ratio(dims, k, target_ratio))
    found = (model, r, None) if model is not None else None
    if found is None:
        attn_ratio = r
        model, mlp = bisect(lambda m: attempt(attn_ratio, m), attn_ratio)
        found = (model, attn_ratio, mlp) if model is not None else None
    vit.train(training)
    if found is None:
        raise ValueError(f"Torch-Pruning did not reach {target_ratio} of the dense MACs within {tolerance:.0%} "
                         f"in {len(trials)} trials (last ratio {trials[-1][2]:.4f})")
    model, r, mlp = found
    macs_fv, macs_formula = fvcore_macs(model, inputs), formula_macs(model)
    ratio = macs_fv / dense_fv
    if abs(ratio / target_ratio - 1) > tolerance:
        raise ValueError(f"fvcore counts {ratio:.4f} of the dense MACs for the pruned model, outside "
                         f"{tolerance:.0%} of {target_ratio} (the search's count disagreed)")
    info = {
        "method": METHOD, "torch_pruning_version": tp.__version__, "target_ratio": float(target_ratio),
        "macs_ratio": ratio, "macs_fvcore": macs_fv, "dense_macs_fvcore": dense_fv,
        "macs_formula": macs_formula, "dense_macs_formula": dense_formula,
        "macs_ratio_formula": macs_formula / dense_formula,
        "counter": "fvcore, fused attention off (formula_macs: UVC_SPEC terms with pruned q/k/v head size)",
        "pruning_ratio": r, "mlp_pruning_ratio": r if mlp is None else mlp, "heads_removed": k,
        "blocks": [{"heads": b.attn.num_heads, "head_dim": b.attn.head_dim, "neurons": b.mlp.fc1.out_features}
                   for b in model.blocks],
        "embed_dim": model.embed_dim, "params": param_count(model), "dense_params": param_count(vit),
        "trials": len(trials),
    }
    return model.eval(), info


# --- files -------------------------------------------------------------------------------------
def save_pruned(model: nn.Module, path: str, info: Optional[dict] = None) -> None:
    """The whole pruned module (pickled; see load_pruned) and its info."""
    from utils.checkpoint import atomic_save

    atomic_save({"format": PRUNED_FORMAT, "model": model, "info": info or {}}, path)


def load_pruned(path: str, map_location="cpu") -> Tuple[nn.Module, dict]:
    """(model, info) from save_pruned. Unpickles code objects: weights_only=False, trusted files only."""
    obj = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(obj, dict) or obj.get("format") != PRUNED_FORMAT:
        raise ValueError(f"{path} is not a Torch-Pruning baseline file ({PRUNED_FORMAT})")
    return obj["model"], obj["info"]


# --- command line ------------------------------------------------------------------------------
def _own_flags(argv) -> Tuple[argparse.Namespace, list]:
    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise ValueError(f"{message} (see --help)")

    p = Parser(prog="python -m baselines.torch_pruning", add_help=False, allow_abbrev=False)
    p.add_argument("--target_ratio", "--target-ratio", type=float, default=None)
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--heads_removed", "--heads-removed", type=int, default=None)
    args, rest = p.parse_known_args(argv)
    if args.target_ratio is None and not {"-h", "--help"} & set(rest):
        raise ValueError("--target_ratio is required (fraction of the dense fvcore MACs, e.g. 0.5)")
    return args, rest


def main(argv=None) -> None:
    from baselines.finetune import finetune
    from uvc.engine import evaluate
    from utils.config import parse_config
    from utils.dist import init_distributed
    from utils.training import build_data, build_student, build_teacher, prepare_output_dir, seed_everything

    own, rest = _own_flags(list(sys.argv[1:] if argv is None else argv))
    config = parse_config("post", rest, prog="python -m baselines.torch_pruning")
    if not config.model_path:
        raise ValueError("--model_path is required: the dense model to prune (also the teacher)")
    env = init_distributed(config.gpu_num, config.local_rank)
    if env.distributed:
        raise ValueError("the Torch-Pruning baseline runs in one process; launch it without torchrun")
    seed_everything(config.seed, config.deterministic)
    data = build_data(config, env)
    vit, model_type = build_student(config, data.num_classes, env.device)
    teacher = build_teacher(config, data.num_classes, env.device)
    prepare_output_dir(config.output_dir)

    dense = evaluate(vit, data.val_loader, env.device, None, bool(config.fp16))
    pruned, info = prune_to_macs(vit, own.target_ratio, own.tolerance, own.heads_removed)
    before = evaluate(pruned, data.val_loader, env.device, None, bool(config.fp16))
    print(f"{METHOD}: {info['heads_removed']} heads removed per block, pruning ratio {info['pruning_ratio']:.4f} "
          f"(neurons {info['mlp_pruning_ratio']:.4f}); fvcore MACs ratio {info['macs_ratio']:.4f} (target "
          f"{own.target_ratio}); params {info['params']} of {info['dense_params']}; top-1 {before['top1']:.2f} "
          f"before fine-tuning (dense {dense['top1']:.2f})", flush=True)
    pruned_path = os.path.join(config.output_dir, "tp_pruned.pth")
    save_pruned(pruned, pruned_path, info)
    tuned = finetune(pruned, config, data, env, teacher, config.output_dir)
    result = {**info, "model_type": model_type, "model_path": config.model_path,
              "top1_dense": dense["top1"], "top1_before_finetune": before["top1"],
              "top1_after_finetune": tuned["final_top1"], "best_top1": tuned["best_top1"],
              "epochs": tuned["epochs"], "pruned_file": pruned_path, "best_file": tuned["best_file"]}
    with open(os.path.join(config.output_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"{METHOD}: top-1 {before['top1']:.2f} -> {tuned['final_top1']:.2f} after {tuned['epochs']} epochs "
          f"(best {tuned['best_top1']:.2f}); wrote {os.path.join(config.output_dir, 'result.json')}", flush=True)


if __name__ == "__main__":
    from utils.entry import run_entry

    run_entry(main, sys.argv[1:])
