"""The ledger of departures (issue 25): the default search with one departure from the reference at
a time replaced by the reference's rule, each through stage 2, next to the default and the reference.

    python scripts/deviations.py                  # every variant, 2 models x 2 budgets x 2 seeds (long)
    python scripts/deviations.py --resume         # the cells already done are read back, not run again
    python scripts/deviations.py --smoke --models digits --variants default no_patch_trial --out /tmp/dev

Variants (VARIANTS): `default`; `reference` (--search_algorithm reference); and `no_<departure>`,
the default search with that departure of ours replaced by the reference's rule: one
`--reference_rules` name each (uvc/search/rules.py), and y, p starting at the reference's value
(--dual_init, configs.common.REFERENCE_SEARCH), no patch trial (--patch_probe 0), no skip trial
(--skip_probe 0), any width (--round_to 1). `pretrained_start` is an option of ours, not a departure (no
verdict): stage 2 from the dense weights (`--finetune_from pretrained`, STAGE2_VARIANTS; the search is the
default's). Models are those of scripts/benchmark_search.py (its
configs, data, 1x search length, --round_to 8 and cached dense teachers). Per cell: the search's hard ratio at its end, the
exported ratio, the fraction of groups the greedy fit changed (or would have changed, when the
export takes the search as it ended), top-1 after the freeze, top-1 at the last and the best epoch of
stage 2, the seconds each stage took, and the compact model's speedup at batch 64 (every variant of a
model, budget and seed timed side by side with the dense model once all cells are done). Writes
<out>.json ({"command", "cells"}) and <out>.md: per variant, the mean and range over cells of its
difference to `default` on the same model, budget and seed, in top-1 at stage 2's last epoch, in
where the search landed, |searched ratio - budget| (the greedy fit brings every exported ratio into
its window, so the exported ratio cannot tell one search from another; `no_fit` is measured where it
acts, at the export), and in speed; and the verdict on the departure (`verdict`).
"""
import argparse
import json
import os
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Sequence

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.common import REFERENCE_SEARCH
from scripts import benchmark_search as bench
from scripts.results import finetune_top1, markdown_table, write_result
from scripts.sweep_report import exceeds
from utils.checkpoint import atomic_write_text

RULE = "--reference_rules"
VARIANTS = {
    "default": [],
    "reference": ["--search_algorithm", "reference"],
    "no_moving_target": [RULE, "fixed_target"],
    "no_proportional_z": [RULE, "integral_z"],
    "no_macshare_leastsum": [RULE, "absolute_leastsum"],
    "no_minus_one_start": [RULE, "zero_start"],
    "no_unclipped_grads": [RULE, "grad_clip"],
    "no_gate_adam": [RULE, "gate_sgd"],
    "no_gate_safety": [RULE, "no_gate_safety"],
    "no_dual_init": ["--dual_init", str(REFERENCE_SEARCH["dual_init"])],
    "no_patch_trial": ["--patch_probe", "0"],
    "no_skip_trial": ["--skip_probe", "0"],
    "no_round_to": ["--round_to", "1"],
    "pretrained_start": [],
}
STAGE2_VARIANTS = {"pretrained_start": ["--finetune_from", "pretrained"]}  # variants of stage 2: its flags
SMOKE_TEACHER = ["--epochs", "1", "--max_steps_per_epoch", "2"]  # and stage 2
SMOKE_SEARCH = ["--epochs", "2", "--warmup_epochs", "1", "--max_steps_per_epoch", "3"]
STAGE2_EPOCHS = 30  # as scripts/benchmark_search.py --stage2
FIT_WINDOW = (-0.03, 0.01)  # the exported ratio's window around the budget (uvc.deploy.fit)


def stage1_command(name: str, variant: str, budget: float, seed: int, teacher: str, out: str, smoke: bool):
    m = bench.MODELS[name]
    flags = VARIANTS[variant]
    round_to = [] if "--round_to" in flags else ["--round_to", str(bench.ROUND_TO)]
    return (["joint_train.py", "--config", m["config"], "--model_type", m["model_type"], "--model_path", teacher,
             "--budget", str(budget), "--seed", str(seed), "--output_dir", out, "--eval_every", "0",
             "--log_interval", "50", *round_to] + m["data"] + (SMOKE_SEARCH if smoke else m["lengths"][1]) + flags)


def stage2_command(name: str, variant: str, stage1_file: str, teacher: str, out: str, smoke: bool):
    m = bench.MODELS[name]
    post_config = m["config"] + (":post" if "digits_demo" in m["config"] else "")
    return (["post_train.py", "--config", post_config, "--model_type", m["model_type"], "--model_path", teacher,
             "--checkpoint_dir", stage1_file, "--output_dir", out, "--eval_every", "0"] + m["data"]
            + (SMOKE_TEACHER if smoke else ["--epochs", str(STAGE2_EPOCHS)]) + STAGE2_VARIANTS.get(variant, []))


def timed(cmd: List[str], log_path: str) -> float:
    start = time.time()
    bench.run(cmd, log_path)
    return time.time() - start


def folder(run_dir: str, name: str, variant: str, budget: float, seed: int) -> str:
    return os.path.join(run_dir, f"{variant}-{name.replace('@', '-')}-b{budget}-s{seed}")


def cell(name: str, variant: str, budget: float, seed: int, teacher: str, args) -> Dict:
    """One cell: stage 1, then stage 2, from scratch (its folder emptied first); its row, also saved as
    <folder>/row.json, which `--resume` reads back instead of running the cell again."""
    out = folder(args.run_dir, name, variant, budget, seed)
    done = os.path.join(out, "row.json")
    if args.resume and os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    shutil.rmtree(out, ignore_errors=True)
    s1 = stage1_command(name, variant, budget, seed, teacher, out, args.smoke)
    seconds1 = timed(s1, os.path.join(out, "stdout.log"))
    stage1_file = os.path.join(out, f"{bench.MODELS[name]['model_type']}_uvc.pth")
    s2_out = os.path.join(out, "stage2")
    s2 = stage2_command(name, variant, stage1_file, teacher, s2_out, args.smoke)
    seconds2 = timed(s2, os.path.join(s2_out, "stdout.log"))
    final = [r for r in bench.records(out) if "stage1_file" in r][-1]
    row = {"variant": variant, "flags": VARIANTS[variant] + STAGE2_VARIANTS.get(variant, []), "model": name, "budget": budget, "seed": seed,
           "search_steps": final["search_steps"], "searched_ratio": final["searched_macs_ratio"],
           "exported_ratio": final["macs_ratio"], "greedy_changed_frac": final["greedy_changed_frac"],
           "greedy_would_change_frac": final.get("greedy_would_change_frac"),
           "teacher_top1": final["teacher_top1"], "top1_after_freeze": final["final_top1"],
           **finetune_top1(os.path.join(s2_out, "log.jsonl")),
           "in_fit_window": FIT_WINDOW[0] <= final["macs_ratio"] - budget <= FIT_WINDOW[1],
           "warned": any("warning" in r for r in bench.records(out)),
           "seconds_stage1": round(seconds1, 1), "seconds_stage2": round(seconds2, 1),
           "command": "python " + shlex.join(s1), "stage2_command": "python " + shlex.join(s2)}
    atomic_write_text(json.dumps(row, indent=1), done)
    return row


AT_EXPORT = ("no_fit",)  # departures that act after the search: they land (or not) at the export


def gap(row: Dict) -> float:
    """How far from the budget the search itself ended (before any fit); for a departure of AT_EXPORT,
    how far the exported model is."""
    ratio = row["exported_ratio"] if row["variant"] in AT_EXPORT else row["searched_ratio"]
    return abs(ratio - row["budget"])


def shape_of(model) -> str:
    """What a compact model's time depends on: per block its heads, value dims and MLP width, and the
    patches it keeps (not its weights)."""
    blocks = [(b["heads"], b["value_dim"], b["mlp_hidden"]) for b in model.spec["blocks"]]
    return json.dumps([blocks, len(model.spec["patches_kept"])])


def speedups(rows: List[Dict], teachers: Dict[str, str], args) -> List[Dict]:
    """`rows`, each with `speedup_b64`: its compact model's images/s over the dense teacher's at batch 64.
    The distinct shapes among the variants of one model, budget and seed are timed side by side with the
    dense model (interleaved rounds, scripts.pipeline.Bench.throughput); variants that ended at the same
    shape share one timing, so timing noise cannot tell them apart."""
    from models.compact import load_compact
    from scripts.pipeline import Bench
    speedup = {}
    for name, budget, seed in dict.fromkeys((r["model"], r["budget"], r["seed"]) for r in rows):
        m = bench.MODELS[name]
        runner = Bench(config_file=m["config"], overrides=m["data"], smoke=args.smoke, teacher_file=teachers[name])
        models, shape = {"dense": runner.dense_model(teachers[name])}, {}
        for r in rows:
            if (r["model"], r["budget"], r["seed"]) == (name, budget, seed):
                cell_dir = folder(args.run_dir, name, r["variant"], budget, seed)
                compact = load_compact(os.path.join(cell_dir, "stage2", "compact.pth"))
                shape[r["variant"]] = shape_of(compact)
                models.setdefault(shape[r["variant"]], compact)
        speed = runner.throughput(models, 64)
        speedup.update({(v, name, budget, seed): speed[k] / speed["dense"] for v, k in shape.items()})
    return [{**r, "speedup_b64": speedup[(r["variant"], r["model"], r["budget"], r["seed"])]} for r in rows]


def spread(values: Sequence[float], fmt: str) -> List[str]:
    """[mean, "min .. max"] formatted, or dashes for no values."""
    if not values:
        return ["-", "-"]
    return [format(sum(values) / len(values), fmt), f"{format(min(values), fmt)} .. {format(max(values), fmt)}"]


TOP1_MARGIN = 0.1  # top-1 points: a departure must keep more than this (issue 24's margin) ...
GAP_MARGIN = 0.005  # ... or land closer to the budget by more than half the fit's tight window (0.01) ...
SPEED_MARGIN = 0.02  # ... or give a compact model faster by more than this fraction (issue 24's margin)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def verdict(variant: str, d_top1: Sequence[float], d_gap: Sequence[float], d_speed: Sequence[float] = ()) -> str:
    """Keep a departure of ours when the default search, against the reference's rule in its place (the
    no_<departure> variant), keeps more top-1 after stage 2 by more than TOP1_MARGIN, lands closer to
    the budget by more than GAP_MARGIN, or gives a faster compact model by more than SPEED_MARGIN, as
    means over the paired cells; otherwise it goes back to the reference's rule. `d_top1`, `d_gap`: the
    variant minus the default, per cell; `d_speed`: the variant's speedup over the default's, less 1."""
    if not variant.startswith("no_") or not d_top1:
        return "-"
    reasons = []
    if exceeds(0.0, mean(d_top1), TOP1_MARGIN):
        reasons.append("more top-1")
    if exceeds(mean(d_gap), 0.0, GAP_MARGIN):
        reasons.append("lands closer")
    if d_speed and exceeds(0.0, mean(d_speed), SPEED_MARGIN):
        reasons.append("faster")
    return "keep: " + ", ".join(reasons) if reasons else "revert to the reference's rule"


def summary(rows: List[Dict]) -> str:
    """Per variant: mean and range over its cells of the difference to `default` on the same model, budget
    and seed (top-1 at stage 2's last epoch; `gap`; speedup, where timed), its own means, and the verdict."""
    key = lambda r: (r["model"], r["budget"], r["seed"])  # noqa: E731
    default = {key(r): r for r in rows if r["variant"] == "default"}
    timed = all("speedup_b64" in r for r in rows)
    table = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        own = [r for r in rows if r["variant"] == variant]
        paired = [(r, default[key(r)]) for r in own if key(r) in default]
        d_top1 = [r["top1_last"] - d["top1_last"] for r, d in paired]
        d_gap = [gap(r) - gap({**d, "variant": variant}) for r, d in paired]  # the default measured alike
        d_speed = [r["speedup_b64"] / d["speedup_b64"] - 1 for r, d in paired] if timed else []
        speed = ([*spread([r["speedup_b64"] for r in own], ".2f")[:1], *spread(d_speed, "+.1%")[:1]]
                 if timed else [])
        table.append([variant, " ".join(own[0]["flags"]) or "-", str(len(own)),
                      *spread([r["top1_last"] for r in own], ".2f")[:1], *spread(d_top1, "+.2f"),
                      *spread([gap(r) for r in own], ".3f")[:1], *spread(d_gap, "+.3f"),
                      *spread([r["exported_ratio"] - r["budget"] for r in own], "+.3f")[:1], *speed,
                      verdict(variant, d_top1, d_gap, d_speed)])
    header = ["variant", "flags", "cells", "top-1 last", "vs default: mean", "range", "landing gap",
              "vs default: mean", "range", "exported - B"] + (["speedup b64", "vs default"] if timed else [])
    return markdown_table(header + ["the departure"], table)


def write(rows: List[Dict], out: str, command: str) -> None:
    """<out>.md (the summary) and <out>.json: {"command", "cells"}, each cell its row with
    `top1_after_stage2` (top-1 at stage 2's last epoch)."""
    seconds = [r["seconds_stage1"] + r["seconds_stage2"] for r in rows]
    text = (f"Produced by `{command}`.\n\nThe default search with one departure replaced by the reference's rule "
            f"(scripts/deviations.py). Differences are to `default` on the same model, budget and seed; top-1 "
            f"at the last epoch of stage 2, in %; B is the budget; the landing gap is |searched ratio - B| "
            f"(for {', '.join(AT_EXPORT)}: |exported ratio - B|, both sides); speedups are images/s over the "
            f"dense model's at batch 64, each model, budget and seed timed side by side. A departure is kept "
            f"when the default keeps more than {TOP1_MARGIN} more top-1, lands more than {GAP_MARGIN} closer "
            f"to B, or is faster by more than {SPEED_MARGIN:.0%}, than its no_ variant, as means over the "
            f"cells; otherwise it goes back to the reference's rule. {len(rows)} cells, "
            f"{sum(seconds) / max(len(seconds), 1):.0f} s each on average.\n\n{summary(rows)}\n")
    cells = [{**r, "top1_after_stage2": r["top1_last"]} for r in rows]
    write_result(out, text, {"command": command, "cells": cells})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--models", nargs="+", default=["deit_tiny@32", "digits"], choices=list(bench.MODELS))
    p.add_argument("--budgets", type=lambda t: [float(b) for b in t.split(",")], default=[0.3, 0.5])
    p.add_argument("--seeds", type=lambda t: [int(s) for s in t.split(",")], default=[730, 731])
    p.add_argument("--smoke", action="store_true", help="a few steps per stage and a smoke teacher (plumbing only)")
    p.add_argument("--resume", action="store_true", help="read back the cells that finished (their row.json)")
    p.add_argument("--run_dir", default="runs/deviations")
    p.add_argument("--cache_dir", default="runs/cache")
    p.add_argument("--out", default="log/deviations", help="writes <out>.json and <out>.md")
    p.add_argument("--jobs", type=int, default=1, help="cells run side by side (each on --threads threads)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each run")
    args = p.parse_args(argv)
    bench.THREADS["n"] = args.threads
    teachers = {m: bench.teacher(m, args, SMOKE_TEACHER if args.smoke else ()) for m in args.models}
    plan = [(m, v, b, s) for m in args.models for b in args.budgets for s in args.seeds for v in args.variants]
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        rows = list(pool.map(lambda c: cell(c[0], c[1], c[2], c[3], teachers[c[0]], args), plan))
    rows = speedups(rows, teachers, args)
    command = "python scripts/deviations.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    write(rows, args.out, command.strip())
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
