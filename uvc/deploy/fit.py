"""Fitting a frozen architecture into the budget window, greedily by score per unit of cost.

The search should end on the budget by itself (uvc.search.schedule, uvc.search.controller);
this pass takes up the rest: the granularity of whole groups, and any search that
ended off target. Above the budget it removes the lowest-score groups per cost
saved; under `budget - tolerance` it puts back the best removed neurons, value
dims, heads and skipped blocks per cost while the budget allows. The cost is the
budget's (uvc.cost.cost: MACs, or the measured latency). What it changed is returned
for the log (`groups_*_to_fit`, `restored_*`, `rounded_*`).

Aligned shapes (`round_to` N > 1): MLP widths and value dims per head are kept
at multiples of N (a width under N only if the dense width itself is: then it
stays whole). Widths are first rounded to the nearest such value, then removed
and restored in steps to the next one. The fit aims at [budget - tolerance,
budget]; when steps of N cannot fill that, it may end anywhere in
[budget - 0.03, budget + 0.01] (`fit_window` says which).
"""
from typing import Dict, List, Optional, Tuple

from uvc.cost.cost import MacsCost, dense_cost, spec_cost
from uvc.deploy.freeze import dims_of_spec
from uvc.search.masks import Scores

WIDE_WINDOW = (0.03, 0.01)  # under, over the budget: where an aligned fit may land when steps are too coarse


def allowed_widths(full: int, round_to: int) -> List[int]:
    """The widths a block may keep: multiples of round_to up to `full`, and `full` itself."""
    return sorted({w for w in range(round_to, full + 1, round_to)} | {full})


def _below(width: int, allowed: List[int]) -> Optional[int]:
    lower = [w for w in allowed if w < width]
    return lower[-1] if lower else None


def _above(width: int, allowed: List[int]) -> Optional[int]:
    higher = [w for w in allowed if w > width]
    return higher[0] if higher else None


def _nearest(width: int, allowed: List[int]) -> int:
    """The allowed width nearest to `width` (ties: the wider one)."""
    return min(allowed, key=lambda w: (abs(w - width), -w))


def _equalise_value_dims(spec: dict, scores: Scores) -> None:
    """Give every kept head of a block the block's largest kept dim count, taking its
    best-scoring dims: the compact model pads to that size anyway, so this costs
    nothing more and keeps real weights instead of zero padding."""
    for l, block in enumerate(spec["blocks"]):
        if not block["heads"]:
            continue
        width = max(len(v) for v in block["value_dims"])
        block["value_dims"] = [sorted(scores.dims[l, h].argsort(descending=True)[:width].tolist())
                               for h in block["heads"]]


def _best_of(kept: List[int], full: int, scores: List[float], width: int) -> List[int]:
    """`width` groups: the best of `kept`, then (to grow) the best of the others (ascending)."""
    mine = sorted(kept, key=lambda i: scores[i], reverse=True)
    others = sorted(set(range(full)) - set(kept), key=lambda i: scores[i], reverse=True)
    return sorted((mine + others)[:width])


def _round_widths(spec: dict, scores: Scores, round_to: int) -> Dict[str, int]:
    """Every kept block's MLP width and value dims per head to the nearest allowed width,
    keeping the best-scoring groups. Returns the groups added and dropped."""
    changed = {"rounded_up": 0, "rounded_down": 0}
    neuron_scores, dim_scores = scores.neurons.tolist(), scores.dims.tolist()
    widths_m = allowed_widths(spec["mlp_hidden"], round_to)
    widths_d = allowed_widths(spec["head_dim"], round_to)
    for l, block in enumerate(spec["blocks"]):
        if block["skipped"]:
            continue
        m = len(block["neurons"])
        target = _nearest(m, widths_m)
        if target != m:  # the kept neurons stay; the next best are added, or the lowest dropped
            block["neurons"] = _best_of(block["neurons"], spec["mlp_hidden"], neuron_scores[l], target)
            changed["rounded_up" if target > m else "rounded_down"] += abs(target - m)
        if not block["heads"]:
            continue
        w = len(block["value_dims"][0])
        target = _nearest(w, widths_d)
        if target != w:
            block["value_dims"] = [_best_of(v, spec["head_dim"], dim_scores[l][h], target)
                                   for h, v in zip(block["heads"], block["value_dims"])]
            changed["rounded_up" if target > w else "rounded_down"] += abs(target - w) * len(block["heads"])
    return changed


def _block_cost(cost, tokens: int, heads: int, width: int, neurons: int):
    """One kept block with `heads` heads of `width` value dims each."""
    return cost.block(tokens, heads, heads * width, neurons)


class _Pool:
    """The kept neurons and value dims of every block, each list sorted by score
    (ascending), so the cheapest next removal is read off the front in O(heads)."""

    def __init__(self, spec: dict, scores: Scores, round_to: int):
        neuron_scores, dim_scores = scores.neurons.tolist(), scores.dims.tolist()
        self.neurons = [sorted(b["neurons"], key=lambda i, l=l: neuron_scores[l][i]) for l, b in
                        enumerate(spec["blocks"])]
        self.dims = [[sorted(v, key=lambda j, l=l, h=h: dim_scores[l][h][j]) for h, v in
                      zip(b["heads"], b["value_dims"])] for l, b in enumerate(spec["blocks"])]
        self.neuron_scores, self.dim_scores = neuron_scores, dim_scores
        self.widths_m = allowed_widths(spec["mlp_hidden"], round_to)
        self.widths_d = allowed_widths(spec["head_dim"], round_to)

    def candidates(self, spec: dict, tokens: int, cost):
        """Cheapest next removal per block: (score per cost saved, cost saved, block, kind, groups)."""
        out = []
        for l, block in enumerate(spec["blocks"]):
            if block["skipped"]:
                continue
            h, m = len(block["heads"]), len(self.neurons[l])
            w = len(self.dims[l][0]) if h else 0
            now = _block_cost(cost, tokens, h, w, m)
            lower = _below(m, self.widths_m)
            saving = now - _block_cost(cost, tokens, h, w, lower) if lower is not None else 0
            if saving > 0:  # (a measured cost may not fall with every step)
                score = sum(self.neuron_scores[l][i] for i in self.neurons[l][:m - lower])
                out.append((score / saving, saving, l, "neuron", m - lower))
            lower = _below(w, self.widths_d) if h else None
            saving = now - _block_cost(cost, tokens, h, lower, m) if lower is not None else 0
            if saving > 0:
                score = sum(sum(self.dim_scores[l][hh][j] for j in v[:w - lower])
                            for hh, v in zip(block["heads"], self.dims[l]))
                out.append((score / saving, saving, l, "dim", w - lower))
        return out

    def remove(self, spec: dict, l: int, kind: str, k: int) -> None:
        """Drop block l's k lowest-score neurons, or the k lowest-score value dims of each of its heads."""
        block = spec["blocks"][l]
        if kind == "neuron":
            del self.neurons[l][:k]
            block["neurons"] = sorted(self.neurons[l])
        else:
            for v in self.dims[l]:
                del v[:k]
            block["value_dims"] = [sorted(v) for v in self.dims[l]]


class _Removed:
    """The removed groups of every block, best score first (restoring pops from the front)."""

    def __init__(self, spec: dict, scores: Scores, round_to: int):
        self.neuron_scores, self.dim_scores = scores.neurons.tolist(), scores.dims.tolist()
        self.head_scores = scores.heads.tolist()
        self.d, self.H = spec["head_dim"], spec["num_heads"]
        self.widths_m = allowed_widths(spec["mlp_hidden"], round_to)
        self.widths_d = allowed_widths(spec["head_dim"], round_to)
        self.neurons, self.dims, self.heads = [], [], []
        for l, block in enumerate(spec["blocks"]):
            self.neurons.append(self._best_first(set(range(len(self.neuron_scores[l]))) - set(block["neurons"]),
                                                 self.neuron_scores[l]))
            self.dims.append([self._best_first(set(range(self.d)) - set(v), self.dim_scores[l][h])
                              for h, v in zip(block["heads"], block["value_dims"])])
            self.heads.append(self._best_first(set(range(self.H)) - set(block["heads"]), self.head_scores[l]))

    @staticmethod
    def _best_first(groups, scores):
        return sorted(groups, key=lambda i: scores[i], reverse=True)

    def best_dims(self, l: int, h: int, width: int):
        """Head h's `width` best dims of block l (ascending), and the rest, best first."""
        order = self._best_first(range(self.d), self.dim_scores[l][h])
        return sorted(order[:width]), order[width:]


def _restore_candidates(spec: dict, removed: _Removed, tokens: int, cost, groups: bool):
    """(score per cost, cost, block, kind, groups) of every possible restoration now."""
    out = []
    for l, block in enumerate(spec["blocks"]):
        if block["skipped"]:  # back at its smallest shape (one head, dim, neuron), ranked as a whole block
            full = _block_cost(cost, tokens, removed.H, removed.d, len(removed.neuron_scores[l]))
            total = sum(removed.head_scores[l]) + sum(removed.neuron_scores[l])
            out.append((total / full, _block_cost(cost, tokens, 1, removed.widths_d[0], removed.widths_m[0]),
                        l, "block", 1))
            continue
        if not groups:
            continue
        h, m = len(block["heads"]), len(block["neurons"])
        w = len(block["value_dims"][0]) if h else 0
        now = _block_cost(cost, tokens, h, w, m)
        upper = _above(m, removed.widths_m)
        if upper is not None:
            extra = _block_cost(cost, tokens, h, w, upper) - now
            score = sum(removed.neuron_scores[l][i] for i in removed.neurons[l][:upper - m])
            out.append((score / max(extra, 1e-30), extra, l, "neuron", upper - m))
        upper = _above(w, removed.widths_d) if h else None
        if upper is not None:
            extra = _block_cost(cost, tokens, h, upper, m) - now
            score = sum(sum(removed.dim_scores[l][hh][j] for j in o[:upper - w])
                        for hh, o in zip(block["heads"], removed.dims[l]))
            out.append((score / max(extra, 1e-30), extra, l, "dim", upper - w))
        if removed.heads[l] and h:
            new = removed.heads[l][0]
            kept, _ = removed.best_dims(l, new, w)
            extra = _block_cost(cost, tokens, h + 1, w, m) - now
            out.append((sum(removed.dim_scores[l][new][j] for j in kept) / max(extra, 1e-30), extra, l, "head", 1))
    return out


def _apply_restore(spec: dict, removed: _Removed, l: int, kind: str, k: int) -> None:
    block = spec["blocks"][l]
    if kind == "neuron":
        block["neurons"] = sorted(block["neurons"] + removed.neurons[l][:k])
        del removed.neurons[l][:k]
    elif kind == "dim":
        block["value_dims"] = [sorted(v + o[:k]) for v, o in zip(block["value_dims"], removed.dims[l])]
        for o in removed.dims[l]:
            del o[:k]
    elif kind == "head":
        h = removed.heads[l].pop(0)
        kept, rest = removed.best_dims(l, h, len(block["value_dims"][0]))
        pairs = sorted(zip(block["heads"] + [h], block["value_dims"] + [kept], removed.dims[l] + [rest]))
        block["heads"], block["value_dims"], removed.dims[l] = (list(t) for t in zip(*pairs))
    else:  # a skipped block comes back with its best head, that head's best dims and its best neurons
        h = max(range(removed.H), key=lambda i: removed.head_scores[l][i])
        kept, rest = removed.best_dims(l, h, removed.widths_d[0])
        order = removed._best_first(range(len(removed.neuron_scores[l])), removed.neuron_scores[l])
        m = removed.widths_m[0]
        block.update(skipped=False, heads=[h], value_dims=[kept], neurons=sorted(order[:m]))
        removed.neurons[l] = order[m:]
        removed.dims[l] = [rest]
        removed.heads[l] = [i for i in removed._best_first(range(removed.H), removed.head_scores[l]) if i != h]


def _restore(spec: dict, removed: _Removed, limit: float, ratio: float, dense: float, tokens: int,
             cost, groups: bool, counts: Dict[str, int]) -> float:
    """Put back the best removed groups (score per cost) while the ratio stays under `limit`:
    neurons, value dims for every kept head of a block, whole heads at the block's width,
    and skipped blocks (at their smallest shape, grown further by the next restorations)."""
    while True:
        cands = _restore_candidates(spec, removed, tokens, cost, groups)
        fits = [c for c in cands if ratio + c[1] / dense <= limit]
        if not fits:
            return ratio
        _, extra, l, kind, k = max(fits, key=lambda c: c[0])
        _apply_restore(spec, removed, l, kind, k)
        ratio += extra / dense
        counts[kind] += k * len(spec["blocks"][l]["heads"]) if kind == "dim" else k


def fit_to_budget(spec: dict, scores: Scores, budget: float, with_attn: bool = True,
                  tolerance: float = 0.01, groups: bool = True, round_to: int = 1,
                  cost=None) -> Tuple[dict, Dict[str, int]]:
    """Make the deployed cost ratio land in [budget - tolerance, budget].

    Above budget: remove the lowest-score groups (per cost saved) greedily, neurons
    or value dims from every kept head of a block. Below budget - tolerance:
    put back the best removed neurons, value dims, heads and skipped blocks (score
    per cost) while the budget allows. `groups` False (a search without pruning)
    restores only blocks. `round_to`: aligned widths (module docstring). `cost`: a
    cost model of uvc.cost.cost (default MACs, `with_attn` as given). Returns the new spec
    and what changed, for the log: groups removed and restored (a value dim counts
    once per head), by kind, and by the rounding.
    """
    spec = {**spec, "blocks": [dict(b, neurons=list(b["neurons"])) for b in spec["blocks"]]}
    scores = Scores(*(t.detach().float().cpu() for t in scores))
    cost = cost if cost is not None else MacsCost(dims_of_spec(spec), with_attn)
    _equalise_value_dims(spec, scores)
    rounded = _round_widths(spec, scores, round_to) if round_to > 1 and groups else {}
    dense = dense_cost(cost)
    tokens = len(spec["patches_kept"]) + spec["num_prefix_tokens"]
    ratio = spec_cost(cost, spec) / dense
    removed = 0
    pool = _Pool(spec, scores, round_to)
    while groups and ratio > budget:
        cands = pool.candidates(spec, tokens, cost)
        if not cands:
            break
        _, saving, l, kind, k = min(cands)
        removed += k * len(spec["blocks"][l]["heads"]) if kind == "dim" else k
        pool.remove(spec, l, kind, k)
        ratio -= saving / dense
    restored = {"neuron": 0, "dim": 0, "head": 0, "block": 0}
    if ratio < budget - tolerance:
        back = _Removed(spec, scores, round_to)
        ratio = _restore(spec, back, budget, ratio, dense, tokens, cost, groups, restored)
        if round_to > 1 and ratio < budget - WIDE_WINDOW[0]:  # aligned steps too coarse: the wide window
            ratio = _restore(spec, back, budget + WIDE_WINDOW[1], ratio, dense, tokens, cost, groups, restored)
    window = "tight" if budget - tolerance <= ratio <= budget else \
        "wide" if budget - WIDE_WINDOW[0] <= ratio <= budget + WIDE_WINDOW[1] else "missed"
    return spec, {"groups_removed_to_fit": removed, "groups_restored_to_fit": sum(restored.values()),
                  **{f"restored_{k}s": v for k, v in restored.items()}, "round_to": round_to,
                  "rounded_up": rounded.get("rounded_up", 0), "rounded_down": rounded.get("rounded_down", 0),
                  "fit_window": window}
