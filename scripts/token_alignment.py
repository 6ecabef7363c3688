r"""How a compact model's time moves with the number of patches it keeps, timed side by side.

    python scripts/token_alignment.py runs/x/stage2/compact.pth --patches 49,47,45,43,41,39,31 \
        --latency_cache table.json --out log/token_alignment

The model's widths stay and, for each k of --patches, its first k patch positions are kept (which
positions does not change the time). Every variant is timed in one run with the dense model it was cut
from (random weights; batch 64, --threads threads, interleaved rounds, median:
utils.benchmark.compare_throughput), and that run is repeated --runs times: on a CPU the level of every
ratio moves from one run to the next, more than the variants differ within one, so each row gives the
median and the range over the runs. With --latency_cache, the latency table's estimate of each variant
stands next to it (uvc.cost.latency, what a `--budget_metric latency` search prices it at): the table
times blocks at a ladder of token counts and interpolates between them, so a token is worth the same at
any count, while a CPU's matrix kernels may run some token counts faster than fewer tokens. Writes
<out>.md and <out>.json.
"""
import argparse
import copy
import json
import os
import shlex
import statistics
import sys

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from models.compact import CompactViT, load_compact
from scripts.latency_match import table_ratio
from scripts.results import markdown_table, write_result
from utils.benchmark import compare_throughput


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("compact", help="a compact model (stage2/compact.pth, python -m uvc.export)")
    p.add_argument("--patches", required=True, help="patch counts to keep, comma-separated (e.g. 49,47,45)")
    p.add_argument("--latency_cache", default="", help="a latency table file: its estimate of each variant")
    p.add_argument("--threads", type=int, default=1, help="threads of the timing run (0: one per core)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds of one run")
    p.add_argument("--runs", type=int, default=3, help="timing runs (each row: median and range over them)")
    p.add_argument("--out", required=True, help="writes <out>.md and <out>.json")
    args = p.parse_args(argv)
    try:
        args.patches = [int(k) for k in args.patches.split(",") if k.strip()]
    except ValueError:
        p.error(f"--patches {args.patches}: give whole numbers, comma-separated")
    if not args.patches or min(args.runs, args.repeats) < 1:
        p.error("give at least one patch count, and --runs and --repeats of at least 1")
    return args


def variants(spec: dict, counts) -> dict:
    """name -> the compact model with the spec's widths and its first k patches, for each k."""
    total = (spec["img_size"] // spec["patch_size"]) ** 2
    out = {}
    for k in counts:
        if not 1 <= k <= total:
            raise SystemExit(f"error: --patches {k}: the model has {total} patch positions; keep 1 to {total}")
        cut = copy.deepcopy(spec)
        cut["patches_kept"] = list(range(k))
        out[k] = CompactViT(cut)
    return out


def main(argv=None) -> int:
    from uvc.deploy.export import dense_model_of
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        spec = load_compact(args.compact).spec
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    models = {"dense": dense_model_of(spec), **{str(k): m for k, m in variants(spec, args.patches).items()}}
    chans, img = spec["in_chans"], spec["img_size"]
    runs = []
    for run in range(args.runs):
        speed = compare_throughput(models, (chans, img, img), args.batch_size, repeats=args.repeats, seed=run)
        runs.append({k: speed["dense"] / speed[str(k)] for k in args.patches})
    table = {}
    if args.latency_cache:  # what the sweep records for a model of that shape
        with open(args.latency_cache) as f:
            priced = json.load(f)
        table = {k: table_ratio(priced, models["dense"], models[str(k)]) for k in args.patches}
    prefix = CompactViT(spec).num_prefix_tokens
    rows = [{"patches": k, "tokens": len(models[str(k)].spec["patches_kept"]) + prefix, "time_ratio": statistics.median(r[k] for r in runs),
             "time_ratios": [r[k] for r in runs], **({"table_ratio": table[k]} if table else {})}
            for k in args.patches]
    command = "python scripts/token_alignment.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    header = ["patches kept", "tokens", f"time / dense time, median (range) of {args.runs} runs"] + \
        (["latency table's estimate"] if table else [])
    lines = [[str(r["patches"]), str(r["tokens"]),
              f"{r['time_ratio']:.3f} ({min(r['time_ratios']):.3f}-{max(r['time_ratios']):.3f})"]
             + ([f"{r['table_ratio']:.3f}"] if table else []) for r in rows]
    text = (f"Produced by `{command}`.\n\nThe model's widths, its first k patches kept; time over the dense "
            f"model's, every variant timed side by side in one run (batch {args.batch_size}, "
            f"{torch.get_num_threads()} thread(s), median of {args.repeats} interleaved rounds in each run).\n\n"
            f"{markdown_table(header, lines)}\n")
    write_result(args.out, text, {"command": command, "threads": torch.get_num_threads(), "rows": rows})
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
