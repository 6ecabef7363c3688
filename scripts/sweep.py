"""UVC against its peers across budgets and seeds, and ablations that isolate each axis of the
search: on the MNIST benchmark, or on any config, data folder and input size.

    python scripts/sweep.py --run_dir runs/mnist_sweep --seeds 730,731,732              # the budget sweep
    python scripts/sweep.py --run_dir runs/mnist_sweep --ablations --resume             # the ablations
    python scripts/sweep.py --config configs/deit_tiny.py --dataset imagenet --data_dir TREE \\
        --input_size 32 --budgets 0.5 --log_dir out --figs_dir out                       # your own data

Sweep: for every seed and budget (0.3, 0.4, 0.5, 0.7) UVC runs stage 1 and stage 2 from the
dense teacher (trained once and cached, or --teacher: the MNIST benchmark's is log/mnist_teacher.pth,
so that passes merged with --merge share it), then every peer is pruned from the same
teacher and fine-tuned with the same epochs and distillation. `--match macs` (default): at the UVC
model's MACs, `uniform magnitude` and `greedy fit` (uvc.deploy.fit.fit_to_budget on the dense
architecture with the teacher's scores, no search) by UVC's formula, `Torch-Pruning` (Taylor
importance, global isomorphic ranking) by fvcore. `--match latency`: UVC searches with
--budget_metric latency, and each peer is pruned until its measured time over the dense model's is
within 3% of UVC's, or kept at its fastest model when UVC is faster than any (scripts/latency_match.py);
`--match macs,latency` runs both into one table. The searches' latency table is measured by the sweep
itself, at the threads it times every model with (--threads), and handed to every search.
The timings that match the peers need a quiet machine: to run seeds as parallel jobs, first match
with one job, `--match latency --prune_only` (UVC searches, the peers are pruned to the time of its
architecture and their matches saved; nothing is fine-tuned), then the parallel jobs with --resume
fine-tune UVC and those matches.
The seed drives the search and the fine-tuning of every method. Writes <name>_sweep.md (table),
<name>_sweep.json ({"teacher_top1", "finetune_epochs", "seeds", "rows": [{"method", "budget", "match",
"seed", "top1_last", "top1_best", "macs_ratio", "speedup_b64", "top1", "top1_before_ft", "params", "images_per_s_b64", "removed"}]};
top1_last / top1_best: validation top-1 at the last / the best fine-tuning epoch, from the run's
log.jsonl; top1: the saved best model (model_file) evaluated here; removed: the blocks, heads,
value dims, neurons and patches the method removed; latency-matched peers add latency_ratio,
uvc_latency_ratio, matched, macs_target, match_tries and tries; UVC's add search_end: its budget metric, the
budget, its own count at the freeze and, by latency, the ratio timed whole; every row matched by latency adds
table_latency_ratio, the searches' latency table's estimate of its time (models built from a compact spec:
UVC and the one-shot peers)) under --log_dir, and
<name>_sweep_top1_vs_macs.png under --figs_dir; each run's own logs stay under --run_dir.

Ablations (--ablations), at budget 0.4 over --seeds (730,731; one teacher): UVC; UVC without
block gates, without patch gates, without head/dim/neuron pruning (gates and patches only),
without distillation, without the patch trial (--patch_probe 0), without the skip trial
(--skip_probe 0), without the importance term (y = p = 0 and no dual step), with a trial margin of
two standard errors (--trial_margin 2), with the freeze's greedy fit (--greedy_fit 1); and no
search at all (the greedy fit at the MACs of that seed's UVC model). --ablation_rows picks some of
the rows (UVC and the greedy fit always run; with --resume and the sweep's --run_dir they are the
sweep's own runs). With --match latency every row searches a latency budget (the sweep's latency
table) and the greedy fit is matched to UVC's measured time, in the sweep's latency cells: a row
then shows what an axis is worth at equal time, not at equal MACs. Writes <name>_ablations.md /
.json (<name>_ablations_latency under --match latency).

Tables pool the seeds of a method and budget: top-1 as mean (min-max). --merge adds a pass's rows
to the JSON already under --log_dir (scripts/sweep_merge.py): its other rows stay, each with the
pass that timed it. Every command run is printed. All models are timed side by side at the end (batch 64, interleaved rounds, median).
--resume reuses the runs of the same command that already completed in --run_dir and continues
a search or fine-tuning stopped part-way from its last checkpoint (a Torch-Pruning run starts over).
Epochs default to the config's stage 1 and stage 2 (the demos: configs/digits_demo.py and
configs/mnist_demo.py), every method fine-tuned alike; a comparison passes the stage-2 length
measured by scripts/finetune_length.py (--finetune_epochs). --threads 1 (the default): every run and every timing takes one
thread, so a CPU shared with other jobs is not oversubscribed by one thread per core and per job,
and a latency budget is priced at the thread count it is timed at (0: one per core for both).
"""
import json
import os
import re
import shlex
import sys
from typing import Dict, List

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import sweep_args
from scripts.latency_match import latency_target, peer_at_latency, table_ratio
from scripts.pipeline import LOCAL_MAGNITUDE_FLAGS, TIMING_BATCH, Bench, compact_of_stage1, macs_ratio_of, stage1_ratio
from scripts.results import markdown_table
from scripts.sweep_args import ABLATIONS, NO_SEARCH, results_name
from scripts.sweep_merge import file_sha256, merged, passes_text
from scripts.sweep_report import ablation_table, front_text, landing_text, plot_sweep, sweep_table

# flags passed as they are to every stage and method (data, model, sizes, loading)
PASSED = ("data_dir", "input_size", "model_type", "train_batch_size", "eval_batch_size", "num_workers")


def parse_args(argv=None):
    """The sweep's flags (scripts/sweep_args.py), with this docstring as the help."""
    return sweep_args.parse_args(argv, __doc__)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def bench_of(args) -> Bench:
    """The runs' settings; --search_epochs / --finetune_epochs not given are the config's stage-1 / stage-2
    epochs, resolved here and passed to every command (so a run given them is the same run)."""
    overrides = [] if args.config is None else (["--dataset", args.dataset] if args.dataset else [])
    for key in PASSED:
        if getattr(args, key) is not None:
            overrides += [f"--{key}", str(getattr(args, key))]
    bench = Bench(args.dataset or "", args.cache_dir, args.seed, args.smoke, reuse=args.resume, threads=args.threads,
                  config_file=args.config or "", overrides=overrides, teacher_file=args.teacher,
                  teacher_flags=[] if args.pretrained is None else ["--pretrained", str(args.pretrained)])
    args.search_epochs = bench.epochs("joint", args.search_epochs)
    args.finetune_epochs = bench.epochs("post", args.finetune_epochs)
    if not args.smoke:  # --smoke sets its own epochs
        bench.joint_extra = ["--epochs", str(args.search_epochs)]
        bench.post_extra = ["--epochs", str(args.finetune_epochs)]
    return bench


def latency_table(args, bench: Bench, dense) -> tuple:
    """(table, file) of the searches under --match latency: measured once (kept with the cached teachers), at the
    threads this process times every model with, at the batch every model is timed at."""
    from uvc.cost.latency_table import load_or_measure
    return load_or_measure(dense, bench.model_type, "cpu", os.path.join(args.cache_dir, "latency"), TIMING_BATCH)


def latency_flags(args, bench: Bench, dense) -> List[str]:
    """Stage-1 flags of UVC under --match latency: the latency table measured once here (kept with the cached
    teachers), at the threads this process times every model with (main), and handed to every search as its
    file, so that the budget is priced on the device it is timed on: a narrow model gains less from more
    threads than a wide one (the MNIST ViT's 0.7 searches priced at one thread timed 0.71-0.90 at two), and at
    the batch it is timed at, whatever the config's latency_batch."""
    flags = ["--budget_metric", "latency", "--latency_cache", latency_table(args, bench, dense)[1]]
    if int(bench.config("joint").latency_batch) != TIMING_BATCH:  # priced at the batch it is timed at
        flags += ["--latency_batch", str(TIMING_BATCH)]
    return flags


def run_folder(args, budget: float, seed: int, latency: bool) -> str:
    """The folder of one budget and seed (under --match latency its own), one sub-folder per method."""
    return os.path.join(args.run_dir, f"budget{budget}_seed{seed}" + ("_latency" if latency else ""))


def uvc_targets(uvc: dict, dense) -> tuple:
    """UVC's MACs ratio by its formula (the one-shot peers' target) and by fvcore (Torch-Pruning's), of the
    architecture its search fixed."""
    return stage1_ratio(uvc["stage1_file"]), macs_ratio_of(uvc["before"], dense)


def peer_flags(name: str) -> tuple:
    return LOCAL_MAGNITUDE_FLAGS if "local" in name else ()


def peers(bench: Bench, methods: List[str], teacher: str, folder: str, uvc: dict, dense, seed: int,
          match: str = "macs") -> List[dict]:
    """The peer runs matched to the UVC run `uvc`: at its MACs (by UVC's formula for the one-shot peers,
    by fvcore for Torch-Pruning, which also shrinks q and k), or at its measured latency ratio."""
    target, tp_target = uvc_targets(uvc, dense)
    out = []
    for name in methods:
        path = os.path.join(folder, slug(name))
        flags = peer_flags(name)
        if name == "UVC":
            continue
        if match == "latency":
            out.append(peer_at_latency(bench, name, teacher, path, uvc, dense, seed, (target, tp_target), flags))
        elif name in ("uniform magnitude", "greedy fit"):
            out.append(bench.one_shot(name, slug(name), teacher, path, target, seed))
        else:
            out.append(bench.torch_pruning(name, teacher, path, tp_target, seed, setting=flags))
    return out


def measured(bench: Bench, runs: List[dict], dense, table: dict = None) -> Dict:
    """Every run measured side by side with the teacher: the JSON's rows (and the runs); a run matched by latency
    adds table_latency_ratio, the searches' latency table's estimate of its time (`table`), when it is a compact
    model (Torch-Pruning's keeps timm's modules, with q and k narrowed, which the table does not price)."""
    teacher, *measures = bench.measure(runs, dense)
    rows = []
    for run, r in zip(runs, measures):
        row = {"method": r["name"], "budget": run["budget"], "match": run["match"], "seed": run["seed"],
               "top1_last": r["top1_last"], "top1_best": r["top1_best"], "macs_ratio": r["macs_ratio"],
               "speedup_b64": r["speedup_b64"], "top1": r["top1"], "top1_before_ft": r["top1_before"],
               "params": r["params"], "images_per_s_b64": r["images_per_s_b64"], "removed": r["removed"],
               "model_file": run["model_file"]}
        if run.get("search_end"):
            row["search_end"] = run["search_end"]
        if table is not None and run["match"] == "latency" and hasattr(run["after"], "spec"):  # not Torch-Pruning's
            row["table_latency_ratio"] = table_ratio(table, dense, run["after"])
        rows.append(dict(row, **run.get("latency_match", {})))
    return {"teacher_top1": teacher["top1"], "teacher_params": teacher["params"],
            "teacher_images_per_s_b64": teacher["images_per_s_b64"], "rows": rows, "runs": runs}


def sweep(args, bench: Bench, teacher: str, dense) -> Dict:
    runs = []
    for match in args.match:
        joint = latency_flags(args, bench, dense) if match == "latency" else []
        for seed in args.seeds:
            for budget in args.budgets:
                folder = run_folder(args, budget, seed, bool(joint))
                uvc = bench.uvc("UVC", teacher, os.path.join(folder, "uvc"), budget, seed, joint)
                runs += [dict(r, budget=budget, seed=seed, match=match)
                         for r in [uvc] + peers(bench, args.methods, teacher, folder, uvc, dense, seed, match)]
    table = latency_table(args, bench, dense)[0] if "latency" in args.match else None
    return measured(bench, runs, dense, table)


def matches(args, bench: Bench, teacher: str, dense) -> str:
    """--prune_only: UVC's latency searches, and every peer's match to the measured time of the architecture
    each fixed (saved in its run folder), with nothing fine-tuned; a table of the matches."""
    lines, joint = [], latency_flags(args, bench, dense)
    for seed in args.seeds:
        for budget in args.budgets:
            folder = run_folder(args, budget, seed, True)
            s1 = bench.stage1(teacher, os.path.join(folder, "uvc", "stage1"), budget, seed, joint)
            uvc = {"stage1_file": s1, "before": compact_of_stage1(s1)}
            targets = uvc_targets(uvc, dense)
            for name in args.methods[1:]:
                found = latency_target(bench, name, teacher, os.path.join(folder, slug(name)), uvc, dense, seed,
                                       targets, peer_flags(name))
                lines.append([name, f"{budget}", f"{seed}", f"{found['target']:.4f}", f"{found['latency_ratio']:.3f}",
                              f"{found['uvc_latency_ratio']:.3f}", "yes" if found["matched"] else "no",
                              f"{len(found['tries'])}"])
    return markdown_table(["method", "budget", "seed", "MACs target", "time ratio", "UVC's time ratio", "matched",
                           "tries"], lines)


def ablations(args, bench: Bench, teacher: str, dense) -> Dict:
    """Every ablation row over the seeds at --ablation_budget, and no search (the greedy fit at UVC's MACs, or
    under --match latency at its measured time); with --match latency every row searches a latency budget, in
    the folders of the sweep's latency cells, so that its UVC and greedy-fit runs are reused."""
    runs, budget, match = [], args.ablation_budget, args.match[0]
    base = latency_flags(args, bench, dense) if match == "latency" else []
    for seed in args.seeds:
        folder = run_folder(args, budget, seed, bool(base))
        searched, searches = [], {}  # rows of the same stage-1 flags share one search
        for name in args.ablation_rows:
            joint, post = ABLATIONS[name]
            joint = base + joint
            run = bench.uvc(name, teacher, os.path.join(folder, slug(name)), budget, seed, joint, post,
                            searches.get(tuple(joint), ""))
            searches.setdefault(tuple(joint), run["stage1_file"])
            searched.append(run)
        greedy = peers(bench, ["greedy fit"], teacher, folder, searched[0], dense, seed, match)[0]
        runs += [dict(r, seed=seed, budget=budget, match=match) for r in searched]
        runs.append(dict(greedy, name=NO_SEARCH, seed=seed, budget=budget, match=match))
    table = latency_table(args, bench, dense)[0] if base else None
    return dict(measured(bench, runs, dense, table), budget=budget)


def check_ablation_flags(bench: Bench) -> None:
    """Every ablation's stage-1 flags are joint_train.py's, checked before any run starts."""
    from utils.config import ConfigError, parse_config
    for name, (joint, _) in ABLATIONS.items():
        try:
            parse_config("joint", ["--config", f"{bench.config_file}:joint", *bench.overrides, *joint])
        except ConfigError as e:
            raise ConfigError(f"the ablation {name!r} needs joint_train.py to accept {' '.join(joint)}: {e}") from None


def main(argv=None) -> int:
    """The sweep, its own timings (the latency table, the matches, the speedups) at --threads threads like its
    runs (0: torch's default, one per core); the caller's thread count is given back."""
    import torch
    args, own = parse_args(argv), torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return run_sweep(args, argv)
    finally:
        torch.set_num_threads(own)


def results_text(args, result: dict, name: str) -> str:
    """The Markdown of log/<name>.md: what ran (every pass, with --merge), the table and, for the sweep, the
    front and the searches' landing."""
    table = (ablation_table if args.ablations else sweep_table)(result)
    budgets = sorted({r["budget"] for r in result["rows"]})
    matched = list(dict.fromkeys(r["match"] for r in result["rows"]))
    what = (f"budget {args.ablation_budget}, matched by {args.match[0]}" if args.ablations else
            f"budgets {', '.join(map(str, budgets))}, matched by {' and by '.join(matched)}")
    return (f"{name.rsplit('_', 1)[0]}, {what}, seeds {', '.join(map(str, result['seeds']))}, "
            f"{1 if args.smoke else args.search_epochs} search epochs, {result['finetune_epochs']} fine-tuning "
            f"epochs; {passes_text(result)}. Teacher top-1 {result['teacher_top1']:.2f}%. Top-1 at the last "
            f"fine-tuning epoch and at the best one (validation split), mean (min-max) over the seeds; MACs ratios "
            f"counted by fvcore on the physically pruned models; speedups measured side by side on this CPU at "
            f"batch 64, {result['timing_threads']} thread(s).\n\n{table}\n"
            + ("" if args.ablations else f"\n{front_text(result['rows'])} {landing_text(result['rows'])}\n"))


def run_sweep(args, argv) -> int:
    import torch
    from utils.checkpoint import atomic_write_text
    bench = bench_of(args)
    if args.ablations:
        check_ablation_flags(bench)
    teacher = bench.teacher()
    dense = bench.dense_model(teacher)
    command = "python scripts/sweep.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    name = results_name(args)
    if args.prune_only:
        print(f"\nLatency matches (peers not fine-tuned; `{command.replace(' --prune_only', '')}` with --resume "
              f"fine-tunes them):\n\n{matches(args, bench, teacher, dense)}")
        return 0
    result = (ablations if args.ablations else sweep)(args, bench, teacher, dense)
    result.pop("runs")  # run folders stay under --run_dir
    epochs = 1 if args.smoke else args.finetune_epochs
    result = {"teacher_top1": result.pop("teacher_top1"), "teacher_sha256": file_sha256(teacher),
              "finetune_epochs": epochs, "seeds": list(args.seeds), **result,
              "timing_threads": torch.get_num_threads(), "command": command}
    if args.merge:
        result = merged(result, os.path.join(args.log_dir, f"{name}.json"))
    text = results_text(args, result, name)
    atomic_write_text(text, os.path.join(args.log_dir, f"{name}.md"))
    atomic_write_text(json.dumps(result, indent=1), os.path.join(args.log_dir, f"{name}.json"))
    if not args.ablations:
        commands = " ; ".join(p["command"] for p in result.get("passes", [result]))  # every pass, with --merge
        plot_sweep(result, os.path.join(args.figs_dir, f"{name}_top1_vs_macs.png"), commands, name)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    from engine.entry import run_entry

    run_entry(main, sys.argv[1:])
