"""Inference throughput of a compressed model against its dense original.

    python scripts/benchmark_speed.py --checkpoint out/deit_tiny_patch16_224_uvc.pth
    python scripts/benchmark_speed.py --checkpoint out/compact.pth --batch_sizes 1,64 --repeats 7 --json

--checkpoint is a stage-1 file (joint_train.py), a stage-2 file (post_train.py)
or a compact model (compact.pth, python -m uvc.export). Three models are timed
side by side, in interleaved rounds (utils/benchmark.py), on the same batch:

  dense    the uncompressed timm model
  masked   the timm model with the frozen masks, skipped blocks and kept patches
           (uvc.masked_model.MaskedViT): what the reference implementation deploys
  compact  the physically smaller model (models/compact.py)

For a compact file the dense and masked models get random weights (throughput
does not depend on them) and the masked model keeps the first H' heads, dv dims
and M' neurons of every block: the same costs. The table gives each model's
MACs (multiply-accumulates, "FLOPs" in the papers; for the masked model what it
actually executes), images/s per batch size, the measured speedup over dense and
the ideal one, 1 / MACs ratio. On CUDA the three are timed under torch.amp too.
`--onnx` (CPU) adds a fourth: the compact model exported to ONNX (uvc/onnx_export.py,
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models.compact import FORMAT as COMPACT_FORMAT  # noqa: E402
from uvc.export import compact_macs, export_compact, spec_dims  # noqa: E402
from uvc.flops import dense_macs, vit_macs  # noqa: E402
from uvc.freeze import apply_spec  # noqa: E402
from uvc.masked_model import MaskedViT  # noqa: E402
from uvc.report import KINDS, ReportError, arch_of_compact_spec, built_model, dense_vit, read_subject  # noqa: E402
from utils.benchmark import compare_throughput, run_cli, add_common_args  # noqa: E402

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
    from uvc.onnx_export import OnnxModel, check_onnx, export_onnx

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


def measure(args, subject, models: dict, arch: dict, model_type: str, device, onnx_diff) -> dict:
    """Time `models` side by side at every batch size (and under amp on CUDA)."""
    names = tuple(models)
    macs = {name: m for name, m in executed_macs(subject, arch).items() if name in models}
    sizes = subject.dense_spec
    shape = (sizes["in_chans"], sizes["img_size"], sizes["img_size"])
    precisions = [False, True] if device.type == "cuda" else [False]
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
    for amp in precisions:
        tag = "amp" if amp else "fp32"
        ips = {name: {} for name in names}
        for bs in args.batch_sizes:
            measured = compare_throughput(models, shape, bs, device, amp=amp, warmup=args.warmup,
                                          repeats=args.repeats, clock=clock)
            for name in names:
                ips[name][f"b{bs}"] = measured[name]
        speedups = {f"speedup_{name}_b{bs}" + ("_amp" if amp else ""): ips[name][f"b{bs}"] / ips["dense"][f"b{bs}"]
                    for name in names[1:] for bs in args.batch_sizes}
        out["images_per_s" + ("_amp" if amp else "")] = ips
        out.update(speedups)
        out.setdefault("precisions", []).append(tag)
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
        suffix = "_amp" if tag == "amp" else ""
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
