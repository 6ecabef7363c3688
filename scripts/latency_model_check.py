"""How well does the latency cost model price an architecture? Its estimate against the model timed whole.

    python scripts/latency_model_check.py --model_type vit_mnist_patch4_28 --seeds 0,1,2 --out log/latency_model_check_mnist

Measures the model's latency table in this process (uvc.cost.latency_table; --latency_cache reads
one instead, but a table timed in another session is off by that session's drift, see
log/latency_stability.md), draws --archs random architectures (seeded): a share of the patch
positions kept, then per block a number of heads, value dims per head and MLP neurons, and now and
then a skipped block. Each is priced by the cost model (R_est = T(compact) / T(dense), as the
search and the fit price it) and timed whole (random weights, batch --batch_size), side by side
with the dense model in one interleaved run (utils.benchmark), R = dense images/s over compact
images/s. The same table is also read as a uvc-latency-v2 table (its whole blocks at N0 only, the
time outside the blocks scaled by f = N / N0), the model before the token ladder. The table gives
every architecture's estimates, measurement and relative errors R_est / R - 1, and per share of
patches kept the median and largest |error| of each: the search steers by R_est, so an error that
grows as patches go is a search that drops patches for time it does not save. Each of --seeds is a
session of its own (a separate process: its own table, architectures and timings).
"""
import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.command import session_json
from scripts.results import markdown_table, write_result

KEEPS = (1.0, 0.75, 0.5, 0.3)  # shares of the patch positions kept, one architecture in len(KEEPS) each


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="vit_mnist_patch4_28", help="a model of models.create_model")
    p.add_argument("--img_size", type=int, default=0, help="input resolution (0: the model's own)")
    p.add_argument("--archs", type=int, default=16, help="random architectures, spread over the patch shares")
    p.add_argument("--batch_size", type=int, default=64, help="images per forward pass (the table's batch)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--seeds", default="0", help="comma-separated; one session (process) each")
    p.add_argument("--session", type=int, default=None, help=argparse.SUPPRESS)  # one session: print its JSON
    p.add_argument("--latency_cache", default="", help="read this latency table file or directory instead of "
                                                       "measuring one now")
    p.add_argument("--out", default="", help="write <out>.md and <out>.json")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds takes comma-separated integers, not {args.seeds!r}")
    if min(args.archs, args.batch_size, args.repeats) < 1 or args.img_size < 0:
        p.error("--archs, --batch_size and --repeats must be positive and --img_size at least 0")
    return args


def random_arch(base: dict, keep: float, gen) -> dict:
    """`base` (uvc.deploy.freeze.base_spec) with round(keep x P) patch positions kept and per block
    a random number of heads, value dims per head and neurons (at least one each); 1 block in 8 skipped."""
    import torch

    def draw(full: int, low: float) -> int:
        return max(1, round(full * (low + (1 - low) * float(torch.rand((), generator=gen)))))

    patches = base["patches_kept"]
    order = torch.randperm(len(patches), generator=gen)[:max(1, round(keep * len(patches)))]
    arch = {**base, "patches_kept": sorted(patches[i] for i in order.tolist())}
    blocks = []
    for _ in base["blocks"]:
        heads, dims = draw(base["num_heads"], 0.25), draw(base["head_dim"], 0.25)
        neurons = draw(base["mlp_hidden"], 0.1)
        blocks.append({"skipped": bool(torch.rand((), generator=gen) < 0.125), "heads": list(range(heads)),
                       "value_dims": [list(range(dims))] * heads, "neurons": list(range(neurons))})
    if all(b["skipped"] for b in blocks):
        blocks[0]["skipped"] = False
    arch["blocks"] = blocks
    return arch


def at_n0_only(table: dict) -> dict:
    """`table` as a uvc-latency-v2 table: the block ladder at the dense token count, one outside time."""
    s = table["seconds"]
    blocks, n0 = s["blocks"], table["sizes"]["tokens"]
    kept = [i for i, n in enumerate(blocks["tokens"]) if n == n0]
    ladder = {k: [v[i] for i in kept] for k, v in blocks.items() if k != "tokens"}
    outside = s["outside_blocks"]["time"][s["outside_blocks"]["tokens"].index(n0)]
    return {**table, "format": "uvc-latency-v2", "seconds": {**s, "blocks": ladder, "outside_blocks": outside}}


def measure(args, seed: int) -> dict:
    """The table's file and format, and per architecture its shape, estimate and measured ratio."""
    import torch
    from models import create_model
    from models.compact import CompactViT
    from uvc.cost.cost import compact_cost, dense_cost
    from uvc.cost.flops import ViTDims
    from uvc.cost.latency import LatencyCost
    from uvc.cost.latency_table import load_or_measure
    from uvc.deploy.export import compact_spec_from_arch
    from uvc.deploy.freeze import base_spec
    from utils.benchmark import compare_throughput

    torch.manual_seed(seed)
    kwargs = {"img_size": args.img_size} if args.img_size else {}
    vit = create_model(args.model_type, **kwargs).eval()
    with tempfile.TemporaryDirectory() as fresh:
        table, path = load_or_measure(vit, args.model_type, "cpu", args.latency_cache or fresh, args.batch_size,
                                      repeats=args.repeats)
    costs = {"ladder": LatencyCost(ViTDims.of(vit), table), "n0": LatencyCost(ViTDims.of(vit), at_n0_only(table))}
    base, gen = base_spec(vit, args.model_type), torch.Generator().manual_seed(seed)
    archs = [random_arch(base, KEEPS[i % len(KEEPS)], gen) for i in range(args.archs)]
    specs = [compact_spec_from_arch(a) for a in archs]
    models = {"dense": vit, **{str(i): CompactViT(s) for i, s in enumerate(specs)}}
    shape = (base["in_chans"], base["img_size"], base["img_size"])
    speed = compare_throughput(models, shape, args.batch_size, "cpu", warmup=1, repeats=args.repeats)
    rows = []
    for i, (arch, spec) in enumerate(zip(archs, specs)):
        measured = speed["dense"] / speed[str(i)]
        estimated = {k: compact_cost(c, spec) / dense_cost(c) for k, c in costs.items()}
        rows.append({"patches_kept": len(arch["patches_kept"]), "patches": len(base["patches_kept"]),
                     "blocks": [[b["heads"], b["value_dim"], b["mlp_hidden"]] for b in spec["blocks"]],
                     "measured": measured, "estimated": estimated,
                     "error": {k: e / measured - 1 for k, e in estimated.items()}})
    return {"seed": seed, "table": path if args.latency_cache else "measured in its session",
            "format": table["format"], "model_type": args.model_type, "rows": rows}


def sessions(args, argv) -> list:
    """Every seed's measure() in a process of its own."""
    return [session_json("latency_model_check.py", [*argv, "--session", str(seed)]) for seed in args.seeds]


def report(results: list, command: str) -> str:
    rows = [[str(r["seed"]), str(i), f"{row['patches_kept']}/{row['patches']}", str(len(row["blocks"])),
             f"{row['measured']:.3f}", f"{row['estimated']['ladder']:.3f}", f"{100 * row['error']['ladder']:+.1f}%",
             f"{row['estimated']['n0']:.3f}", f"{100 * row['error']['n0']:+.1f}%"]
            for r in results for i, row in enumerate(r["rows"])]
    by_keep = {}
    for r in results:
        for row in r["rows"]:
            by_keep.setdefault(row["patches_kept"], []).append(row["error"])
    patches = results[0]["rows"][0]["patches"]
    summary = [[f"{k}/{patches}", str(len(e))]
               + [f"{100 * f([abs(x[m]) for x in e]):.1f}%" for m in ("ladder", "n0") for f in (statistics.median, max)]
               for k, e in sorted(by_keep.items(), reverse=True)]
    return (f"Produced by `{command}` (tables {results[0]['format']}, {results[0]['table']}). R = compact time / "
            f"dense time; error = R_est / R - 1; \"token ladder\" is the cost model (blocks timed at the "
            f"table's token counts), \"N0 only\" the same table read as uvc-latency-v2 (blocks timed at N0, scaled by "
            f"f = N / N0).\n\nPer share of patches kept, |error| over the sessions:\n\n"
            + markdown_table(["patches kept", "archs", "token ladder median", "token ladder largest",
                              "N0 only median", "N0 only largest"], summary)
            + "\n\nEvery architecture:\n\n"
            + markdown_table(["session (seed)", "arch", "patches kept", "blocks kept", "R timed whole",
                              "R_est token ladder", "error", "R_est N0 only", "error"], rows) + "\n")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.session is not None:
        print(json.dumps(measure(args, args.session)))
        return 0
    results = sessions(args, argv)
    command = shlex.join(["python", "scripts/latency_model_check.py", *argv])
    text = report(results, command)
    print(text)
    if args.out:
        write_result(args.out, text, {"command": command, "sessions": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
