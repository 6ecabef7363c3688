"""The MNIST benchmark: UVC against its peers across budgets, and ablations that
isolate each axis of the search.

    python scripts/sweep.py --run_dir runs/mnist_sweep                        # the budget sweep
    python scripts/sweep.py --run_dir runs/mnist_sweep --ablations --resume   # the ablations

Sweep: for every budget (0.3, 0.4, 0.5, 0.7) UVC runs stage 1 and stage 2 from the
cached dense teacher (configs/mnist_demo.py), then every peer is pruned from the same
teacher to the UVC model's MACs and fine-tuned with the same epochs and
distillation: `uniform magnitude` and `greedy fit` (uvc.fit.fit_to_budget on the
dense architecture with the teacher's scores, no search) at UVC's MACs by its
formula, `Torch-Pruning` (Taylor importance, global isomorphic ranking) at UVC's
MACs by fvcore. Writes log/mnist_sweep.md (table), log/mnist_sweep.json
({"teacher_top1", "rows": [{"method", "budget", "macs_ratio", "top1",
"top1_before_ft", "params", "images_per_s_b64", "speedup_b64", "removed"}]}; removed:
the blocks, heads, value dims, neurons and patches the method removed), the
result.json of every run that writes one (Torch-Pruning) under log/mnist_sweep/, and
Figs/mnist_sweep_top1_vs_macs.png (one line per method). Run logs stay in --run_dir.

Ablations (--ablations), at budget 0.4 with two seeds per row (search and
fine-tuning seeds; one teacher): UVC; UVC without block gates, without patch gates,
without head/dim/neuron pruning (gates and patches only), without distillation, without the
patch trial (--patch_probe 0: every patch drop the gradients propose stands); and
no search at all (the greedy fit at the MACs of that seed's UVC model). Writes
log/mnist_ablations.md (both seeds shown) and log/mnist_ablations.json.

Every command run is printed. All models are timed side by side at the end (batch
64, interleaved rounds, median). --resume reuses the runs of the same command that
already completed in --run_dir: a stopped benchmark continues, and the ablations
reuse the sweep's UVC and greedy-fit runs at budget 0.4 with the first seed.
Epochs are flags (--search_epochs 6 with 1 of warm-up, --finetune_epochs 3), sized so
that the sweep (~25 min) and the ablations (~27 min) fit in an hour on a 2-core CPU
with the teacher cached: a training epoch takes ~17 s there with one thread per run
(--threads 1, the default: a CPU shared with other jobs is oversubscribed by one
thread per core and per job).
"""
import argparse
import json
import os
import re
import sys
import textwrap
from typing import Dict, List

from pipeline import (LOCAL_MAGNITUDE_FLAGS, Bench, copy_logs, macs_ratio_of, markdown_table, removed_text,
                      stage1_ratio)

METHODS = ("UVC", "uniform magnitude", "Torch-Pruning", "greedy fit", "Torch-Pruning (local magnitude)")
DEFAULT_METHODS = METHODS[:4]
# ablation row -> (stage-1 flags, stage-2 flags); "no search (greedy fit)" is the greedy-fit peer
ABLATIONS = {
    "UVC": ([], []),
    "UVC w/o block gates": (["--enable_block_gating", "0"], []),
    "UVC w/o patch gates": (["--enable_patch_gating", "0"], []),
    "UVC w/o head/dim/neuron pruning": (["--enable_pruning", "0"], []),
    "UVC w/o distillation": (["--distillation-type", "none"], ["--distillation-type", "none"]),
    "UVC w/o patch trial": (["--patch_probe", "0"], []),
}
NO_SEARCH = "no search (greedy fit)"
REMOVED = "removed: blocks/heads/dims/neurons/patches"
RUN_LOGS = ("result.json",)  # a run's result; its stdout.log and log.jsonl stay in --run_dir


def _floats(text: str) -> List[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--run_dir", default="runs/mnist_sweep", help="one folder per budget, seed and method")
    p.add_argument("--cache_dir", default="runs/cache", help="where trained teachers are kept, by config")
    p.add_argument("--log_dir", default="log", help="where the tables, JSON and run logs go")
    p.add_argument("--figs_dir", default="Figs", help="where the plot goes")
    p.add_argument("--budgets", type=_floats, default=None, help="the sweep's, comma-separated (0.3,0.4,0.5,0.7)")
    p.add_argument("--methods", default=None,
                   help=f"the sweep's, comma-separated, from: {', '.join(METHODS)} (default: the first four; "
                        f"UVC always runs)")
    p.add_argument("--ablations", action="store_true", help="run the ablations instead of the sweep")
    p.add_argument("--ablation_budget", type=float, default=None, help="--ablations: the budget (0.4)")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="--ablations: the seeds of every row, comma-separated (730,731)")
    p.add_argument("--seed", type=int, default=730, help="the teacher's seed, and the sweep's")
    p.add_argument("--search_epochs", type=int, default=6, help="stage-1 epochs (1 of warm-up)")
    p.add_argument("--finetune_epochs", type=int, default=3, help="stage-2 / fine-tuning epochs, every method")
    p.add_argument("--resume", action="store_true", help="reuse runs of the same command completed in --run_dir")
    p.add_argument("--threads", type=int, default=1,
                   help="threads of every training run (0: one per core; the measurements use one per core)")
    p.add_argument("--smoke", action="store_true", help="a few steps per run: checks the plumbing only")
    args = p.parse_args(argv)
    other = ("--budgets", "--methods") if args.ablations else ("--ablation_budget", "--seeds")
    given = [f for f in other if getattr(args, f[2:]) is not None]
    if given:
        p.error(f"{given[0]} is for {'the sweep' if args.ablations else '--ablations'} only")
    args.budgets = args.budgets or [0.3, 0.4, 0.5, 0.7]
    args.ablation_budget = args.ablation_budget or 0.4
    args.seeds = args.seeds or [730, 731]
    args.methods = [m.strip() for m in (args.methods or ",".join(DEFAULT_METHODS)).split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if "UVC" not in args.methods:
        args.methods.insert(0, "UVC")  # the peers are matched to its MACs
    for b in args.budgets + [args.ablation_budget]:
        if not 0.0 < b <= 1.0:
            p.error(f"budget {b} is outside (0, 1]: give the fraction of the dense MACs to keep")
    if min(args.search_epochs, args.finetune_epochs) < 1:
        p.error("--search_epochs and --finetune_epochs must be at least 1")
    return args


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def bench_of(args) -> Bench:
    epochs = not args.smoke  # --smoke sets its own epochs
    return Bench(args.dataset, args.cache_dir, args.seed, args.smoke, reuse=args.resume, threads=args.threads,
                 joint_extra=["--epochs", str(args.search_epochs)] if epochs else [],
                 post_extra=["--epochs", str(args.finetune_epochs)] if epochs else [])


def peers(bench: Bench, methods: List[str], teacher: str, folder: str, uvc: dict, dense, seed: int) -> List[dict]:
    """The peer runs at the MACs of the UVC run `uvc` (by UVC's formula for the one-shot peers,
    by fvcore for Torch-Pruning, which also shrinks q and k)."""
    target, tp_target = stage1_ratio(uvc["stage1_file"]), macs_ratio_of(uvc["after"], dense)
    out = []
    for name in methods:
        path = os.path.join(folder, slug(name))
        if name in ("uniform magnitude", "greedy fit"):
            out.append(bench.one_shot(name, slug(name), teacher, path, target, seed))
        elif name.startswith("Torch-Pruning"):
            flags = LOCAL_MAGNITUDE_FLAGS if "local" in name else ()
            out.append(bench.torch_pruning(name, teacher, path, tp_target, seed, setting=flags))
    return out


def measured(bench: Bench, runs: List[dict], dense, key: str) -> Dict:
    """Every run measured side by side with the teacher; rows as in the JSON, each tagged with the
    run's `key` ("budget" or "seed"), and the runs named for their log folders."""
    teacher, *measures = bench.measure(runs, dense)
    rows = [{"method": r["name"], key: run[key], "macs_ratio": r["macs_ratio"], "top1": r["top1"],
             "top1_before_ft": r["top1_before"], "params": r["params"], "images_per_s_b64": r["images_per_s_b64"],
             "speedup_b64": r["speedup_b64"], "removed": r["removed"]} for run, r in zip(runs, measures)]
    for run in runs:
        run["log_name"] = f"{key}{run[key]}_{slug(run['name'])}"
    return {"teacher_top1": teacher["top1"], "teacher_params": teacher["params"],
            "teacher_images_per_s_b64": teacher["images_per_s_b64"], "rows": rows, "runs": runs}


# ----------------------------------------------------------------------------- the sweep

def sweep(args, bench: Bench, teacher: str, dense) -> Dict:
    runs = []
    for budget in args.budgets:
        folder = os.path.join(args.run_dir, f"budget{budget}_seed{args.seed}")
        uvc = bench.uvc("UVC", teacher, os.path.join(folder, "uvc"), budget)
        runs += [dict(r, budget=budget) for r in [uvc] + peers(bench, args.methods, teacher, folder, uvc, dense,
                                                                args.seed)]
    return measured(bench, runs, dense, "budget")


def sweep_table(result: dict) -> str:
    teacher = ["dense teacher", "1.0", f"{result['teacher_top1']:.2f}", f"{result['teacher_top1']:.2f}", "1.000",
               f"{result['teacher_params'] / 1e3:.1f}K", f"{result['teacher_images_per_s_b64']:.0f}", "1.00x", ""]
    return markdown_table(
        ["method", "budget", "top-1 before FT (%)", "top-1 after FT (%)", "MACs ratio", "params",
         "images/s (b64)", "speedup", REMOVED],
        [teacher] + [[r["method"], f"{r['budget']}", f"{r['top1_before_ft']:.2f}", f"{r['top1']:.2f}",
                      f"{r['macs_ratio']:.3f}", f"{r['params'] / 1e3:.1f}K", f"{r['images_per_s_b64']:.0f}",
                      f"{r['speedup_b64']:.2f}x", removed_text(r["removed"])]
                     for r in sorted(result["rows"], key=lambda r: r["budget"])])


def plot_sweep(result: dict, path: str, command: str, dataset: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in dict.fromkeys(r["method"] for r in result["rows"]):
        points = sorted((r["macs_ratio"], r["top1"]) for r in result["rows"] if r["method"] == method)
        ax.plot(*zip(*points), marker="o", label=method)
    ax.axhline(result["teacher_top1"], color="grey", linestyle="--", linewidth=1, label="dense teacher")
    ax.set_xlabel("MACs ratio (fvcore, vs dense)")
    ax.set_ylabel("top-1 after fine-tuning (%)")
    ax.set_title(f"{dataset}: top-1 vs MACs, every method at the UVC model's MACs", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(command, 150)), fontsize=5)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))  # room for the command
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- the ablations

def ablations(args, bench: Bench, teacher: str, dense) -> Dict:
    runs, budget = [], args.ablation_budget
    for seed in args.seeds:
        folder = os.path.join(args.run_dir, f"budget{budget}_seed{seed}")
        searched = [bench.uvc(name, teacher, os.path.join(folder, slug(name)), budget, seed, joint, post)
                    for name, (joint, post) in ABLATIONS.items()]
        greedy = peers(bench, ["greedy fit"], teacher, folder, searched[0], dense, seed)[0]  # at UVC's MACs
        runs += [dict(r, seed=seed) for r in searched] + [dict(greedy, name=NO_SEARCH, seed=seed)]
    return dict(measured(bench, runs, dense, "seed"), budget=budget, seeds=list(args.seeds))


def ablation_table(result: dict) -> str:
    seeds = result["seeds"]

    def cells(method: str, text, sep: str = " / ") -> str:
        by_seed = {r["seed"]: r for r in result["rows"] if r["method"] == method}
        return sep.join(text(by_seed[s]) for s in seeds)

    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    return markdown_table(
        ["method", f"top-1 after FT (%), seeds {' / '.join(map(str, seeds))}", "top-1 before FT (%)", "MACs ratio",
         "params (K)", "speedup (b64)", REMOVED],
        [[m, cells(m, lambda r: f"{r['top1']:.2f}"), cells(m, lambda r: f"{r['top1_before_ft']:.2f}"),
          cells(m, lambda r: f"{r['macs_ratio']:.3f}"), cells(m, lambda r: f"{r['params'] / 1e3:.1f}"),
          cells(m, lambda r: f"{r['speedup_b64']:.2f}"), cells(m, lambda r: removed_text(r["removed"]), "; ")]
         for m in methods])


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    from utils.checkpoint import atomic_write_text
    bench = bench_of(args)
    teacher = bench.teacher()
    dense = bench.dense_model(teacher)
    command = "python scripts/sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)
    name = f"{args.dataset}_{'ablations' if args.ablations else 'sweep'}"
    result = (ablations if args.ablations else sweep)(args, bench, teacher, dense)
    table = (ablation_table if args.ablations else sweep_table)(result)
    runs = result.pop("runs")
    copy_logs(runs, os.path.join(args.log_dir, name), RUN_LOGS)
    epochs = f"{args.search_epochs} search epochs (1 of warm-up), {args.finetune_epochs} fine-tuning epochs"
    what = (f"budget {args.ablation_budget}, seeds {', '.join(map(str, args.seeds))}" if args.ablations
            else f"budgets {', '.join(map(str, args.budgets))}, seed {args.seed}")
    text = (f"{args.dataset.upper() if args.dataset == 'mnist' else args.dataset}, {what}, {epochs}; produced by "
            f"`{command}`. Teacher top-1 {result['teacher_top1']:.2f}%. MACs ratios counted by fvcore on the "
            f"physically pruned models; throughput measured side by side on this CPU at batch 64.\n\n{table}\n")
    atomic_write_text(text, os.path.join(args.log_dir, f"{name}.md"))
    atomic_write_text(json.dumps(dict(result, command=command), indent=1), os.path.join(args.log_dir, f"{name}.json"))
    if not args.ablations:
        plot_sweep(result, os.path.join(args.figs_dir, f"{name}_top1_vs_macs.png"), command, args.dataset)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
