"""Torch-Pruning (Fang et al., CVPR 2023, github.com/VainF/Torch-Pruning) as a peer
baseline: structured pruning of the same timm ViT to the same MACs.

What can be removed, per block: head dims (Torch-Pruning removes a dim from q,
k and v together, and the matching attn.proj columns), whole attention heads,
and MLP neurons (fc1 rows, fc2 columns). The embedding width is untouched:
every mlp.fc2 and the classifier head(s) are in `ignored_layers`, so no group
rooted at the residual stream is pruned. Two settings (`TPSetting`):

- `Torch-Pruning` (TAYLOR_GLOBAL, the default): what the library's own timm ViT
  example recommends (`examples/transformers/prune_timm_vit.py --pruning_type
  taylor --global_pruning`): `GroupTaylorImportance` from the gradients of the
  cross-entropy over 10 training batches, global ranking, head dims and neurons
  (no whole heads, as in that command), and `isomorphic=True`: groups are ranked
  only against groups of the same structure (head dims against head dims of
  every block, neurons against neurons), the library's ViT ranking since 1.4.1
  (Isomorphic Pruning, ECCV 2024), so Taylor scores of differently shaped
  groups are never compared. Blocks end up with different widths.
- `Torch-Pruning (local magnitude)` (LOCAL_MAGNITUDE): every block loses the same
  fraction, `GroupMagnitudeImportance(p=2)`. Heads are coarse, so the number of
  heads removed per block is chosen first, by the same rule as the uniform
  magnitude baseline (the split whose head fraction is closest to the
  dim/neuron fraction, predicted by the closed-form MACs of the result).

Either way the shared `pruning_ratio` of head dims and neurons is then bisected,
each trial pruning a fresh deepcopy, until the MACs land within the tolerance
(relative) of the target. If a head-dim step jumps over the window, the head
dims stay at the last ratio above the target and the neuron ratio alone is
bisected (fc1 in `pruning_ratio_dict`), whose steps are finer.

Counting. Unlike UVC, Torch-Pruning shrinks q and k with the head dims, which
the UVC formula (q/k at the full head size) cannot express; the heads of one
block all keep the same size, so the same six terms (uvc.cost.flops.block_macs) with
each block's pruned head size for q, k and v give the count
(`baselines.macs.formula_macs`). The MACs ratio that is matched and reported is
fvcore's (fused attention off) on the pruned model over fvcore on the dense model;
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
per-block-sized ViT from a config): reload with `baselines.finetune.load_pruned`, which calls
torch.load(..., weights_only=False); only load such files from a trusted source. The command
line is baselines/torch_pruning.py.
"""
import copy
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp

from baselines.macs import (choose_heads_removed, example_input, formula_macs, fvcore_macs, param_count,
                            predicted_pruning_ratio)
from uvc.cost.flops import ViTDims

METHOD = "torch-pruning"


@dataclass(frozen=True)
class TPSetting:
    """How Torch-Pruning ranks groups (see the module docstring)."""
    importance: str = "taylor"  # taylor | magnitude
    global_pruning: bool = True  # rank across blocks (False: every block loses the same fraction)
    isomorphic: bool = True  # with global_pruning: rank only groups of the same structure
    taylor_batches: int = 10  # training batches whose loss gradients give the Taylor scores

    def __post_init__(self):
        if self.importance not in ("taylor", "magnitude"):
            raise ValueError(f"--importance {self.importance!r}: choose taylor or magnitude")
        if self.isomorphic and not self.global_pruning:
            raise ValueError("--isomorphic 1 ranks groups across blocks: it needs --global_pruning 1")
        if self.importance == "taylor" and self.taylor_batches < 1:
            raise ValueError(f"--taylor_batches must be at least 1, got {self.taylor_batches}")

    @property
    def name(self) -> str:
        if self == TAYLOR_GLOBAL:
            return "Torch-Pruning"
        if self == LOCAL_MAGNITUDE:
            return "Torch-Pruning (local magnitude)"
        scope = "isomorphic" if self.isomorphic else "global" if self.global_pruning else "local"
        return f"Torch-Pruning ({scope} {self.importance})"

    def make_importance(self):
        if self.importance == "taylor":
            return tp.importance.GroupTaylorImportance()
        return tp.importance.GroupMagnitudeImportance(p=2)


TAYLOR_GLOBAL = TPSetting()
LOCAL_MAGNITUDE = TPSetting(importance="magnitude", global_pruning=False, isomorphic=False)


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


def accumulate_taylor_gradients(vit: nn.Module, batches: Iterable, device) -> int:
    """Sum the cross-entropy gradients of `batches` into vit's .grad (eval mode, as the library's
    example): what GroupTaylorImportance scores groups by. Returns the number of batches used."""
    training = vit.training
    vit.eval().zero_grad()
    used = 0
    for images, labels in batches:
        loss = nn.functional.cross_entropy(vit(images.to(device)), labels.to(device))
        loss.backward()
        used += 1
    vit.train(training)
    return used


def _copy_with_grads(vit: nn.Module) -> nn.Module:
    """deepcopy does not copy .grad; the Taylor scores need it on the copy that is pruned."""
    model = copy.deepcopy(vit).eval()
    for p, src in zip(model.parameters(), vit.parameters()):
        p.grad = None if src.grad is None else src.grad.clone()
    return model


def tp_prune(vit: nn.Module, pruning_ratio: float, heads_removed: int = 0, mlp_ratio: Optional[float] = None,
             inputs: Optional[torch.Tensor] = None, setting: TPSetting = TAYLOR_GLOBAL) -> nn.Module:
    """A pruned deepcopy of `vit` (vit itself is untouched).

    Args:
        pruning_ratio: fraction of head dims (and of MLP neurons unless `mlp_ratio`) removed
            (per block when local, over all blocks when global).
        heads_removed: whole heads removed per block (lowest mean importance; local setting only).
        mlp_ratio: a separate neuron ratio for every fc1 (None: `pruning_ratio`).
        inputs: example input for tracing (default: a random image of the model's size).
        setting: importance and ranking; Taylor needs vit's .grad (accumulate_taylor_gradients).
    """
    model = _copy_with_grads(vit)
    H = model.blocks[0].attn.num_heads
    if not 0 <= heads_removed < H:
        raise ValueError(f"heads_removed must be in 0..{H - 1}, got {heads_removed}")
    if heads_removed and setting.global_pruning:
        raise ValueError("whole heads are removed per block only in the local setting")
    if setting.importance == "taylor" and all(p.grad is None for p in model.parameters()):
        raise ValueError("Taylor importance needs gradients: call accumulate_taylor_gradients(vit, ...) first")
    # Torch-Pruning removes ceil(ratio * H) heads; aim between counts so float error cannot round up
    head_ratio = (heads_removed - 0.5) / H if heads_removed else 0.0
    ratio_dict = {blk.mlp.fc1: float(mlp_ratio) for blk in model.blocks} if mlp_ratio is not None else None
    # fresh dicts everywhere: the library's defaults are shared mutable dicts that it updates
    pruner = tp.pruner.MetaPruner(
        model, example_input(model) if inputs is None else inputs,
        importance=setting.make_importance(), global_pruning=setting.global_pruning,
        isomorphic=setting.isomorphic,
        pruning_ratio=float(pruning_ratio), pruning_ratio_dict=ratio_dict,
        ignored_layers=ignored_layers(model),
        num_heads={blk.attn.qkv: blk.attn.num_heads for blk in model.blocks},
        prune_num_heads=heads_removed > 0, prune_head_dims=True, head_pruning_ratio=head_ratio,
        in_channel_groups={}, out_channel_groups={}, channel_groups={},
        unwrapped_parameters=_unwrapped_parameters(model))
    pruner.step()
    set_attention_shapes(model, pruner.num_heads)
    model.zero_grad(set_to_none=True)
    return model


def prune_to_macs(vit: nn.Module, target_ratio: float, tolerance: float = 0.01,
                  heads_removed: Optional[int] = None, max_trials: int = 30,
                  inputs: Optional[torch.Tensor] = None,
                  setting: TPSetting = TAYLOR_GLOBAL) -> Tuple[nn.Module, dict]:
    """Prune a deepcopy of `vit` with Torch-Pruning until its fvcore MACs ratio is within
    `tolerance` (relative) of `target_ratio`. With Taylor importance, vit's .grad must hold the
    accumulated loss gradients (accumulate_taylor_gradients).

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
    dense = (fvcore_macs(vit, inputs), formula_macs(vit))
    dims = ViTDims.of(vit)
    if setting.global_pruning:
        k = 0 if heads_removed is None else int(heads_removed)  # tp_prune refuses k > 0 here
    else:
        k = choose_heads_removed(dims, target_ratio) if heads_removed is None else int(heads_removed)
    trials = []
    found = _search_pruning_ratio(vit, target_ratio, tolerance, k, max_trials, inputs, setting, dense, trials)
    vit.train(training)
    if found is None:
        raise ValueError(f"Torch-Pruning did not reach {target_ratio} of the dense MACs within {tolerance:.0%} "
                         f"in {len(trials)} trials (last ratio {trials[-1][2]:.4f})")
    model, r, mlp = found
    info = _pruned_info(vit, model, inputs, dense, target_ratio, tolerance, setting, r, mlp, k)
    info["trials"] = len(trials)
    return model.eval(), info


def _search_pruning_ratio(vit: nn.Module, target_ratio: float, tolerance: float, k: int, max_trials: int,
                          inputs: torch.Tensor, setting: TPSetting, dense: Tuple[float, float],
                          trials: list) -> Optional[Tuple[nn.Module, float, Optional[float]]]:
    """Bisect Torch-Pruning's ratio until the MACs ratio (the formula's count plus what fvcore counts
    beyond it, the LayerNorms) is within `tolerance` of the target: head dims and neurons together, the
    closed form's ratio first; then neurons alone. (model, ratio, MLP ratio or None), or None when
    `max_trials` prunings (each appended to `trials` as (ratio, MLP ratio, MACs ratio)) do not reach it."""
    dense_fv, dense_formula = dense
    unpruned = dense_fv - dense_formula  # what fvcore counts beyond the formula: the LayerNorms
    dims = ViTDims.of(vit)

    def attempt(r: float, mlp: Optional[float] = None):
        model = tp_prune(vit, r, k, mlp, inputs, setting)
        ratio = (formula_macs(model) + unpruned) / dense_fv
        trials.append((r, mlp, ratio))
        return model, ratio, abs(ratio / target_ratio - 1) <= tolerance

    # one channel of the ranking (of a block when local, of all blocks when global)
    resolution = 0.5 / max(dims.mlp_hidden, dims.head_dim) / (dims.depth if setting.global_pruning else 1)

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

    model, r = bisect(attempt, 0.0, predicted_pruning_ratio(dims, k, target_ratio))
    if model is not None:
        return model, r, None
    attn_ratio = r
    model, mlp = bisect(lambda m: attempt(attn_ratio, m), attn_ratio)
    return (model, attn_ratio, mlp) if model is not None else None


def _pruned_info(vit: nn.Module, model: nn.Module, inputs: torch.Tensor, dense: Tuple[float, float],
                 target_ratio: float, tolerance: float, setting: TPSetting, r: float, mlp: Optional[float],
                 k: int) -> dict:
    """The pruned model counted by fvcore (refused outside `tolerance` of the target: the search's count
    disagreed) and by the formula, its shapes and parameters, and the setting and ratios that made it."""
    dense_fv, dense_formula = dense
    macs_fv, macs_formula = fvcore_macs(model, inputs), formula_macs(model)
    ratio = macs_fv / dense_fv
    if abs(ratio / target_ratio - 1) > tolerance:
        raise ValueError(f"fvcore counts {ratio:.4f} of the dense MACs for the pruned model, outside "
                         f"{tolerance:.0%} of {target_ratio} (the search's count disagreed)")
    return {
        "method": METHOD, "setting": setting.name, "importance": setting.importance,
        "global_pruning": setting.global_pruning, "isomorphic": setting.isomorphic,
        "torch_pruning_version": tp.__version__, "target_ratio": float(target_ratio),
        "macs_ratio": ratio, "macs_fvcore": macs_fv, "dense_macs_fvcore": dense_fv,
        "macs_formula": macs_formula, "dense_macs_formula": dense_formula,
        "macs_ratio_formula": macs_formula / dense_formula,
        "counter": "fvcore, fused attention off (formula_macs: docs/method.md section 3 terms with pruned q/k/v head size)",
        "pruning_ratio": r, "mlp_pruning_ratio": r if mlp is None else mlp, "heads_removed": k,
        "blocks": [{"heads": b.attn.num_heads, "head_dim": b.attn.head_dim, "neurons": b.mlp.fc1.out_features}
                   for b in model.blocks],
        "embed_dim": model.embed_dim, "params": param_count(model), "dense_params": param_count(vit),
    }
