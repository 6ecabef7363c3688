"""The command line of `python -m uvc.report` (usage in uvc/report/__init__.py)."""
import argparse
import json
import os
import sys

import torch

from uvc.report.counting import build_report, latency_table_of
from uvc.report.kinds import ReportError
from uvc.report.plot import plot_architecture
from uvc.report.reading import read_subject
from uvc.report.render import format_text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m uvc.report",
                                     description="MACs, parameters and architecture of a (compressed) ViT.")
    parser.add_argument("subject", metavar="MODEL_TYPE_OR_FILE",
                        help="a timm ViT name (e.g. deit_tiny_patch16_224), a dense checkpoint, a stage-1/2 file "
                             "or compact.pth")
    parser.add_argument("--model_type", "--model-type", default=None,
                        help="the timm type of a dense checkpoint that does not name one")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--fvcore", action="store_true", help="also count with fvcore on the built model")
    parser.add_argument("--plot", default="", metavar="OUT.png", help="draw the architecture per block")
    parser.add_argument("--img_size", "--img-size", type=int, default=None, help="resolution (model types, dense)")
    parser.add_argument("--enable_deit", "--enable-deit", type=int, default=0, choices=(0, 1),
                        help="1: the distillation-token form of a model type")
    parser.add_argument("--latency", action="store_true",
                        help="estimated latency ratio from the latency table of --device (measured once and cached, "
                             "as --budget_metric latency does); without it, a latency-searched stage-1 file's table")
    parser.add_argument("--latency_cache", default="", help="latency table file (.json) or directory "
                                                           "(default ~/.cache/uvc/latency)")
    parser.add_argument("--latency_batch", type=int, default=64, help="batch size of the latency table")
    parser.add_argument("--device", default="cpu", help="device the latency table is measured on")
    parser.add_argument("--threads", type=int, default=0,
                        help="with --latency: the CPU threads the table is measured at and looked up by (as the "
                             "sweep's --threads; 0: torch's default). A table is per thread count: a narrow model "
                             "gains less from more threads than a wide one")
    return parser.parse_args(argv)


def table_at_threads(args: argparse.Namespace, subject):
    """latency_table_of at --threads CPU threads (the caller's count is given back)."""
    if args.threads < 0 or (args.threads and not args.latency):
        raise ReportError(f"--threads {args.threads}: give a positive thread count, and only with --latency")
    own = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return latency_table_of(subject, args.latency, torch.device(args.device), args.latency_cache,
                                args.latency_batch)
    finally:
        torch.set_num_threads(own)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.img_size is not None and args.img_size <= 0:
            raise ReportError(f"--img_size must be positive, got {args.img_size}")
        subject = read_subject(args.subject, args.img_size, args.enable_deit, args.model_type)
        if args.latency_batch < 1:
            raise ReportError(f"--latency_batch must be at least 1, got {args.latency_batch}")
        latency = table_at_threads(args, subject)
        report = build_report(subject, args.fvcore, latency)
        if args.plot:
            try:
                plot_architecture(report, subject.dense_spec, args.plot)
            except OSError as e:
                raise ReportError(f"cannot write --plot {args.plot} ({e.strerror or e})") from None
    except ValueError as e:  # ReportError, and shape errors from malformed files
        if os.environ.get("UVC_DEBUG"):
            raise
        message = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"uvc.report: error: {message}", file=sys.stderr)
        return 2
    except (RuntimeError, KeyError, TypeError) as e:  # a file that parses but is not a usable model
        if os.environ.get("UVC_DEBUG"):
            raise
        message = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        print(f"uvc.report: error: {args.subject} cannot be built ({type(e).__name__}: {message})", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print(format_text(report))
        if args.plot:
            print(f"wrote {args.plot}")
    return 0
