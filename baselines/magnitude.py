"""One-shot magnitude pruning of the dense model, no search: the simplest
structured baselines for UVC. Two methods (`--method`):

`uniform-magnitude`. Every block loses the same number of attention heads and the same number of
MLP neurons, chosen by the scores UVC itself ranks groups by (uvc.search.masks:
head = squared norm of its attn.proj columns, neuron = squared norm of its
fc2 column), lowest first. No block is skipped, no patch is dropped, value
dims inside kept heads are untouched. The counts are picked so that the hard
MACs ratio (docs/method.md section 3, the same formula UVC's budget uses) lands
within 1% (relative) of the target.

Heads are coarse (4 per block in the demo model), so the kept head count h is
chosen first and the kept neuron count m then hits the target; among the
(h, m) pairs that land, the one whose head fraction h/H is closest to its
neuron fraction m/M is taken (the most uniform split).

`greedy-fit`. The freeze's own greedy global fit (uvc.deploy.fit.fit_to_budget) applied
to the dense architecture with the dense weights' scores: value dims (one from
every head of a block at a time) and MLP neurons of any block are removed in order
of score per MAC saved until the ratio is within the tolerance below the target.
This is what UVC's freeze would do if the search had changed nothing, so UVC
against it measures what the search is worth. No head, block or patch is removed.

The result is a stage-1 file (uvc.deploy.stagefile.stage1_record), so post_train.py
fine-tunes it exactly like UVC's own output (same epochs, same distillation)
and exports compact.pth:

    python -m baselines.magnitude --model_type vit_digits_patch2_8 --model_path dense.pth \\
        --target_ratio 0.5 --output runs/mag/vit_digits_patch2_8_uvc.pth [--method greedy-fit]
    python post_train.py --config configs/digits_demo.py --model_path dense.pth \\
        --checkpoint_dir runs/mag/vit_digits_patch2_8_uvc.pth --output_dir runs/mag_post

The model is the one the run fine-tunes: `--config FILE[:post]` with the run's overrides
(--input_size, --num_classes, --dataset, --data_dir, --model_type, ...; the class count is the
data's unless --num_classes), or `--model_type` alone (its own size and class count). The dense
file must be that model's (models.load_exact): a file of another class count or patch grid stops
with one line naming --num_classes or --input_size, and nothing is written.

    python -m baselines.magnitude --config configs/deit_tiny.py:post --dataset imagenet --data_dir TREE \\
        --input_size 32 --model_path dense.pth --target_ratio 0.5 --output runs/mag/deit_tiny_patch16_224_uvc.pth
"""
import argparse
import copy
import os
import sys
from typing import Dict, Optional, Tuple

import torch

from uvc.deploy.fit import fit_to_budget
from uvc.deploy.freeze import base_spec, param_keep_masks, spec_ratio, zero_removed_weights
from uvc.search.masks import group_scores, stacked_weights

METHOD = "uniform-magnitude"
GREEDY_FIT = "greedy-fit"


def _uniform_spec(vit, model_type: str, heads_kept: int, neurons_kept: int, scores) -> dict:
    """Every block keeps its `heads_kept` best heads (all their dims) and `neurons_kept` best neurons."""
    spec = base_spec(vit, model_type)
    d = spec["head_dim"]
    for l, block in enumerate(spec["blocks"]):
        heads = sorted(scores.heads[l].argsort(descending=True, stable=True)[:heads_kept].tolist())
        block["heads"] = heads
        block["value_dims"] = [list(range(d)) for _ in heads]
        block["neurons"] = sorted(scores.neurons[l].argsort(descending=True, stable=True)[:neurons_kept].tolist())
    return spec


def _neurons_for(vit, model_type: str, heads_kept: int, target_ratio: float, scores,
                 with_attn: bool) -> Tuple[int, float]:
    """The kept neuron count (1..M) whose ratio is closest to the target for `heads_kept` heads.

    The ratio is affine in the neuron count, so two evaluations give it exactly."""
    M = vit.blocks[0].mlp.fc1.out_features
    r0 = spec_ratio(_uniform_spec(vit, model_type, heads_kept, 0, scores), True, with_attn)
    r1 = spec_ratio(_uniform_spec(vit, model_type, heads_kept, M, scores), True, with_attn)
    per_neuron = (r1 - r0) / M
    m = int(min(max(round((target_ratio - r0) / per_neuron), 1), M))
    return m, r0 + m * per_neuron


def uniform_magnitude_spec(vit, model_type: str, target_ratio: float, tolerance: float = 0.01,
                           with_attn: bool = True) -> Tuple[dict, Dict]:
    """The uniform magnitude-pruned architecture of `vit` at `target_ratio` of the dense MACs.

    Args:
        vit: timm VisionTransformer holding the (dense, trained) weights that give the scores.
        model_type: the name written into the spec (models.MODEL_TYPES).
        target_ratio: MACs of the result over the dense MACs (e.g. 0.5).
        tolerance: accepted relative error, |ratio / target - 1| <= tolerance.
        with_attn: count the N^2 attention terms (as UVC's --flops_with_mhsa 1).

    Returns:
        (spec, info): an architecture spec (uvc.deploy.freeze format) and
        {"method", "target_ratio", "macs_ratio", "heads_kept", "neurons_kept", ...}.
    Raises:
        ValueError: no uniform (heads, neurons) pair lands within the tolerance.
    """
    if not 0.0 < target_ratio <= 1.0:
        raise ValueError(f"--target_ratio must be in (0, 1], got {target_ratio}")
    H = vit.blocks[0].attn.num_heads
    M = vit.blocks[0].mlp.fc1.out_features
    scores = group_scores(*stacked_weights(vit), H)
    candidates = []
    for h in range(1, H + 1):
        m, ratio = _neurons_for(vit, model_type, h, target_ratio, scores, with_attn)
        error = abs(ratio / target_ratio - 1)
        if error <= tolerance:
            candidates.append((abs(h / H - m / M), error, h, m))
    if not candidates:
        raise ValueError(f"no uniform head/neuron count reaches {target_ratio} of the dense MACs within "
                         f"{tolerance:.0%}; the smallest uniform model keeps 1 head and 1 neuron per block")
    _, _, h, m = min(candidates)
    spec = _uniform_spec(vit, model_type, h, m, scores)
    ratio = spec_ratio(spec, True, with_attn)
    info = {"method": METHOD, "target_ratio": float(target_ratio), "macs_ratio": ratio,
            "searched_macs_ratio": ratio, "heads_kept": h, "heads_per_block": H, "neurons_kept": m,
            "neurons_per_block": M, "flops_with_mhsa": int(with_attn)}
    return spec, info


def greedy_fit_spec(vit, model_type: str, target_ratio: float, tolerance: float = 0.01,
                    with_attn: bool = True) -> Tuple[dict, Dict]:
    """The dense architecture of `vit` fitted to `target_ratio` by uvc.deploy.fit.fit_to_budget with
    the dense weights' scores: the ratio lands in [target * (1 - tolerance), target].

    Returns (spec, info) as uniform_magnitude_spec does."""
    if not 0.0 < target_ratio <= 1.0:
        raise ValueError(f"--target_ratio must be in (0, 1], got {target_ratio}")
    scores = group_scores(*stacked_weights(vit), vit.blocks[0].attn.num_heads)
    spec, fit = fit_to_budget(base_spec(vit, model_type), scores, target_ratio, with_attn,
                              tolerance=tolerance * target_ratio)
    ratio = spec_ratio(spec, True, with_attn)
    if abs(ratio / target_ratio - 1) > tolerance:
        raise ValueError(f"the greedy fit ended at {ratio:.4f} of the dense MACs, outside {tolerance:.1%} of "
                         f"{target_ratio} (below one neuron and one value dim per block)")
    info = {"method": GREEDY_FIT, "target_ratio": float(target_ratio), "macs_ratio": ratio,
            "searched_macs_ratio": 1.0, "flops_with_mhsa": int(with_attn), **fit}
    return spec, info


SPECS = {METHOD: uniform_magnitude_spec, GREEDY_FIT: greedy_fit_spec}


def pruned_copy(vit, spec: dict):
    """A copy of `vit` with the weights the spec removes set to exactly zero."""
    out = copy.deepcopy(vit)
    zero_removed_weights(out, param_keep_masks(out, spec))
    return out


def magnitude_record(vit, spec: dict, info: dict, model_path: str = "", config_dict: Optional[dict] = None,
                     top1: Optional[float] = None, teacher: Optional[dict] = None) -> dict:
    """The stage-1 file content (the input of post_train.py --checkpoint_dir).

    The teacher recorded is the dense model at `model_path`, as for UVC (`teacher`: its record as
    engine.build.teacher_record makes it, which also rebuilds its shape)."""
    from uvc.deploy.stagefile import stage1_record

    fit = dict(info)
    if top1 is not None:
        fit["final_top1"] = float(top1)
    config = dict(config_dict or {}, method=info["method"], model_type=spec["model_type"], model_path=model_path,
                  budget=info["target_ratio"])
    teacher = teacher or {"model_type": spec["model_type"], "path": model_path}
    return stage1_record(spec, pruned_copy(vit, spec).state_dict(), config, fit, teacher)


@torch.no_grad()
def evaluate_spec(vit, spec: dict, loader, device, amp: bool = False) -> Dict[str, float]:
    """Top-1/top-5/loss of the pruned model before fine-tuning (exactly what stage 2 starts from)."""
    from engine.loop import evaluate
    from uvc.search.masked_model import MaskedViT
    from uvc.deploy.frozen import FrozenArchitecture

    model = MaskedViT(copy.deepcopy(vit)).to(device)
    frozen = FrozenArchitecture(model, spec)
    return evaluate(model, loader, device, frozen, amp)


# --- command line -------------------------------------------------------------------------
def _own_flags(argv):
    """This script's flags; the rest are the config's (utils.config: --config, --model_type, --model_path,
    --input_size, --num_classes, --dataset, --data_dir, ...)."""
    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise ValueError(f"{message} (see --help)")

    p = Parser(prog="python -m baselines.magnitude", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--method", choices=tuple(SPECS), default=METHOD,
                   help="uniform-magnitude: the same per block; greedy-fit: uvc.deploy.fit.fit_to_budget")
    p.add_argument("--target_ratio", type=float, required=True, help="fraction of the dense MACs to keep")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative error accepted on the MACs ratio")
    p.add_argument("--flops_with_mhsa", type=int, default=1, help="count the N^2 attention terms")
    p.add_argument("--output", required=True, help="the stage-1 file to write, e.g. DIR/<model_type>_uvc.pth")
    p.add_argument("--eval_config", default="",
                   help="optional config (e.g. configs/digits_demo.py:post) to measure top-1 before fine-tuning")
    return p.parse_known_args(argv)


def build_dense(config, from_config_file: bool):
    """The dense model the config builds, with --model_path loaded as it is (models.load_exact).

    Classes: --num_classes, else the data set's count (with --config: the run's data), else the model
    type's own; input size: --input_size, else the model type's own."""
    from data.datasets import build_eval_dataset
    from engine.build import head_classes, model_input
    from models import create_model, load_exact, resolve_model_type
    from utils.config_checks import model_overrides

    model_type = resolve_model_type(config.model_type, config.enable_deit)
    classes = int(config.num_classes) or None
    if from_config_file and classes is None:
        classes = head_classes(config, build_eval_dataset(config, *model_input(config))[1])
    vit = create_model(model_type, num_classes=classes, enable_deit=config.enable_deit,
                       img_size=config.input_size or None, **model_overrides(config))
    load_exact(vit, config.model_path, model_type)
    return vit.eval(), model_type


def main(argv=None) -> None:
    from utils.checkpoint import atomic_save
    from utils.config import parse_config
    from engine.build import teacher_record

    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _own_flags(argv)
    given = {a.split("=")[0] for a in rest}
    if not given & {"--config", "--model_type", "--model-type"}:
        raise ValueError("give --config FILE[:post] (the run's config) or --model_type (its defaults)")
    config = parse_config("post", rest, prog="python -m baselines.magnitude")
    if not config.model_path:
        raise ValueError("--model_path is required: the dense model to prune")
    vit, model_type = build_dense(config, "--config" in given)
    spec, info = SPECS[args.method](vit, model_type, args.target_ratio, args.tolerance, bool(args.flops_with_mhsa))
    top1 = None
    if args.eval_config:
        from utils.config import load_config_file
        from utils.dist import init_distributed
        from engine.build import build_data

        eval_config = load_config_file(args.eval_config, "post")
        env = init_distributed()
        top1 = evaluate_spec(vit, spec, build_data(eval_config, env).val_loader, env.device)["top1"]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    record = magnitude_record(vit, spec, info, config.model_path, top1=top1,
                              teacher=teacher_record(config, vit, model_type))
    atomic_save(record, args.output)
    print(f"{args.method}: {_summary(spec)}, MACs ratio {info['macs_ratio']:.4f} (target {args.target_ratio})"
          + (f", top-1 before fine-tuning {top1:.2f}" if top1 is not None else "") + f"; wrote {args.output}",
          flush=True)


def _summary(spec: dict) -> str:
    """Kept heads / value dims / neurons per block, e.g. "heads 4,4 dims 16,12 neurons 200,96"."""
    blocks = spec["blocks"]
    heads = ",".join(str(len(b["heads"])) for b in blocks)
    dims = ",".join(str(max((len(v) for v in b["value_dims"]), default=0)) for b in blocks)
    neurons = ",".join(str(len(b["neurons"])) for b in blocks)
    return f"kept per block: heads {heads}, value dims {dims}, neurons {neurons}"


if __name__ == "__main__":
    from engine.entry import run_entry

    run_entry(main, sys.argv[1:])
