"""Passes of scripts/sweep.py merged into one table (--merge).

A sweep of many budgets, matches and seeds can outlast its run folders (a machine wiped between
sessions, scratch space reclaimed). With --merge a pass keeps the rows of the JSON already under
--log_dir that it does not produce itself, keyed by (method, budget, match, seed); its own rows
replace any with their key. Speedups are ratios to the dense model timed side by side in the row's
own pass, so every row names its pass (`pass`, an index into `passes`: the pass's command, thread
count and the dense model's images/s). Rows are only merged from the same teacher (its file's hash) and the
same fine-tuning length; anything else is refused in one line. A teacher trained again is not the
same teacher (the MNIST teacher, trained again on a new machine from the same command and seed, ended
0.2 points apart), so a sweep meant to be merged across machines hands every pass the same --teacher.
"""
import hashlib
import json
import os
from typing import List

KEY = ("method", "budget", "match", "seed")


def _passes_of(old: dict) -> List[dict]:
    """The passes an earlier JSON records (one, its own command, if it predates --merge)."""
    if "passes" in old:
        return [dict(p) for p in old["passes"]]
    return [{"command": old["command"], "timing_threads": old.get("timing_threads"),
             "teacher_images_per_s_b64": old.get("teacher_images_per_s_b64")}]


def file_sha256(path: str) -> str:
    """A file's content hash (the teacher's: which teacher a row was distilled from)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_mergeable(old: dict, new: dict, path: str) -> None:
    """One line (SystemExit) if `old`'s rows cannot sit in one table with `new`'s: another teacher (its file's
    hash; its top-1 for a JSON that predates the hash) or another fine-tuning length."""
    keys = (("teacher_sha256", "the teacher file of sha256"),) if "teacher_sha256" in old else ()
    for key, what in keys + (("teacher_top1", "teacher top-1"), ("finetune_epochs", "fine-tuning epochs")):
        if old.get(key) != new.get(key):
            raise SystemExit(f"--merge: {path} was made with {what} {old.get(key)}, this pass with "
                             f"{new.get(key)}: run without --merge, or give another --log_dir")


def merged(new: dict, path: str) -> dict:
    """`new` (this pass's result) with the rows of the JSON at `path` that it does not replace."""
    this_pass = {"command": new["command"], "timing_threads": new["timing_threads"],
                 "teacher_images_per_s_b64": new["teacher_images_per_s_b64"]}
    if not os.path.exists(path):
        return dict(new, passes=[this_pass], rows=[dict(r, **{"pass": 0}) for r in new["rows"]])
    with open(path) as f:
        old = json.load(f)
    check_mergeable(old, new, path)
    passes, produced = _passes_of(old), {tuple(r[k] for k in KEY) for r in new["rows"]}
    kept = [dict(r, **{"pass": r.get("pass", 0)}) for r in old["rows"] if tuple(r[k] for k in KEY) not in produced]
    used = sorted({r["pass"] for r in kept})  # passes whose rows all were replaced are dropped
    renumber = {p: i for i, p in enumerate(used)}
    rows = [dict(r, **{"pass": renumber[r["pass"]]}) for r in kept]
    rows += [dict(r, **{"pass": len(used)}) for r in new["rows"]]
    seeds = sorted({r["seed"] for r in rows})
    return dict(new, seeds=seeds, passes=[passes[p] for p in used] + [this_pass], rows=rows)


def passes_text(result: dict) -> str:
    """Which pass produced which rows, for the table's header."""
    passes = result.get("passes")
    if not passes or len(passes) == 1:
        return f"produced by `{result['command']}`"
    parts = []
    for i, p in enumerate(passes):
        rows = [r for r in result["rows"] if r["pass"] == i]
        cells = sorted({(r["match"], r["budget"]) for r in rows})
        what = ", ".join(f"{m} {b}" for m, b in cells)
        parts.append(f"pass {i + 1} ({what}; dense model timed at {p['teacher_images_per_s_b64']:.0f} images/s): "
                     f"`{p['command']}`")
    return ("merged from passes (--merge; each row's speedup is timed side by side with the dense model in its "
            "own pass): " + "; ".join(parts))
