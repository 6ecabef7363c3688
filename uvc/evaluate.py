"""Evaluate any file on a data set: top-1, top-5, loss, MACs, parameters and throughput.

    python -m uvc.evaluate compact.pth --dataset imagenet --data_dir /path/to/imagenet
    python -m uvc.evaluate runs/s2/vit_digits_patch2_8_uvc_post_best.pth    # on the data of its run
    torchrun --nproc_per_node=2 -m uvc.evaluate compact.pth --config configs/digits_demo.py --json

FILE is a dense checkpoint (DeiT's and timm's layouts, post_train.py's dense file; `--model_type`
names its type if it records none, `--input_size` resamples it), a stage-1 or stage-2 file
(evaluated as the compact model it exports to, which computes the same logits) or a compact
model. The data flags are the entry scripts' (utils/config.py: --config, --dataset, --data_dir,
--input_size, --synthetic_size, --eval_batch_size, --num_workers, --fp16, ...); a stage-1/2 or
dense file written by this project evaluates, unless told otherwise, on the data set of the run
that wrote it. Under torchrun every rank evaluates its own shard of the validation set, each
image once, and the numbers are sums over the ranks, equal to a single process's. Throughput is
the median of --repeats timed forward passes of --throughput_batch random images on rank 0
(utils/benchmark.py). MACs are multiply-accumulates (the papers' "FLOPs"), by uvc.cost.flops.
Bad input: one line on stderr, exit code 2.
"""
import json
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from data import DataError, build_eval_dataset, build_eval_loader
from models import create_model, load_pretrained, rebuild, resolve_model_type
from models.compact import FORMAT as COMPACT_FORMAT
from utils.benchmark import images_per_second
from utils.config import apply_overrides, subset_parser
from utils.dist import cleanup, init_distributed, is_main_process
from engine.entry import run_entry
from engine.loop import evaluate
from uvc.deploy.export import build_masked_source, export_compact
from uvc.deploy.stagefile import DATA_KEYS, TRAINING_FORMATS
from uvc.report.counting import build_report
from uvc.report.kinds import KINDS, ReportError
from uvc.report.models import built_model
from uvc.report.reading import read_subject

# the config keys this tool reads (each is a flag, as in the entry scripts)
EVAL_KEYS = ("dataset", "data_dir", "download", "num_workers", "pin_mem", "input_size", "synthetic_size",
             "mean", "std", "crop_pct", "eval_batch_size", "fp16", "gpu_num", "local_rank", "model_type")
# what a file's own config says about its data, used unless the command line says otherwise
FILE_DATA_KEYS = DATA_KEYS


@dataclass
class Loaded:
    model: nn.Module
    report: dict  # uvc.report.build_report: macs, dense_macs, params, dense_params, kind, model_type, ...
    in_chans: int
    img_size: int
    num_classes: int
    file_config: dict  # the data keys of the run that wrote the file ({} if unknown)


def _dense_model(subject) -> nn.Module:
    """The timm model of a dense checkpoint, its weights loaded (pos_embed resampled to --input_size)."""
    sizes = subject.dense_spec
    if sizes.get("model_kwargs") is not None:
        model = rebuild(subject.model_type, dict(sizes["model_kwargs"], img_size=sizes["img_size"]))
    else:
        model = create_model(subject.model_type, num_classes=sizes["num_classes"], img_size=sizes["img_size"])
    load_pretrained(model, subject.source, num_classes_ok=False, model_type=subject.model_type)
    return model


def load_model(path: str, input_size: int = 0, model_type: str = "") -> Loaded:
    """The model a file holds, in eval mode on the CPU, and its costs."""
    if not os.path.isfile(path):
        raise ReportError(f"{path} does not exist or is not a file; pass a dense, stage-1, stage-2 or compact file")
    subject = read_subject(path, model_type=model_type or None)
    if subject.kind == "dense" and input_size and input_size != subject.dense_spec["img_size"]:
        subject = read_subject(path, img_size=input_size, model_type=model_type or None)
    elif subject.kind != "dense" and input_size and input_size != subject.dense_spec["img_size"]:
        raise ReportError(f"--input_size {input_size}: {path} is a {KINDS[subject.kind]} at "
                          f"{subject.dense_spec['img_size']}px, fixed by its architecture; drop --input_size")
    if subject.kind != "dense" and model_type and resolve_model_type(model_type) != subject.model_type:
        raise ReportError(f"--model_type {model_type}: {path} is a {KINDS[subject.kind]} of {subject.model_type}; "
                          f"drop --model_type (it names the type of a dense file that records none)")
    if subject.kind == COMPACT_FORMAT:
        model = built_model(subject, "cpu")
    elif subject.kind in TRAINING_FORMATS:
        model = export_compact(build_masked_source(subject.checkpoint), subject.arch)
    else:
        model = _dense_model(subject)
    config = subject.config if subject.config is not None else subject.checkpoint.get("config")
    file_config = {k: v for k, v in (config or {}).items() if k in FILE_DATA_KEYS} if isinstance(config, dict) \
        else {}
    sizes = subject.dense_spec
    return Loaded(model.eval(), build_report(subject), sizes["in_chans"], sizes["img_size"], sizes["num_classes"],
                  file_config)


def parse(argv):
    """(config, args): the data flags of utils/config.py plus this tool's own."""
    config, parser = subset_parser(EVAL_KEYS, argv, "python -m uvc.evaluate")
    parser.description = "Top-1, top-5, loss, MACs, parameters and throughput of a file on a data set."
    parser.add_argument("file", metavar="FILE", help="dense checkpoint, stage-1/2 file or compact.pth")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--throughput_batch", type=int, default=64, help="images per timed forward pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the throughput (0: not measured)")
    args = parser.parse_args(argv)
    if args.throughput_batch < 1 or args.repeats < 0:
        raise ValueError("--throughput_batch must be positive and --repeats at least 0")
    return config, args


def run(config, args) -> dict:
    """Evaluate args.file; returns the numbers on rank 0 (None on the other ranks)."""
    given = {k for k in EVAL_KEYS if k in vars(args)}
    loaded = load_model(args.file, int(getattr(args, "input_size", 0) or 0), getattr(args, "model_type", ""))
    if not loaded.file_config and not given & {"dataset", "data_dir"} and not getattr(args, "config", None):
        raise ReportError(f"{args.file} does not record the data it was trained on: pass --dataset and --data_dir "
                          f"(or --config)")
    config = apply_overrides(config, args, EVAL_KEYS, {k: v for k, v in loaded.file_config.items() if k not in given})
    env = init_distributed(config.gpu_num, config.local_rank)
    val_set, data_classes = build_eval_dataset(config, loaded.img_size, loaded.in_chans)
    if loaded.num_classes < data_classes:
        raise DataError(f"--dataset {config.dataset} has {data_classes} classes but {args.file} classifies "
                        f"{loaded.num_classes}; evaluate it on its own data set")
    loader = build_eval_loader(config, val_set, env.world_size, env.rank)
    model = loaded.model.to(env.device)
    metrics = evaluate(model, loader, env.device, None, config.fp16)
    r = loaded.report
    out = {"file": args.file, "kind": r["kind"], "model_type": r["model_type"], "img_size": loaded.img_size,
           "dataset": config.dataset, "data_dir": config.data_dir, "images": len(val_set), **metrics,
           "macs": r["macs"], "dense_macs": r["dense_macs"], "macs_ratio": r["macs_ratio"], "params": r["params"],
           "dense_params": r["dense_params"], "device": str(env.device), "world_size": env.world_size}
    if args.repeats and is_main_process():
        out.update(throughput_batch=args.throughput_batch, images_per_s=images_per_second(
            model, (loaded.in_chans, loaded.img_size, loaded.img_size), args.throughput_batch, env.device,
            amp=config.fp16, repeats=args.repeats))
    main_process = is_main_process()
    if env.distributed:
        torch.distributed.barrier()  # the other ranks wait for rank 0's timing
    cleanup()
    return out if main_process else None


def format_text(r: dict) -> str:
    where = f"{r['dataset']}" + (f" {r['data_dir']}" if r["dataset"] in ("imagenet", "cifar10", "cifar100") else "")
    lines = [f"{r['file']}: {r['kind']}, {r['model_type']} at {r['img_size']}px; {where}, {r['images']} images"
             + (f" on {r['world_size']} ranks" if r["world_size"] > 1 else ""),
             f"top-1 {r['top1']:.2f}  top-5 {r['top5']:.2f}  loss {r['loss']:.4f}",
             f"MACs {r['macs'] / 1e6:.4g}M ({100 * r['macs_ratio']:.1f}% of dense {r['dense_macs'] / 1e6:.4g}M), "
             f"params {r['params'] / 1e3:.4g}K ({100 * r['params'] / r['dense_params']:.1f}% of dense)"]
    if "images_per_s" in r:
        lines.append(f"throughput {r['images_per_s']:.1f} images/s ({r['device']}, batch {r['throughput_batch']})")
    return "\n".join(lines)


def main(argv=None) -> None:
    config, args = parse(sys.argv[1:] if argv is None else list(argv))
    out = run(config, args)
    if out is not None:
        print(json.dumps(out) if args.json else format_text(out))


if __name__ == "__main__":
    run_entry(main, sys.argv[1:])
