"""Freeze with restored or with zero-padded groups: top-1 right after freeze, both ways.

    python scripts/freeze_padding.py runs/benchmark_search/*/ --out log/freeze_padding

With `--greedy_fit 1` (the default of the runs this was measured on), stage 1 ends by fitting the
searched architecture to the budget (uvc.deploy.fit): every
kept head of a block is widened to the block's widest (the compact model pads to
that width anyway), and groups are put back or removed until the ratio is in the
window. The groups put back carry the weights the search left them, which the
proximal step had been driving toward zero while they were removed ("restore",
what joint_train.py --greedy_fit 1 does). The compact model could instead compute them as zeros
at the same cost ("zero-pad"). For every finished stage-1 run directory given
(its checkpoint.pth holds the weights and the search state at the end of the
search) this evaluates both on the run's validation set and writes a table
(<out>.md) and the numbers (<out>.json).
"""
import argparse
import os
import shlex
import sys

import torch

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.common import base_config
from data import build_eval_dataset, build_eval_loader
from scripts.results import write_result
from engine.loop import evaluate
from uvc.deploy.freeze import apply_spec, param_keep_masks, zero_removed_weights
from uvc.search.masked_model import MaskedViT
from uvc.search import UVCSearch
from engine.build import build_student, model_input


def put_back(searched: dict, fitted: dict):
    """Per block: (value dims (head, dim) and neurons) the fit has that the search had removed."""
    out = []
    for s, f in zip(searched["blocks"], fitted["blocks"]):
        if f["skipped"]:
            out.append(([], []))
            continue
        after = {(h, j) for h, dims in zip(f["heads"], f["value_dims"]) for j in dims}
        if s["skipped"]:  # a block the fit brought back: all of it
            out.append((sorted(after), sorted(f["neurons"])))
            continue
        before = {(h, j) for h, dims in zip(s["heads"], s["value_dims"]) for j in dims}
        out.append((sorted(after - before), sorted(set(f["neurons"]) - set(s["neurons"]))))
    return out


@torch.no_grad()
def zero_groups(vit, groups) -> None:
    """Zero the v rows and proj columns of the given value dims, the fc1 rows and fc2 columns of the neurons."""
    d = vit.blocks[0].attn.head_dim
    for blk, (dims, neurons) in zip(vit.blocks, groups):
        H = blk.attn.num_heads
        for h, j in dims:
            row = 2 * H * d + h * d + j  # qkv rows: q (H*d), k (H*d), v (H*d)
            blk.attn.qkv.weight[row] = 0
            if blk.attn.qkv.bias is not None:
                blk.attn.qkv.bias[row] = 0
            blk.attn.proj.weight[:, h * d + j] = 0
        for m in neurons:
            blk.mlp.fc1.weight[m] = 0
            blk.mlp.fc1.bias[m] = 0
            blk.mlp.fc2.weight[:, m] = 0


def both_ways(run_dir: str) -> dict:
    """Top-1 of the fitted architecture of one run, with the put-back groups as left and zeroed."""
    ck = torch.load(os.path.join(run_dir, "checkpoint.pth"), map_location="cpu", weights_only=False)
    config = base_config("joint")  # keys added since the run take their defaults ...
    with config.unlocked():
        config.update(ck["config"])
        if "round_to" not in ck["config"]:  # ... except the fit's width: before --round_to it was any width
            config.round_to = 1
        config.greedy_fit = True  # what this script measures: what the greedy fit puts back
    device = torch.device("cpu")
    img_size, in_chans = model_input(config)
    val_set, num_classes = build_eval_dataset(config, img_size, in_chans)
    loader = build_eval_loader(config, val_set, 1, 0)
    vit, model_type = build_student(config, num_classes, device, load_weights=False)
    vit.load_state_dict(ck["model"])
    search = UVCSearch(vit, config, device, search_steps=max(int(ck["search"]["primal_dual"]["t"]), 1))
    search.load_state_dict(ck["search"])
    search.active = True
    model = MaskedViT(vit).eval()
    searched = search.spec(model, model_type)
    fitted, fit = search.freeze(model, model_type)
    groups = put_back(searched, fitted)
    zero_removed_weights(vit, param_keep_masks(vit, fitted))
    apply_spec(model, fitted)
    top1 = {"restore": evaluate(model, loader, device)["top1"]}
    zero_groups(vit, groups)
    top1["zero-pad"] = evaluate(model, loader, device)["top1"]
    return {"run": os.path.basename(os.path.normpath(run_dir)), "budget": float(config.budget),
            "macs_ratio": fit["macs_ratio"], "dims_put_back": sum(len(d) for d, _ in groups),
            "neurons_put_back": sum(len(n) for _, n in groups), "top1_restore": top1["restore"],
            "top1_zero_pad": top1["zero-pad"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", help="finished stage-1 output dirs (with checkpoint.pth)")
    p.add_argument("--out", default="log/freeze_padding", help="writes <out>.md and <out>.json")
    args = p.parse_args(argv)
    missing = [d for d in args.run_dirs if not os.path.exists(os.path.join(d, "checkpoint.pth"))]
    if missing:
        raise SystemExit(f"{missing[0]} has no checkpoint.pth: give finished joint_train.py output dirs")
    rows = [both_ways(d) for d in args.run_dirs]
    command = "python scripts/freeze_padding.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [f"Produced by `{command}`: top-1 right after freeze, the groups the fit put back kept with the "
             f"weights the search left them (restore) or zeroed (zero-pad).", "",
             "| run | budget | MACs ratio | value dims put back | neurons put back | top-1 restore | top-1 zero-pad |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['budget']} | {r['macs_ratio']:.3f} | {r['dims_put_back']} | "
              f"{r['neurons_put_back']} | {r['top1_restore']:.2f} | {r['top1_zero_pad']:.2f} |" for r in rows]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("top1_restore", "top1_zero_pad")}
    lines += ["", f"Mean top-1: restore {mean['top1_restore']:.2f}, zero-pad {mean['top1_zero_pad']:.2f}."]
    text = "\n".join(lines) + "\n"
    write_result(args.out, text, {"command": command, "rows": rows, "mean": mean})
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
