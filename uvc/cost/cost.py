"""What the budget counts: the cost of a (compressed) ViT, MACs or measured latency.

R(s, r, g, a) = C(compressed) / C(dense), with C the sum over blocks of
keep[l] x block(N, H'_l, V'_l, M'_l), plus the patch embedding and the
classifier. A cost model supplies those three parts (and may
supply the dense model's cost as measured); everything else (the
budget's expected and hard ratio, the cost of one group, the greedy fit) is
written once here against that interface:

    block(tokens, heads, value_dims, neurons)   one kept block (V' = all kept value dims)
    embed(patches)                              the patch embedding of the kept patches
    head()                                      the classifier(s)
    dense_measured                              C(dense) as measured whole, or None

`MacsCost` is docs/method.md section 3 (uvc.cost.flops); `uvc.cost.latency.LatencyCost` is a cost
model measured on the target device. Both accept Python numbers (the fit, the
report) and tensors (the search: differentiable in the counts). R's denominator
is `dense_measured` where the cost model has it (the dense model timed on the
device), else the model's own cost at full width.
"""
import math

import torch

from uvc.cost.flops import ViTDims, block_macs, head_macs, patch_embed_macs
from uvc.search.masks import Scores


class MacsCost:
    """Multiply-accumulates (uvc.cost.flops); `with_attn` False leaves out the N^2 terms.

    `token_step` S > 1 (--token_step): a token count N is priced at the count its kernels
    run, the next multiple of S or the full count N0, since kernels tile the token dimension (on the
    CPU measured, 41-47 tokens run slower than 48: log/token_alignment.md). As the aligned widths do
    (uvc.search.structure), a tensor count takes that value with its own gradient (straight through),
    so the budget still pushes patches out one at a time; the freeze then puts back patches up to the
    count priced (uvc.deploy.patch_align), and the model exported has the MACs the search counted.
    """
    name = "macs"
    dense_measured = None  # C(dense) is the formula at full width

    def __init__(self, dims: ViTDims, with_attn: bool = True, token_step: int = 1):
        self.dims, self.with_attn = dims, with_attn
        self.token_step = max(int(token_step), 1)
        self.envelope = self.token_step > 1  # counts priced at a count at or above them: patch_align acts

    def timed(self) -> "MacsCost":
        """The price of a token count as the aligned model has it: the same MACs (uvc.deploy.patch_align)."""
        return self

    def tokens(self, n):
        """The token count `n` (number or tensor, may be fractional) is priced at: the next multiple of
        `token_step` (at most N0) at whole counts, linear in between; tensors keep the gradient of `n`."""
        if self.token_step <= 1:
            return n
        full = self.dims.num_patches + self.dims.num_prefix_tokens
        up = lambda k: min(math.ceil(k / self.token_step) * self.token_step, full)  # noqa: E731
        if not isinstance(n, torch.Tensor):
            low = math.floor(n)
            return up(low) + (n - low) * (up(low + 1) - up(low))
        with torch.no_grad():
            low = torch.floor(n)
            at = lambda k: (torch.ceil(k / self.token_step) * self.token_step).clamp_max(full)  # noqa: E731
            value = at(low) + (n - low) * (at(low + 1) - at(low))
        return n + (value - n).detach()

    def block(self, tokens, heads, value_dims, neurons):
        d = self.dims
        return block_macs(self.tokens(tokens), d.embed_dim, heads, d.head_dim, value_dims, neurons, self.with_attn)

    def embed(self, patches):
        prefix = self.dims.num_prefix_tokens
        return patch_embed_macs(self.tokens(patches + prefix) - prefix, self.dims)

    def head(self):
        return head_macs(self.dims)


def model_cost(cost, heads, value_dims, neurons, block_keep, patches):
    """Cost of a ViT whose block l keeps heads[l] heads, value_dims[l] value dims in all and
    neurons[l] neurons and runs with probability block_keep[l]; `patches` kept (expected) patches.

    heads, value_dims, neurons, block_keep: (L,) tensors; patches: a scalar."""
    tokens = patches + cost.dims.num_prefix_tokens
    per_block = cost.block(tokens, heads, value_dims, neurons)
    return cost.embed(patches) + (per_block * block_keep).sum() + cost.head()


def dense_cost(cost) -> float:
    """Cost of the uncompressed model, R's denominator: as measured whole if the cost model
    measured it, else `full_cost`."""
    return float(cost.dense_measured) if cost.dense_measured is not None else full_cost(cost)


def full_cost(cost) -> float:
    """The cost model's estimate of the model at full width (every group, block and patch kept)."""
    d = cost.dims
    full = torch.ones(d.depth, dtype=torch.float64)
    return float(model_cost(cost, full * d.num_heads, full * d.num_heads * d.head_dim, full * d.mlp_hidden,
                            full, d.num_patches))


def spec_cost(cost, spec: dict) -> float:
    """Cost of a hard architecture spec (uvc.deploy.freeze) as deployed: every kept head padded to its
    block's widest; removed groups and skipped blocks cost nothing."""
    heads, values, neurons, keep = [], [], [], []
    for block in spec["blocks"]:
        widths = [len(v) for v in block["value_dims"]]
        heads.append(len(block["heads"]))
        values.append(len(widths) * max(widths) if widths else 0)
        neurons.append(len(block["neurons"]))
        keep.append(0.0 if block["skipped"] else 1.0)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return float(model_cost(cost, t(heads), t(values), t(neurons), t(keep), len(spec["patches_kept"])))


def group_costs(cost, dense: float) -> Scores:
    """The cost of one group of each kind in a dense block at the dense token count, over
    the dense cost: a head (its q, k rows and attention with its d value dims), one value
    dim of every head, one neuron; each the average over removing all that may go (one of
    each stays in a kept block; for MACs, exactly the cost of one group)."""
    d = cost.dims
    n, H, hd, M = d.num_patches + d.num_prefix_tokens, d.num_heads, d.head_dim, d.mlp_hidden
    full = cost.block(n, H, H * hd, M)
    left = lambda count: 1 if count > 1 else 0  # noqa: E731  (the group that stays, if another can go)
    heads = (full - cost.block(n, left(H), left(H) * hd, M)) / (H - left(H))
    dims = (full - cost.block(n, H, H * left(hd), M)) / (H * (hd - left(hd)))
    neurons = (full - cost.block(n, H, H * hd, left(M))) / (M - left(M))
    return Scores(heads=float(heads) / dense, dims=float(dims) / dense, neurons=float(neurons) / dense)


def block_share(cost, dense: float) -> float:
    """The share of the dense cost one whole block carries."""
    d = cost.dims
    return float(cost.block(d.num_patches + d.num_prefix_tokens, d.num_heads, d.num_heads * d.head_dim,
                            d.mlp_hidden)) / dense


def compact_cost(cost, spec: dict) -> float:
    """Cost of a compact spec (models/compact.py: per block heads, value_dim, mlp_hidden)."""
    patches = len(spec["patches_kept"])
    tokens = patches + cost.dims.num_prefix_tokens
    blocks = sum(cost.block(tokens, b["heads"], b["heads"] * b["value_dim"], b["mlp_hidden"])
                 for b in spec["blocks"])
    return float(cost.embed(patches) + blocks + cost.head())
