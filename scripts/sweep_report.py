"""The tables and the figure of scripts/sweep.py, from its JSON rows.

Every row is one run: {"method", "budget", "match", "seed", "top1_last", "top1_best", "macs_ratio",
"speedup_b64", ...}; UVC's rows carry search_end ({"metric", "budget", "searched"[, "timed"]}: where
its search ended, scripts.results.search_end). A table cell pools the rows of one method, budget and match over the seeds:
top-1 as "mean (min-max)" (the mean alone for one seed), the MACs ratio and the speedup as means.
top1_last is the validation top-1 at the last fine-tuning epoch, top1_best the best epoch's
(picked on the same validation split, so it flatters every method alike).
"""
import os
import textwrap
from typing import Dict, List, Sequence, Tuple

from scripts.results import markdown_table, removed_text

REMOVED = "removed: blocks/heads/dims/neurons/patches"


def spread(values: Sequence[float]) -> str:
    """"mean (min-max)" to two decimals; the mean alone for a single value."""
    mean = sum(values) / len(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})"


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def grouped(rows: List[dict], keys: Tuple[str, ...]) -> Dict[tuple, List[dict]]:
    """Rows by the values of `keys`, groups in the order they first appear."""
    out: Dict[tuple, List[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _seeds_text(seeds: Sequence[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"mean (min-max) over seeds {', '.join(map(str, seeds))}"


def _cells(group: List[dict]) -> List[str]:
    """top-1 last, top-1 best, MACs ratio, speedup and the removed counts (one per seed) of a group."""
    return [spread([r["top1_last"] for r in group]), spread([r["top1_best"] for r in group]),
            f"{mean([r['macs_ratio'] for r in group]):.3f}", f"{mean([r['speedup_b64'] for r in group]):.2f}x",
            "; ".join(removed_text(r["removed"]) for r in group)]


def sweep_table(result: dict) -> str:
    """One line per method, budget and match (ordered by match, then budget), the dense teacher first."""
    seeds = _seeds_text(result["seeds"])
    header = ["method", "match", "budget", f"top-1 at the last FT epoch (%), {seeds}",
              f"top-1 at the best FT epoch (%), {seeds}", "MACs ratio", "speedup (b64)", REMOVED]
    teacher = f"{result['teacher_top1']:.2f}"
    lines = [["dense teacher", "", "1.0", teacher, teacher, "1.000", "1.00x", ""]]
    groups = grouped(result["rows"], ("method", "match", "budget"))
    order = sorted(groups, key=lambda k: (k[1], k[2]))  # stable: methods keep their order within a budget
    lines += [[method, match, f"{budget}", *_cells(groups[(method, match, budget)])]
              for method, match, budget in order]
    return markdown_table(header, lines)


def exceeds(a: float, b: float, margin: float) -> bool:
    """a exceeds b by more than margin, not by a float's rounding: means of two-decimal percentages (or
    of ratios) are compared to 1e-6."""
    return a - b > margin + 1e-6


def dominations(rows: List[dict], top1_margin: float = 0.1, speed_margin: float = 0.02) -> List[str]:
    """Where UVC is off the accuracy-speed front: a peer point (method, budget, match; seed means of
    top1_last and speedup_b64) both more accurate than a UVC point of the same match by more than
    `top1_margin` and faster than it by more than `speed_margin` (relative). One line each."""
    points = {k: (mean([r["top1_last"] for r in g]), mean([r["speedup_b64"] for r in g]))
              for k, g in grouped(rows, ("method", "match", "budget")).items()}
    out = []
    for (method, match, budget), (top1, speed) in points.items():
        if method == "UVC":
            continue
        for (u_method, u_match, u_budget), (u_top1, u_speed) in points.items():
            if u_method == "UVC" and u_match == match and exceeds(top1, u_top1, top1_margin) \
                    and speed > u_speed * (1 + speed_margin):
                out.append(f"{method} at {budget} ({top1:.2f}, {speed:.2f}x) beats UVC at {u_budget} "
                           f"({u_top1:.2f}, {u_speed:.2f}x), match {match}")
    return out


def top1_means(rows: List[dict]) -> Dict[tuple, float]:
    """Seed mean of top1_last per (method, match, budget)."""
    return {k: mean([r["top1_last"] for r in g]) for k, g in grouped(rows, ("method", "match", "budget")).items()}


def out_of_reach(rows: List[dict]) -> Dict[tuple, List[dict]]:
    """The latency-matched peer points (method, budget) of which some seed could not reach UVC's time
    (matched false: kept at its fastest model, or the closest)."""
    return {k: g for k, g in grouped(rows, ("method", "match", "budget")).items()
            if k[1] == "latency" and k[0] != "UVC" and not all(r.get("matched", True) for r in g)}


def shortfalls(rows: List[dict], top1_margin: float = 0.1) -> List[str]:
    """Where UVC loses at equal speed: under match latency, a peer matched to UVC's measured time ratio in
    every seed whose seed mean of top1_last is more than `top1_margin` above UVC's at the same budget.
    One line each. A peer that could not reach UVC's time is not at equal speed: `reach_text` names it."""
    points = top1_means(rows)
    unreached = out_of_reach(rows)
    return [f"{method} at {budget} ({top1:.2f}) ahead of UVC ({points[('UVC', match, budget)]:.2f}) at equal speed"
            for (method, match, budget), top1 in points.items()
            if match == "latency" and method != "UVC" and ("UVC", match, budget) in points
            and (method, match, budget) not in unreached and exceeds(top1, points[("UVC", match, budget)], top1_margin)]


def reach_text(rows: List[dict]) -> str:
    """The latency-matched peers that could not get as fast as UVC's model: their time ratio against UVC's
    (seed means) and their top-1 against UVC's, compared on the front only."""
    points = top1_means(rows)
    parts = [f"{method} at {budget} ({sum(not r['matched'] for r in g)} of {len(g)} seeds; time ratio "
             f"{mean([r['latency_ratio'] for r in g]):.3f} against UVC's {mean([r['uvc_latency_ratio'] for r in g]):.3f}, "
             f"top-1 {points[(method, match, budget)]:.2f} against {points.get(('UVC', match, budget), float('nan')):.2f})"
             for (method, match, budget), g in out_of_reach(rows).items()]
    return ("Not as fast as UVC at any MACs target, so compared on the front only: " + "; ".join(parts) + ".") \
        if parts else ""


def front_text(rows: List[dict]) -> str:
    """The table's verdict lines (seed means of the last-epoch top-1): on the front, and (with latency-
    matched rows) at equal speed."""
    beaten = dominations(rows)
    if not beaten:
        text = ("On the front: no peer point is both more accurate than a UVC point (by more than 0.1, "
                "seed means of the last-epoch top-1) and faster (by more than 2%).")
    else:
        text = "Off the front: " + "; ".join(beaten) + "."
    if not any(r["match"] == "latency" for r in rows):
        return text
    behind, reach = shortfalls(rows), reach_text(rows)
    if not behind:
        text += (" At equal speed (match latency): at every budget UVC's top-1 is at least that of every peer "
                 "matched to its time, less 0.1.")
    else:
        text += " At equal speed (match latency): " + "; ".join(behind) + "."
    return text + (" " + reach if reach else "")


def landing_text(rows: List[dict]) -> str:
    """Where UVC's searches ended against their budget (rows' search_end), per match: by the search's own
    count (MACs formula or latency table), for latency searches timed whole, and the patches the freeze put
    back to align the token count. "" without such rows."""
    out = []
    searched = [r for r in rows if r["method"] == "UVC" and r.get("search_end")]
    for (match,), group in grouped(searched, ("match",)).items():
        ends = [r["search_end"] for r in group]
        gaps = [e["searched"] - e["budget"] for e in ends]
        text = (f"UVC's {len(ends)} search{'es' if len(ends) > 1 else ''} matched by {match} ended {min(gaps):+.3f} to {max(gaps):+.3f} from "
                f"their budget by their own count ({', '.join(sorted({e['metric'] for e in ends}))})")
        timed = [e["timed"] - e["budget"] for e in ends if "timed" in e]
        out.append(text + (f", {min(timed):+.3f} to {max(timed):+.3f} timed whole" if timed else "") + ".")
        aligned = [e for e in ends if e.get("patches_restored")]
        if aligned:  # uvc.deploy.patch_align
            restored = ", ".join(str(e["patches_restored"]) for e in aligned)
            where = ("the latency table times fastest" if match == "latency"
                     else "their MACs were counted at (steps of --token_step)")
            out.append(f"In {len(aligned)} of them the freeze put back patches ({restored}) up to the token count "
                       f"{where}.")
    return " ".join(out)


def ablation_table(result: dict) -> str:
    """One line per ablation row at the ablations' budget, pooled over its seeds."""
    seeds = _seeds_text(result["seeds"])
    header = ["method", f"top-1 at the last FT epoch (%), {seeds}", f"top-1 at the best FT epoch (%), {seeds}",
              "top-1 before FT (%)", "MACs ratio", "speedup (b64)", REMOVED]
    lines = []
    for (method,), group in grouped(result["rows"], ("method",)).items():
        last, best, macs, speed, removed = _cells(group)
        lines.append([method, last, best, spread([r["top1_before_ft"] for r in group]), macs, speed, removed])
    return markdown_table(header, lines)


def plot_sweep(result: dict, path: str, command: str, dataset: str) -> None:
    """Top-1 at the last fine-tuning epoch (seed mean, bars: min-max) against the MACs ratio (left) and
    the measured speedup (right, the accuracy-speed front), one line per method and match."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "macs_ratio", "MACs ratio (fvcore, vs dense)"),
                           (axes[1], "speedup_b64", "measured speedup at batch 64 (vs dense)")):
        for (method, match), rows in grouped(result["rows"], ("method", "match")).items():
            points = sorted((mean([r[key] for r in g]), [r["top1_last"] for r in g])
                            for g in grouped(rows, ("budget",)).values())
            x, y = [p[0] for p in points], [mean(p[1]) for p in points]
            err = [[m - min(p[1]) for m, p in zip(y, points)], [max(p[1]) - m for m, p in zip(y, points)]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, linestyle="-" if match == "macs" else "--",
                        label=f"{method} ({match})")
        ax.axhline(result["teacher_top1"], color="grey", linestyle="--", linewidth=1, label="dense teacher")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 at the last fine-tuning epoch (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{dataset}: top-1 vs MACs ({_seeds_text(result['seeds'])})", fontsize=10)
    axes[1].set_title("the accuracy-speed front (bars: min-max over seeds)", fontsize=10)
    axes[1].legend(fontsize=7)
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(command, 150)), fontsize=5)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))  # room for the command
    fig.savefig(path, dpi=120)
    plt.close(fig)
