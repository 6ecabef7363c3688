"""The whole method on a laptop: compress a ViT on scikit-learn's digits.

    python scripts/demo.py --run_dir runs/demo              # teacher, stage 1, stage 2, export, table
    python scripts/demo.py --run_dir runs/compare --compare # + peers and ablations, log/ and Figs/

Each step runs the real entry scripts with the demo config a user edits
(configs/digits_demo.py), and prints the command it runs:

  1. the dense teacher:  post_train.py --config configs/digits_demo.py:dense
     (cached under --cache_dir, keyed by that config: a changed config retrains)
  2. stage 1 (search):   joint_train.py --config configs/digits_demo.py:joint --budget B
  3. stage 2 + export:   post_train.py --config configs/digits_demo.py:post --checkpoint_dir <stage-1 file>

then evaluates the exported compact model and measures its CPU throughput against
the dense teacher. Outputs: one folder per stage under --run_dir and
--run_dir/summary.json.

--compare also runs, at the UVC model's MACs, from the same teacher, with the same
fine-tuning and distillation: uniform one-shot magnitude pruning, Torch-Pruning,
and the ablations "UVC without block gates" and "UVC without distillation"; it
writes a markdown table and the full logs to --log_dir and a top-1 vs MACs plot
to --figs_dir.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

DEMO_CONFIG = "configs/digits_demo.py"
MODEL_TYPE = "vit_digits_patch2_8"
SMOKE = ["--epochs", "1", "--max_steps_per_epoch", "2"]  # --smoke, every stage
SMOKE_SEARCH = SMOKE + ["--warmup_epochs", "0"]  # and stage 1 searches from its first step


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--run_dir", default="runs/demo", help="one sub-folder per stage is written here")
    p.add_argument("--budget", type=float, default=0.5, help="target fraction of the dense MACs")
    p.add_argument("--cache_dir", default="runs/cache", help="where trained teachers are kept, by config")
    p.add_argument("--compare", action="store_true", help="also run the peers and ablations")
    p.add_argument("--log_dir", default="log", help="--compare: where the table and full logs go")
    p.add_argument("--figs_dir", default="Figs", help="--compare: where the plots go")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps per stage (CI): checks the plumbing, not the accuracy")
    p.add_argument("--seed", type=int, default=730)
    args = p.parse_args(argv)
    if not 0.0 < args.budget <= 1.0:
        p.error(f"--budget {args.budget} is outside (0, 1]: give the fraction of the dense MACs to keep")
    return args


# ----------------------------------------------------------------------------- running the scripts

def run(cmd: List[str], log_path: str) -> None:
    """Run one of the project's commands, echoing it; its output also goes to log_path."""
    print("\n$ " + " ".join(cmd), flush=True)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable] + cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        if proc.wait() != 0:
            raise SystemExit(f"demo: '{' '.join(cmd[:2])} ...' failed (exit {proc.returncode}); see {log_path}")


def last_record(output_dir: str, key: str):
    """The last value of `key` in a run's log.jsonl."""
    value = None
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        for line in f:
            value = json.loads(line).get(key, value)
    return value


def config_key(stage: str, extra: List[str]) -> str:
    """A short hash of the resolved config of a stage (plus overrides): the teacher cache key."""
    from utils.config import parse_config
    config = parse_config("post", ["--config", f"{DEMO_CONFIG}:{stage}"] + extra)
    text = json.dumps({k: v for k, v in config.to_dict().items() if k not in ("output_dir", "resume")},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def teacher(args) -> str:
    """The dense teacher's file, trained once per config and cached."""
    extra = ["--seed", str(args.seed)] + (SMOKE if args.smoke else [])
    out = os.path.join(args.cache_dir, f"teacher-{config_key('dense', extra)}")
    path = os.path.join(out, f"{MODEL_TYPE}_dense_best.pth")
    if os.path.exists(os.path.join(out, "done")):
        print(f"teacher: reusing {path} (same config)")
        return path
    shutil.rmtree(out, ignore_errors=True)
    run(["post_train.py", "--config", f"{DEMO_CONFIG}:dense", "--output_dir", out] + extra,
        os.path.join(out, "stdout.log"))
    if not os.path.exists(path):
        raise SystemExit(f"demo: the teacher run did not write {path}; see {out}/stdout.log")
    open(os.path.join(out, "done"), "w").close()  # complete: later runs with this config reuse it
    return path


def stage1(args, teacher_path: str, out: str, extra: List[str] = ()) -> str:
    run(["joint_train.py", "--config", f"{DEMO_CONFIG}:joint", "--model_path", teacher_path,
         "--budget", str(args.budget), "--seed", str(args.seed), "--output_dir", out]
        + (SMOKE_SEARCH if args.smoke else []) + list(extra), os.path.join(out, "stdout.log"))
    return os.path.join(out, f"{MODEL_TYPE}_uvc.pth")


def stage2(args, teacher_path: str, stage1_file: str, out: str, extra: List[str] = ()) -> Dict[str, str]:
    run(["post_train.py", "--config", f"{DEMO_CONFIG}:post", "--model_path", teacher_path,
         "--checkpoint_dir", stage1_file, "--seed", str(args.seed), "--output_dir", out]
        + (SMOKE if args.smoke else []) + list(extra), os.path.join(out, "stdout.log"))
    return {"stage2_file": os.path.join(out, f"{MODEL_TYPE}_uvc_post_best.pth"),
            "compact_file": os.path.join(out, "compact.pth")}


# ----------------------------------------------------------------------------- measuring

def val_loader():
    from data.digits import Digits, digits_transform
    val = Digits(train=False, transform=digits_transform(is_training=False))
    return torch.utils.data.DataLoader(val, batch_size=512, shuffle=False)


def top1(model: torch.nn.Module) -> float:
    from uvc.engine import evaluate
    return evaluate(model.eval(), val_loader(), torch.device("cpu"))["top1"]


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dense_model(path: str) -> torch.nn.Module:
    from models.checkpoint import load_pretrained
    from models.vit import create_model
    model = create_model(MODEL_TYPE, num_classes=10)
    load_pretrained(model, path, model_type=MODEL_TYPE)
    return model.eval()


def compact_of_stage1(stage1_file: str) -> torch.nn.Module:
    """The stage-1 result exported as is (before fine-tuning)."""
    from uvc.export import build_masked_source, export_compact, read_training_checkpoint
    ckpt = read_training_checkpoint(stage1_file)
    return export_compact(build_masked_source(ckpt), ckpt["arch"]).eval()


def throughput(models: Dict[str, torch.nn.Module], batch_size: int, repeats: int) -> Dict[str, float]:
    """Images/s of each model, measured side by side (interleaved rounds, median)."""
    from utils.benchmark import compare_throughput
    return compare_throughput(models, (1, 8, 8), batch_size, torch.device("cpu"), repeats=repeats)


def macs_ratio_of(model: torch.nn.Module, dense: torch.nn.Module) -> float:
    """fvcore's MACs of a physically pruned model over the dense model's (fused attention off)."""
    from baselines.torch_pruning import matched_target
    return matched_target(dense, model)


# ----------------------------------------------------------------------------- the demo

def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.run_dir, exist_ok=True)
    from models.compact import load_compact
    from uvc.freeze import spec_ratio

    teacher_path = teacher(args)
    s1 = stage1(args, teacher_path, os.path.join(args.run_dir, "stage1"))
    files = {"teacher_file": teacher_path, "stage1_file": s1,
             **stage2(args, teacher_path, s1, os.path.join(args.run_dir, "stage2"))}

    dense, compact = dense_model(teacher_path), load_compact(files["compact_file"])
    repeats = 3 if args.smoke else 15
    speed = {b: throughput({"dense": dense, "uvc": compact}, b, repeats) for b in (64, 1)}
    macs_ratio = spec_ratio(torch.load(s1, map_location="cpu", weights_only=True)["arch"])
    summary = {"budget": args.budget, "teacher_top1": top1(dense), "uvc_top1": top1(compact),
               "uvc_macs_ratio": macs_ratio, "teacher_params": params(dense), "uvc_params": params(compact),
               "teacher_images_per_s_b64": speed[64]["dense"], "uvc_images_per_s_b64": speed[64]["uvc"],
               "uvc_speedup_b64": speed[64]["uvc"] / speed[64]["dense"],
               "uvc_speedup_b1": speed[1]["uvc"] / speed[1]["dense"], **files}
    if args.compare:
        summary["methods"] = compare(args, teacher_path, summary)
    from utils.checkpoint import atomic_write_text
    atomic_write_text(json.dumps(summary, indent=2), os.path.join(args.run_dir, "summary.json"))
    print_table(summary)
    return 0


def print_table(s: dict) -> None:
    rows = [("dense teacher", s["teacher_top1"], 1.0, s["teacher_params"], s["teacher_images_per_s_b64"], 1.0),
            (f"UVC @ budget {s['budget']}", s["uvc_top1"], s["uvc_macs_ratio"], s["uvc_params"],
             s["uvc_images_per_s_b64"], s["uvc_speedup_b64"])]
    print("\n| model | top-1 (%) | MACs ratio | params | images/s (CPU, b64) | speedup |")
    print("|---|---|---|---|---|---|")
    for name, acc, ratio, n, ips, speedup in rows:
        print(f"| {name} | {acc:.2f} | {ratio:.3f} | {n / 1e3:.1f}K | {ips:.0f} | {speedup:.2f}x |")


# ----------------------------------------------------------------------------- --compare

def compare(args, teacher_path: str, uvc: dict) -> List[dict]:
    """Peers and ablations at the UVC model's MACs; table to log/, plot to Figs/."""
    from models.compact import load_compact
    dense = dense_model(teacher_path)
    uvc_compact = load_compact(uvc["compact_file"])
    target = uvc["uvc_macs_ratio"]  # by our formula, as the budget counts
    tp_target = macs_ratio_of(uvc_compact, dense)  # by fvcore: Torch-Pruning also shrinks q and k
    runs = os.path.join(args.run_dir, "compare")
    methods = []  # {name, model_before, model_after, macs_ratio, logs}

    def uvc_variant(name: str, joint_extra: List[str], post_extra: List[str]) -> None:
        out = os.path.join(runs, name)
        s1 = stage1(args, teacher_path, os.path.join(out, "stage1"), joint_extra)
        f = stage2(args, teacher_path, s1, os.path.join(out, "stage2"), post_extra)
        methods.append({"name": name, "before": compact_of_stage1(s1), "after": load_compact(f["compact_file"]),
                        "logs": [os.path.join(out, "stage1"), os.path.join(out, "stage2")]})

    methods.append({"name": "UVC", "before": compact_of_stage1(uvc["stage1_file"]), "after": uvc_compact,
                    "logs": [os.path.dirname(uvc["stage1_file"]), os.path.dirname(uvc["compact_file"])]})
    uvc_variant("UVC w/o block gates", ["--enable_block_gating", "0"], [])
    uvc_variant("UVC w/o distillation", ["--distillation-type", "none"], ["--distillation-type", "none"])

    out = os.path.join(runs, "uniform-magnitude")
    s1 = os.path.join(out, "stage1", f"{MODEL_TYPE}_uvc.pth")
    run(["-m", "baselines.magnitude", "--model_type", MODEL_TYPE, "--model_path", teacher_path,
         "--target_ratio", f"{target:.6f}", "--tolerance", "0.003", "--output", s1], os.path.join(out, "stage1", "stdout.log"))
    f = stage2(args, teacher_path, s1, os.path.join(out, "stage2"))
    methods.append({"name": "uniform magnitude", "before": compact_of_stage1(s1),
                    "after": load_compact(f["compact_file"]), "logs": [os.path.join(out, "stage1"),
                                                                       os.path.join(out, "stage2")]})

    out = os.path.join(runs, "torch-pruning")
    run(["-m", "baselines.torch_pruning", "--config", f"{DEMO_CONFIG}:post", "--model_path", teacher_path,
         "--target_ratio", f"{tp_target:.6f}", "--tolerance", "0.003", "--seed", str(args.seed), "--output_dir", out]
        + (SMOKE if args.smoke else []), os.path.join(out, "stdout.log"))
    from baselines.torch_pruning import load_pruned
    methods.append({"name": "Torch-Pruning", "before": load_pruned(os.path.join(out, "tp_pruned.pth"))[0],
                    "after": load_pruned(os.path.join(out, "tp_finetuned_best.pth"))[0], "logs": [out]})

    repeats = 3 if args.smoke else 15
    speed = throughput({"dense": dense, **{m["name"]: m["after"] for m in methods}}, 64, repeats)
    rows = [{"name": m["name"], "top1_before": top1(m["before"]), "top1": top1(m["after"]),
             "macs_ratio": macs_ratio_of(m["after"], dense), "params": params(m["after"]),
             "images_per_s_b64": speed[m["name"]], "speedup_b64": speed[m["name"]] / speed["dense"]}
            for m in methods]
    teacher_row = {"name": "dense teacher", "top1_before": uvc["teacher_top1"], "top1": uvc["teacher_top1"],
                   "macs_ratio": 1.0, "params": params(dense), "images_per_s_b64": speed["dense"],
                   "speedup_b64": 1.0}
    write_compare(args, [teacher_row] + rows, methods)
    return rows


def write_compare(args, rows: List[dict], methods: List[dict]) -> None:
    command = "python scripts/demo.py " + " ".join(sys.argv[1:])
    lines = [f"Digits, budget {args.budget}, produced by `{command}`. MACs ratios counted by fvcore on the "
             "physically pruned models; throughput measured side by side on this CPU at batch 64.", "",
             "| method | top-1 before FT (%) | top-1 after FT (%) | MACs ratio | params | images/s (b64) | speedup |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['top1_before']:.2f} | {r['top1']:.2f} | {r['macs_ratio']:.3f} | "
                     f"{r['params'] / 1e3:.1f}K | {r['images_per_s_b64']:.0f} | {r['speedup_b64']:.2f}x |")
    os.makedirs(args.log_dir, exist_ok=True)
    with open(os.path.join(args.log_dir, "digits_compare.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for m in methods:  # the full logs of every run
        dst = os.path.join(args.log_dir, "digits_compare", m["name"].replace(" ", "_").replace("/", ""))
        for src in m["logs"]:
            for name in ("log.jsonl", "stdout.log", "result.json"):
                if os.path.exists(os.path.join(src, name)):
                    os.makedirs(dst, exist_ok=True)
                    shutil.copy(os.path.join(src, name), os.path.join(dst, f"{os.path.basename(src)}_{name}"))
    plot_compare(rows, os.path.join(args.figs_dir, "digits_top1_vs_macs.png"), command)
    print("\n".join(lines))


def plot_compare(rows: List[dict], path: str, command: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["macs_ratio"], r["top1"], s=40)
        ax.annotate(r["name"], (r["macs_ratio"], r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MACs ratio (fvcore, vs dense)")
    ax.set_ylabel("top-1 after fine-tuning (%)")
    ax.set_title("digits: top-1 vs MACs", fontsize=10)
    fig.text(0.01, 0.01, command, fontsize=6)
    ax.grid(alpha=0.3)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
