"""Mutation testing of the method core with mutmut; writes log/mutation.json.

    python scripts/mutation.py                         # every module of MODULES
    python scripts/mutation.py uvc/deploy/fit.py ...   # some of them (merged into log/mutation.json)
    python scripts/mutation.py --survivors MODULE ...   # only their survivors again, after adding tests
    python scripts/mutation.py --relist MODULE ...      # their survivors classified again, after adding entries

A benchmark, not CI. Each module runs in its own scratch copy of the repository (under
--work, default /tmp/uvc-mutation) with a [mutmut] section written to that copy's setup.cfg,
so the repository holds no mutmut configuration; mutmut runs the module's targeted tests
(TESTS in scripts/mutation_tables.py) with -m "not slow". Equivalent mutants (a change of no
behaviour) are listed there in EQUIVALENT with their reason; score = killed / (mutants -
equivalent). Survivors not listed there are reported with the reason "not killed: needs a test".
"""
import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a file: this checkout's packages, not those of an install elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.mutation_tables import EQUIVALENT, MODULES, NEEDS_A_GPU, TESTS
from utils.checkpoint import atomic_write_text

REPO = Path(__file__).resolve().parents[1]

COPIED = ["uvc", "engine", "utils", "models", "data", "configs", "baselines", "scripts", "tests", "conftest.py",
          "pytest.ini", "joint_train.py", "post_train.py", "requirements.txt"]


def scratch_copy(module: str, work: Path) -> Path:
    """A copy of the repository for one module, with its [mutmut] section in setup.cfg."""
    root = work / module.replace("/", "_").removesuffix(".py")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        elif src.exists():
            shutil.copy2(src, root / name)
    package = module.split("/")[0]
    also = [n for n in COPIED if n != package]
    lines = ["[mutmut]", f"source_paths = {package}", f"only_mutate = {module}",
             "pytest_add_cli_args_test_selection =", *[f"    {t}" for t in TESTS[module]],
             "pytest_add_cli_args =", "    -m", "    not slow", "    -p", "    no:cacheprovider",
             "also_copy =", *[f"    {n}" for n in also]]
    (root / "setup.cfg").write_text("\n".join(lines) + "\n")
    return root


def mutmut_version() -> str:
    from importlib.metadata import version
    return version("mutmut")


def run_module(module: str, work: Path, jobs: int, only=None) -> dict:
    """mutmut over one module (or only the mutants named in `only`); its mutants by status and the
    survivors with their diffs."""
    from mutmut.stats import status_by_exit_code
    root = scratch_copy(module, work)
    start = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *(only or [])], cwd=root,
                   env=env, check=False, stdout=subprocess.DEVNULL)
    meta = json.loads((root / "mutants" / (module + ".meta")).read_text())
    counts, survivors = {"mutants": 0, "killed": 0, "survived": 0, "timeout": 0, "equivalent": 0}, []
    for name, code in sorted(meta["exit_code_by_key"].items()):
        if only is not None and name not in only:
            continue
        status = status_by_exit_code[code]
        counts["mutants"] += 1
        if status == "killed":
            counts["killed"] += 1
        elif status == "timeout":
            counts["timeout"] += 1
        else:
            counts["survived"] += 1
            diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=root, env=env,
                                  capture_output=True, text=True).stdout
            reason = equivalence(name, diff)
            counts["equivalent"] += reason is not None
            reason = reason or listed(NEEDS_A_GPU, name, diff) or "not killed: needs a test"
            survivors.append({"file": module, "line": _line_of(diff, root / module), "diff": diff.strip(),
                              "mutant": name, "status": status, "reason": reason})
    return {**counts, "survivors": survivors, "seconds": round(time.monotonic() - start, 1),
            "source_sha256": source_hash(module)}


def _function_of(name: str) -> str:
    """A mutant's function: its name without mutmut's number, which changes whenever the function does."""
    return name.rsplit("__mutmut_", 1)[0]


def listed(table: dict, name: str, diff: str):
    """The reason `table` gives a survivor: an entry of the same function whose line is the one the
    survivor's diff adds; else None. Matched by function and line, not by number, so an entry still
    names its mutant after an edit elsewhere in the function renumbers it; a mutant of another line or
    another function is never taken for it."""
    added = [l[1:].strip() for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++")]
    function = _function_of(name)
    return next((reason for key, (line, reason) in table.items()
                 if _function_of(key) == function and added == [line]), None)


def relist(previous: dict, module: str) -> dict:
    """A module's last run with its survivors classified again by today's tables (no mutant is run again:
    its source must be the one that run tested)."""
    if previous is None or previous.get("source_sha256") != source_hash(module):
        raise SystemExit(f"{module} changed since its last run (or that run kept no hash): run it whole")
    survivors = []
    for s in previous["survivors"]:
        reason = equivalence(s["mutant"], s["diff"]) or listed(NEEDS_A_GPU, s["mutant"], s["diff"]) \
            or "not killed: needs a test"
        survivors.append(dict(s, reason=reason))
    return {**previous, "survivors": survivors,
            "equivalent": sum(equivalence(s["mutant"], s["diff"]) is not None for s in survivors)}


def equivalence(name: str, diff: str):
    """The reason a survivor changes no behaviour (EQUIVALENT), or None."""
    return listed(EQUIVALENT, name, diff)


def source_hash(module: str) -> str:
    return hashlib.sha256((REPO / module).read_bytes()).hexdigest()


def retest_survivors(module: str, previous: dict, work: Path, jobs: int) -> dict:
    """Test again only the survivors of an earlier run of `module` (after tests were added), and
    merge: its killed and timed-out mutants stay so, as the module's source is the same."""
    if previous is None or previous.get("source_sha256") != source_hash(module):
        raise SystemExit(f"{module} changed since its last run (or that run kept no hash): run it whole")
    if not previous["survivors"]:
        return previous  # nothing to test again
    again = run_module(module, work, jobs, only=[s["mutant"] for s in previous["survivors"]])
    merged = {k: previous[k] + again[k] for k in ("killed", "timeout")}
    return {**again, **merged, "mutants": previous["mutants"],
            "seconds": round(previous["seconds"] + again["seconds"], 1)}


def _line_of(diff: str, source: Path) -> int:
    """The source line of the first removed line of a mutant's diff."""
    removed = next((l[1:] for l in diff.splitlines() if l.startswith("-") and not l.startswith("---")), None)
    if removed is None:
        return 0
    for number, line in enumerate(source.read_text().splitlines(), 1):
        if line.strip() == removed.strip():
            return number
    return 0


def score(counts: dict):
    """killed / (mutants - equivalent)."""
    scored = counts["mutants"] - counts["equivalent"]
    return round(counts["killed"] / scored, 4) if scored else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=MODULES, help="modules of MODULES (default: all)")
    parser.add_argument("--work", default="/tmp/uvc-mutation", help="scratch copies, one per module")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--out", default=str(REPO / "log" / "mutation.json"))
    parser.add_argument("--survivors", action="store_true",
                        help="test again only each module's survivors in --out (its source unchanged)")
    parser.add_argument("--relist", action="store_true",
                        help="run nothing: classify each module's survivors in --out again by EQUIVALENT and "
                             "NEEDS_A_GPU (after entries were added; its source unchanged)")
    args = parser.parse_args(argv)
    if args.survivors and args.relist:
        parser.error("--survivors runs the survivors again, --relist runs nothing: give one")
    unknown = [m for m in args.modules if m not in TESTS]
    if unknown:
        parser.error(f"not in MODULES: {', '.join(unknown)}")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {"per_module": {}}
    per_module = dict(previous.get("per_module", {}))
    for module in args.modules:
        before = per_module.get(module)
        if args.relist:
            per_module[module] = relist(before, module)
        elif args.survivors:
            per_module[module] = retest_survivors(module, before, Path(args.work), args.jobs)
        else:
            per_module[module] = run_module(module, Path(args.work), args.jobs)
        if per_module[module] is not before:  # the run that tested it, or the command that classified it again
            key = "relisted_by" if args.relist else "command"
            per_module[module][key] = shlex.join(["python", "scripts/mutation.py", *sys.argv[1:]])
        print(f"{module}: {json.dumps({k: v for k, v in per_module[module].items() if k != 'survivors'})}")
    for entry in per_module.values():
        entry["score"] = score(entry)
    total = {k: sum(m[k] for m in per_module.values()) for k in ("mutants", "killed", "survived", "timeout",
                                                                   "equivalent")}
    result = {"tool": "mutmut", "version": mutmut_version(), "modules": sorted(per_module), **total,
              "score": score(total), "survivors": [s for m in per_module.values() for s in m["survivors"]],
              # what makes the whole file again (a module's "command" is its last run)
              "command": shlex.join(["python", "scripts/mutation.py", *sorted(per_module)]),
              "per_module": per_module}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result, indent=1) + "\n", str(out))
    print(f"{out}: {total['killed']} killed of {total['mutants']} ({total['equivalent']} equivalent), "
          f"score {result['score']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
