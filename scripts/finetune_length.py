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

With --lengths L1,L2,... each stage-1 file (UVC's and the greedy fit's, per seed) is fine-tuned
once per length instead, each run annealing to its own end. The end of a run is the mean top-1
of its last --window epochs; per method its seed mean e(L). The length chosen is the shortest L
from which, at every longer length L', each method's e(L') is within --tolerance of e(L) and the
methods rank in the same order: fine-tuning longer no longer moves the comparison. The JSON then
holds "lengths" and "runs": [{"method", "seed", "epochs", "top1"}].
"""
import argparse
import json
import math
import os
import shlex
import sys
from typing import Dict, List, Optional, Sequence

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.pipeline import Bench, stage1_ratio
from scripts.results import markdown_table, write_result


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


def run_end(top1: Sequence[float], window: int) -> float:
    """The end of a fine-tuning run: the mean top-1 of its last `window` epochs."""
    return sum(top1[-window:]) / len(top1[-window:])


def length_by_comparison(ends: Dict[str, Dict[int, float]], tolerance: float) -> Optional[int]:
    """The shortest length L from which every longer L' keeps each method's end within `tolerance`
    of its end at L and the methods in the same order; None if the longest length is the first such.

    ends: method -> length -> seed mean of the run ends."""
    lengths = sorted(next(iter(ends.values())))
    order = lambda L: sorted(ends, key=lambda m: -ends[m][L])  # noqa: E731
    for i, L in enumerate(lengths[:-1]):
        later = lengths[i + 1:]
        if all(abs(ends[m][L2] - ends[m][L]) < tolerance for m in ends for L2 in later) and \
                all(order(L2) == order(L) for L2 in later):
            return L
    return None


def curve(stage2_dir: str) -> List[float]:
    """Top-1 per fine-tuning epoch from a stage-2 run's log.jsonl."""
    with open(os.path.join(stage2_dir, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r["val_top1"] for r in records if "epoch" in r and "val_top1" in r]


def epoch_counts(text: str) -> List[int]:
    """--lengths: comma-separated epoch counts, sorted, each at least 1."""
    try:
        lengths = sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give epoch counts separated by commas, e.g. 10,20,40") from None
    if lengths[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every length is at least 1 epoch")
    return lengths


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--budget", type=float, default=0.4)
    p.add_argument("--epochs", type=int, default=30, help="stage-2 epochs of the measured runs")
    p.add_argument("--search_epochs", type=int, default=None,
                   help="stage-1 epochs (default: the config's, as the sweep's)")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[731])
    p.add_argument("--lengths", type=epoch_counts, default=None,
                   help="compare runs of these stage-2 lengths (e.g. 10,20,30,40) instead of one long curve")
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--tolerance", type=float, default=0.2, help="top-1 points")
    p.add_argument("--run_dir", default="runs/finetune_length")
    p.add_argument("--cache_dir", default="runs/cache", help="where trained teachers are kept")
    p.add_argument("--out", default="log/finetune_length", help="writes <out>.json and <out>.md")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true",
                   help="reuse runs of the same command completed in --run_dir; continue one stopped part-way")
    args = p.parse_args(argv)
    if args.search_epochs is not None and args.search_epochs < 1:
        p.error(f"--search_epochs {args.search_epochs}: at least 1")
    if not 0.0 < args.budget <= 1.0:
        p.error(f"--budget {args.budget} is outside (0, 1]")
    if args.lengths is not None and (len(args.lengths) < 2 or args.lengths[0] < args.window):
        p.error(f"--lengths {args.lengths}: at least two lengths, each of at least --window ({args.window}) epochs")
    if args.lengths is None and args.epochs < 3 * args.window:
        p.error(f"--epochs {args.epochs}: at least 3 windows ({3 * args.window}) are needed to see a curve settle")
    return args


def bench_of(args) -> Bench:
    """The runs' settings; stage 1 runs --search_epochs, or the config's stage-1 epochs."""
    bench = Bench(args.dataset, args.cache_dir, 730, reuse=args.resume, threads=args.threads,
                  post_extra=[] if args.lengths else ["--epochs", str(args.epochs)])
    args.search_epochs = bench.epochs("joint", args.search_epochs)
    bench.joint_extra = ["--epochs", str(args.search_epochs)]
    return bench


def measure_lengths(args, bench: Bench, teacher: str, command: str) -> None:
    """Fine-tune each seed's UVC and greedy-fit stage-1 files once per length; choose by comparison."""
    runs = []
    for seed in args.seeds:
        folder = os.path.join(args.run_dir, f"budget{args.budget}_seed{seed}")
        uvc = bench.stage1(teacher, os.path.join(folder, "uvc", "stage1"), args.budget, seed)
        greedy = bench.one_shot_prune("greedy-fit", teacher, os.path.join(folder, "greedy-fit"), stage1_ratio(uvc))
        for method, sub, stage1_file in (("UVC", "uvc", uvc), ("greedy fit", "greedy-fit", greedy)):
            for epochs in args.lengths:
                out = os.path.join(folder, sub, f"stage2_{epochs}ep")
                bench.stage2(teacher, stage1_file, out, seed, ["--epochs", str(epochs)])
                runs.append({"method": method, "seed": seed, "epochs": epochs, "top1": curve(out)})
    methods = list(dict.fromkeys(r["method"] for r in runs))
    ends = {m: {L: sum(run_end(r["top1"], args.window) for r in runs if r["method"] == m and r["epochs"] == L)
                / len(args.seeds) for L in args.lengths} for m in methods}
    chosen = length_by_comparison(ends, args.tolerance)
    rows = [[m, *(f"{ends[m][L]:.2f}" for L in args.lengths)] for m in methods]
    rows += [[f"{r['method']} seed {r['seed']}", *(f"{run_end(q['top1'], args.window):.2f}" for q in runs
              if q["method"] == r["method"] and q["seed"] == r["seed"])] for r in runs if r["epochs"] == args.lengths[0]]
    text = (f"Produced by `{command}`. {args.dataset}, budget {args.budget}, seeds {args.seeds}. Each stage-1 "
            f"file fine-tuned once per length, each run annealing to its own end; a run's end is the mean top-1 of "
            f"its last {args.window} epochs; the first rows are seed means. Chosen stage-2 length, the shortest from "
            f"which every longer one keeps each method within {args.tolerance} and the methods in the same order: "
            f"**{chosen if chosen else 'none (still moving at the longest length)'}**.\n\n"
            + markdown_table(["method", *(f"end at {L} epochs" for L in args.lengths)], rows) + "\n")
    print(text)
    write_result(args.out, text, {"command": command, "window": args.window, "tolerance": args.tolerance,
                                  "budget": args.budget, "lengths": args.lengths, "seeds": args.seeds,
                                  "chosen_epochs": chosen, "ends": {m: {str(L): e for L, e in v.items()}
                                                                    for m, v in ends.items()}, "runs": runs})


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python scripts/finetune_length.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    bench = bench_of(args)
    teacher = bench.teacher()
    if args.lengths:
        measure_lengths(args, bench, teacher, command)
        return 0
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
