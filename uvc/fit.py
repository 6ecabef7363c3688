"""Fitting a frozen architecture into the budget window, greedily by score per MAC.

The search should end on the budget by itself (uvc.schedule, uvc.controller);
this pass takes up the rest: the granularity of whole groups, and any search that
ended off target. Above the budget it removes the lowest-score groups per MAC
saved; under `budget - tolerance` it puts back the best removed neurons, value
dims, heads and skipped blocks per MAC while the budget allows. What it changed
is returned for the log (`groups_*_to_fit`, `restored_*`).
"""
from typing import Dict, Tuple

from uvc.flops import dense_macs
from uvc.freeze import dims_of_spec, spec_ratio
from uvc.masks import Scores


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


class _Pool:
    """The kept neurons and value dims of every block, each list sorted by score
    (ascending), so the cheapest next removal is read off the front in O(heads)."""

    def __init__(self, spec: dict, scores: Scores):
        neuron_scores, dim_scores = scores.neurons.tolist(), scores.dims.tolist()
        self.neurons = [sorted(b["neurons"], key=lambda i, l=l: neuron_scores[l][i]) for l, b in
                        enumerate(spec["blocks"])]
        self.dims = [[sorted(v, key=lambda j, l=l, h=h: dim_scores[l][h][j]) for h, v in
                      zip(b["heads"], b["value_dims"])] for l, b in enumerate(spec["blocks"])]
        self.neuron_scores, self.dim_scores = neuron_scores, dim_scores

    def candidates(self, spec: dict, tokens: int, with_attn: bool):
        """Cheapest next removal per block: (score per MAC saved, MACs saved, block, kind)."""
        D = spec["embed_dim"]
        n2 = tokens * tokens if with_attn else 0
        out = []
        for l, block in enumerate(spec["blocks"]):
            if block["skipped"]:
                continue
            if len(self.neurons[l]) > 1:
                saving = 2 * tokens * D
                out.append((self.neuron_scores[l][self.neurons[l][0]] / saving, saving, l, "neuron"))
            if block["heads"] and len(self.dims[l][0]) > 1:
                score = sum(self.dim_scores[l][h][v[0]] for h, v in zip(block["heads"], self.dims[l]))
                saving = len(block["heads"]) * (2 * tokens * D + n2)
                out.append((score / saving, saving, l, "dim"))
        return out

    def remove(self, spec: dict, l: int, kind: str) -> None:
        """Drop block l's lowest-score neuron, or the lowest-score value dim of each of its heads."""
        block = spec["blocks"][l]
        if kind == "neuron":
            self.neurons[l].pop(0)
            block["neurons"] = sorted(self.neurons[l])
        else:
            for v in self.dims[l]:
                v.pop(0)
            block["value_dims"] = [sorted(v) for v in self.dims[l]]


class _Removed:
    """The removed groups of every block, best score first (restoring pops from the front)."""

    def __init__(self, spec: dict, scores: Scores):
        self.neuron_scores, self.dim_scores = scores.neurons.tolist(), scores.dims.tolist()
        self.head_scores = scores.heads.tolist()
        self.d, self.H = spec["head_dim"], spec["num_heads"]
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


def _restore_candidates(spec: dict, removed: _Removed, n: int, D: int, n2: int, groups: bool):
    """(score per MAC, MACs, block, kind) of every possible restoration now."""
    d, out = spec["head_dim"], []
    qk_cost, dim_cost, neuron_cost = 2 * n * D * d + n2 * d, 2 * n * D + n2, 2 * n * D
    for l, block in enumerate(spec["blocks"]):
        if block["skipped"]:  # back at its smallest shape (one head, dim, neuron), ranked as a whole block
            full = removed.H * (qk_cost + d * dim_cost) + len(removed.neuron_scores[l]) * neuron_cost
            total = sum(removed.head_scores[l]) + sum(removed.neuron_scores[l])
            out.append((total / full, qk_cost + dim_cost + neuron_cost, l, "block"))
            continue
        if not groups:
            continue
        if removed.neurons[l]:
            out.append((removed.neuron_scores[l][removed.neurons[l][0]] / neuron_cost, neuron_cost, l, "neuron"))
        if block["heads"] and all(removed.dims[l]):
            cost = len(block["heads"]) * dim_cost
            score = sum(removed.dim_scores[l][h][o[0]] for h, o in zip(block["heads"], removed.dims[l]))
            out.append((score / cost, cost, l, "dim"))
        if removed.heads[l] and block["heads"]:
            width = len(block["value_dims"][0])
            h = removed.heads[l][0]
            kept, _ = removed.best_dims(l, h, width)
            cost = qk_cost + width * dim_cost
            out.append((sum(removed.dim_scores[l][h][j] for j in kept) / cost, cost, l, "head"))
    return out


def _apply_restore(spec: dict, removed: _Removed, l: int, kind: str) -> None:
    block = spec["blocks"][l]
    if kind == "neuron":
        block["neurons"] = sorted(block["neurons"] + [removed.neurons[l].pop(0)])
    elif kind == "dim":
        block["value_dims"] = [sorted(v + [o.pop(0)]) for v, o in zip(block["value_dims"], removed.dims[l])]
    elif kind == "head":
        h = removed.heads[l].pop(0)
        kept, rest = removed.best_dims(l, h, len(block["value_dims"][0]))
        pairs = sorted(zip(block["heads"] + [h], block["value_dims"] + [kept], removed.dims[l] + [rest]))
        block["heads"], block["value_dims"], removed.dims[l] = (list(t) for t in zip(*pairs))
    else:  # a skipped block comes back with its best head, that head's best dim and its best neuron
        h = max(range(removed.H), key=lambda i: removed.head_scores[l][i])
        kept, rest = removed.best_dims(l, h, 1)
        neuron = max(range(len(removed.neuron_scores[l])), key=lambda i: removed.neuron_scores[l][i])
        block.update(skipped=False, heads=[h], value_dims=[kept], neurons=[neuron])
        removed.neurons[l] = [i for i in removed._best_first(range(len(removed.neuron_scores[l])),
                                                              removed.neuron_scores[l]) if i != neuron]
        removed.dims[l] = [rest]
        removed.heads[l] = [i for i in removed._best_first(range(removed.H), removed.head_scores[l]) if i != h]


def _restore(spec: dict, scores: Scores, budget: float, ratio: float, dense: float, tokens: int,
             with_attn: bool, groups: bool = True) -> Tuple[float, Dict[str, int]]:
    """Put back the best removed groups (score per MAC) while the budget allows: neurons, one
    more value dim for every kept head of a block, whole heads at the block's width, and
    skipped blocks (at their smallest shape, grown further by the next restorations)."""
    removed = _Removed(spec, scores)
    n2 = tokens * tokens if with_attn else 0
    counts = {"neuron": 0, "dim": 0, "head": 0, "block": 0}
    while True:
        cands = _restore_candidates(spec, removed, tokens, spec["embed_dim"], n2, groups)
        fits = [c for c in cands if ratio + c[1] / dense <= budget]
        if not fits:
            return ratio, counts
        _, cost, l, kind = max(fits, key=lambda c: c[0])
        _apply_restore(spec, removed, l, kind)
        ratio += cost / dense
        counts[kind] += len(spec["blocks"][l]["heads"]) if kind == "dim" else 1


def fit_to_budget(spec: dict, scores: Scores, budget: float, with_attn: bool = True,
                  tolerance: float = 0.01, groups: bool = True) -> Tuple[dict, Dict[str, int]]:
    """Make the deployed MACs ratio land in [budget - tolerance, budget].

    Above budget: remove the lowest-score groups (per MAC saved) greedily, neurons
    or one value dim from every kept head of a block. Below budget - tolerance:
    put back the best removed neurons, value dims, heads and skipped blocks (score
    per MAC) while the budget allows. `groups` False (a search without pruning)
    restores only blocks. Returns the new spec and what changed, for the log:
    groups removed and restored (a value dim counts once per head), by kind.
    """
    spec = {**spec, "blocks": [dict(b, neurons=list(b["neurons"])) for b in spec["blocks"]]}
    scores = Scores(*(t.detach().float().cpu() for t in scores))
    _equalise_value_dims(spec, scores)
    dims = dims_of_spec(spec)
    dense = dense_macs(dims, with_attn)
    tokens = len(spec["patches_kept"]) + spec["num_prefix_tokens"]
    ratio = spec_ratio(spec, True, with_attn)
    removed = 0
    pool = _Pool(spec, scores)
    while groups and ratio > budget:
        cands = pool.candidates(spec, tokens, with_attn)
        if not cands:
            break
        _, saving, l, kind = min(cands)
        removed += len(spec["blocks"][l]["heads"]) if kind == "dim" else 1
        pool.remove(spec, l, kind)
        ratio -= saving / dense
    restored = {"neuron": 0, "dim": 0, "head": 0, "block": 0}
    if ratio < budget - tolerance:
        ratio, restored = _restore(spec, scores, budget, ratio, dense, tokens, with_attn, groups)
    return spec, {"groups_removed_to_fit": removed, "groups_restored_to_fit": sum(restored.values()),
                  **{f"restored_{k}s": v for k, v in restored.items()}}
