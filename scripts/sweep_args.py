"""The command line of scripts/sweep.py: what it may name (methods, matches, ablation rows), the
flags, their checks (one line each, exit 2) and the paths they resolve to."""
import argparse
import os
from typing import List

from scripts.command import ROOT
from scripts.pipeline import DATASETS

METHODS = ("UVC", "uniform magnitude", "Torch-Pruning", "greedy fit", "Torch-Pruning (local magnitude)")
DEFAULT_METHODS = METHODS[:4]
MATCHES = ("macs", "latency")
# y = p = 0 and no dual step: y, p start at --dual_init (1), so the rates alone do not remove the term
IMPORTANCE_OFF = ["--ylr", "0", "--plr", "0", "--dual_init", "0"]
# ablation row -> (stage-1 flags, stage-2 flags); "no search (greedy fit)" is the greedy-fit peer
ABLATIONS = {
    "UVC": ([], []),
    "UVC w/o block gates": (["--enable_block_gating", "0"], []),
    "UVC w/o patch gates": (["--enable_patch_gating", "0"], []),
    "UVC w/o head/dim/neuron pruning": (["--enable_pruning", "0"], []),
    "UVC w/o distillation": (["--distillation-type", "none"], ["--distillation-type", "none"]),
    "UVC w/o patch trial": (["--patch_probe", "0"], []),
    "UVC w/o skip trial": (["--skip_probe", "0"], []),
    "UVC with trial margin 2": (["--trial_margin", "2"], []),
    "UVC w/o importance term": (IMPORTANCE_OFF, []),
    "UVC with the greedy fit": (["--greedy_fit", "1"], []),
    "UVC fine-tuned from the pretrained weights": ([], ["--finetune_from", "pretrained"]),
}
NO_SEARCH = "no search (greedy fit)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"error: {message}\n")


def _floats(text: str) -> List[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _path(path: str) -> str:
    """An absolute path (the commands run from the repository's root), kept relative when run from there."""
    full = os.path.abspath(path)
    return os.path.relpath(full, ROOT) if os.getcwd() == ROOT and full.startswith(ROOT + os.sep) else full


def _parser(doc: str) -> argparse.ArgumentParser:
    p = _Parser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("--config", default=None, help="any config the entry scripts accept (default: the --dataset "
                                                  "demo's)")
    p.add_argument("--dataset", default=None, help="mnist (default) or digits: the demo configs; with --config, "
                                                   "the data set (e.g. imagenet: an ImageFolder tree at --data_dir)")
    p.add_argument("--data_dir", default=None, help="with --config: the data folder (train/ and val/)")
    p.add_argument("--input_size", type=int, default=None, help="image side of every model (default: the model's)")
    p.add_argument("--model_type", default=None, help="the config's model type, overridden")
    p.add_argument("--train_batch_size", type=int, default=None, help="every training run's batch per process")
    p.add_argument("--eval_batch_size", type=int, default=None, help="every run's evaluation batch")
    p.add_argument("--num_workers", type=int, default=None, help="data-loading processes of every run")
    p.add_argument("--teacher", default="", help="your dense checkpoint of the config's model (no teacher run)")
    p.add_argument("--pretrained", type=int, choices=(0, 1), default=None,
                   help="the teacher run: start from the config's --model_path (1) or from scratch (0)")
    p.add_argument("--run_dir", default=None, help="one folder per budget, seed and method (runs/<stem>_sweep, "
                                                   "e.g. runs/mnist_sweep)")
    p.add_argument("--cache_dir", default="runs/cache", help="where trained teachers are kept, by config")
    p.add_argument("--log_dir", default=None, help="where the tables and JSON go (demos: log; --config: --run_dir)")
    p.add_argument("--figs_dir", default=None, help="where the plot goes (demos: Figs; --config: --run_dir)")
    p.add_argument("--budgets", type=_floats, default=None, help="the sweep's, comma-separated (0.3,0.4,0.5,0.7)")
    p.add_argument("--methods", default=None,
                   help=f"the sweep's, comma-separated, from: {', '.join(METHODS)} (default: the first four; "
                        f"UVC always runs)")
    p.add_argument("--match", default="macs",
                   help="peers at UVC's MACs (macs), or at its measured time ratio with UVC searching a latency "
                        "budget (latency); macs,latency runs both into one table. --ablations: every row "
                        "searches a latency budget and the greedy fit is matched to UVC's time (latency)")
    p.add_argument("--prune_only", action="store_true",
                   help="--match latency: run UVC's searches, prune every peer to the measured time of UVC's "
                        "architecture and save the match, with nothing fine-tuned (time on a quiet machine; the "
                        "sweep with --resume then fine-tunes UVC and the matches)")
    p.add_argument("--ablations", action="store_true", help="run the ablations instead of the sweep")
    p.add_argument("--ablation_budget", type=float, default=None, help="--ablations: the budget (0.4)")
    p.add_argument("--ablation_rows", default=None,
                   help="--ablations: only these rows, comma-separated names of the table (UVC and the greedy "
                        "fit always run), e.g. 'UVC w/o importance term'")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=None,
                   help="seeds of every row, comma-separated (sweep: --seed; ablations: 730,731)")
    p.add_argument("--seed", type=int, default=730, help="the teacher's seed, and the sweep's default")
    p.add_argument("--search_epochs", type=int, default=None, help="stage-1 epochs (default: the config's)")
    p.add_argument("--finetune_epochs", type=int, default=None,
                   help="stage-2 / fine-tuning epochs, every method (default: the config's stage 2)")
    p.add_argument("--resume", action="store_true",
                   help="reuse runs of the same command completed in --run_dir; continue one stopped part-way")
    p.add_argument("--threads", type=int, default=1,
                   help="threads of every training run and of every timing: the latency table, the matches, the "
                        "speedups (0: one per core)")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of --log_dir's JSON that this pass does not produce (other budgets, matches "
                        "or seeds, timed in an earlier pass), each marked with its pass; same teacher and "
                        "fine-tuning length only")
    p.add_argument("--smoke", action="store_true", help="a few steps per run: checks the plumbing only")
    return p


def parse_args(argv, doc: str) -> argparse.Namespace:
    """The sweep's flags checked, defaulted and made absolute; `doc` is the help's text (the sweep's docstring)."""
    p = _parser(doc)
    args = p.parse_args(argv)
    other = ("--budgets", "--methods") if args.ablations else ("--ablation_budget", "--ablation_rows")
    given = [f for f in other if getattr(args, f[2:]) is not None]
    if given:
        p.error(f"{given[0]} is for {'the sweep' if args.ablations else '--ablations'} only")
    args.match = list(dict.fromkeys(m.strip() for m in args.match.split(",") if m.strip()))
    bad = [m for m in args.match if m not in MATCHES]
    if bad or not args.match:
        p.error(f"--match {','.join(bad)}: choose macs, latency or macs,latency")
    if args.prune_only and (args.ablations or args.match != ["latency"]):
        p.error("--prune_only matches the peers to UVC's measured time: give it with --match latency alone")
    if args.merge and (args.ablations or args.prune_only):
        p.error("--merge adds this pass's rows to the sweep's table: not with --ablations or --prune_only")
    if args.ablations and len(args.match) > 1:
        p.error("--ablations: give --match macs or --match latency (one table per match)")
    if args.config is None:
        args.dataset = args.dataset or "mnist"
        if args.dataset not in DATASETS:
            p.error(f"--dataset {args.dataset}: without --config choose {' or '.join(DATASETS)} (the demo "
                    f"configs), or name the model with --config FILE")
    if args.teacher and args.pretrained is not None:
        p.error("--pretrained sets how the teacher run starts: with --teacher there is no teacher run")
    args.budgets = args.budgets or [0.3, 0.4, 0.5, 0.7]
    args.ablation_budget = args.ablation_budget or 0.4
    rows = [r.strip() for r in (args.ablation_rows or ",".join(ABLATIONS)).split(",") if r.strip()]
    unknown = [r for r in rows if r not in ABLATIONS]
    if unknown:
        p.error(f"--ablation_rows: no row {unknown[0]!r}; the rows are {', '.join(map(repr, ABLATIONS))}")
    args.ablation_rows = ["UVC"] + [r for r in rows if r != "UVC"]
    args.seeds = args.seeds or ([730, 731] if args.ablations else [args.seed])
    args.methods = [m.strip() for m in (args.methods or ",".join(DEFAULT_METHODS)).split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if "UVC" not in args.methods:
        args.methods.insert(0, "UVC")  # the peers are matched to it
    for b in args.budgets + [args.ablation_budget]:
        if not 0.0 < b <= 1.0:
            p.error(f"budget {b} is outside (0, 1]: give the fraction of the dense MACs to keep")
    if any(e is not None and e < 1 for e in (args.search_epochs, args.finetune_epochs)):
        p.error("--search_epochs and --finetune_epochs must be at least 1")
    _check_paths(p, args)
    return args


def _check_paths(p: argparse.ArgumentParser, args) -> None:
    """One line for a path that does not exist; the others made absolute (the commands run from the root)."""
    for flag in ("config", "data_dir", "teacher"):
        value = getattr(args, flag)
        if not value:
            continue
        file = value.rsplit(":", 1)[0] if flag == "config" and ":" in os.path.basename(value) else value
        exists = os.path.isdir(file) if flag == "data_dir" else os.path.isfile(file)
        if flag == "config" and not exists and os.path.isfile(os.path.join(ROOT, "configs", os.path.basename(file))):
            continue  # a config named by its file in configs/, as the entry scripts accept it
        if not exists:
            p.error(f"--{flag} {value}: no such {'folder' if flag == 'data_dir' else 'file'}")
        setattr(args, flag, _path(value))
    args.run_dir = _path(args.run_dir or os.path.join("runs", f"{stem_of(args)}_sweep"))  # the ablations reuse it
    args.cache_dir = _path(args.cache_dir)
    results = "log" if args.config is None else args.run_dir
    args.log_dir = _path(args.log_dir or results)
    args.figs_dir = _path(args.figs_dir or ("Figs" if args.config is None else args.run_dir))


def stem_of(args) -> str:
    """The demo data set (mnist), or the config's name with the data set (deit_tiny_imagenet)."""
    if args.config is None:
        return args.dataset
    config = os.path.splitext(os.path.basename(args.config.rsplit(":", 1)[0]))[0]
    return config + (f"_{args.dataset}" if args.dataset else "")


def results_name(args) -> str:
    """The files' stem: mnist_sweep, mnist_ablations, mnist_ablations_latency, deit_tiny_imagenet_sweep, ..."""
    if args.ablations:
        return f"{stem_of(args)}_ablations" + ("_latency" if args.match == ["latency"] else "")
    return f"{stem_of(args)}_sweep"
