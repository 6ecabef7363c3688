"""Does the speed follow the budget? Compact models against their dense originals, each
timed in several independent sessions of scripts/benchmark_speed.py.

    python scripts/speed_table.py --out log/speed_table
    python scripts/speed_table.py --out log/speed_table --files digits=runs/demo/stage2/compact.pth

Two kinds of rows:

- Searched at ImageNet size with random weights (speed does not depend on them): for
  every case a 2-step search of joint_train.py on synthetic 224-pixel images, fitted to
  the budget by the greedy fit, then exported (the README's recipe). Cases: DeiT-Tiny
  and DeiT-Small at budget 0.5 counted in MACs with aligned widths (--round_to 8) and
  with any width (--round_to 1), and counted in estimated latency (--budget_metric
  latency, aligned), with the freeze's timing of the fit (--latency_check 4, the
  default) and without it (the cost model alone). The latency tables are measured once into <run_dir>/latency by
  the first latency search, on this machine, in this run.
- --files name=path: the architectures that real searches produced (stage-1, stage-2
  or compact files), timed at their own input size.

Every file is timed --sessions times, each session a separate process running
`benchmark_speed.py --batch_sizes 64 --repeats R --json` (dense, masked and compact
models side by side, interleaved rounds, median); the table gives the median speedup
of the compact model over the sessions and their range, the ideal 1 / MACs ratio, and
the compact model's measured time over the dense one's (with the cost model's
estimate where the budget was latency). Sessions are what separate two runs of the
same command, which is the spread a user sees. Measure on a quiet machine.
Writes <out>.md and <out>.json.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.command import ROOT
from scripts.results import markdown_table, write_result

MODELS = {"DeiT-Tiny": "deit_tiny_patch16_224", "DeiT-Small": "deit_small_patch16_224"}
# (model, budget metric, round_to, --latency_check) of the random-weight searches at budget 0.5
CASES = ([(m, "macs", 8, 0) for m in MODELS] + [(m, "macs", 1, 0) for m in MODELS]
         + [(m, "latency", 8, 4) for m in MODELS] + [(m, "latency", 8, 0) for m in MODELS])
SEARCH = ["--model_path", "", "--pretrained", "0", "--dataset", "synthetic", "--synthetic_size", "32",
          "--epochs", "1", "--max_steps_per_epoch", "2", "--train_batch_size", "8", "--eval_batch_size", "16",
          "--warmup_epochs", "0", "--distillation_type", "none", "--num_workers", "0", "--pin_mem", "0"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--no_search", action="store_true", help="time the --files only")
    p.add_argument("--files", nargs="*", default=[], help="name=path of real searches' files to time as well")
    p.add_argument("--sessions", type=int, default=5, help="independent benchmark_speed.py runs per file")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per session")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--run_dir", default="runs/speed_table", help="the searches' output folders")
    p.add_argument("--out", default="", help="write <out>.md and <out>.json")
    p.add_argument("--smoke", action="store_true", help="tiny models' shapes (checks the plumbing)")
    args = p.parse_args(argv)
    if args.sessions < 1 or args.repeats < 1:
        p.error("--sessions and --repeats must be positive")
    for item in args.files:
        if "=" not in item or not os.path.exists(item.split("=", 1)[1]):
            p.error(f"--files {item!r}: give name=path of an existing stage-1, stage-2 or compact file")
    return args


def python(cmd: list, log_path: str = "") -> str:
    """Run one of the project's scripts; its stdout (also saved to log_path)."""
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run([sys.executable] + cmd, cwd=ROOT, capture_output=True, text=True)
    if log_path:
        with open(log_path, "w") as f:
            f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"'{' '.join(cmd[:2])} ...' failed (exit {proc.returncode}): "
                         f"{(proc.stderr.strip().splitlines() or [''])[-1]}")
    return proc.stdout


def search(args, model: str, metric: str, round_to: int, check: int) -> dict:
    """The random-weight search of one case; its stage-1 file and the flags that made it."""
    name = f"{model}, {metric}, round_to {round_to}" + (", no check" if metric == "latency" and not check else "")
    out = os.path.join(args.run_dir, f"{model}-{metric}-r{round_to}" + ("-check0" if "no check" in name else ""))
    flags = ["--model_type", MODELS[model], "--budget", str(args.budget), "--budget_metric", metric,
             "--round_to", str(round_to), *SEARCH, "--output_dir", out]
    if metric == "latency":
        flags += ["--latency_cache", os.path.join(args.run_dir, "latency"), "--latency_batch", str(args.batch_size),
                  "--latency_check", str(check)]
    if args.smoke:
        flags += ["--embed_dim", "32", "--depth", "2", "--num_heads", "2", "--input_size", "32"]
    os.makedirs(out, exist_ok=True)
    python(["joint_train.py", *flags], os.path.join(out, "stdout.log"))
    return {"name": name, "file": os.path.join(out, f"{MODELS[model]}_uvc.pth"),
            "metric": metric, "command": shlex.join(["python", "joint_train.py", *flags])}


def sessions(args, case: dict) -> dict:
    """benchmark_speed.py --json, --sessions times; the median and range of what matters."""
    cmd = ["scripts/benchmark_speed.py", "--checkpoint", case["file"], "--batch_sizes", str(args.batch_size),
           "--repeats", str(args.repeats), "--json"]
    if case.get("metric") == "latency":
        cmd += ["--latency", "--latency_cache", os.path.join(args.run_dir, "latency")]
    runs = [json.loads(python(cmd).strip().splitlines()[-1]) for _ in range(args.sessions)]
    b = f"b{args.batch_size}"
    speedups = [r[f"speedup_compact_{b}"] for r in runs]
    row = dict(case, sessions=len(runs), macs_ratio=runs[0]["macs_ratio"], ideal=runs[0]["ideal_speedup"]["compact"],
               speedups=speedups, speedup=statistics.median(speedups), model_type=runs[0]["model_type"],
               time_ratio=statistics.median(1 / s for s in speedups),
               masked_speedup=statistics.median(r[f"speedup_masked_{b}"] for r in runs),
               dense_images_per_s=statistics.median(r["images_per_s"]["dense"][b] for r in runs))
    if case.get("metric") == "latency":
        row["estimated_time_ratio"] = runs[0]["latency_estimate"][b]["estimated_ratio"]
        row["latency_ms"] = latency_ms([r["latency_estimate"][b] for r in runs])
    return row


def latency_ms(estimates: list) -> dict:
    """The cost model's milliseconds per batch (one table: the same in every session) and the measured
    ones (median over the sessions)."""
    est = estimates[0]["estimated_s"]
    measured = lambda name: 1e3 * statistics.median(e["measured_s"][name] for e in estimates)  # noqa: E731
    return {"dense_table": 1e3 * est["dense"], "full_width_est": 1e3 * est["full_width"],
            "compact_est": 1e3 * est["compact"], "dense_measured": measured("dense"),
            "compact_measured": measured("compact")}


def table(rows: list, batch_size: int) -> str:
    return markdown_table(
        ["model", "MACs ratio", f"speedup b{batch_size} (median)", "range over sessions", "ideal (1/MACs)",
         "compact time / dense", "estimated time ratio", "masked speedup", "dense img/s"],
        [[r["name"], f"{r['macs_ratio']:.3f}", f"{r['speedup']:.2f}x",
          f"{min(r['speedups']):.2f}-{max(r['speedups']):.2f}x", f"{r['ideal']:.2f}x", f"{r['time_ratio']:.3f}",
          f"{r['estimated_time_ratio']:.3f}" if "estimated_time_ratio" in r else "",
          f"{r['masked_speedup']:.2f}x", f"{r['dense_images_per_s']:.1f}"] for r in rows])


def latency_table_md(rows: list, batch_size: int) -> str:
    """The latency cost model against the measurement, for the rows searched in latency."""
    rows = [r for r in rows if "latency_ms" in r]
    if not rows:
        return ""
    head = ["model", "dense, table ms", "dense, measured ms", "full width, est. ms", "compact, est. ms",
            "compact, measured ms", "compact est. / measured"]
    body = [[r["name"]] + [f"{r['latency_ms'][k]:.1f}" for k in ("dense_table", "dense_measured", "full_width_est",
                                                                "compact_est", "compact_measured")]
            + [f"{r['latency_ms']['compact_est'] / r['latency_ms']['compact_measured']:.3f}"] for r in rows]
    return (f"\nThe latency cost model against the measurement, per batch of {batch_size} (dense, table: the "
            f"table's own timing of the dense model, R's denominator; full width, est.: the cost model's "
            f"estimate of the unpruned model; measured: median over the sessions):\n\n"
            + markdown_table(head, body) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    cases = [] if args.no_search else [search(args, *case) for case in CASES if case[0] in args.models]
    cases += [{"name": name, "file": path} for name, path in (f.split("=", 1) for f in args.files)]
    rows = [sessions(args, c) for c in cases]
    command = shlex.join(["python", "scripts/speed_table.py", *(sys.argv[1:] if argv is None else argv)])
    text = (f"Produced by `{command}` on {torch.get_num_threads()} CPU threads: every file timed in "
            f"{args.sessions} separate sessions of `benchmark_speed.py --batch_sizes {args.batch_size} --repeats "
            f"{args.repeats}` (dense, masked and compact side by side, interleaved rounds, median); speedup and "
            f"time ratio: medians over the sessions.\n\n{table(rows, args.batch_size)}\n"
            + latency_table_md(rows, args.batch_size))
    searches = [f"- {c['name']}: `{c['command']}`" for c in cases if "command" in c]
    if searches:
        text += "\nThe random-weight searches:\n\n" + "\n".join(searches) + "\n"
    print("\n" + text)
    if args.out:
        write_result(args.out, text, {"command": command, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
