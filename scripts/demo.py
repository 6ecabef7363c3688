"""The whole method on a laptop: compress a ViT on scikit-learn's digits (or MNIST).

    python scripts/demo.py --run_dir runs/demo              # teacher, stage 1, stage 2, export, table
    python scripts/demo.py --run_dir runs/compare --compare # + peers and ablations, log/ and Figs/
    python scripts/demo.py --dataset mnist --run_dir runs/mnist_demo

Each step runs the real entry scripts with the demo config a user edits
(configs/digits_demo.py, or configs/mnist_demo.py with --dataset mnist), and
prints the command it runs:

  1. the dense teacher:  post_train.py --config configs/digits_demo.py:dense
     (cached under --cache_dir, keyed by that config: a changed config retrains)
  2. stage 1 (search):   joint_train.py --config configs/digits_demo.py:joint --budget B
  3. stage 2 + export:   post_train.py --config configs/digits_demo.py:post --checkpoint_dir <stage-1 file>

then evaluates the exported compact model and measures its CPU throughput against
the dense teacher. Outputs: one folder per stage under --run_dir and
--run_dir/summary.json.

--compare also runs, at the UVC model's MACs, from the same teacher, with the same
fine-tuning and distillation: uniform one-shot magnitude pruning, the greedy fit
alone (no search), Torch-Pruning (Taylor, global) and Torch-Pruning (local
magnitude), and the ablations "UVC without block gates", "UVC without
distillation" and "UVC without the patch trial" (--patch_probe 0: every patch drop the
gradients propose stands, uvc/search/trial.py); it writes a markdown table and the full logs to --log_dir and a
top-1 vs MACs plot to --figs_dir. The budget sweep and the ablations on MNIST are
scripts/sweep.py.
"""
import argparse
import json
import os
import shlex
import sys
import time
from typing import List

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.pipeline import DATASETS, LOCAL_MAGNITUDE_FLAGS, Bench, macs_ratio_of, params, stage1_ratio, stage1_run
from scripts.results import finetune_top1, markdown_table, removed_text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset", choices=tuple(DATASETS), default="digits",
                   help="digits (the fast default) or mnist (configs/mnist_demo.py)")
    p.add_argument("--run_dir", default="runs/demo", help="one sub-folder per stage is written here")
    p.add_argument("--budget", type=float, default=0.5, help="target fraction of the dense MACs")
    p.add_argument("--cache_dir", default="runs/cache", help="where trained teachers are kept, by config")
    p.add_argument("--compare", action="store_true", help="also run the peers and ablations")
    p.add_argument("--log_dir", default="log", help="where <dataset>_demo.md (and with --compare its table) go; the "
                                                    "runs' own logs stay under --run_dir")
    p.add_argument("--figs_dir", default="Figs", help="--compare: where the plots go")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps per stage (CI): checks the plumbing, not the accuracy")
    p.add_argument("--seed", type=int, default=730)
    args = p.parse_args(argv)
    if not 0.0 < args.budget <= 1.0:
        p.error(f"--budget {args.budget} is outside (0, 1]: give the fraction of the dense MACs to keep")
    return args


def bench_of(args) -> Bench:
    return Bench(args.dataset, args.cache_dir, args.seed, args.smoke)


# ----------------------------------------------------------------------------- the demo

def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.makedirs(args.run_dir, exist_ok=True)
    from models.compact import load_compact

    bench = bench_of(args)
    teacher_path = bench.teacher()
    s1 = bench.stage1(teacher_path, os.path.join(args.run_dir, "stage1"), args.budget)
    files = {"teacher_file": teacher_path, "stage1_file": s1,
             **bench.stage2(teacher_path, s1, os.path.join(args.run_dir, "stage2"))}

    dense, compact = bench.dense_model(teacher_path), load_compact(files["compact_file"])
    speed = {b: bench.throughput({"dense": dense, "uvc": compact}, b) for b in (64, 1)}
    summary = {"dataset": args.dataset, "budget": args.budget, "teacher_top1": bench.top1(dense),
               "uvc_top1": bench.top1(compact),
               "uvc_top1_last": finetune_top1(os.path.join(args.run_dir, "stage2", "log.jsonl"))["top1_last"],
               "uvc_macs_ratio": stage1_ratio(s1),
               "teacher_params": params(dense), "uvc_params": params(compact),
               "teacher_images_per_s_b64": speed[64]["dense"], "uvc_images_per_s_b64": speed[64]["uvc"],
               "uvc_speedup_b64": speed[64]["uvc"] / speed[64]["dense"],
               "uvc_speedup_b1": speed[1]["uvc"] / speed[1]["dense"], **files}
    if args.compare:
        summary["methods"] = compare(args, bench, teacher_path, summary)
    from utils.checkpoint import atomic_write_text
    atomic_write_text(json.dumps(summary, indent=2), os.path.join(args.run_dir, "summary.json"))
    table = demo_table(summary)
    minutes = (time.perf_counter() - started) / 60
    command = "python scripts/demo.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    name = "MNIST" if args.dataset == "mnist" else args.dataset.capitalize()
    atomic_write_text(f"{name} demo, produced by `{command}` in {minutes:.1f} minutes "
                      f"wall-clock on this machine (throughputs are those of the machine at the time; the "
                      f"speedup is measured side by side).\n\n{table}\n\n`{args.run_dir}/summary.json`:\n\n"
                      f"```json\n{json.dumps(summary, indent=2)}\n```\n",
                      os.path.join(args.log_dir, f"{args.dataset}_demo.md"))
    print("\n" + table)
    return 0


def demo_table(s: dict) -> str:
    """The dense teacher against the UVC model: top-1 of the model kept (stage 2 keeps its best epoch on
    the validation split) and at stage 2's last epoch, MACs ratio, params, CPU throughput."""
    rows = [("dense teacher", s["teacher_top1"], s["teacher_top1"], 1.0, s["teacher_params"],
             s["teacher_images_per_s_b64"], 1.0),
            (f"UVC @ budget {s['budget']}", s["uvc_top1"], s["uvc_top1_last"], s["uvc_macs_ratio"], s["uvc_params"],
             s["uvc_images_per_s_b64"], s["uvc_speedup_b64"])]
    return markdown_table(["model", "top-1 (%), model kept", "top-1 (%), last epoch", "MACs ratio", "params",
                           "images/s (CPU, b64)", "speedup"],
                          [[name, f"{acc:.2f}", f"{last:.2f}", f"{ratio:.3f}", f"{n / 1e3:.1f}K", f"{ips:.0f}",
                            f"{speedup:.2f}x"] for name, acc, last, ratio, n, ips, speedup in rows])


# ----------------------------------------------------------------------------- --compare

def compare(args, bench: Bench, teacher_path: str, uvc: dict) -> List[dict]:
    """Peers and ablations at the UVC model's MACs; table to log/, plot to Figs/."""
    from models.compact import load_compact
    dense = bench.dense_model(teacher_path)
    uvc_compact = load_compact(uvc["compact_file"])
    target = uvc["uvc_macs_ratio"]  # by our formula, as the budget counts
    tp_target = macs_ratio_of(uvc_compact, dense)  # by fvcore: Torch-Pruning also shrinks q and k
    out = os.path.join(args.run_dir, "compare")
    methods = [
        stage1_run("UVC", uvc["stage1_file"], uvc["compact_file"],
                   [os.path.dirname(uvc["stage1_file"]), os.path.dirname(uvc["compact_file"])]),
        bench.uvc("UVC w/o block gates", teacher_path, os.path.join(out, "UVC w/o block gates"), args.budget,
                  joint_extra=["--enable_block_gating", "0"]),
        bench.uvc("UVC w/o distillation", teacher_path, os.path.join(out, "UVC w/o distillation"), args.budget,
                  joint_extra=["--distillation-type", "none"], post_extra=["--distillation-type", "none"]),
        bench.uvc("UVC w/o patch trial", teacher_path, os.path.join(out, "UVC w/o patch trial"), args.budget,
                  joint_extra=["--patch_probe", "0"]),
        bench.one_shot("uniform magnitude", "uniform-magnitude", teacher_path,
                       os.path.join(out, "uniform-magnitude"), target),
        bench.one_shot("greedy fit", "greedy-fit", teacher_path, os.path.join(out, "greedy-fit"), target),
        bench.torch_pruning("Torch-Pruning", teacher_path, os.path.join(out, "torch-pruning"), tp_target),
        bench.torch_pruning("Torch-Pruning (local magnitude)", teacher_path,
                            os.path.join(out, "torch-pruning-local-magnitude"), tp_target,
                            setting=LOCAL_MAGNITUDE_FLAGS),
    ]
    rows = bench.measure(methods, dense)
    write_compare(args, rows, methods)
    return rows[1:]


def write_compare(args, rows: List[dict], methods: List[dict]) -> None:
    from utils.checkpoint import atomic_write_text
    command = "python scripts/demo.py " + shlex.join(sys.argv[1:])
    table = markdown_table(
        ["method", "top-1 before FT (%)", "top-1 after FT (%)", "MACs ratio", "params", "images/s (b64)",
         "speedup", "removed: blocks/heads/dims/neurons/patches"],
        [[r["name"], f"{r['top1_before']:.2f}", f"{r['top1']:.2f}", f"{r['macs_ratio']:.3f}",
          f"{r['params'] / 1e3:.1f}K", f"{r['images_per_s_b64']:.0f}", f"{r['speedup_b64']:.2f}x",
          removed_text(r["removed"])] for r in rows])
    text = (f"{args.dataset.capitalize()}, budget {args.budget}, produced by `{command}`. MACs ratios counted by "
            f"fvcore on the physically pruned models; throughput measured side by side on this CPU at batch 64."
            f"\n\n{table}\n")
    atomic_write_text(text, os.path.join(args.log_dir, f"{args.dataset}_compare.md"))
    plot_compare(rows, os.path.join(args.figs_dir, f"{args.dataset}_top1_vs_macs.png"), command, args.dataset)
    print(text)


def plot_compare(rows: List[dict], path: str, command: str, dataset: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["macs_ratio"], r["top1"], s=40)
        ax.annotate(r["name"], (r["macs_ratio"], r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MACs ratio (fvcore, vs dense)")
    ax.set_ylabel("top-1 after fine-tuning (%)")
    ax.set_title(f"{dataset}: top-1 vs MACs", fontsize=10)
    fig.text(0.01, 0.01, command, fontsize=6)
    ax.grid(alpha=0.3)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
