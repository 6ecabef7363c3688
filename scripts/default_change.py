"""A change of the default search, measured: the same cells before and after, through stage 2.

    python scripts/default_change.py --before runs/before --after runs/after \
        --before_commit 3fa6957 --out log/default_change

`--before` and `--after` are run directories of `scripts/deviations.py --variants default` (its
`default-<model>-b<budget>-s<seed>/row.json` cells, stage 2's compact model under `stage2/`), the
first written by the code before the change (a worktree at `--before_commit`), the second by the code
after it. Cells present in both are paired by model, budget and seed. `--tuned_budgets` and
`--tuned_seeds` name the settings the change was decided on (the ledger's); every other cell is a
setting it was not tuned on, reported apart. Per group: top-1 at stage 2's last and best epoch (mean
and range of after minus before), where the search landed (|searched ratio - B|), the exported ratio
minus B, and the speedup at batch 64 of both compact models, timed side by side with the dense model
in one run per cell (the same shape shares one timing, as in `scripts.deviations.speedups`), against
the dense teacher the cells distilled from (the `--model_path` of their command).
"""
import argparse
import json
import os
import shlex
import sys
from typing import Dict, List

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import benchmark_search as bench
from scripts import deviations as dev
from scripts.results import markdown_table, write_result


def read_cells(run_dir: str) -> Dict[tuple, Dict]:
    """The finished `default` cells of a deviations run directory, by (model, budget, seed)."""
    cells = {}
    for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
        path = os.path.join(run_dir, name, "row.json")
        if name.startswith("default-") and os.path.exists(path):
            with open(path) as f:
                row = json.load(f)
            cells[(row["model"], row["budget"], row["seed"])] = {**row, "run_dir": run_dir}
    return cells


def teacher_of(row: Dict) -> str:
    """The dense teacher a cell distilled from: the --model_path of its stage-1 command."""
    argv = shlex.split(row["command"])
    return argv[argv.index("--model_path") + 1]


def time_together(rows: Dict[str, Dict], dirs: Dict[str, str], teacher: str) -> Dict:
    """One pair as one row: both sides' numbers, their speedups at batch 64 timed side by side with the dense
    model (one timing for the same shape)."""
    from models.compact import load_compact
    from scripts.pipeline import Bench
    r0 = rows["before"]
    m = bench.MODELS[r0["model"]]
    runner = Bench(config_file=m["config"], overrides=m["data"], smoke=False, teacher_file=teacher)
    models, shape = {"dense": runner.dense_model(teacher)}, {}
    for side, r in rows.items():
        cell_dir = dev.folder(dirs[side], r["model"], "default", r["budget"], r["seed"])
        compact = load_compact(os.path.join(cell_dir, "stage2", "compact.pth"))
        shape[side] = dev.shape_of(compact)
        models.setdefault(shape[side], compact)
    speed = runner.throughput(models, 64)
    out = {"model": r0["model"], "budget": r0["budget"], "seed": r0["seed"]}
    for side, r in rows.items():
        out[side] = {k: r[k] for k in ("searched_ratio", "exported_ratio", "top1_last", "top1_best",
                                       "top1_after_freeze", "greedy_changed_frac", "command")}
        out[side]["speedup_b64"] = speed[shape[side]] / speed["dense"]
    out["same_shape"] = shape["before"] == shape["after"]
    return out


def summary(rows: List[Dict], tuned) -> str:
    """One line per group (the tuned settings, the others): means and ranges of after minus before."""
    groups = {"settings the change was decided on": [r for r in rows if tuned(r)],
              "settings it was not tuned on": [r for r in rows if not tuned(r)]}
    table = []
    for label, group in groups.items():
        if not group:
            continue
        diff = lambda key: [r["after"][key] - r["before"][key] for r in group]  # noqa: E731
        gap = lambda side: [abs(r[side]["searched_ratio"] - r["budget"]) for r in group]  # noqa: E731
        speed = [r["after"]["speedup_b64"] / r["before"]["speedup_b64"] - 1 for r in group]
        table.append([label, str(len(group)), dev.spread([r["before"]["top1_last"] for r in group], ".2f")[0],
                      dev.spread([r["after"]["top1_last"] for r in group], ".2f")[0], *dev.spread(diff("top1_last"), "+.2f"),
                      *dev.spread(diff("top1_best"), "+.2f"), dev.spread(gap("before"), ".3f")[0],
                      dev.spread(gap("after"), ".3f")[0],
                      dev.spread([r["after"]["exported_ratio"] - r["budget"] for r in group], "+.3f")[0],
                      *dev.spread(speed, "+.1%")])
    header = ["cells", "n", "top-1 last before", "after", "after - before: mean", "range", "top-1 best: mean",
              "range", "landing gap before", "after", "exported - B after", "speed after/before - 1: mean", "range"]
    return markdown_table(header, table)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", nargs="+", required=True, help="run directories written by the code before")
    p.add_argument("--after", nargs="+", required=True, help="run directories written by the code after")
    p.add_argument("--before_commit", required=True, help="the commit the --before cells were run at")
    p.add_argument("--tuned_budgets", type=lambda t: [float(b) for b in t.split(",") if b.strip()], default=[0.3, 0.5],
                   help="budgets the change was decided on ('': none of these cells, e.g. a change tuned on "
                        "another data set)")
    p.add_argument("--tuned_seeds", type=lambda t: [int(s) for s in t.split(",") if s.strip()], default=[730, 731],
                   help="seeds the change was decided on ('': none)")
    p.add_argument("--out", default="log/default_change", help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    before, after = {}, {}
    for d in args.before:
        before.update(read_cells(d))
    for d in args.after:
        after.update(read_cells(d))
    keys = [k for k in before if k in after]
    if not keys:
        p.error(f"no cell is in both --before {args.before} and --after {args.after}; run scripts/deviations.py "
                f"--variants default into each first")
    rows = [time_together({"before": before[k], "after": after[k]},
                          {"before": before[k]["run_dir"], "after": after[k]["run_dir"]},
                          teacher_of(before[k])) for k in sorted(keys)]
    tuned = lambda r: r["budget"] in args.tuned_budgets and r["seed"] in args.tuned_seeds  # noqa: E731
    for r in rows:
        r["tuned"] = tuned(r)
    command = "python scripts/default_change.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = (f"Produced by `{command.strip()}`.\n\nThe default search at commit {args.before_commit} (before) and "
            f"after the change, on the same cells (scripts/default_change.py): top-1 in % at stage 2's last and "
            f"best epoch, the landing gap |searched ratio - B|, and the compact models' speedups at batch 64, "
            f"timed side by side per cell. {sum(r['same_shape'] for r in rows)} of {len(rows)} cells ended at the "
            f"same architecture before and after.\n\n{summary(rows, tuned)}\n")
    write_result(args.out, text, {"command": command.strip(), "before_commit": args.before_commit, "cells": rows})
    print(summary(rows, tuned))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
