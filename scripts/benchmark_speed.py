"""Inference throughput of a compressed model against its dense original.

    python scripts/benchmark_speed.py --checkpoint out/deit_tiny_patch16_224_uvc.pth
    python scripts/benchmark_speed.py --checkpoint out/compact.pth --batch_sizes 1,64 --repeats 7 --json

--checkpoint is a stage-1 file (joint_train.py), a stage-2 file (post_train.py)
or a compact model (compact.pth, python -m uvc.export). Three models are timed
side by side, in interleaved rounds (utils/benchmark.py), on the same batch:

  dense    the uncompressed timm model
  masked   the timm model with the frozen masks, skipped blocks and kept patches
           (uvc.search.masked_model.MaskedViT): what the reference implementation deploys
  compact  the physically smaller model (models/compact.py)

For a compact file the dense and masked models get random weights (throughput
does not depend on them) and the masked model keeps the first H' heads, dv dims
and M' neurons of every block: the same costs. The table gives each model's
MACs (multiply-accumulates, "FLOPs" in the papers; for the masked model what it
actually executes), images/s per batch size, the measured speedup over dense and
the ideal one, 1 / MACs ratio. On CUDA the time is taken between CUDA events, in
float32 and under torch.amp in float16 and (where the GPU has it) bfloat16.
`--latency` adds the latency cost model's estimate (uvc/cost/latency.py: the table of
this device at each batch size, measured once and cached, as `--budget_metric
latency` uses it) of the dense and compact models' time per batch beside the
measured one (float32).
`--onnx` (CPU) adds a fourth: the compact model exported to ONNX (uvc/deploy/onnx_export.py,
a temporary file) run by onnxruntime with as many threads as torch.
--json prints one object: macs_ratio, speedup_{masked,compact,onnx}_b{N}, ideal_speedup,
images_per_s and the rest.
"""
import argparse
import copy
import os
import sys
import tempfile
import time

import torch

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.compact import FORMAT as COMPACT_FORMAT
from uvc.cost.cost import compact_cost, dense_cost, full_cost
from uvc.deploy.export import compact_macs, export_compact, spec_dims
from uvc.cost.latency import LatencyCost
from uvc.cost.latency_table import load_or_measure
from uvc.cost.flops import dense_macs, vit_macs
from uvc.deploy.freeze import apply_spec
from uvc.search.masked_model import MaskedViT
from uvc.report.kinds import KINDS, ReportError
from uvc.report.models import arch_of_compact_spec, built_model, dense_vit
from uvc.report.reading import read_subject
from utils.benchmark import compare_throughput, run_cli, add_common_args


def build_models(subject, device):
    """(models {dense, masked, compact}, arch) of a stage-1/2 or compact subject."""
    sizes = subject.dense_spec
    dense = dense_vit(sizes, "cpu")
    if subject.kind == COMPACT_FORMAT:
        arch = arch_of_compact_spec(subject.compact_spec)
        compact = built_model(subject, "cpu")
    else:
        arch = subject.arch
        state = {k[len("module."):] if k.startswith("module.") else k: v
                 for k, v in subject.checkpoint["model"].items()}
        try:
            dense.load_state_dict(state)
        except RuntimeError as e:
            raise ReportError(f"the weights of {subject.source} do not fit its architecture "
                              f"({' '.join(str(e).split())[:200]})") from None
        compact = export_compact(dense, arch)
    masked = MaskedViT(copy.deepcopy(dense))
    apply_spec(masked, arch)
    models = {"dense": dense, "masked": masked, "compact": compact}
    return {name: m.to(device).eval() for name, m in models.items()}, arch


def add_onnx(models: dict, directory: str) -> float:
    """Export the compact model to ONNX in `directory` and time its onnxruntime session as "onnx";
    returns max |onnxruntime - compact| logits."""
    from uvc.deploy.onnx_export import OnnxModel, check_onnx, export_onnx

    path = os.path.join(directory, "compact.onnx")
    export_onnx(models["compact"], path)
    models["onnx"] = OnnxModel(path, threads=torch.get_num_threads())
    return check_onnx(models["compact"], path, sess=models["onnx"].sess)


def executed_macs(subject, arch) -> dict:
    """MACs each model runs: the masked model computes every group of its kept blocks."""
    dims = spec_dims(subject.dense_spec)
    full = torch.ones(dims.depth, dtype=torch.float64)
    keep = torch.tensor([0.0 if b["skipped"] else 1.0 for b in arch["blocks"]], dtype=torch.float64)
    masked = float(vit_macs(dims, full * dims.num_heads, full * dims.num_heads * dims.head_dim,
                            full * dims.mlp_hidden, keep, len(arch["patches_kept"])))
    compact = compact_macs(subject.compact_spec)
    return {"dense": dense_macs(dims), "masked": masked, "compact": compact, "onnx": compact}


@torch.no_grad()
def max_logit_diff(models: dict, sizes: dict, device) -> float:
    """|compact - masked| on random images: the export reproduces the masked model."""
    x = torch.randn(2, sizes["in_chans"], sizes["img_size"], sizes["img_size"], device=device)
    return float((models["compact"](x) - models["masked"](x)).abs().max())


def run(args) -> dict:
    subject = read_subject(args.checkpoint)
    if not subject.compressed:
        raise ReportError(f"{args.checkpoint} is a {KINDS[subject.kind]}: pass a stage-1, stage-2 or "
                          f"compact file (python -m uvc.report describes any file)")
    model_type = subject.model_type or args.model_type
    device = torch.device(args.device)
    if args.onnx and device.type != "cpu":
        raise ReportError("--onnx times onnxruntime on the CPU: pass --device cpu")
    models, arch = build_models(subject, device)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_diff = add_onnx(models, tmp) if args.onnx else None
        return measure(args, subject, models, arch, model_type, device, onnx_diff)


def precisions(device: torch.device) -> list:
    """(tag, amp dtype or None): float32 everywhere; on CUDA also float16, and bfloat16 where supported."""
    out = [("fp32", None)]
    if device.type == "cuda":
        out.append(("fp16", torch.float16))
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            out.append(("bf16", torch.bfloat16))
    return out


def latency_estimates(args, subject, models: dict, model_type: str, device, out: dict) -> dict:
    """Per batch size: the cost model's seconds per batch of the dense model (R's denominator: the table's
    measurement of it, or for a first-format table its sum of parts), of the compact model and of the
    unpruned model as parts, against the measured ones (float32), and the two ratios."""
    rows = {}
    dims = spec_dims(subject.dense_spec)
    for bs in args.batch_sizes:
        table, path = load_or_measure(models["dense"], model_type, device, args.latency_cache, bs,
                                      log=lambda text: print(text, file=sys.stderr))
        cost = LatencyCost(dims, table)
        est = {"dense": dense_cost(cost), "compact": compact_cost(cost, subject.compact_spec)}
        real = {name: bs / out["images_per_s"][name][f"b{bs}"] for name in est}
        est["full_width"] = full_cost(cost)  # the cost model's own estimate of the unpruned model
        rows[f"b{bs}"] = {"table": path, "estimated_s": est, "measured_s": real,
                          "estimated_ratio": est["compact"] / est["dense"],
                          "measured_ratio": real["compact"] / real["dense"]}
    return rows


def measure(args, subject, models: dict, arch: dict, model_type: str, device, onnx_diff) -> dict:
    """Time `models` side by side at every batch size (and under amp on CUDA)."""
    names = tuple(models)
    macs = {name: m for name, m in executed_macs(subject, arch).items() if name in models}
    sizes = subject.dense_spec
    shape = (sizes["in_chans"], sizes["img_size"], sizes["img_size"])
    clock = time.process_time if args.clock == "process" else time.perf_counter
    out = {"checkpoint": args.checkpoint, "kind": subject.kind, "model_type": model_type, "device": str(device),
           "threads": torch.get_num_threads(), "clock": args.clock, "repeats": args.repeats,
           "batch_sizes": args.batch_sizes,
           "macs": macs, "macs_ratio": macs["compact"] / macs["dense"],
           "ideal_speedup": {name: macs["dense"] / macs[name] for name in names},
           # a compact file has no dense weights: its masked model is random and not comparable
           "max_logit_diff_compact_vs_masked": None if subject.kind == COMPACT_FORMAT
           else max_logit_diff(models, sizes, device), "max_logit_diff_onnx_vs_compact": onnx_diff,
           "models": list(names)}
    for tag, amp_dtype in precisions(device):
        suffix = "" if tag == "fp32" else f"_{tag}"
        ips = {name: {} for name in names}
        for bs in args.batch_sizes:
            measured = compare_throughput(models, shape, bs, device, amp=amp_dtype is not None, warmup=args.warmup,
                                          repeats=args.repeats, clock=clock, amp_dtype=amp_dtype)
            for name in names:
                ips[name][f"b{bs}"] = measured[name]
        out.update({f"speedup_{name}_b{bs}{suffix}": ips[name][f"b{bs}"] / ips["dense"][f"b{bs}"]
                    for name in names[1:] for bs in args.batch_sizes})
        out["images_per_s" + suffix] = ips
        out.setdefault("precisions", []).append(tag)
    if args.latency:
        out["latency_estimate"] = latency_estimates(args, subject, models, model_type, device, out)
    return out


def format_table(r: dict) -> str:
    bss = r["batch_sizes"]
    diff = r["max_logit_diff_compact_vs_masked"]
    lines = [f"{r['model_type']} ({r['kind']} {r['checkpoint']}) on {r['device']}, {r['threads']} threads, "
             f"{r['clock']} clock, median of {r['repeats']} interleaved rounds"
             + (f"; |compact - masked| logits {diff:.1e}" if diff is not None else
                "; dense and masked models with random weights")
             + (f"; |onnx - compact| logits {r['max_logit_diff_onnx_vs_compact']:.1e}"
                if r.get("max_logit_diff_onnx_vs_compact") is not None else "")]
    for tag in r["precisions"]:
        suffix = "" if tag == "fp32" else f"_{tag}"
        head = f"{'model':<8} {'MACs':>9} {'ratio':>6} " + " ".join(f"{'img/s b' + str(b):>11}" for b in bss) \
            + " " + " ".join(f"{'speedup b' + str(b):>11}" for b in bss) + f" {'ideal':>6}"
        lines += [f"[{tag}]", head]
        for name in r["models"]:
            ips = r["images_per_s" + suffix][name]
            ratio = r["macs"][name] / r["macs"]["dense"]
            speed = [ips[f"b{b}"] / r["images_per_s" + suffix]["dense"][f"b{b}"] for b in bss]
            lines.append(f"{name:<8} {r['macs'][name] / 1e9:>8.3f}G {ratio:>6.3f} "
                         + " ".join(f"{ips[f'b{b}']:>11.1f}" for b in bss) + " "
                         + " ".join(f"{s:>10.2f}x" for s in speed) + f" {1 / ratio:>5.2f}x")
    lines.append("MACs: multiply-accumulates per image (masked: what it executes; its masks only zero groups)"
                 + ("; onnx: the compact model under onnxruntime" if "onnx" in r["models"] else ""))
    if "latency_estimate" in r:
        lines += ["[latency cost model, fp32: estimated against measured time per batch]",
                  f"{'batch':>5} {'dense table ms':>14} {'measured':>9} {'compact est ms':>14} {'measured':>9} "
                  f"{'est ratio':>9} {'measured':>9} {'full-width est ms':>17}"]
        for bs in r["batch_sizes"]:
            e = r["latency_estimate"][f"b{bs}"]
            est, real = e["estimated_s"], e["measured_s"]
            lines.append(f"{bs:>5} {1e3 * est['dense']:>14.3f} {1e3 * real['dense']:>9.3f} "
                         f"{1e3 * est['compact']:>14.3f} {1e3 * real['compact']:>9.3f} "
                         f"{e['estimated_ratio']:>9.3f} {e['measured_ratio']:>9.3f} "
                         f"{1e3 * est['full_width']:>17.3f}")
        lines += ["dense table: the table's own measurement of the dense model (R's denominator); full-width est: "
                  "the cost model's sum at full width",
                  "tables: " + ", ".join(sorted({e["table"] for e in r["latency_estimate"].values()}))]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Throughput of dense, masked and compact models side by side.")
    parser.add_argument("--checkpoint", required=True, help="stage-1, stage-2 or compact file")
    parser.add_argument("--model_type", default="", help="model type to record if the file names none")
    parser.add_argument("--batch_sizes", default="1,64", help="comma-separated batch sizes (default 1,64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per model and batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forward passes first")
    parser.add_argument("--onnx", action="store_true", help="also time the compact model exported to ONNX "
                                                             "under onnxruntime (CPU)")
    parser.add_argument("--latency", action="store_true", help="also the latency cost model's estimate of the "
                        "dense and compact time (the table of this device per batch size, measured once, cached)")
    parser.add_argument("--latency_cache", default="", help="latency table file (.json; one batch size) or "
                                                           "directory (default ~/.cache/uvc/latency)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch_sizes {args.batch_sizes!r}: give comma-separated integers, e.g. 1,64")
    if not args.batch_sizes or min(args.batch_sizes) < 1 or args.repeats < 1:
        parser.error("--batch_sizes and --repeats must be positive")
    return args


def main(argv=None) -> int:
    return run_cli("benchmark_speed", parse_args(argv), run, format_table)

if __name__ == "__main__":
    sys.exit(main())
