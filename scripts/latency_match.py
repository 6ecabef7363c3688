"""`scripts/sweep.py --match latency`: every peer pruned to the speed of UVC's model.

UVC searches with `--budget_metric latency` at each budget. A peer's knob is its MACs target t;
its latency ratio q(t) = time(peer pruned at t) / time(dense) is measured, side by side with UVC's
compact model and the dense model in one timing run (interleaved rounds, median, batch 64), so
UVC's ratio u is re-measured with it. The peer matches when |q(t) / u - 1| <= 3%. q is close to
proportional to t, so the first step is t * u / q, then the secant through the last two tries
solves q(t) / u = 1; at most `max_tries` prunings. The closest try is kept (and the row records
that it did not match) when none lands in the window. The matched peer is then fine-tuned as
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

from utils.checkpoint import atomic_write_text

LATENCY_TOLERANCE = 0.03  # |peer's time ratio / UVC's - 1|
MAX_TRIES = 6
LOWEST_TARGET = 0.02  # MACs targets are kept in [LOWEST_TARGET, 1]
MATCH_FILE = "match.json"


def next_target(tries: List[Dict]) -> float:
    """The MACs target whose latency ratio should equal UVC's: proportional after one measured try, then
    the secant through the last two (proportional again when they measured the same quotient). After a
    target the peer cannot reach (no latency_ratio), halfway back up to the nearest reached target
    above it (x1.5 when there is none)."""
    if tries[-1]["latency_ratio"] is None:
        low = tries[-1]["target"]
        above = [t["target"] for t in tries if t["latency_ratio"] is not None and t["target"] > low]
        return min((low + min(above)) / 2 if above else low * 1.5, 1.0)
    tries = [t for t in tries if t["latency_ratio"] is not None]
    last = tries[-1]
    q2, t2 = last["latency_ratio"] / last["uvc_latency_ratio"], last["target"]
    guess = t2 / q2
    if len(tries) > 1:
        first = tries[-2]
        q1, t1 = first["latency_ratio"] / first["uvc_latency_ratio"], first["target"]
        if q1 != q2 and t1 != t2:
            guess = t2 + (1.0 - q2) * (t2 - t1) / (q2 - q1)
    return min(max(guess, LOWEST_TARGET), 1.0)


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
        "latency_ratio", "uvc_latency_ratio"}, ...]}: the try closest to UVC's ratio.
    """
    tries, best = [], None
    for _ in range(max_tries):
        candidate = prune(target)
        if candidate is None:
            tries.append({"target": target, "latency_ratio": None, "uvc_latency_ratio": None})
            target = next_target(tries)
            continue
        ratio, uvc = measure(candidate)
        tries.append({"target": target, "latency_ratio": ratio, "uvc_latency_ratio": uvc})
        error = abs(ratio / uvc - 1)
        if best is None or error < best[0]:
            best = (error, candidate, tries[-1])
        if error <= tolerance:
            break
        following = next_target(tries)
        if any(abs(following - t["target"]) < 1e-6 for t in tries if t["latency_ratio"] is not None):
            break  # no new target to try: the peer cannot move closer (e.g. already at 1.0)
        target = following
    if best is None:
        raise ValueError(f"the peer reached none of the MACs targets {[round(t['target'], 4) for t in tries]}")
    error, candidate, chosen = best
    return dict(chosen, candidate=candidate, matched=error <= tolerance, tries=tries)


def latency_ratios(bench, dense: torch.nn.Module, uvc: torch.nn.Module, peer: torch.nn.Module) -> Tuple[float, float]:
    """(peer's time / dense time, UVC's time / dense time) at batch 64, timed side by side."""
    speed = bench.throughput({"dense": dense, "uvc": uvc, "peer": peer}, 64)
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

    key = {"uvc_search": _digest(uvc["stage1_file"]), "teacher": _digest(teacher), "flags": list(flags)}
    found = _saved_match(tries_dir, key) if bench.reuse else None
    if found is None:
        found = match_latency(prune, lambda c: latency_ratios(bench, dense, uvc["before"], c["model"]),
                              targets[0] if one_shot else targets[1])
        found = dict(found, candidate={"file": found["candidate"].get("file")})  # the file, not the model
        atomic_write_text(json.dumps({"key": key, "found": found}, indent=1), os.path.join(tries_dir, MATCH_FILE))
    else:
        print(f"{name}: reusing its latency match in {tries_dir} (same UVC search and teacher)", flush=True)
    if not found["matched"]:
        print(f"{name}: no MACs target within {MAX_TRIES} tries put its time within {LATENCY_TOLERANCE:.0%} of "
              f"UVC's; kept the closest ({found['latency_ratio']:.3f} against {found['uvc_latency_ratio']:.3f})")
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
    """The match a former run wrote in `tries_dir` for the same UVC search, teacher and flags; else None."""
    path = os.path.join(tries_dir, MATCH_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved["found"] if saved.get("key") == key else None


def slug_of(name: str) -> str:
    """baselines.magnitude's --method of a one-shot peer's name ("greedy fit" -> "greedy-fit")."""
    return name.replace(" ", "-")
