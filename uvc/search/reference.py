"""The reference's stage-1 search, step for step (`--search_algorithm reference`).

The update of VITA-Group/UVC (UVC/uvc_optimizer.py, UVC/uvc_utils.py), once per optimizer
step after the weights' step, with s, r in groups (counts) and the weights' learning rate lr:

  0. gate (and, with patch gating, patch) logits take the weights' AdamW step on their loss
     gradient: in the reference they are parameters of the model, inside its optimizer
  1. prox on the columns of attn.proj and mlp.fc2 only, unscaled (uvc.search.prox; the default
     search takes it too)
  2. R = R(ceil s, ceil r, gates, patches) from the current scores, and c = clamp(R - B, +-z_grad_clip):
       g_s = y dLeastSum(scores, ceil s)/ds + z dc/ds     (the same for r with p, every head)
     dLeastSum/ds = the (ceil s + 1)-th smallest score (straight-through ceil); dc = 0 outside the clip
  3. gates: g = loss gradient + z gating_weight dc/dg, collected as g x (global_step mod interval);
     at (global_step + 1) mod interval = 0 their mean takes an SGD step (momentum 0.9, wd 1e-4, glr)
  4. s, r (bounded_sgd_step): the gradient's sign masked at the bounds, inf-norm clip to 1, SGD at
     slr / rlr, s >= 0, entries at the upper bound stay there
  5. duals: y += ylr LeastSum, p += plr LeastSum, z += zlr (R - B) with R after steps 3-4, then
     y, p, z >= 0; zlr is the first entry of --zlr_schedule_list for the whole search
No PI controller, no moving target, no normalisation, no gate safety, no patch trial. What stays
ours: the MACs count R (uvc.cost.budget: expected keep probabilities, value dims padded per block),
the patch attention bias and `--search_masking`. Without pruning, as in the reference's
uvc_optimizer_gating, only z steps (the gates move with the weights' optimizer alone).
"""
from dataclasses import dataclass
from typing import Dict

import torch

from uvc.cost.budget import Budget
from uvc.search.gates import block_gate_sample, patch_attn_bias
from uvc.search.masked_model import MaskedViT
from uvc.search.masks import least_sum
from uvc.search.primal_dual import PrimalDual
from uvc.search.prox import proximal_step
from uvc.search.rules import GATE_MOMENTUM, GATE_WEIGHT_DECAY, inf_norm_clip_
from uvc.search.structure import ArchState

# s and r are stored as fractions s / G: s / G x G may land one rounding under the bound it was
# pinned to, so the overflow test allows this much (a ten-thousandth of a group)
ROUNDING = 1e-4


@dataclass(frozen=True)
class ReferenceConfig:
    slr: float
    rlr: float
    ylr: float
    plr: float
    zlr: float
    glr: float
    gating_weight: float
    gating_interval: int
    z_grad_clip: float
    weight_decay: float  # of the weights' AdamW, which the gate and patch logits take a step of too
    gumbel_tau: float
    gumbel_tau_decay: float
    eps: float
    eps_decay: float
    masking: str
    step_offset: int  # warm-up steps: the reference's global_step counts them

    @classmethod
    def from_config(cls, c, step_offset: int) -> "ReferenceConfig":
        from utils.config_checks import reference_zlr
        names = ("slr", "rlr", "ylr", "plr", "glr", "gating_weight", "z_grad_clip", "weight_decay", "gumbel_tau",
                 "gumbel_tau_decay", "eps", "eps_decay")
        return cls(zlr=reference_zlr(c.zlr_schedule_list), gating_interval=int(c.gating_interval),
                   masking=str(c.search_masking), step_offset=int(step_offset), **{n: float(c[n]) for n in names})


@torch.no_grad()
def bounded_sgd_step(x: torch.Tensor, grad: torch.Tensor, upper: torch.Tensor, lr: float) -> torch.Tensor:
    """One step of s or r (counts) as the reference takes it; returns the new values.

    x_max = max(upper - 1 - 1e-8, 0). Where x >= x_max only a gradient >= 0 (removing fewer) is
    kept, where x <= 0 only one <= 0; the gradient is clipped to inf-norm 1 over the whole
    tensor (inf_norm_clip_), x - lr grad is clamped at 0, and entries that were at
    x_max are set back to it.
    """
    x_max = (upper - 1 - 1e-8).clamp(min=0.0).expand_as(x)
    over, under = x >= x_max - ROUNDING, x <= 0
    g = inf_norm_clip_(torch.where(over, grad.clamp(min=0.0), torch.where(under, grad.clamp(max=0.0), grad)))
    return torch.where(over, x_max, (x - lr * g).clamp(min=0.0))


class ReferencePrimalDual(PrimalDual):
    """The reference's update of s, r, gates and the duals y, p, z (module docstring); the same
    interface as PrimalDual, whose masks and scores it reuses."""

    def __init__(self, arch: ArchState, budget: Budget, cfg: ReferenceConfig):
        self.arch, self.budget, self.cfg, self.space = arch, budget, cfg, budget.space
        self.gate_opt = torch.optim.SGD([arch.gate_logits], lr=cfg.glr, momentum=GATE_MOMENTUM,
                                        weight_decay=GATE_WEIGHT_DECAY)
        self.with_weights = [p for p, on in ((arch.gate_logits, self.space.block_gating),
                                             (arch.patch_logits, self.space.patch_gating)) if on]
        self.weights_opt = (torch.optim.AdamW(self.with_weights, lr=0.0, weight_decay=cfg.weight_decay)
                            if self.with_weights else None)
        self.tau, self.eps = cfg.gumbel_tau, cfg.eps
        self.t, self.epoch = 0, -1
        self.gate_sum, self.gate_count = None, 0  # weighted gate gradients since the last gate update
        self.max_undershoot = 0.0
        self.masks, self.scores, self._scores_fresh, self.trial = None, None, False, None

    def set_epoch(self, epoch: int, search_epoch: int) -> None:
        """The reference empties its list of gate gradients at every epoch's start, and decays eps at the
        start of every search epoch (the first included)."""
        if epoch != self.epoch:
            self.gate_sum, self.gate_count, self.epoch = None, 0, epoch
        c, e = self.cfg, max(search_epoch, 0)
        self.tau = c.gumbel_tau * c.gumbel_tau_decay ** e
        self.eps = c.eps * c.eps_decay ** (e + 1)

    def target(self) -> float:
        """The fixed budget B: no moving target."""
        return self.budget.budget

    def record(self) -> Dict[str, float]:
        """The deepest dip of the hard ratio under the budget so far, logged each epoch."""
        return {"max_undershoot": self.max_undershoot}

    def prepare(self, model: MaskedViT, training: bool = True) -> None:
        """As PrimalDual.prepare, with no protected block: every gate is sampled."""
        if not training:
            return super().prepare(model, False)
        a, sp = self.arch, self.space
        if sp.pruning:
            masks = self.update_masks(model.vit)
            model.set_masks(None if self.cfg.masking == "soft" else masks)
        self._scores_fresh = False
        model.set_block_gates(block_gate_sample(a.gate_logits, self.tau, sp.use_gumbel, self.eps)
                              if sp.block_gating else None)
        model.set_patches(bias=patch_attn_bias(a.patch_logits, model.vit.num_prefix_tokens)
                          if sp.patch_gating else None)

    def step(self, model: MaskedViT, weight_lr: float) -> Dict[str, float]:
        """Steps 0-5 of the module docstring; returns scalars for logging."""
        a, B = self.arch, self.budget.budget
        self.t += 1
        global_step = self.cfg.step_offset + self.t
        gate_loss_grad = self._weights_step(weight_lr)
        if self.space.pruning:
            self.proximal_step(model.vit, weight_lr)
            self.update_masks(model.vit)
        ratio = self.budget.expected_ratio(a, self.masks, self.eps)
        grads = self._budget_grads((ratio - B).clamp(-self.cfg.z_grad_clip, self.cfg.z_grad_clip))
        z = float(a.z)
        if self.space.pruning:
            if self.space.block_gating:
                self.gate_step(gate_loss_grad + z * self.cfg.gating_weight * grads["gate"], global_step)
            self.structure_step(grads, z)
            self.update_masks(model.vit)  # the new counts on the same scores
        after = self.dual_step()
        hard = self.budget.hard_ratio(a, self.masks)
        self.max_undershoot = max(self.max_undershoot, B - hard)
        return {"expected_ratio": float(ratio.detach()), "ratio_after_step": after, "hard_ratio": hard,
                "target_ratio": B, "z": float(a.z), "y_mean": float(a.y.mean()), "p_mean": float(a.p.mean()),
                "tau": self.tau}

    @torch.no_grad()
    def _weights_step(self, lr: float) -> torch.Tensor:
        """Step 0: the gate and patch logits' AdamW step at the weights' lr and weight decay on this
        step's loss gradient (averaged over ranks); returns the gates' loss gradient for step 3."""
        a = self.arch
        grads = [self._averaged_grad(p, 1) for p in self.with_weights]
        gate_grad = grads[0] if self.space.block_gating else torch.zeros_like(a.gate_logits)
        if self.weights_opt is not None:
            for p, g in zip(self.with_weights, grads):
                p.grad = g
            self.weights_opt.param_groups[0]["lr"] = lr
            self.weights_opt.step()
        a.gate_logits.grad, a.patch_logits.grad = None, None
        return gate_grad

    def proximal_step(self, vit, lr: float) -> None:
        """Step 1 on the scores of the weights after their step; the scores are then taken again."""
        k_heads, k_neurons, k_dims = self.arch.removed_counts()
        proximal_step(vit, self.scores_now(vit), k_heads, k_dims, k_neurons, self.arch.y, self.arch.p, lr)
        self.scores, self._scores_fresh = self.scores_now(vit), True

    @torch.no_grad()
    def gate_step(self, grad: torch.Tensor, global_step: int) -> None:
        """Step 3. The reference weights each step's gradient by global_step mod interval before
        averaging (so the first step after an update counts 0 and an interval of 1 never moves the
        gates but by weight decay); reproduced as it is."""
        n = self.cfg.gating_interval
        weighted = grad * (global_step % n)
        self.gate_sum = weighted if self.gate_sum is None else self.gate_sum + weighted
        self.gate_count += 1
        if (global_step + 1) % n == 0:
            self.arch.gate_logits.grad = self.gate_sum / self.gate_count
            self.gate_opt.step()
            self.arch.gate_logits.grad = None
            self.gate_sum, self.gate_count = None, 0

    @torch.no_grad()
    def structure_step(self, grads: Dict[str, torch.Tensor], z: float) -> None:
        """Step 4: s, r in groups take bounded_sgd_step on y dLeastSum/ds + z dc/ds (p and r alike)."""
        a, sc, d = self.arch, self.scores, self.arch.dims.head_dim
        k_heads, k_neurons, k_dims = a.removed_counts()
        _, n_step, d_step = a.count_steps()
        slope_s = torch.stack([least_sum(sc.heads, k_heads)[1], least_sum(sc.neurons, k_neurons, n_step)[1]], 1)
        g_s = a.y * slope_s + z * grads["s"] / a.group_counts  # d/ds = d/ds_frac / G
        g_r = a.p * least_sum(sc.dims, k_dims, d_step)[1] + z * grads["r"] / d
        s = bounded_sgd_step(a.s.detach(), g_s, a.group_counts, self.cfg.slr)
        r = bounded_sgd_step(a.r.detach(), g_r, torch.full_like(g_r, d), self.cfg.rlr)
        a.s_frac.copy_(s / a.group_counts)
        a.r_frac.copy_(r / d)

    @torch.no_grad()
    def dual_step(self) -> float:
        """Step 5; returns R after the primal steps (the ratio z's step reads)."""
        a, c = self.arch, self.cfg
        if self.space.pruning:
            k_heads, k_neurons, k_dims = a.removed_counts()
            a.y[:, 0] += c.ylr * least_sum(self.scores.heads, k_heads)[0]
            a.y[:, 1] += c.ylr * least_sum(self.scores.neurons, k_neurons)[0]
            a.p += c.plr * least_sum(self.scores.dims, k_dims)[0]
        ratio = float(self.budget.expected_ratio(a, self.masks, self.eps))
        a.z += c.zlr * (ratio - self.budget.budget)
        for dual in (a.y, a.p, a.z):
            dual.clamp_(min=0.0)
        return ratio

    def discard_loss_grads(self) -> None:
        """A step AMP skipped: its loss gradients are dropped; the collected gate gradients stay."""
        self.arch.gate_logits.grad = None
        self.arch.patch_logits.grad = None

    def state_dict(self) -> dict:
        return {"gate_opt": self.gate_opt.state_dict(),
                "weights_opt": self.weights_opt.state_dict() if self.weights_opt is not None else {},
                "t": self.t, "epoch": self.epoch, "gate_sum": self.gate_sum, "gate_count": self.gate_count,
                "max_undershoot": self.max_undershoot}

    def load_state_dict(self, state: dict) -> None:
        self.gate_opt.load_state_dict(state["gate_opt"])
        if self.weights_opt is not None:
            self.weights_opt.load_state_dict(state["weights_opt"])
        self.t, self.epoch, self.gate_count = int(state["t"]), int(state["epoch"]), int(state["gate_count"])
        self.gate_sum = state["gate_sum"]
        self.max_undershoot = float(state["max_undershoot"])
