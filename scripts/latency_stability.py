"""How steady are part timings against whole-model timings on this device? The question behind
--latency_check: a latency table is measured once, in one session.

    python scripts/latency_stability.py --model_type deit_tiny_patch16_224 --sessions 4 --out log/latency_stability

Every session is a separate process that times, side by side in interleaved rounds
(utils.benchmark), the MLP of the model's blocks (models/compact.py) at a ladder of
widths, and the dense timm model against a compact model at half of every width
(value dims per head and MLP), reporting the MLP times and the compact / dense ratio.
Sessions run with the allocator as it is, and with glibc's mmap threshold fixed at
4 GiB (MALLOC_MMAP_THRESHOLD_: large buffers then come from the heap instead of
fresh mmapped pages; glibc only, ignored elsewhere). The table gives, per quantity,
the median over the sessions and the spread (max / min - 1).
"""
import argparse
import json
import os
import shlex
import statistics
import sys

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.command import session_json
from scripts.results import markdown_table, write_result

HEAP = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="deit_tiny_patch16_224")
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="", help="write <out>.md and <out>.json")
    p.add_argument("--session", action="store_true", help=argparse.SUPPRESS)  # one session: print its JSON
    args = p.parse_args(argv)
    if args.sessions < 1 or args.repeats < 1 or args.batch_size < 1:
        p.error("--sessions, --repeats and --batch_size must be positive")
    return args


def one_session(args) -> dict:
    """The MLP ladder's times (ms) and the half-width compact / dense ratio, in this process."""
    import torch
    from models import create_model
    from models.compact import CompactMlp
    from uvc.deploy.export import export_compact
    from uvc.cost.flops import ViTDims
    from uvc.deploy.freeze import base_spec
    from utils.benchmark import interleaved_medians

    vit = create_model(args.model_type).eval()
    d = ViTDims.of(vit)
    spec = base_spec(vit, args.model_type)
    for block in spec["blocks"]:
        block["value_dims"] = [list(range(d.head_dim // 2))] * d.num_heads
        block["neurons"] = list(range(d.mlp_hidden // 2))
    half = export_compact(vit, spec).eval()
    tokens = torch.randn(args.batch_size, d.num_patches + d.num_prefix_tokens, d.embed_dim)
    images = torch.randn(args.batch_size, d.in_chans, *vit.patch_embed.img_size)
    widths = [d.mlp_hidden * k // 8 for k in (2, 4, 6, 8)]
    fns = {f"mlp {w}": (lambda m: lambda: m(tokens))(CompactMlp(d.embed_dim, w).eval()) for w in widths}
    fns.update({"dense": lambda: vit(images), "half": lambda: half(images)})
    with torch.inference_mode():
        seconds = interleaved_medians(fns, "cpu", warmup=1, repeats=args.repeats, min_round_s=0.05)
    out = {k: 1e3 * v for k, v in seconds.items() if k.startswith("mlp")}
    out["half / dense"] = seconds["half"] / seconds["dense"]
    return out


def sessions(args, env: dict) -> list:
    argv = ["--session", "--model_type", args.model_type, "--batch_size", str(args.batch_size),
            "--repeats", str(args.repeats)]
    return [session_json("latency_stability.py", argv, env) for _ in range(args.sessions)]


def summary(runs: list) -> dict:
    return {k: {"median": statistics.median(r[k] for r in runs), "spread": max(r[k] for r in runs)
                / min(r[k] for r in runs) - 1, "sessions": [r[k] for r in runs]} for k in runs[0]}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.session:
        print(json.dumps(one_session(args)))
        return 0
    results = {"allocator as is": summary(sessions(args, {})), "mmap threshold 4 GiB": summary(sessions(args, HEAP))}
    keys = list(next(iter(results.values())))
    rows = [[k] + [f"{r[k]['median']:.3f}" if k.startswith("half") else f"{r[k]['median']:.1f}" for r in
                   results.values()] + [f"{100 * r[k]['spread']:.0f}%" for r in results.values()] for k in keys]
    head = ["quantity (ms, or ratio)"] + [f"median, {n}" for n in results] + [f"spread, {n}" for n in results]
    command = shlex.join(["python", "scripts/latency_stability.py", *(sys.argv[1:] if argv is None else argv)])
    text = (f"Produced by `{command}`: {args.sessions} sessions each, batch {args.batch_size}, "
            f"{args.model_type}; spread = max / min - 1 over the sessions.\n\n{markdown_table(head, rows)}\n")
    print(text)
    if args.out:
        write_result(args.out, text, {"command": command, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
