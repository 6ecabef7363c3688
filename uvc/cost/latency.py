"""A latency cost model: R(s, r, g, a) = T(compressed) / T_dense, from a table measured once
on the target device (uvc.cost.latency_table).

MACs miss what a device pays: the softmax over N^2 scores per head whatever its value dims,
value heads padded to the q/k size, narrow matmuls far from peak. Each part of a compact
block (models/compact.py) is timed at the dense token count N0 over a grid of widths and
interpolated, f = N / N0:

    P(N, H', V', M') = f   * (qkv(2 H' d + V') + proj(V') + mlp(M') + norms)
                     + f^2 * attention(H', V' / H')
    T_block = g(P)

g is piecewise linear through (0, 0) and whole blocks timed on a ladder of widths (parts
timed alone miss the memory traffic of a block in a model). Outside the blocks one time,
scaled by f. T_dense is the dense model timed whole. Tables are non-decreasing and piecewise
linear in every width, so T is differentiable in the counts like the MACs model (numbers or
tensors). A uvc-latency-v1 table (no ladder) is read as it was searched: no g, and the sum
of parts at full width as T_dense.
"""
import bisect
from typing import Dict, List, Sequence

import torch

from uvc.cost.flops import ViTDims

FORMAT = "uvc-latency-v2"
FORMATS = ("uvc-latency-v1", FORMAT)  # what is read (v1: no block ladder, R over the sum of parts)
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

    def __init__(self, dims: ViTDims, table: dict):
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
        self.norms, self.outside = float(s["block_overhead"]), float(s["outside_blocks"])
        self._tensors = {}
        self.calibration = self._calibration(s.get("blocks")) if table["format"] == FORMAT else None
        self.dense_measured = float(s["dense_model"]) if table["format"] == FORMAT else None

    def _calibration(self, ladder: dict):
        """g's points: (0, 0) and each ladder block's (sum of parts, measured time), made increasing."""
        parts = [self._parts(self.tokens, h, h * v, m)
                 for h, v, m in zip(ladder["heads"], ladder["value_dim"], ladder["mlp"])]
        xs, ys = [0.0], [0.0]
        for x, y in sorted(zip(parts, _monotone(ladder["time"]))):
            if x > xs[-1]:
                xs.append(x)
                ys.append(y)
        return xs, _monotone(ys)

    def _t(self, like: torch.Tensor):
        """The tables as tensors of `like`'s dtype and device (cached)."""
        key = (like.dtype, like.device)
        if key not in self._tensors:
            as_t = lambda v: torch.tensor(v, dtype=like.dtype, device=like.device)  # noqa: E731
            g = tuple(as_t(v) for v in self.calibration) if self.calibration is not None else None
            self._tensors[key] = ({p: (as_t(xs), as_t(ys)) for p, (xs, ys) in self.lines.items()},
                                  as_t(self.heads_grid), as_t(self.dims_grid), as_t(self.attention), g)
        return self._tensors[key]

    def block(self, tokens, heads, value_dims, neurons):
        """Seconds of one kept block with `heads` heads, `value_dims` value dims in all, `neurons` neurons
        (numbers, or tensors of any broadcastable shapes): g of the sum of its parts."""
        args = (tokens, heads, value_dims, neurons)
        if any(isinstance(v, torch.Tensor) for v in args):
            parts = self._parts_tensors(*args)
            if self.calibration is None:
                return parts
            xs, ys = self._t(parts)[4]
            return interp_t(parts, xs, ys)
        parts = self._parts(*args)
        return parts if self.calibration is None else interp(parts, *self.calibration)

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
        lines, hs, vs, att, _ = self._t(as_t(0.0))
        heads, value_dims, neurons = torch.broadcast_tensors(as_t(heads), as_t(value_dims), as_t(neurons))
        f = as_t(tokens) / self.tokens
        width = value_dims / heads.clamp_min(1)
        linear = sum(interp_t(x, *lines[p]) for p, x in zip(PARTS, self._widths(heads, value_dims, neurons)))
        rows = _rows(width, vs, att)  # (..., heads grid): each heads row of the table at `width`
        return f * (linear + self.norms) + f * f * interp_t(heads, hs, rows)

    def embed(self, patches):
        """Everything outside the blocks, scaled with the token count."""
        return self.outside * (patches + self.dims.num_prefix_tokens) / self.tokens

    def head(self):
        return 0.0


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
    if table["format"] == FORMAT and "blocks" not in table.get("seconds", {}):
        raise LatencyTableError(f"the latency table has no block ladder, which {FORMAT} needs: delete it to "
                                f"measure it again (python -m uvc.report <model> --latency)")
    want, have = table_sizes(dims), table.get("sizes", {})
    wrong = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if wrong:
        k, (got, expected) = next(iter(wrong.items()))
        raise LatencyTableError(f"the latency table is of another model ({k} {got}, this model has {expected}): "
                                f"measure this model's (python -m uvc.report <model> --latency) or point "
                                f"--latency_cache elsewhere")
