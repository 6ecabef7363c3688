"""How long stage 2 must be before methods can be compared: the fine-tuning length, measured.

    python scripts/finetune_length.py --dataset mnist --budget 0.4 --epochs 30 --seeds 731 \
        --out log/finetune_length

Runs UVC (stage 1, then a long stage 2) and the greedy fit at UVC's MACs (same stage 2)
from the cached teacher, and reads each run's top-1 per fine-tuning epoch. With m(E) the
mean top-1 of epochs E-w+1..E (w = --window), a curve has settled at the first epoch E
from which |m(E') - m(E' - w)| < --tolerance for every later E': the mean of the last w
epochs no longer moves. The length chosen is the latest such epoch over all curves,
rounded up to a multiple of w; none when a curve is still moving at its end. Stage 2
anneals its learning rate to the last epoch (cosine), so a curve tends to rise until
then: a run that never settles says to measure a longer one. Writes <out>.json
({"command", "window", "tolerance", "chosen_epochs", "curves": [{"method", "seed",
"top1", "settled_at"}]}) and <out>.md.
"""
import argparse
import json
import math
import os
import sys
from typing import List, Optional, Sequence

from scripts.pipeline import Bench, markdown_table, stage1_ratio, write_result


def settled_at(top1: Sequence[float], window: int, tolerance: float) -> Optional[int]:
    """The first epoch (1-based) from which the mean of the last `window` epochs moves by less than
    `tolerance` against the `window` before it, at every later epoch; None if it never settles."""
    means = [sum(top1[e - window:e]) / window for e in range(window, len(top1) + 1)]  # means[i]: epochs ..i+window
    moves = [abs(means[i] - means[i - window]) for i in range(window, len(means))]  # at epoch i + window
    for start in range(len(moves)):
        if all(m < tolerance for m in moves[start:]):
            return start + 2 * window
    return None


def chosen_length(settled: List[Optional[int]], window: int) -> Optional[int]:
    """The latest settling epoch, rounded up to a multiple of the window; None if a curve never settled."""
    if not settled or any(s is None for s in settled):
        return None
    return int(math.ceil(max(settled) / window) * window)


def curve(stage2_dir: str) -> List[float]:
    """Top-1 per fine-tuning epoch from a stage-2 run's log.jsonl."""
    with open(os.path.join(stage2_dir, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r["val_top1"] for r in records if "epoch" in r and "val_top1" in r]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--budget", type=float, default=0.4)
    p.add_argument("--epochs", type=int, default=30, help="stage-2 epochs of the measured runs")
    p.add_argument("--search_epochs", type=int, default=6, help="stage-1 epochs (the sweep's)")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[731])
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--tolerance", type=float, default=0.2, help="top-1 points")
    p.add_argument("--run_dir", default="runs/finetune_length")
    p.add_argument("--cache_dir", default="runs/cache", help="where trained teachers are kept")
    p.add_argument("--out", default="log/finetune_length", help="writes <out>.json and <out>.md")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="reuse runs of the same command completed in --run_dir")
    args = p.parse_args(argv)
    if not 0.0 < args.budget <= 1.0:
        p.error(f"--budget {args.budget} is outside (0, 1]")
    if args.epochs < 3 * args.window:
        p.error(f"--epochs {args.epochs}: at least 3 windows ({3 * args.window}) are needed to see a curve settle")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Bench(args.dataset, args.cache_dir, 730, reuse=args.resume, threads=args.threads,
                  joint_extra=["--epochs", str(args.search_epochs)], post_extra=["--epochs", str(args.epochs)])
    teacher = bench.teacher()
    curves = []
    for seed in args.seeds:
        folder = os.path.join(args.run_dir, f"budget{args.budget}_seed{seed}")
        uvc = bench.uvc("UVC", teacher, os.path.join(folder, "uvc"), args.budget, seed)
        bench.one_shot("greedy fit", "greedy-fit", teacher, os.path.join(folder, "greedy-fit"),
                       stage1_ratio(uvc["stage1_file"]), seed)
        for method, sub in (("UVC", "uvc"), ("greedy fit", "greedy-fit")):
            top1 = curve(os.path.join(folder, sub, "stage2"))
            curves.append({"method": method, "seed": seed, "top1": top1,
                           "settled_at": settled_at(top1, args.window, args.tolerance)})
    chosen = chosen_length([c["settled_at"] for c in curves], args.window)
    command = "python scripts/finetune_length.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = [[c["method"], str(c["seed"]), str(c["settled_at"] or "never"), f"{c['top1'][-1]:.2f}",
             f"{max(c['top1']):.2f}", " ".join(f"{t:.1f}" for t in c["top1"])] for c in curves]
    text = (f"Produced by `{command}`. {args.dataset}, budget {args.budget}, {args.epochs} stage-2 epochs. "
            f"Settled: the first epoch from which the mean top-1 of the last {args.window} epochs moves by less "
            f"than {args.tolerance} against the {args.window} before, at every later epoch. Chosen stage-2 "
            f"length: **{chosen if chosen else 'none (a curve never settled: measure longer)'}**.\n\n"
            + markdown_table(["method", "seed", "settled at epoch", "top-1 last", "top-1 best", "top-1 per epoch"],
                             rows) + "\n")
    print(text)
    write_result(args.out, text, {"command": command, "window": args.window, "tolerance": args.tolerance,
                                  "budget": args.budget, "epochs": args.epochs, "chosen_epochs": chosen,
                                  "curves": curves})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
