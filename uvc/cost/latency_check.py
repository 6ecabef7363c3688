"""Checking a latency fit on the device: the frozen architecture timed whole against the dense model.

The latency cost model (uvc.cost.latency) adds up parts timed alone, and on a CPU
the time of a part depends on more than its shape (which memory the allocator
hands out, what the cache holds), and from one session to the next the same
part moves far more than the time of a whole model against the dense one,
side by side (scripts/latency_stability.py, log/latency_stability.md). So
with `--budget_metric latency` the freeze times the fitted architecture (random weights, `--latency_batch`
images, interleaved rounds) against the dense model, and while the measured
ratio m is more than `LATENCY_CHECK_TOLERANCE` (relative) off the budget B,
fits again to a corrected target: once a fit under B and one over B were
timed, the target between the closest such pair where the line through their
(target, m) meets B (the measured time is not proportional to the estimate: a
width that crosses a cache or allocator threshold jumps); before that, the
estimate scaled by what was measured,

    target' = R_est(spec) x B / m

at most `--latency_check` fits; the fit whose measured ratio is closest to B is
kept, and every (target, estimated, measured) is recorded in the stage-1 file.
"""
from typing import Callable, List, Optional, Tuple

import torch

from models.compact import CompactViT
from uvc.deploy.export import compact_spec_from_arch, dense_model_of
from utils.benchmark import compare_throughput

LATENCY_CHECK_TOLERANCE = 0.04  # relative: a measured ratio within 4% of the budget ends the check


def measured_ratio(spec: dict, device, batch_size: int, amp: bool = False, repeats: int = 5,
                   threads: Optional[int] = None) -> float:
    """Time of the compact model of `spec` over the dense model's, side by side on `device` (random weights),
    with `threads` CPU threads (the latency table's: a narrow model gains less from more threads than a wide
    one, so the ratio depends on them; None: this process's)."""
    models = {"dense": dense_model_of(spec, device), "compact": CompactViT(compact_spec_from_arch(spec))}
    shape = (spec["in_chans"], spec["img_size"], spec["img_size"])
    own = torch.get_num_threads()
    if threads and torch.device(device).type == "cpu":
        torch.set_num_threads(int(threads))
    try:
        images_per_s = compare_throughput(models, shape, batch_size, device, amp, warmup=1, repeats=repeats)
    finally:
        torch.set_num_threads(own)
    return images_per_s["dense"] / images_per_s["compact"]


def checked_fit(fit: Callable[[float], Tuple[dict, dict, float]], measure: Callable[[dict], float],
                budget: float, rounds: int) -> Tuple[dict, dict, List[dict]]:
    """Fit, time, and fit again to a corrected target while the measurement misses the budget.

    fit(target) -> (spec, fit info, estimated ratio); measure(spec) -> measured ratio.
    Returns the spec and fit info whose measured ratio is closest to `budget`, and the checks (that
    one marked "kept")."""
    target, checks, fits = budget, [], []
    for _ in range(max(rounds, 1)):
        spec, info, estimated = fit(target)
        measured = measure(spec)
        checks.append({"target": target, "estimated": estimated, "measured": measured, "kept": False})
        fits.append((spec, info))
        if abs(measured - budget) <= LATENCY_CHECK_TOLERANCE * budget:
            break
        target = next_target(checks, budget)
    best = min(range(len(checks)), key=lambda i: abs(checks[i]["measured"] - budget))
    checks[best]["kept"] = True
    return fits[best][0], fits[best][1], checks


def next_target(checks: List[dict], budget: float) -> float:
    """The next fit's target: between the closest timed fits under and over the budget if there are
    both (secant), else the last estimate scaled by budget / measured."""
    under = [c for c in checks if c["measured"] < budget]
    over = [c for c in checks if c["measured"] > budget]
    if under and over:
        lo = max(under, key=lambda c: c["measured"])
        hi = min(over, key=lambda c: c["measured"])
        t = (budget - lo["measured"]) / (hi["measured"] - lo["measured"])
        return lo["target"] + t * (hi["target"] - lo["target"])
    last = checks[-1]
    return min(max(last["estimated"] * budget / last["measured"], 0.01), 1.0)
