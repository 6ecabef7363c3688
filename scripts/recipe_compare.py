"""Which training recipe serves compression better: stage 2 with the reference's recipe
against DeiT's, on the MNIST benchmark.

    python scripts/recipe_compare.py --out log/recipe_compare

The recipes (configs.common.RECIPES) differ in photo augmentations (RandAugment,
random erasing, colour jitter) that the in-memory grey sets cannot apply, so MNIST
is written once as grey PNG files in ImageFolder layout (data.mnist.write_image_folder)
and read with `--dataset imagenet`, normalised with MNIST's statistics and evaluated
without a crop (`--mean 0.1311 --std 0.3083 --crop_pct 1`): the validation images are
then exactly those of `--dataset mnist` (tests/test_mnist.py), so the teacher, the
stage-1 files and the top-1 are those of the MNIST benchmark, while both recipes
train through timm's transforms (RandomResizedCrop + flip, and what the recipe adds).

For every budget the stage-1 file is the MNIST sweep's UVC search at that budget
(scripts/sweep.py, seed 730; reused if that run completed, else run here with the
sweep's command), fine-tuned by post_train.py with the MNIST config's stage 2, once per
recipe and stage-2 seed. The teacher the stage-1 files were searched with distils every run.
--in_memory adds the benchmark's own stage 2 as a third arm (--dataset mnist: a random
shift of up to 2 pixels, no mixup), for scale.
Writes <out>.md (table: every run, then the mean per budget and recipe) and
<out>.json, and the runs' logs under <out>/.
"""
import argparse
import json
import os
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import mnist
from scripts.pipeline import Bench, stage1_ratio
from scripts.results import markdown_table

RECIPES = ("reference", "deit")
IN_MEMORY = "none (--dataset mnist)"  # the benchmark's own training: a random shift of up to 2 pixels, no mixup
MNIST_FILES = ["--dataset", "imagenet", "--mean", str(mnist.MEAN), "--std", str(mnist.STD), "--crop_pct", "1"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[730, 731], help="stage-2 seeds")
    p.add_argument("--epochs", type=int, default=20, help="stage-2 epochs of every run")
    p.add_argument("--sweep_dir", default="runs/mnist_sweep", help="where the sweep's stage-1 runs are (or go)")
    p.add_argument("--search_epochs", type=int, default=6, help="the sweep's, for a stage 1 run here")
    p.add_argument("--run_dir", default="runs/recipe_compare")
    p.add_argument("--cache_dir", default="runs/cache", help="the trained teachers, by config")
    p.add_argument("--out", default="log/recipe_compare", help="<out>.md, <out>.json and the logs in <out>/")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (2 cores: 2 jobs of 1 thread)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    p.add_argument("--in_memory", action="store_true",
                   help=f"a third arm: the MNIST config's own stage 2 on --dataset mnist (recipe {IN_MEMORY!r})")
    p.add_argument("--smoke", action="store_true", help="a few steps per run (checks the plumbing)")
    return p.parse_args(argv)


def sweep_stage1(bench: Bench, sweep_dir: str, budget: float) -> str:
    """The sweep's UVC stage-1 file at `budget` (seed 730): reused if that run completed, else run here
    with the sweep's command. Its teacher is the one the stage-2 runs distil from."""
    out = os.path.join(sweep_dir, f"budget{budget}_seed730", "uvc", "stage1")
    path = os.path.join(out, f"{bench.model_type}_uvc.pth")
    if os.path.exists(os.path.join(out, "done.cmd")) and os.path.exists(path):
        print(f"stage 1 at budget {budget}: reusing {path}")
        return path
    return bench.stage1(bench.teacher(), out, budget)


def records(run_dir: str) -> list:
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def finetune(bench: Bench, teacher: str, stage1: str, folder: str, out: str, recipe: str, seed: int,
             epochs: int) -> dict:
    """One stage-2 run; its top-1 after the last epoch and its best."""
    data = [] if recipe == IN_MEMORY else [*MNIST_FILES, "--data_dir", folder, "--recipe", recipe]
    bench.stage2(teacher, stage1, out, seed, data + ["--epochs", str(epochs)])
    epochs_done = [r for r in records(out) if "val_top1" in r]
    return {"top1_last": epochs_done[-1]["val_top1"], "top1_best": max(r["val_top1"] for r in epochs_done),
            "epochs": len(epochs_done)}


def mean_rows(rows: list) -> list:
    out = []
    for budget in sorted({r["budget"] for r in rows}):
        for recipe in RECIPES + (IN_MEMORY,):
            mine = [r for r in rows if r["budget"] == budget and r["recipe"] == recipe]
            if mine:
                out.append({"budget": budget, "recipe": recipe, "runs": len(mine),
                            "top1_last": statistics.mean(r["top1_last"] for r in mine),
                            "top1_best": statistics.mean(r["top1_best"] for r in mine)})
    return out


def table(result: dict) -> str:
    runs = markdown_table(
        ["budget", "MACs ratio", "recipe", "stage-2 seed", "top-1 before stage 2 (%)", "top-1 last epoch (%)",
         "best top-1 (%)"],
        [[f"{r['budget']}", f"{r['macs_ratio']:.3f}", r["recipe"], str(r["seed"]), f"{r['top1_before']:.2f}",
          f"{r['top1_last']:.2f}", f"{r['top1_best']:.2f}"] for r in result["rows"]])
    means = markdown_table(["budget", "recipe", "runs", "mean top-1 last epoch (%)", "mean best top-1 (%)"],
                           [[f"{m['budget']}", m["recipe"], str(m["runs"]), f"{m['top1_last']:.2f}",
                             f"{m['top1_best']:.2f}"] for m in result["means"]])
    return f"{runs}\n\nMeans over the stage-2 seeds:\n\n{means}"


def main(argv=None) -> int:
    args = parse_args(argv)
    from scripts.pipeline import compact_of_stage1
    from utils.checkpoint import atomic_write_text
    bench = Bench("mnist", args.cache_dir, 730, args.smoke, reuse=True, threads=args.threads,
                  joint_extra=[] if args.smoke else ["--epochs", str(args.search_epochs)])
    folder = mnist.write_image_folder(os.path.join(args.run_dir, "mnist_folder"))
    stage1 = {b: sweep_stage1(bench, args.sweep_dir, b) for b in args.budgets}
    teachers = {torch.load(f, map_location="cpu", weights_only=True)["config"]["model_path"] for f in stage1.values()}
    if len(teachers) != 1:
        raise SystemExit(f"the stage-1 files in {args.sweep_dir} were searched from different teachers: {teachers}")
    teacher = teachers.pop()
    arms = RECIPES + ((IN_MEMORY,) if args.in_memory else ())
    plan = [(b, recipe, seed) for b in args.budgets for seed in args.seeds for recipe in arms]
    outs = {c: os.path.join(args.run_dir, f"budget{c[0]}_{c[1].split()[0]}_seed{c[2]}") for c in plan}
    epochs = 1 if args.smoke else args.epochs
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        done = list(pool.map(lambda c: finetune(bench, teacher, stage1[c[0]], folder, outs[c], c[1], c[2], epochs),
                             plan))
    # the files' validation images are --dataset mnist's (tests/test_mnist.py): the benchmark's own top-1
    before = {b: bench.top1(compact_of_stage1(f)) for b, f in stage1.items()}
    rows = [dict(budget=b, recipe=recipe, seed=seed, macs_ratio=stage1_ratio(stage1[b]), top1_before=before[b], **d)
            for (b, recipe, seed), d in zip(plan, done)]
    command = "python scripts/recipe_compare.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "epochs": epochs, "rows": rows, "means": mean_rows(rows),
              "teacher_top1": bench.top1(bench.dense_model(teacher))}
    text = (f"Stage 2 on MNIST read as image files (`{' '.join(MNIST_FILES)}`: the validation images of "
            f"`--dataset mnist`), {epochs} epochs per run, both recipes from the sweep's stage-1 file at each "
            f"budget; produced by `{command}`. Dense teacher: {result['teacher_top1']:.2f}%. MACs ratio by UVC's "
            f"formula.\n\n{table(result)}\n")
    atomic_write_text(text, args.out + ".md")
    atomic_write_text(json.dumps(result, indent=1), args.out + ".json")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
