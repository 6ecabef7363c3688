"""`scripts/sweep.py --match latency`: every peer pruned to the speed of UVC's model.

UVC searches with `--budget_metric latency` at each budget. A peer's knob is its MACs target t;
its latency ratio q(t) = time(peer pruned at t) / time(dense) is measured, side by side with UVC's
compact model and the dense model in one timing run (interleaved rounds, median, batch 64), so
UVC's ratio u is re-measured with it. The peer matches when |q(t) / u - 1| <= 3%. q is close to
proportional to t, so the first step is t * u / q, then the secant through the last two tries
solves q(t) / u = 1; at most `max_tries` prunings. The closest try is kept (and the row records
that it did not match) when none lands in the window: when UVC is faster than every try, the
fastest try, the step towards the peer's smallest model halved at each target it cannot reach. The matched peer is then fine-tuned as
under `--match macs`. UVC's side is the architecture its search fixed (the stage-1 file's compact
model: fine-tuning changes its weights, not its time), so peers can be matched before UVC fine-tunes.
The match is written next to its tries (match.json) and `--resume` reuses it while UVC's search and
the teacher are the same files: timings differ from run to run, so re-matching would prune a slightly
different peer and fine-tune it again.
"""
import hashlib
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

from scripts.pipeline import TIMING_BATCH
from utils.checkpoint import atomic_write_text

LATENCY_TOLERANCE = 0.03  # |peer's time ratio / UVC's - 1|
MAX_TRIES = 6
LOWEST_TARGET = 0.02  # MACs targets are kept in [LOWEST_TARGET, 1]
MATCH_FILE = "match.json"
MATCH_RULE = 3  # the rule `closest` keeps an unmatched try by (1: the lowest quotient, 2: the smallest target)
NOISY = 0.25  # UVC's own time ratio, re-measured with every try, spread by more than this: a busy machine


def _quotient(t: Dict) -> float:
    """A try's time over UVC's, both from the same side-by-side timing run."""
    return t["latency_ratio"] / t["uvc_latency_ratio"]


def next_target(tries: List[Dict]) -> float:
    """The MACs target whose latency ratio should equal UVC's: proportional after one measured try, then
    the secant through the last two (proportional from the last when they measured the same quotient, or
    when timing noise makes the time fall as the target grows). Never at or below a target the peer
    could not reach (no latency_ratio) under its smallest reached one, and not below halfway between the
    two, which homes in on the peer's smallest model when UVC is faster than any (x1.5 when none is reached)."""
    reached = [t for t in tries if t["latency_ratio"] is not None]
    if not reached:
        return min(tries[-1]["target"] * 1.5, 1.0)
    lowest = min(t["target"] for t in reached)
    out_of_reach = [t["target"] for t in tries if t["latency_ratio"] is None and t["target"] < lowest]
    last = reached[-1]
    q2, t2 = _quotient(last), last["target"]
    guess = t2 / q2
    if len(reached) > 1:
        q1, t1 = _quotient(reached[-2]), reached[-2]["target"]
        if t1 != t2 and (q2 - q1) / (t2 - t1) > 0:
            guess = t2 + (1.0 - q2) * (t2 - t1) / (q2 - q1)
    if out_of_reach:  # the smallest model lies between the two: probe no lower than halfway
        guess = max(guess, (max(out_of_reach) + lowest) / 2)
    return min(max(guess, LOWEST_TARGET), 1.0)


def closest(tries: List[Dict], tolerance: float = LATENCY_TOLERANCE) -> Dict:
    """The try to keep: the one closest to UVC's time; when every try was slower than UVC's by more than
    `tolerance`, the fastest (lowest time over the dense model's: the quotient also carries the noise of
    UVC's timing, and the time need not grow with the target: uniform magnitude trades heads for neurons),
    and when every one was faster, the slowest."""
    reached = [t for t in tries if t["latency_ratio"] is not None]
    if all(_quotient(t) > 1 + tolerance for t in reached):
        return min(reached, key=lambda t: t["latency_ratio"])
    if all(_quotient(t) < 1 - tolerance for t in reached):
        return max(reached, key=lambda t: t["latency_ratio"])
    return min(reached, key=lambda t: abs(_quotient(t) - 1))


def match_latency(prune: Callable[[float], object], measure: Callable[[object], Tuple[float, float]],
                  target: float, tolerance: float = LATENCY_TOLERANCE, max_tries: int = MAX_TRIES) -> Dict:
    """Prune at MACs targets until the measured latency ratio is within `tolerance` of UVC's.

    Args:
        prune: MACs target -> a pruned candidate (whatever `measure` takes), or None when the peer
            cannot reach that target (below its smallest model).
        measure: candidate -> (its time over the dense model's, UVC's time over the dense model's),
            both from one side-by-side timing run.
        target: the first MACs target (UVC's MACs ratio).

    Returns:
        {"candidate", "target", "latency_ratio", "uvc_latency_ratio", "matched", "tries": [{"target",
        "latency_ratio", "uvc_latency_ratio"}, ...]}: the try `closest` keeps.
    """
    tries, candidates = [], {}
    for _ in range(max_tries):
        candidate = prune(target)
        if candidate is None:
            tries.append({"target": target, "latency_ratio": None, "uvc_latency_ratio": None})
        else:
            ratio, uvc = measure(candidate)
            tries.append({"target": target, "latency_ratio": ratio, "uvc_latency_ratio": uvc})
            candidates[len(tries) - 1] = candidate
            if abs(ratio / uvc - 1) <= tolerance:
                break
        following = next_target(tries)
        if any(abs(following - t["target"]) <= 0.005 * t["target"] for t in tries):
            break  # no new target to try: the peer cannot move closer (at 1.0, or at its smallest model)
        target = following
    if not candidates:
        raise ValueError(f"the peer reached none of the MACs targets {[round(t['target'], 4) for t in tries]}")
    chosen = closest(tries, tolerance)
    index = next(i for i in candidates if tries[i] is chosen)
    matched = abs(_quotient(chosen) - 1) <= tolerance
    return dict(chosen, candidate=candidates[index], matched=matched, tries=tries)


def timing_spread(tries: List[Dict]) -> float:
    """max / min - 1 of UVC's time ratio over the tries: the same model timed again with each, so the
    spread is the timing noise of the match (up to 0.17 on a quiet 2-core machine, 0.46-1.3 with three
    training jobs beside it)."""
    uvc = [t["uvc_latency_ratio"] for t in tries if t["uvc_latency_ratio"] is not None]
    return max(uvc) / min(uvc) - 1 if uvc else 0.0


def timing_glitches(tries: List[Dict]) -> List[Dict]:
    """The tries whose peer ran faster than its MACs target by more than NOISY (time ratio < target *
    (1 - NOISY)): a width-pruned model keeps the dense model's fixed costs, so its time ratio stays above
    its MACs share (1.08-3.94 times it over the 178 tries of the MNIST sweep's 60 matches); far below it, the
    dense model's or the peer's timing was disturbed (0.108 at target 0.27, a process paused mid-run)."""
    return [t for t in tries if t["latency_ratio"] is not None and t["latency_ratio"] < t["target"] * (1 - NOISY)]


def latency_ratios(bench, dense: torch.nn.Module, uvc: torch.nn.Module, peer: torch.nn.Module) -> Tuple[float, float]:
    """(peer's time / dense time, UVC's time / dense time) at batch 64, timed side by side."""
    speed = bench.throughput({"dense": dense, "uvc": uvc, "peer": peer}, TIMING_BATCH)
    return speed["dense"] / speed["peer"], speed["dense"] / speed["uvc"]


def latency_target(bench, name: str, teacher: str, path: str, uvc: dict, dense: torch.nn.Module,
                   seed: Optional[int], targets: Tuple[float, float], flags=()) -> dict:
    """The MACs target at which one peer (a one-shot method or a Torch-Pruning setting) runs at UVC's
    measured latency ratio: `match_latency`'s result with the chosen try's file, saved in <path>-latency
    (match.json) and, with the bench's reuse, read back from there. `targets`: the first MACs target of a
    one-shot peer (UVC's formula) and of Torch-Pruning (fvcore)."""
    from scripts.pipeline import compact_of_stage1
    tries_dir = path + "-latency"
    one_shot = not name.startswith("Torch-Pruning")
    count = iter(range(1, MAX_TRIES + 1))

    def prune(target: float) -> Optional[dict]:
        out = os.path.join(tries_dir, f"try{next(count)}")
        try:
            if one_shot:
                stage1 = bench.one_shot_prune(slug_of(name), teacher, out, target)
                return {"file": stage1, "model": compact_of_stage1(stage1)}
            return {"model": bench.torch_pruning_prune(teacher, out, target, seed, flags)}
        except (SystemExit, ValueError) as e:  # a failed command (scripts.command.run) or, in process, its error
            print(f"{name}: MACs target {target:.4f} out of its reach ({e}); trying a larger one", flush=True)
            return None

    key = {"uvc_search": _digest(uvc["stage1_file"]), "teacher": _digest(teacher), "flags": list(flags),
           "rule": MATCH_RULE}
    found = _saved_match(tries_dir, key) if bench.reuse else None
    if found is None:
        found = match_latency(prune, lambda c: latency_ratios(bench, dense, uvc["before"], c["model"]),
                              targets[0] if one_shot else targets[1])
        found = dict(found, candidate={"file": found["candidate"].get("file")})  # the file, not the model
        atomic_write_text(json.dumps({"key": key, "found": found}, indent=1), os.path.join(tries_dir, MATCH_FILE))
    else:
        print(f"{name}: reusing its latency match in {tries_dir} (same UVC search and teacher)", flush=True)
    redo = f"delete {os.path.join(tries_dir, MATCH_FILE)} and match on a quiet machine (--prune_only)"
    spread = timing_spread(found["tries"])
    if spread > NOISY:
        print(f"WARNING: {name}: UVC's own time ratio ranged over {spread:.0%} across the tries of this match, far "
              f"more than the {LATENCY_TOLERANCE:.0%} window: the machine was busy and the match is noise; {redo}",
              flush=True)
    for t in timing_glitches(found["tries"]):
        print(f"WARNING: {name}: its try at MACs target {t['target']:.3f} timed {t['latency_ratio']:.3f} of the "
              f"dense time, faster than its MACs share by more than {NOISY:.0%}: a timing glitch steered this "
              f"match; {redo}", flush=True)
    if not found["matched"]:
        kept = "its fastest model" if found["latency_ratio"] > found["uvc_latency_ratio"] else "the closest"
        print(f"{name}: no MACs target within {MAX_TRIES} tries put its time within {LATENCY_TOLERANCE:.0%} of "
              f"UVC's; kept {kept} ({found['latency_ratio']:.3f} against {found['uvc_latency_ratio']:.3f})")
    return found


def peer_at_latency(bench, name: str, teacher: str, path: str, uvc: dict, dense: torch.nn.Module,
                    seed: Optional[int], targets: Tuple[float, float], flags=()) -> dict:
    """One peer pruned to UVC's measured latency ratio (`latency_target`), then fine-tuned; the run carries
    "latency_match": the chosen try's ratios, whether it matched, and every try."""
    found = latency_target(bench, name, teacher, path, uvc, dense, seed, targets, flags)
    if not name.startswith("Torch-Pruning"):
        run = bench.one_shot(name, slug_of(name), teacher, path, found["target"], seed, found["candidate"]["file"])
    else:
        run = bench.torch_pruning(name, teacher, path, found["target"], seed, setting=flags)
    record = {"latency_ratio": found["latency_ratio"], "uvc_latency_ratio": found["uvc_latency_ratio"],
              "matched": found["matched"], "macs_target": found["target"], "match_tries": len(found["tries"]),
              "tries": found["tries"]}
    return dict(run, latency_match=record)


def _digest(path: str) -> str:
    """A file's content hash: what the saved match is keyed by (paths stay, files get rewritten)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _saved_match(tries_dir: str, key: Dict) -> Optional[Dict]:
    """The match a former run wrote in `tries_dir` for the same UVC search, teacher and flags, else None;
    one decided by another rule only if it matched (a try within the window is kept by every rule)."""
    path = os.path.join(tries_dir, MATCH_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    same = saved.get("key") == key
    other_rule = {**saved.get("key", {}), "rule": key["rule"]} == key and saved["found"]["matched"]
    return saved["found"] if same or other_rule else None


def table_ratio(table: dict, dense: torch.nn.Module, model: torch.nn.Module) -> float:
    """The latency table's estimate of a compact model's time over the dense model's: what a latency search
    prices it at (uvc.cost.latency), to read next to the time the sweep measures."""
    from uvc.cost.cost import compact_cost, dense_cost
    from uvc.cost.flops import ViTDims
    from uvc.cost.latency import LatencyCost
    cost = LatencyCost(ViTDims.of(dense), table)
    return compact_cost(cost, model.spec) / dense_cost(cost)


def slug_of(name: str) -> str:
    """baselines.magnitude's --method of a one-shot peer's name ("greedy fit" -> "greedy-fit")."""
    return name.replace(" ", "-")
