"""The architecture variables of UVC and their duals, in one module.

Per block l of a ViT with H heads of size d and M MLP neurons:

    s[l, 0]   heads removed                 0 .. H-1
    s[l, 1]   neurons removed               0 .. M-1
    r[l, h]   value dims removed in head h  0 .. d-1
    g[l]      block gate logits (skip, keep)
    a[i]      patch keep logit of patch position i
    y[l, :]   duals of the head / neuron LeastSum terms
    p[l, h]   duals of the head-dim LeastSum terms
    z         dual of the budget constraint R <= B (a PI controller: uvc.search.controller)

s and r are stored as fractions of their group counts (s_frac = s / [H, M],
r_frac = r / d) so that one learning rate suits 3 heads and 768 neurons alike;
the counts used are ceil(s) and ceil(r). s and r live in (-1, G - 1] and start at
-1 + 1e-3 (nothing removed): every group, the first included, takes one unit of
travel to remove (the reference starts at 0, where any push removes a whole head). This module is saved with every
checkpoint and kept out of DDP: its gradients are averaged by hand.

Aligned steps (`round_to` N > 1, docs/method.md section 7): the export keeps MLP widths
and value dims per head at multiples of N (uvc.deploy.fit.allowed_widths), so the search
counts in those steps too: the width kept is the widest allowed one within
G - ceil(s), and s moves through a group of N units one unit at a time. What the
search allocates is then what the export keeps, and the fit only takes up the rest
of the budget instead of rounding every layer. Heads are whole groups and do not round.
"""
import torch
import torch.nn as nn

from uvc.cost.flops import ViTDims


LOWEST = -1.0 + 1e-3  # s and r (in groups) never go under this: ceil gives 0 removed


def aligned_removed(count: torch.Tensor, full: int, round_to: int) -> torch.Tensor:
    """Removed counts whose kept width full - count is allowed: the widest multiple of
    `round_to` within it (at least `round_to`), or `full` itself when nothing is removed.

    count (...) >= 0 -> (...) of the same dtype, >= count. A `full` under `round_to` is never cut.
    """
    if round_to <= 1:
        return count
    kept = full - count
    aligned = torch.div(kept, round_to, rounding_mode="floor") * round_to
    aligned = aligned.clamp_min(min(round_to, full))
    return full - torch.where(kept >= full, torch.full_like(kept, full), aligned)


def ste_ceil(x: torch.Tensor) -> torch.Tensor:
    """ceil(x) in the forward pass, identity gradient in the backward pass."""
    return x + (torch.ceil(x) - x).detach()


class ArchState(nn.Module):
    """s, r, gate and patch logits (parameters) and the duals y, p, z (buffers)."""

    def __init__(self, dims: ViTDims, gate_init: float = 4.0, patch_init: float = 4.0, round_to: int = 1,
                 dual_init: float = 1.0, s_init: float = LOWEST, skip_init: float = 0.0, z_init: float = 0.0):
        """`s_init`: s and r at the start, in groups (the reference's search: 0); `skip_init`: the
        skip logit of every gate (the keep logit is `gate_init`); `z_init`: z at the start."""
        super().__init__()
        self.dims, self.round_to = dims, max(int(round_to), 1)
        L, H = dims.depth, dims.num_heads
        counts = torch.tensor([float(H), float(dims.mlp_hidden)])
        self.s_frac = nn.Parameter((s_init / counts).repeat(L, 1))
        self.r_frac = nn.Parameter(torch.full((L, H), s_init / dims.head_dim))
        # (skip, keep) logits: keep probability 0.98 at gate_init 4 (and sigmoid(4) for patches), so the
        # expected MACs start near the hard MACs and the gates move only when the search moves them
        self.gate_logits = nn.Parameter(torch.tensor([skip_init, gate_init]).repeat(L, 1))
        self.patch_logits = nn.Parameter(torch.full((dims.num_patches,), patch_init))
        # y, p start at 1: the price of importance is there from the first step, so the search
        # allocates by importance per MAC from the start (uvc.search.primal_dual); they only grow.
        # dual_init 0 with no dual ascent removes the importance term (the ablation)
        self.register_buffer("y", torch.full((L, 2), float(dual_init)))
        self.register_buffer("p", torch.full((L, H), float(dual_init)))
        self.register_buffer("z", torch.tensor(float(z_init)))
        self.register_buffer("z_integral", torch.zeros(()))
        self.register_buffer("group_counts", counts)

    # --- counts ----------------------------------------------------------
    @property
    def s(self) -> torch.Tensor:
        """(L, 2) continuous heads / neurons removed."""
        return self.s_frac * self.group_counts

    @property
    def r(self) -> torch.Tensor:
        """(L, H) continuous value dims removed per head."""
        return self.r_frac * self.dims.head_dim

    def count_steps(self):
        """Units removed per step of the count: (heads, neurons, value dims). Heads go one by one;
        neurons and value dims by `round_to` where the dense width allows it (aligned_removed)."""
        d = self.dims
        step = lambda full: self.round_to if full >= self.round_to else 1  # noqa: E731
        return 1, step(d.mlp_hidden), step(d.head_dim)

    def _aligned(self, k_neurons: torch.Tensor, k_dims: torch.Tensor):
        d = self.dims
        return (aligned_removed(k_neurons, d.mlp_hidden, self.round_to),
                aligned_removed(k_dims, d.head_dim, self.round_to))

    def removed_counts(self):
        """Integer counts used now: (heads (L,), neurons (L,), dims (L, H)), all long."""
        k = torch.ceil(self.s.detach() - 1e-6).clamp_min(0).long()
        k_heads = k[:, 0].clamp_max(self.dims.num_heads - 1)
        k_neurons = k[:, 1].clamp_max(self.dims.mlp_hidden - 1)
        k_dims = torch.ceil(self.r.detach() - 1e-6).clamp(0, self.dims.head_dim - 1).long()
        return (k_heads, *self._aligned(k_neurons, k_dims))

    def ste_counts(self):
        """Counts removed with a straight-through gradient: (heads (L,), neurons (L,), dims (L, H))."""
        s = self.s - 1e-6  # s >= 0 after projection, so these are >= 0 too
        r = self.r - 1e-6
        if self.round_to <= 1:
            return ste_ceil(s[:, 0]), ste_ceil(s[:, 1]), ste_ceil(r)
        neurons, dims = self._aligned(torch.ceil(s[:, 1]).clamp_min(0), torch.ceil(r).clamp_min(0))
        straight = lambda x, value: x + (value - x).detach()  # noqa: E731
        return ste_ceil(s[:, 0]), straight(s[:, 1], neurons), straight(r, dims)

    def project_(self) -> None:
        """Into (-1, G - 1]: keep at least one head, one neuron and one dim per kept head."""
        with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
            upper = (self.group_counts - 1) / self.group_counts
            self.s_frac.copy_(torch.minimum(torch.maximum(self.s_frac, LOWEST / self.group_counts), upper))
            d = self.dims.head_dim
            self.r_frac.clamp_(LOWEST / d, (d - 1) / d)

    # --- gates -------------------------------------------------------------
    def block_keep_hard(self, logits: torch.Tensor = None) -> torch.Tensor:
        """(L,) 1.0 where the gate's argmax keeps the block (of `logits`, default the current ones)."""
        g = self.gate_logits if logits is None else logits
        return (g[:, 1] >= g[:, 0]).float()

    def patch_keep_prob(self) -> torch.Tensor:
        """(P,) keep probability pi = sigmoid(a)."""
        return torch.sigmoid(self.patch_logits)

    def patch_keep_hard(self, logits: torch.Tensor = None) -> torch.Tensor:
        """(P,) bool, patches with pi >= 0.5 stay (of `logits`, default the current ones)."""
        return (self.patch_logits if logits is None else logits).detach() >= 0

    def architecture_parameters(self):
        return [self.s_frac, self.r_frac, self.gate_logits, self.patch_logits]
