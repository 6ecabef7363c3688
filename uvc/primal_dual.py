"""The primal-dual algorithm of UVC (UVC_SPEC sections 4 and 5).

    min_{W, s, r, g, a} max_{y, p, z >= 0}
        L_distill(W, g, a)
      + sum_l  y[l,0] LeastSum(head scores,   ceil s[l,0])
      + sum_l  y[l,1] LeastSum(neuron scores, ceil s[l,1])
      + sum_lh p[l,h] LeastSum(dim scores,    ceil r[l,h])
      + z (R(s, r, g, a) - B)

A training step calls `prepare()` before the forward pass (masks from the
current s, r and scores; a gate sample; the patch bias) and `step()` once after
the optimizer has updated W. `step()` runs, in this order:

  2. proximal step on the removed groups: W_G <- W_G / (1 + 2 lr y)
  3. s, r: gradient y dLeastSum/ds + z dR/ds, optimizer step, projection
  4. gates and patch logits, every `gating_interval` steps, from the averaged
     loss gradient + z * weight * dR/d(logits) (+ the L1 pull on patches)
  5. dual ascent on y, p (LeastSum) and z (R - B, clipped), clamped at 0

Scale: LeastSum is taken over scores as fractions of their layer's total
(`as_fractions`), so every LeastSum term, like R, lies in [0, 1] and one set of
dual learning rates fits every layer and model. The prox of
y * ||W_G||^2 is applied per unit of the layer's mean group score S_l / G,
W_G / (1 + 2 lr y G / S_l): a group of average score then decays at the same
rate in every layer and model, and within a few hundred steps at y ~ 1, so the
selected groups do reach zero in a search of practical length.
"""
from dataclasses import dataclass
from typing import Dict, Sequence

import torch

from uvc.budget import Budget
from uvc.gates import block_gate_sample, patch_attn_bias
from uvc.masked_model import MaskedViT
from uvc.masks import Masks, Scores, as_fractions, compute_masks, group_scores, least_sum, stacked_weights
from uvc.structure import ArchState
from utils.dist import all_reduce_mean


@dataclass
class PrimalDualConfig:
    slr: float = 0.01
    rlr: float = 0.01
    soptim: str = "sgd"
    roptim: str = "sgd"
    ylr: float = 0.01
    plr: float = 0.01
    zlr: float = 0.01
    zlr_milestones: Sequence[int] = ()  # epochs at which zlr doubles
    z_grad_clip: float = 0.5
    glr: float = 0.1
    gating_weight: float = 5e-4
    gating_interval: int = 50
    patchlr: float = 0.01
    patch_weight: float = 5.0
    patch_l1_weight: float = 0.01
    gumbel_tau: float = 1.0
    gumbel_tau_decay: float = 0.95
    eps: float = 0.1
    eps_decay: float = 0.92

    @classmethod
    def from_config(cls, c) -> "PrimalDualConfig":
        from utils.config import zlr_schedule
        names = [f for f in cls.__dataclass_fields__ if f != "zlr_milestones"]
        return cls(zlr_milestones=tuple(zlr_schedule(c.zlr_schedule_list)), **{n: c[n] for n in names})


def _optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


class PrimalDual:
    """Owns the updates of s, r, gates, patch logits and the duals y, p, z."""

    def __init__(self, arch: ArchState, budget: Budget, cfg: PrimalDualConfig):
        self.arch, self.budget, self.cfg, self.space = arch, budget, cfg, budget.space
        self.s_opt = _optimizer(cfg.soptim, [arch.s_frac], cfg.slr)
        self.r_opt = _optimizer(cfg.roptim, [arch.r_frac], cfg.rlr)
        # gate and patch gradients are tiny and of varying scale: Adam normalises them
        self.gate_opt = torch.optim.Adam([arch.gate_logits], lr=cfg.glr)
        self.patch_opt = torch.optim.Adam([arch.patch_logits], lr=cfg.patchlr)
        self.zlr, self.tau, self.eps = cfg.zlr, cfg.gumbel_tau, cfg.eps
        self.grad_steps = 0  # loss-gradient steps accumulated since the last gate update
        self.masks: Masks = None
        self.scores: Scores = None
        self._scores_fresh = False  # scores of the current weights, from step()

    # --- schedules -----------------------------------------------------------
    def set_epoch(self, epoch: int, search_epoch: int) -> None:
        """zlr doubles at each milestone reached; tau and eps decay per search epoch."""
        c = self.cfg
        self.zlr = c.zlr * 2.0 ** sum(epoch >= m for m in c.zlr_milestones)
        self.tau = max(0.1, c.gumbel_tau * c.gumbel_tau_decay ** max(search_epoch, 0))
        self.eps = c.eps * c.eps_decay ** max(search_epoch, 0)

    # --- before the forward pass -------------------------------------------------
    @torch.no_grad()
    def scores_now(self, vit) -> Scores:
        """Group scores of the current weights."""
        return group_scores(*stacked_weights(vit), self.arch.dims.num_heads)

    @torch.no_grad()
    def update_masks(self, vit) -> Masks:
        """Re-rank groups by the current weights; the ceil(s) lowest are removed."""
        if not self._scores_fresh:
            self.scores = self.scores_now(vit)
        k_heads, k_neurons, k_dims = self.arch.removed_counts()
        self.masks = compute_masks(self.scores, k_heads, k_dims, k_neurons)
        return self.masks

    def prepare(self, model: MaskedViT, training: bool = True) -> None:
        """Set masks, gates and patches on the model for the next forward pass.

        Training: a fresh Gumbel / SoftL0 gate sample and the log(pi) patch bias.
        Evaluation: deterministic, the argmax architecture (no noise).
        """
        a, sp = self.arch, self.space
        if sp.pruning:
            model.set_masks(self.update_masks(model.vit))
        if training:
            self._scores_fresh = False  # the weights change after this forward pass
            gates = block_gate_sample(a.gate_logits, self.tau, sp.use_gumbel, self.eps) if sp.block_gating else None
            model.set_block_gates(gates)
            bias = patch_attn_bias(a.patch_logits, model.vit.num_prefix_tokens) if sp.patch_gating else None
            model.set_patches(bias=bias)
        else:
            skipped = torch.nonzero(a.block_keep_hard() == 0).flatten().tolist() if sp.block_gating else ()
            model.set_block_gates(None, skipped)
            index = torch.nonzero(a.patch_keep_hard()).flatten() if sp.patch_gating else None
            model.set_patches(index=index)

    # --- after the weight update -----------------------------------------------
    def step(self, model: MaskedViT, weight_lr: float) -> Dict[str, float]:
        """Steps 2-5 of UVC_SPEC section 5; returns scalars for logging."""
        a = self.arch
        if self.space.pruning:
            self.proximal_step(model.vit, weight_lr)
            self.scores = self.scores_now(model.vit)
            self._scores_fresh = True
        ratio = self.budget.expected_ratio(a, self.masks, self.eps)
        grads = self._budget_grads(ratio)
        if self.space.pruning:
            self.structure_step(grads)
        self.gate_step(grads)
        ratio = float(ratio.detach())
        self.dual_step(ratio)
        return {"expected_ratio": ratio, "z": float(a.z), "zlr": self.zlr,
                "y_mean": float(a.y.mean()), "p_mean": float(a.p.mean()), "tau": self.tau}

    def _budget_grads(self, ratio: torch.Tensor) -> Dict[str, torch.Tensor]:
        params = self.arch.architecture_parameters()
        # with pruning and both gates off R is a constant: no graph to differentiate
        grads = torch.autograd.grad(ratio, params, allow_unused=True) if ratio.requires_grad else [None] * 4
        return {name: (torch.zeros_like(p) if g is None else g)
                for name, p, g in zip(("s", "r", "gate", "patch"), params, grads)}

    @torch.no_grad()
    def proximal_step(self, vit, lr: float) -> None:
        """Closed-form prox of y ||W_G||^2 / mean score on every removed group:
        W_G / (1 + 2 lr y / mean score)."""
        a, m, sc = self.arch, self.masks, self.scores
        mean = lambda t: t.mean(-1).clamp_min(1e-12)  # noqa: E731
        head_f = 1.0 / (1.0 + 2.0 * lr * a.y[:, 0] / mean(sc.heads))  # (L,)
        neuron_f = 1.0 / (1.0 + 2.0 * lr * a.y[:, 1] / mean(sc.neurons))
        dim_f = 1.0 / (1.0 + 2.0 * lr * a.p / mean(sc.dims))  # (L, H)
        heads = m.heads.unsqueeze(-1)  # (L, H, 1)
        removed_head = (1 - heads) * head_f.view(-1, 1, 1)
        removed_dim = heads * (1 - m.dims) * dim_f.unsqueeze(-1)
        value_f = (removed_head + removed_dim + m.dims).flatten(1)  # (L, H*d) factor per value dim
        qk_f = (removed_head + heads).expand_as(m.dims).flatten(1)  # q, k: whole heads only
        row_f = torch.cat([qk_f, qk_f, value_f], dim=1)  # (L, 3*H*d) rows of qkv
        n_f = m.neurons + (1 - m.neurons) * neuron_f.unsqueeze(-1)  # (L, M)
        blocks = vit.blocks
        torch._foreach_mul_([b.attn.qkv.weight for b in blocks], list(row_f.unsqueeze(-1).unbind(0)))
        torch._foreach_mul_([b.attn.proj.weight for b in blocks], list(value_f.unsqueeze(1).unbind(0)))
        torch._foreach_mul_([b.mlp.fc1.weight for b in blocks], list(n_f.unsqueeze(-1).unbind(0)))
        torch._foreach_mul_([b.mlp.fc2.weight for b in blocks], list(n_f.unsqueeze(1).unbind(0)))
        if blocks[0].attn.qkv.bias is not None:
            torch._foreach_mul_([b.attn.qkv.bias for b in blocks], list(row_f.unbind(0)))
        torch._foreach_mul_([b.mlp.fc1.bias for b in blocks], list(n_f.unbind(0)))

    @torch.no_grad()
    def structure_step(self, grads: Dict[str, torch.Tensor]) -> None:
        """s, r <- s, r - lr (y dLeastSum/ds + z dR/ds), then projected into range."""
        a, sc = self.arch, as_fractions(self.scores)
        k_heads, k_neurons, k_dims = a.removed_counts()
        _, head_slope = least_sum(sc.heads, k_heads)  # (L,)
        _, neuron_slope = least_sum(sc.neurons, k_neurons)
        _, dim_slope = least_sum(sc.dims, k_dims)  # (L, H)
        # d/ds_frac = G d/ds: the LeastSum slopes are per group, s_frac per fraction
        least_grad_s = torch.stack([a.y[:, 0] * head_slope, a.y[:, 1] * neuron_slope], 1) * a.group_counts
        least_grad_r = a.p * dim_slope * a.dims.head_dim * self.masks.heads
        a.s_frac.grad = least_grad_s + a.z * grads["s"]
        a.r_frac.grad = least_grad_r + a.z * grads["r"]
        self.s_opt.step()
        self.r_opt.step()
        self.s_opt.zero_grad(set_to_none=True)
        self.r_opt.zero_grad(set_to_none=True)
        a.project_()

    @torch.no_grad()
    def gate_step(self, grads: Dict[str, torch.Tensor]) -> None:
        """Gates and patch logits: loss gradients are summed in .grad by backward and
        averaged over `gating_interval` steps (and over ranks) before the update."""
        a, c, sp = self.arch, self.cfg, self.space
        self.grad_steps += 1
        if self.grad_steps < c.gating_interval:
            return
        n = self.grad_steps
        self.grad_steps = 0
        if sp.block_gating:
            loss_grad = self._averaged_grad(a.gate_logits, n)
            a.gate_logits.grad = loss_grad + a.z * c.gating_weight * grads["gate"]
            self.gate_opt.step()
        if sp.patch_gating:
            loss_grad = self._averaged_grad(a.patch_logits, n)
            pi = a.patch_keep_prob()
            l1_grad = c.patch_l1_weight * pi * (1 - pi) / pi.numel()  # d mean(pi) / da
            a.patch_logits.grad = loss_grad + a.z * c.patch_weight * grads["patch"] + l1_grad
            self.patch_opt.step()
        a.gate_logits.grad = None
        a.patch_logits.grad = None

    @staticmethod
    def _averaged_grad(param: torch.Tensor, steps: int) -> torch.Tensor:
        g = torch.zeros_like(param) if param.grad is None else param.grad / steps
        return all_reduce_mean(g.contiguous())

    @torch.no_grad()
    def dual_step(self, ratio: float) -> None:
        """Dual ascent: y, p grow with the LeastSum of the removed groups, z with R - B."""
        a, c = self.arch, self.cfg
        if self.space.pruning:  # without pruning there are no scores (and no y, p to move)
            sc = as_fractions(self.scores)
            k_heads, k_neurons, k_dims = a.removed_counts()
            a.y[:, 0] += c.ylr * least_sum(sc.heads, k_heads)[0]
            a.y[:, 1] += c.ylr * least_sum(sc.neurons, k_neurons)[0]
            a.p += c.plr * least_sum(sc.dims, k_dims)[0] * self.masks.heads
        gap = max(-c.z_grad_clip, min(c.z_grad_clip, ratio - self.budget.budget))
        a.z += self.zlr * gap
        a.y.clamp_(min=0)
        a.p.clamp_(min=0)
        a.z.clamp_(min=0)

    # --- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"s_opt": self.s_opt.state_dict(), "r_opt": self.r_opt.state_dict(),
                "gate_opt": self.gate_opt.state_dict(), "patch_opt": self.patch_opt.state_dict(),
                "grad_steps": self.grad_steps}

    def load_state_dict(self, state: dict) -> None:
        for name in ("s_opt", "r_opt", "gate_opt", "patch_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.grad_steps = int(state["grad_steps"])
