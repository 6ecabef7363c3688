"""The Torch-Pruning baseline's command line: prune the dense model to a MACs target with
Torch-Pruning (baselines.tp_prune: what is removed, the two settings, how MACs are counted and
matched), save the pruned model, then fine-tune it with stage 2's loop and distillation.

    python -m baselines.torch_pruning --config configs/digits_demo.py:post --model_path dense.pth \\
        --target_ratio 0.5 --output_dir runs/tp                              # Taylor, global (isomorphic)
    python -m baselines.torch_pruning ... --importance magnitude --global_pruning 0   # local magnitude
    python -m baselines.torch_pruning ... --prune_only 1        # tp_pruned.pth only, not fine-tuned
"""
import argparse
import json
import os
import sys
from typing import Tuple

from baselines.finetune import finetune, save_pruned
from baselines.tp_prune import TPSetting, accumulate_taylor_gradients, prune_to_macs


def _own_flags(argv) -> Tuple[argparse.Namespace, list]:
    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise ValueError(f"{message} (see --help)")

    p = Parser(prog="python -m baselines.torch_pruning", add_help=False, allow_abbrev=False,
               usage="%(prog)s --target_ratio R --model_path DENSE [flags below] [stage-2 flags]",
               description="Prune the dense model (--model_path, also the teacher) to --target_ratio of its fvcore "
                           "MACs with Torch-Pruning, then fine-tune it as stage 2 does.")
    p.add_argument("--target_ratio", "--target-ratio", type=float, default=None,
                   help="fraction of the dense model's fvcore MACs to keep (required, e.g. 0.5)")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative window around the target (default 0.01)")
    p.add_argument("--heads_removed", "--heads-removed", type=int, default=None,
                   help="with --global_pruning 0: whole heads removed per block (default: chosen like uniform "
                        "magnitude's)")
    p.add_argument("--importance", choices=("taylor", "magnitude"), default="taylor",
                   help="group importance (default taylor: loss gradients over --taylor_batches training batches)")
    p.add_argument("--global_pruning", "--global-pruning", type=int, choices=(0, 1), default=1,
                   help="1: rank groups across blocks (default); 0: every block loses the same fraction")
    p.add_argument("--isomorphic", type=int, choices=(0, 1), default=None,
                   help="rank only groups of the same structure (default: --global_pruning)")
    p.add_argument("--taylor_batches", "--taylor-batches", type=int, default=None, help="default 10")
    p.add_argument("--prune_only", "--prune-only", type=int, choices=(0, 1), default=0,
                   help="1: write tp_pruned.pth and stop (no fine-tuning), e.g. to time the pruned model")
    if {"-h", "--help"} & set(argv):
        print(p.format_help() + "\nStage-2 flags (fine-tuning, data, model):\n", flush=True)
    args, rest = p.parse_known_args(argv)
    if args.target_ratio is None and not {"-h", "--help"} & set(rest):
        raise ValueError("--target_ratio is required (fraction of the dense fvcore MACs, e.g. 0.5)")
    if args.taylor_batches is not None and args.importance != "taylor":
        raise ValueError("--taylor_batches sets the batches of the Taylor scores: it needs --importance taylor")
    if args.heads_removed is not None and args.global_pruning:
        raise ValueError("--heads_removed removes whole heads per block: it needs --global_pruning 0")
    args.setting = TPSetting(args.importance, bool(args.global_pruning),
                             bool(args.global_pruning if args.isomorphic is None else args.isomorphic),
                             10 if args.taylor_batches is None else args.taylor_batches)
    return args, rest


def main(argv=None) -> None:
    from itertools import islice

    from engine import evaluate
    from utils.checkpoint import atomic_write_text
    from utils.config import parse_config
    from utils.dist import init_distributed
    from engine.build import build_data, build_student, build_teacher, prepare_output_dir, seed_everything

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

    dense = evaluate(vit, data.val_loader, env.device, None, config.fp16)
    setting = own.setting
    if setting.importance == "taylor":
        accumulate_taylor_gradients(vit, islice(data.train_loader, setting.taylor_batches), env.device)
    pruned, info = prune_to_macs(vit, own.target_ratio, own.tolerance, own.heads_removed, setting=setting)
    vit.zero_grad(set_to_none=True)
    before = evaluate(pruned, data.val_loader, env.device, None, config.fp16)
    print(f"{setting.name}: {info['heads_removed']} heads removed per block, pruning ratio {info['pruning_ratio']:.4f} "
          f"(neurons {info['mlp_pruning_ratio']:.4f}); fvcore MACs ratio {info['macs_ratio']:.4f} (target "
          f"{own.target_ratio}); params {info['params']} of {info['dense_params']}; top-1 {before['top1']:.2f} "
          f"before fine-tuning (dense {dense['top1']:.2f})", flush=True)
    pruned_path = os.path.join(config.output_dir, "tp_pruned.pth")
    save_pruned(pruned, pruned_path, info)
    if own.prune_only:
        print(f"{setting.name}: wrote {pruned_path} (--prune_only 1: not fine-tuned)", flush=True)
        return
    tuned = finetune(pruned, config, data, env, teacher, config.output_dir)
    result = {**info, "model_type": model_type, "model_path": config.model_path,
              "top1_dense": dense["top1"], "top1_before_finetune": before["top1"],
              "top1_after_finetune": tuned["final_top1"], "best_top1": tuned["best_top1"],
              "epochs": tuned["epochs"], "pruned_file": pruned_path, "best_file": tuned["best_file"]}
    atomic_write_text(json.dumps(result, indent=1), os.path.join(config.output_dir, "result.json"))
    print(f"{setting.name}: top-1 {before['top1']:.2f} -> {tuned['final_top1']:.2f} after {tuned['epochs']} epochs "
          f"(best {tuned['best_top1']:.2f}); wrote {os.path.join(config.output_dir, 'result.json')}", flush=True)


if __name__ == "__main__":
    from engine.entry import run_entry

    run_entry(main, sys.argv[1:])
