"""python -m uvc.export: a stage-1 or stage-2 file to a compact model (uvc.deploy.export).

    python -m uvc.export --checkpoint stage2.pth --output compact.pth
    python -m uvc.export --checkpoint stage2.pth --onnx compact.onnx      # ONNX (uvc/deploy/onnx_export.py)
"""
import argparse
import os
import sys

import torch
import torch.nn as nn

from models.compact import CompactViT, save_compact
from uvc.cost.flops import dense_macs
from uvc.deploy.export import build_masked_source, compact_macs, export_compact, masked_forward_reference, spec_dims
from uvc.deploy.stagefile import data_record, read_stage_file


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def summary(compact: CompactViT, source: nn.Module, max_diff: float) -> str:
    """One line: MACs and parameters against the dense model, and the export check."""
    spec = compact.spec
    macs, dense = compact_macs(spec), dense_macs(spec_dims(spec))
    params = sum(p.numel() for p in compact.parameters())
    dense_params = sum(p.numel() for p in source.parameters())
    return (f"{_human(macs)} MACs ({100 * macs / dense:.1f}% of dense {_human(dense)}), "
            f"{_human(params)} params ({100 * params / dense_params:.1f}% of {_human(dense_params)}), "
            f"{len(spec['blocks'])}/{spec['depth']} blocks, {len(spec['patches_kept'])}/{spec['num_patches']} "
            f"patches, max |logit diff| vs masked model {max_diff:.1e}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m uvc.export",
                                     description="Export a UVC stage-1/stage-2 checkpoint to a compact model.")
    parser.add_argument("--checkpoint", required=True, help="uvc-stage1-v1 or uvc-stage2-v1 file")
    parser.add_argument("--output", default="", help="where to write the compact model (uvc-compact-v1)")
    parser.add_argument("--onnx", default="", metavar="FILE.onnx",
                        help="also (or only) write it as ONNX, dynamic batch, checked under onnxruntime")
    args = parser.parse_args(argv)
    if not args.output and not args.onnx:
        parser.error("give --output compact.pth, --onnx compact.onnx, or both")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        ckpt = read_stage_file(args.checkpoint)
        source = build_masked_source(ckpt)
        compact = export_compact(source, ckpt["arch"]).eval()
    except ValueError as e:
        print(f"uvc.export: error: {e}", file=sys.stderr)
        return 2
    arch = ckpt["arch"]
    x = torch.randn(2, arch["in_chans"], arch["img_size"], arch["img_size"])
    with torch.no_grad():
        max_diff = (compact(x) - masked_forward_reference(source, arch, x)).abs().max().item()
    line = summary(compact, source, max_diff)
    for path in (args.output, args.onnx):  # a new folder for the outputs is made, as training runs make theirs
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.output:
        save_compact(compact, args.output, data_record(ckpt.get("config") or {}))
        print(f"wrote {args.output}: {line}")
    if args.onnx:
        from uvc.deploy.onnx_export import check_onnx, export_onnx

        export_onnx(compact, args.onnx)
        print(f"wrote {args.onnx}: {'the same model' if args.output else line}, as ONNX (dynamic batch); "
              f"max |onnxruntime - PyTorch logits| {check_onnx(compact, args.onnx):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
