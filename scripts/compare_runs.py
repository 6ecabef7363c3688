r"""Finished runs compared side by side, measured as the sweep measures them (scripts.pipeline.Bench.measure).

    python scripts/compare_runs.py --dataset mnist --teacher log/mnist_teacher.pth \
        --group "before=runs/old/s730,runs/old/s731" --group "after=runs/new/s730,runs/new/s731" --out log/x
    python scripts/compare_runs.py --config configs/deit_tiny.py --dataset imagenet --data_dir /path/to/tree \
        --input_size 224 --teacher dense.pth --group "UVC=runs/a,runs/b" --group "mine=runs/c" --out cmp

Each group is a name and the run folders of one setting (one per seed); a run folder holds `stage1/` and
`stage2/`, the --output_dir of joint_train.py and of post_train.py on its stage-1 file. Per run: top-1 at
stage 2's last and best epoch (its log.jsonl), top-1 before fine-tuning (the stage-1 file cut to its
architecture), the MACs ratio (fvcore) and the speedup at batch 64; every model is timed side by side with
the dense teacher in one run, so the speedups of the groups are comparable. Writes <out>.md (per group: the
mean and the range over its runs) and <out>.json ({"command", "teacher_top1", "rows"}).
"""
import argparse
import glob
import os
import shlex
import sys
from typing import List, Tuple

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from scripts.pipeline import DATASETS, Bench, stage1_run
from scripts.results import markdown_table, write_result
from scripts.sweep_report import spread


def parse_group(text: str) -> Tuple[str, List[str]]:
    """"name=folder,folder,..." -> (name, folders); one line if it is malformed."""
    name, sep, folders = text.partition("=")
    if not sep or not name.strip() or not folders.strip():
        raise argparse.ArgumentTypeError(f"--group {text!r}: give NAME=FOLDER[,FOLDER...]")
    return name.strip(), [f.strip() for f in folders.split(",") if f.strip()]


def run_of(name: str, folder: str) -> dict:
    """The run in `folder` (stage1/<model>_uvc.pth, stage2/compact.pth) as the sweep's run dict."""
    stage1 = sorted(glob.glob(os.path.join(folder, "stage1", "*_uvc.pth")))
    compact = os.path.join(folder, "stage2", "compact.pth")
    if len(stage1) != 1 or not os.path.isfile(compact):
        raise SystemExit(f"{folder}: not a finished run (it needs one stage1/*_uvc.pth and stage2/compact.pth)")
    return dict(stage1_run(name, stage1[0], compact, [os.path.join(folder, "stage1"), os.path.join(folder, "stage2")]),
                folder=folder)


def table(rows: List[dict]) -> str:
    """Per group, in the order given: runs, top-1 last / best / before fine-tuning, MACs ratio, speedup."""
    body = []
    for name in dict.fromkeys(r["group"] for r in rows):
        own = [r for r in rows if r["group"] == name]
        body.append([name, str(len(own))] + [spread([r[k] for r in own]) for k in
                                             ("top1_last", "top1_best", "top1_before_ft", "macs_ratio")]
                    + [spread([r["speedup_b64"] for r in own]) + "x"])
    return markdown_table(["group", "runs", "top-1 last", "top-1 best", "top-1 before FT", "MACs ratio",
                           "speedup b64"], body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="the runs' config (configs/deit_tiny.py, ...); default: the demo "
                                                  "config of --dataset")
    p.add_argument("--dataset", required=True, help="the runs' data set: a demo one (" + ", ".join(sorted(DATASETS))
                   + ") or, with --config, any the config reads (imagenet: an ImageFolder tree)")
    p.add_argument("--data_dir", default=None, help="with --config: the data the runs read")
    p.add_argument("--input_size", type=int, default=None, help="with --config: the input size the runs used")
    p.add_argument("--teacher", required=True, help="the dense model the runs were compressed from")
    p.add_argument("--group", type=parse_group, action="append", required=True, metavar="NAME=FOLDER[,FOLDER...]",
                   help="a setting and its runs' folders (one per seed), in the table's order; give one per setting")
    p.add_argument("--threads", type=int, default=1, help="threads every model is timed at")
    p.add_argument("--out", required=True, help="writes <out>.md and <out>.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.config is None and (args.data_dir is not None or args.input_size is not None):
        p.error("--data_dir and --input_size are for runs of a --config; the demo data sets have their own")
    given = [(f"--{key}", str(getattr(args, key))) for key in ("data_dir", "input_size")
             if getattr(args, key) is not None]
    overrides = [] if args.config is None else ["--dataset", args.dataset] + [f for pair in given for f in pair]
    bench = Bench("" if args.config else args.dataset, threads=args.threads, config_file=args.config or "",
                  overrides=overrides, teacher_file=args.teacher)
    runs = [run_of(name, folder) for name, folders in args.group for folder in folders]
    dense = bench.dense_model(args.teacher)
    teacher, *measured = bench.measure(runs, dense)
    rows = [{"group": run["name"], "folder": run["folder"], "top1_last": m["top1_last"], "top1_best": m["top1_best"],
             "top1_before_ft": m["top1_before"], "macs_ratio": m["macs_ratio"], "speedup_b64": m["speedup_b64"],
             "search_end": run["search_end"]} for run, m in zip(runs, measured)]
    command = "python scripts/compare_runs.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = (f"Produced by `{command}`.\n\nTop-1 in % on the validation split, mean (range) over each group's "
            f"runs; the dense teacher {teacher['top1']:.2f}. Speedup: images/s over the dense teacher's at batch "
            f"64, every model timed side by side in one run at {args.threads} thread(s).\n\n{table(rows)}\n")
    write_result(args.out, text, {"command": command, "teacher_top1": teacher["top1"], "rows": rows})
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
