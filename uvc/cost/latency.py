"""A latency cost model: R(s, r, g, a) = T(compressed) / T_dense, from a table measured once
on the target device (uvc.cost.latency_table).

MACs miss what a device pays: the softmax over N^2 scores per head whatever its value dims,
value heads padded to the q/k size, narrow matmuls far from peak. Each part of a compact
block (models/compact.py) is timed at the dense token count N0 over a grid of widths and
interpolated, f = N / N0:

    P(N, H', V', M') = f   * (qkv(2 H' d + V') + proj(V') + mlp(M') + norms)
                     + f^2 * attention(H', V' / H')

Whole blocks are timed on a ladder of widths at each of a set of token counts N_k; at each
N_k, g_k is piecewise linear through (0, 0) and the (P(N_k, ...), whole block) points, and
between token counts the block's time is interpolated linearly:

    T_block(N) = (1 - t) g_k(P(N_k, H', V', M')) + t g_k+1(P(N_k+1, H', V', M'))

Parts scale with f only where the work dominates; on a narrow model at few tokens the
per-operation cost does not shrink with N, and only whole blocks timed there show by how
much. Outside the blocks (patch embedding of the kept patches, final norm, classifier) the
time is measured at the same token counts and interpolated. T_dense is the dense model timed
whole.

Time is not monotone in N: kernels tile the token and row counts, so on a CPU 48 tokens can
run faster than 46 (log/token_alignment.md). uvc-latency-v4 times blocks at every token count
from N0 / 2 to N0 and prices a count at the fastest count at or above it,

    T*(N) = min over N' >= N of T(N'),

since the freeze keeps the patches up to that count (uvc.deploy.patch_align): a drop inside a
plateau of T* buys nothing and costs nothing, and T* is non-decreasing and piecewise linear,
so T is differentiable in the counts like the MACs model (numbers or tensors). Older tables
are read as they were searched: uvc-latency-v3 (a ladder of 8 token counts, each width rung
made non-decreasing in N by least squares), uvc-latency-v2 (its ladder at N0 only,
T_block = g(P(N, ...)), outside scaled by f), uvc-latency-v1 (no g, R over the sum of parts
at full width).
"""
import bisect
from typing import Dict, List, Sequence

import torch

from uvc.cost.flops import ViTDims

FORMAT = "uvc-latency-v4"
FORMATS = ("uvc-latency-v1", "uvc-latency-v2", "uvc-latency-v3", FORMAT)  # what is read (see the module docstring)
PARTS = ("qkv", "proj", "mlp")


class LatencyTableError(ValueError):
    """A latency table that does not fit the model; the message is one line for the user."""


def table_sizes(dims: ViTDims) -> Dict[str, int]:
    """The sizes a latency table is measured for (what must match the model)."""
    return {"embed_dim": dims.embed_dim, "num_heads": dims.num_heads, "head_dim": dims.head_dim,
            "mlp_hidden": dims.mlp_hidden, "tokens": dims.num_patches + dims.num_prefix_tokens}


def _monotone(values: Sequence[float], ramp: float = 1e-6) -> List[float]:
    """Running maximum, plus a tiny ramp so that every segment has a positive slope."""
    out, top = [], float("-inf")
    for v in values:
        top = max(top, float(v))
        out.append(top)
    scale = max(abs(out[-1]), 1e-12) * ramp
    return [v + scale * i for i, v in enumerate(out)]


def _isotonic(values: Sequence[float]) -> List[float]:
    """The non-decreasing sequence closest to `values` in least squares (pool adjacent violators): a
    dip is averaged with its neighbours, where a running maximum would lift everything after it."""
    blocks = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(c)]


def _fastest_at_or_above(values: Sequence[float]) -> List[float]:
    """T*(N) of values at increasing token counts: each the least of itself and every value after it."""
    out, low = [], float("inf")
    for v in reversed(values):
        low = min(low, float(v))
        out.append(low)
    return out[::-1]


def _segment(x: float, xs: List[float]) -> int:
    return min(max(bisect.bisect_right(xs, x), 1), len(xs) - 1)


def interp(x: float, xs: List[float], ys: List[float]) -> float:
    """Piecewise-linear y(x) through (xs, ys), extended linearly past both ends."""
    i = _segment(x, xs)
    t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + t * (ys[i] - ys[i - 1])


def interp_t(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The same for a tensor x (...); ys (K,) or (..., K) per entry of x. Differentiable in x and ys."""
    i = torch.searchsorted(xs, x.detach().contiguous(), right=True).clamp(1, len(xs) - 1)
    x0, x1 = xs[i - 1], xs[i]
    if ys.dim() == 1:
        y0, y1 = ys[i - 1], ys[i]
    else:
        y0 = ys.gather(-1, (i - 1).unsqueeze(-1)).squeeze(-1)
        y1 = ys.gather(-1, i.unsqueeze(-1)).squeeze(-1)
    t = (x - x0) / (x1 - x0)
    return y0 + t * (y1 - y0)


class LatencyCost:
    """The cost model of uvc.cost.cost from a measured table (seconds per batch)."""
    name = "latency"

    def __init__(self, dims: ViTDims, table: dict, as_timed: bool = False):
        """`as_timed`: each token count at its own time (no T*, nothing made monotone in the count): what
        the freeze compares token counts by (uvc.deploy.patch_align), not a cost for the search."""
        check_table(table, dims)
        self.dims, self.table = dims, table
        s = table["seconds"]
        self.tokens = float(table_sizes(dims)["tokens"])
        self.lines = {p: ([float(w) for w in s[p]["width"]], _monotone(s[p]["time"])) for p in PARTS}
        att = s["attention"]
        self.heads_grid = [float(h) for h in att["heads"]]
        self.dims_grid = [float(v) for v in att["value_dim"]]
        rows = [_monotone(row) for row in att["time"]]  # non-decreasing in value dims ...
        cols = [_monotone(col) for col in zip(*rows)]  # ... and in heads
        self.attention = [list(row) for row in zip(*cols)]  # (heads, value dims)
        self.norms = float(s["block_overhead"])
        self.as_timed = as_timed
        self.envelope = table["format"] == FORMAT and not as_timed  # T*: the fastest count at or above
        outside = s["outside_blocks"]
        if isinstance(outside, dict) and len(outside["tokens"]) > 1:  # v3: timed at a ladder of token counts
            times = self._in_tokens(outside["time"], _monotone)
            self.outside, self.outside_line = None, ([float(n) for n in outside["tokens"]], times)
        else:  # one time at N0, scaled by f
            self.outside = float(outside["time"][0] if isinstance(outside, dict) else outside)
            self.outside_line = None
        self._tensors = {}
        ladder = table["format"] != "uvc-latency-v1"
        self.calibration = self._calibration(s["blocks"]) if ladder else None
        self.dense_measured = float(s["dense_model"]) if ladder else None

    def timed(self) -> "LatencyCost":
        """This table priced as timed at each token count (see __init__)."""
        return LatencyCost(self.dims, self.table, as_timed=True)

    def _in_tokens(self, times: Sequence[float], older) -> List[float]:
        """Times at increasing token counts as this cost reads them: as timed, T* (v4), or `older` (v1-v3)."""
        if self.as_timed:
            return [float(t) for t in times]
        return _fastest_at_or_above(times) if self.envelope else older(times)

    def _calibration(self, ladder: dict) -> List[tuple]:
        """g_k per token count N_k of the ladder: (N_k, xs, ys) through (0, 0) and each ladder block's
        (sum of parts at N_k, measured time), made increasing. A ladder without token counts is at N0."""
        tokens = ladder.get("tokens", [self.tokens] * len(ladder["time"]))
        levels = {}
        times = _per_rung(tokens, ladder["time"], lambda t: self._in_tokens(t, _isotonic))
        for n, h, v, m, t in zip(tokens, ladder["heads"], ladder["value_dim"], ladder["mlp"], times):
            levels.setdefault(float(n), []).append((self._parts(float(n), h, h * v, m), t))
        out = []
        for n in sorted(levels):
            parts, times = zip(*levels[n])
            xs, ys = [0.0], [0.0]
            for x, y in sorted(zip(parts, _monotone(times))):
                if x > xs[-1]:
                    xs.append(x)
                    ys.append(y)
            out.append((n, xs, _monotone(ys)))
        return out

    def _t(self, like: torch.Tensor):
        """The tables as tensors of `like`'s dtype and device (cached)."""
        key = (like.dtype, like.device)
        if key not in self._tensors:
            as_t = lambda v: torch.tensor(v, dtype=like.dtype, device=like.device)  # noqa: E731
            g = None if self.calibration is None else [(n, as_t(xs), as_t(ys)) for n, xs, ys in self.calibration]
            outside = None if self.outside_line is None else tuple(as_t(v) for v in self.outside_line)
            self._tensors[key] = ({p: (as_t(xs), as_t(ys)) for p, (xs, ys) in self.lines.items()},
                                  as_t(self.heads_grid), as_t(self.dims_grid), as_t(self.attention), g, outside)
        return self._tensors[key]

    def block(self, tokens, heads, value_dims, neurons):
        """Seconds of one kept block with `heads` heads, `value_dims` value dims in all, `neurons` neurons
        at `tokens` tokens (numbers, or tensors of any broadcastable shapes): see the module docstring."""
        args = (tokens, heads, value_dims, neurons)
        if any(isinstance(v, torch.Tensor) for v in args):
            return self._block_tensors(*args)
        if self.calibration is None:
            return self._parts(*args)
        if len(self.calibration) == 1:  # a ladder at N0 only: g of the parts scaled to N
            return interp(self._parts(*args), *self.calibration[0][1:])
        at_levels = self._in_tokens([interp(self._parts(n, heads, value_dims, neurons), xs, ys)
                                     for n, xs, ys in self.calibration], lambda t: _monotone(t, ramp=0.0))
        return max(interp(tokens, [n for n, _, _ in self.calibration], at_levels), 0.0)

    def _block_tensors(self, tokens, heads, value_dims, neurons) -> torch.Tensor:
        if self.calibration is None:
            return self._parts_tensors(tokens, heads, value_dims, neurons)
        parts = self._parts_tensors(tokens, heads, value_dims, neurons)
        g = self._t(parts)[4]
        if len(g) == 1:
            return interp_t(parts, *g[0][1:])
        at_levels = [interp_t(self._parts_tensors(n, heads, value_dims, neurons).to(parts), xs, ys)
                     for n, xs, ys in g]
        at_levels = torch.stack(torch.broadcast_tensors(*at_levels), -1)  # (..., levels)
        if not self.as_timed:
            at_levels = at_levels.flip(-1).cummin(-1).values.flip(-1) if self.envelope else at_levels.cummax(-1).values
        at = torch.as_tensor(tokens, dtype=parts.dtype, device=parts.device).expand(at_levels.shape[:-1])
        levels = torch.tensor([n for n, _, _ in g], dtype=parts.dtype, device=parts.device)
        return interp_t(at, levels, at_levels).clamp_min(0.0)

    def _parts(self, tokens, heads, value_dims, neurons) -> float:
        """The sum of the block's parts, timed alone (numbers)."""
        f = tokens / self.tokens
        width = value_dims / max(heads, 1)
        linear = sum(interp(x, *self.lines[p]) for p, x in zip(PARTS, self._widths(heads, value_dims, neurons)))
        rows = [interp(width, self.dims_grid, row) for row in self.attention]  # each heads row at `width`
        return f * (linear + self.norms) + f * f * interp(heads, self.heads_grid, rows)

    def _widths(self, heads, value_dims, neurons):
        """The widths of qkv (q, k rows of every kept head and the value rows), proj and the MLP."""
        return 2 * heads * self.dims.head_dim + value_dims, value_dims, neurons

    def _parts_tensors(self, tokens, heads, value_dims, neurons) -> torch.Tensor:
        tensors = [v for v in (heads, value_dims, neurons, tokens) if isinstance(v, torch.Tensor)]
        ref = next((v for v in tensors if v.is_floating_point()), None)
        dtype, device = (ref.dtype, ref.device) if ref is not None else (torch.float64, tensors[0].device)
        as_t = lambda v: torch.as_tensor(v, dtype=dtype, device=device)  # noqa: E731
        lines, hs, vs, att = self._t(as_t(0.0))[:4]
        heads, value_dims, neurons = torch.broadcast_tensors(as_t(heads), as_t(value_dims), as_t(neurons))
        f = as_t(tokens) / self.tokens
        width = value_dims / heads.clamp_min(1)
        linear = sum(interp_t(x, *lines[p]) for p, x in zip(PARTS, self._widths(heads, value_dims, neurons)))
        rows = _rows(width, vs, att)  # (..., heads grid): each heads row of the table at `width`
        return f * (linear + self.norms) + f * f * interp_t(heads, hs, rows)

    def embed(self, patches):
        """Everything outside the blocks at the kept patches' token count: interpolated between the
        token counts it was timed at, or (one time, at N0) scaled with the token count."""
        tokens = patches + self.dims.num_prefix_tokens
        if self.outside_line is None:
            return self.outside * tokens / self.tokens
        if isinstance(tokens, torch.Tensor):
            ns, ts = self._t(tokens if tokens.is_floating_point() else tokens.double())[5]
            return interp_t(tokens.to(ns), ns, ts).clamp_min(0.0)
        return max(interp(tokens, *self.outside_line), 0.0)

    def head(self):
        return 0.0


def _per_rung(tokens: Sequence[float], times: Sequence[float], in_tokens) -> List[float]:
    """The ladder's times with `in_tokens` (LatencyCost._in_tokens) applied over the token counts of each
    width rung (the k-th block timed at every count)."""
    seen, rung = {}, []
    for n in tokens:
        rung.append(seen.get(n, 0))
        seen[n] = rung[-1] + 1
    out = [float(t) for t in times]
    for k in set(rung):
        members = sorted((i for i, r in enumerate(rung) if r == k), key=lambda i: tokens[i])
        for i, v in zip(members, in_tokens([times[i] for i in members])):
            out[i] = v
    return out


def _rows(width: torch.Tensor, vs: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """(..., heads grid): attention time of each heads row of the table at `width` value dims per head."""
    i = torch.searchsorted(vs, width.detach().contiguous(), right=True).clamp(1, len(vs) - 1)  # (...)
    t = ((width - vs[i - 1]) / (vs[i] - vs[i - 1])).unsqueeze(-1)  # (..., 1)
    y0, y1 = att[:, i - 1], att[:, i]  # (heads grid, ...)
    return (y0 + t.movedim(-1, 0) * (y1 - y0)).movedim(0, -1)


def check_table(table: dict, dims: ViTDims) -> None:
    """One line if `table` is not a latency table of a model of `dims`' sizes."""
    if not isinstance(table, dict) or table.get("format") not in FORMATS:
        raise LatencyTableError(f"not a latency table ({' or '.join(FORMATS)}): measure one (python -m uvc.report "
                                f"<model> --latency) or point --latency_cache elsewhere")
    if table["format"] != "uvc-latency-v1" and "blocks" not in table.get("seconds", {}):
        raise LatencyTableError(f"the latency table has no block ladder, which {table['format']} needs: delete it "
                                f"to measure it again (python -m uvc.report <model> --latency)")
    want, have = table_sizes(dims), table.get("sizes", {})
    wrong = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if wrong:
        k, (got, expected) = next(iter(wrong.items()))
        raise LatencyTableError(f"the latency table is of another model ({k} {got}, this model has {expected}): "
                                f"measure this model's (python -m uvc.report <model> --latency) or point "
                                f"--latency_cache elsewhere")
