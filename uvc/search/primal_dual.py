"""The primal-dual algorithm of UVC (docs/method.md sections 4 and 5).

    min_{W, s, r, g, a} max_{y, p >= 0, z}
        L_distill(W, g, a)
      + sum_l  y[l,0] LeastSum(head scores,   ceil s[l,0])
      + sum_l  y[l,1] LeastSum(neuron scores, ceil s[l,1])
      + sum_lh p[l,h] LeastSum(dim scores,    ceil r[l,h])
      + z (R(s, r, g, a) - T(u))

A training step calls `prepare()` before the forward pass (masks from the
current s, r and scores; a gate sample; the patch bias) and `step()` once after
the optimizer has updated W. `step()` runs, in this order:

  2. proximal step on the removed groups: W_G <- W_G / (1 + 2 lr y)
  .  z from the budget controller: the hard ratio against the target T(u)
  3. s, r: gradient y dLeastSum/ds + z dR/ds (in MAC-share units), SGD, projection
  4. gates and patch logits, every `gate_interval` steps (uvc.search.schedule), from the averaged
     loss gradient and z dR/d(logits) (+ the L1 pull on patches), each term
     normalised; at most one block flips and one patch drops per update (uvc.search.gates);
     a skip or a patch drop only while z > 0, and only if it costs the probe loss
     no more than taking its MACs from the cheapest groups (uvc.search.trial),
     and none in the last quarter of the search (halfway from the end of the
     ramp), which s and r settle
  5. dual ascent on y, p (LeastSum of the removed groups)

Scale (what makes one set of rates fit every model, data set and run length):
- LeastSum is taken over scores in MAC-share units (`uvc.search.masks.as_importance`):
  an average group is worth its share of the MACs, so y dLeastSum/ds and
  z dR/ds are numbers of one kind and s grows in a layer exactly while the
  importance per MAC of its next group is under z / y. y and p start at 1.
- z tracks the moving target T(u) as a PI controller (uvc.search.controller), and its
  sign follows the gap: under the target the search is pushed back at once.
- s and r take SGD steps on their gradient in units of the layer's MAC share, of
  a size set per search length (uvc.search.schedule); Adam (`--soptim adam`) would
  normalise per entry and move every layer at the same speed whatever its scores.
- The gates' and patches' loss and budget gradients are each divided by their
  mean magnitude over blocks (patches), so `gating_weight` and `patch_weight`
  are exchange rates without units.
The prox (uvc.search.prox) is the reference's: W_G / (1 + 2 lr y) on the scoring columns.

`--reference_rules` (uvc.search.rules) replaces any of these departures from the reference by the
reference's rule, one at a time, for the ledger of departures (scripts/deviations.py).
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from uvc.cost.budget import Budget
from uvc.search.controller import BudgetController
from uvc.search.gate_update import GateUpdate
from uvc.search.gates import block_gate_sample, patch_attn_bias
from uvc.search.masked_model import MaskedViT
from uvc.search.masks import Masks, Scores, as_importance, compute_masks, group_scores, least_sum, stacked_weights
from uvc.search.prox import proximal_step
from uvc.search.rules import Rules, budget_term, clip_before_step, gate_optimizer
from uvc.search.schedule import SearchRates, target_ratio
from uvc.search.structure import ArchState
from uvc.search.trial import FlipTrial


@dataclass
class PrimalDualConfig:
    soptim: str = "sgd"
    roptim: str = "sgd"
    zlr_milestones: Sequence[int] = ()  # epochs at which the integral gain of z doubles
    z_grad_clip: float = 0.5
    gumbel_tau: float = 1.0
    gumbel_tau_decay: float = 0.95
    eps: float = 0.1
    eps_decay: float = 0.92
    masking: str = "hard"  # hard: the training forward masks the removed groups; soft: the reference's
    ramp: float = 0.5  # fraction of the search over which the target falls to the budget
    min_blocks: int = 1  # blocks that are never skipped
    rules: Rules = Rules()  # the reference's rules in place of ours (uvc.search.rules)

    @classmethod
    def from_config(cls, c, depth: int) -> "PrimalDualConfig":
        from utils.config_checks import zlr_schedule
        names = ("soptim", "roptim", "z_grad_clip", "gumbel_tau", "gumbel_tau_decay", "eps", "eps_decay")
        min_blocks = int(c.min_blocks) if int(c.min_blocks) > 0 else (depth + 1) // 2
        return cls(zlr_milestones=tuple(zlr_schedule(c.zlr_schedule_list)), ramp=float(c.target_ramp),
                   masking=str(c.search_masking), rules=Rules.of_config(c),
                   min_blocks=min(min_blocks, depth), **{n: c[n] for n in names})


def _optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":  # per-entry normalisation: every layer moves at one speed, whatever its scores
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


class PrimalDual(GateUpdate):
    """Owns the updates of s, r, gates, patch logits and the duals y, p, z."""

    def __init__(self, arch: ArchState, budget: Budget, cfg: PrimalDualConfig, rates: SearchRates,
                 trial: Optional[FlipTrial] = None, skip_trial: Optional[FlipTrial] = None):
        self.arch, self.budget, self.cfg, self.rates, self.space = arch, budget, cfg, rates, budget.space
        self.s_opt = _optimizer(cfg.soptim, [arch.s_frac], rates.s_step)
        self.r_opt = _optimizer(cfg.roptim, [arch.r_frac], rates.r_step)
        rules = cfg.rules
        if rules.grad_clip:
            clip_before_step(self.s_opt)
            clip_before_step(self.r_opt)
        self.gate_opt = gate_optimizer(rules, arch.gate_logits, rates.gate_lr)
        self.patch_opt = torch.optim.Adam([arch.patch_logits], lr=rates.patch_lr)
        self.controller = BudgetController(rates.z_kp, rates.z_ki, cfg.z_grad_clip, proportional=not rules.integral_z)
        self.costs = budget.group_costs()
        # the MAC share of one layer's heads / neurons / one head's dims: the unit of the s, r gradients
        c, d = self.costs, budget.dims
        self.s_unit = torch.tensor([c.heads * d.num_heads, c.neurons * d.mlp_hidden], device=arch.y.device)
        self.r_unit = c.dims * d.head_dim
        # gates and patches move until halfway between the end of the ramp and the end of the search;
        # the rest of it belongs to s and r, which settle the ratio on the budget
        self.coarse_end = (1.0 + cfg.ramp) / 2 if rules.gate_safety else float("inf")
        self.ki_scale, self.tau, self.eps = 1.0, cfg.gumbel_tau, cfg.eps
        self.t = 0  # search steps done
        self.max_undershoot = 0.0  # deepest dip of the hard ratio under the target so far
        self.grad_steps = 0  # loss-gradient steps accumulated since the last gate update
        self.masks: Masks = None
        self.scores: Scores = None
        self._scores_fresh = False  # scores of the current weights, from step()
        self._importance_cache, self._importance_of = None, None
        self.trial, self.skip_trial = trial, skip_trial  # patch drops, block skips tried on a probe; None: not

    # --- schedules -----------------------------------------------------------
    def set_epoch(self, epoch: int, search_epoch: int) -> None:
        """The integral gain of z doubles at each milestone reached; tau and eps decay per search epoch."""
        c = self.cfg
        self.ki_scale = 2.0 ** sum(epoch >= m for m in c.zlr_milestones)
        self.tau = max(0.1, c.gumbel_tau * c.gumbel_tau_decay ** max(search_epoch, 0))
        self.eps = c.eps * c.eps_decay ** max(search_epoch, 0)

    def record(self) -> Dict[str, float]:
        """The controller's scalars logged each epoch: the integral gain's scale and the deepest dip of
        the hard ratio under the target."""
        return {"z_gain_scale": self.ki_scale, "max_undershoot": self.max_undershoot}

    def target(self) -> float:
        """T(u) at the current search progress (with the rule fixed_target, the budget B)."""
        if self.cfg.rules.fixed_target:
            return self.budget.budget
        return target_ratio(self.t / self.rates.steps, self.budget.budget, self.cfg.ramp)

    # --- before the forward pass -------------------------------------------------
    def scores_now(self, vit) -> Scores:
        """Group scores of the current weights."""
        with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
            return group_scores(*stacked_weights(vit), self.arch.dims.num_heads)

    def update_masks(self, vit) -> Masks:
        """Re-rank groups by the current weights; the ceil(s) lowest are removed."""
        with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
            if not self._scores_fresh:
                self.scores = self.scores_now(vit)
            k_heads, k_neurons, k_dims = self.arch.removed_counts()
            self.masks = compute_masks(self.scores, k_heads, k_dims, k_neurons)
            return self.masks

    def prepare(self, model: MaskedViT, training: bool = True) -> None:
        """Set masks, gates and patches on the model for the next forward pass.

        Training: a fresh Gumbel / SoftL0 gate sample (protected blocks run whole: no
        noise can skip them) and the log(pi) patch bias; the masks of the removed groups
        with `masking` hard, none with soft (the reference: the loss still sees the
        selected groups, only the prox drives them to zero, and they keep competing).
        Evaluation: deterministic, the argmax architecture (no noise), masks on.
        """
        a, sp = self.arch, self.space
        if sp.pruning:
            masks = self.update_masks(model.vit)
            model.set_masks(None if training and self.cfg.masking == "soft" else masks)
        if training:
            self._scores_fresh = False  # the weights change after this forward pass
            gates = None
            if sp.block_gating:
                gates = block_gate_sample(a.gate_logits, self.tau, sp.use_gumbel, self.eps)
                gates = torch.where(self.protected_blocks().bool(), torch.ones_like(gates), gates)
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
        """Steps 2-5 of docs/method.md section 5; returns scalars for logging."""
        a = self.arch
        self.t += 1
        if self.space.pruning:
            self.proximal_step(model.vit, weight_lr)
            self.scores = self.scores_now(model.vit)
            self._scores_fresh = True
        masks = self.masks if self.space.pruning else None
        ratio = self.budget.expected_ratio(a, masks, self.eps)
        hard, target = self.budget.hard_ratio(a, masks), self.target()
        grads = self._budget_grads(budget_term(self.cfg.rules, ratio, target, self.cfg.z_grad_clip))
        self.max_undershoot = max(self.max_undershoot, target - hard)
        driving = float(ratio.detach()) if self.cfg.rules.fixed_target else hard  # the reference: expected
        a.z.fill_(self.controller.update(a.z_integral, driving, target, self.ki_scale))
        if self.space.pruning:
            self.structure_step(grads)
        self.gate_step(grads, target, model)
        if self.space.pruning:
            self.dual_step()
        return {"expected_ratio": float(ratio.detach()), "hard_ratio": hard, "target_ratio": target,
                "z": float(a.z), "z_integral": float(a.z_integral), "y_mean": float(a.y.mean()),
                "p_mean": float(a.p.mean()), "tau": self.tau, **self.trial_counts()}

    def _budget_grads(self, ratio: torch.Tensor) -> Dict[str, torch.Tensor]:
        params = self.arch.architecture_parameters()
        # with pruning and both gates off R is a constant: no graph to differentiate
        grads = torch.autograd.grad(ratio, params, allow_unused=True) if ratio.requires_grad else [None] * 4
        return {name: (torch.zeros_like(p) if g is None else g)
                for name, p, g in zip(("s", "r", "gate", "patch"), params, grads)}

    def proximal_step(self, vit, lr: float) -> None:
        """Step 2: the prox of y ||W_G||^2 on the removed groups, as the reference applies it
        (uvc.search.prox)."""
        k_heads, k_neurons, k_dims = self.arch.removed_counts()
        proximal_step(vit, self.scores, k_heads, k_dims, k_neurons, self.arch.y, self.arch.p, lr)

    def _importance(self) -> Scores:
        """The current scores in MAC-share units, computed once per set of scores (s, r and the
        duals read them in the same step); with absolute_leastsum the scores themselves."""
        if self.cfg.rules.absolute_leastsum:
            return self.scores
        if self._importance_of is not self.scores:
            self._importance_cache, self._importance_of = as_importance(self.scores, self.costs), self.scores
        return self._importance_cache

    def _slopes(self):
        """dLeastSum/d(count) in MAC-share units: heads (L,), neurons (L,), dims (L, H); with aligned
        steps, per unit over the next step's groups."""
        imp = self._importance()
        k_heads, k_neurons, k_dims = self.arch.removed_counts()
        _, n_step, d_step = self.arch.count_steps()
        return (least_sum(imp.heads, k_heads)[1], least_sum(imp.neurons, k_neurons, n_step)[1],
                least_sum(imp.dims, k_dims, d_step)[1])

    def structure_step(self, grads: Dict[str, torch.Tensor]) -> None:
        """s, r <- s, r - lr (y dLeastSum/ds + z dR/ds) / (the layer's MAC share), then projected.

        In those units the step is lr (z - y x the relative importance per MAC of the next
        group): a layer loses groups while its next one is worth less than z / y."""
        with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
            a = self.arch
            head_slope, neuron_slope, dim_slope = self._slopes()
            # d/ds_frac = G d/ds: the LeastSum slopes are per group, s_frac per fraction
            least_grad_s = torch.stack([a.y[:, 0] * head_slope, a.y[:, 1] * neuron_slope], 1) * a.group_counts
            least_grad_r = a.p * dim_slope * a.dims.head_dim * self.masks.heads
            a.s_frac.grad = (least_grad_s + a.z * grads["s"]) / self.s_unit
            a.r_frac.grad = (least_grad_r + a.z * grads["r"]) / self.r_unit
            for opt in (self.s_opt, self.r_opt):
                opt.step()
                opt.zero_grad(set_to_none=True)
            a.project_()

    def dual_step(self) -> None:
        """Dual ascent: y, p grow with the LeastSum (importance units) of the removed groups."""
        with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
            a, r = self.arch, self.rates
            imp = self._importance()
            k_heads, k_neurons, k_dims = a.removed_counts()
            a.y[:, 0] += r.y_step * least_sum(imp.heads, k_heads)[0]
            a.y[:, 1] += r.y_step * least_sum(imp.neurons, k_neurons)[0]
            a.p += r.p_step * least_sum(imp.dims, k_dims)[0] * self.masks.heads
            a.y.clamp_(min=0)
            a.p.clamp_(min=0)

    # --- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"s_opt": self.s_opt.state_dict(), "r_opt": self.r_opt.state_dict(),
                "gate_opt": self.gate_opt.state_dict(),
                "patch_opt": self.patch_opt.state_dict(), "grad_steps": self.grad_steps, "t": self.t,
                "max_undershoot": self.max_undershoot,
                "trial": self.trial.state_dict() if self.trial is not None else {},
                "skip_trial": self.skip_trial.state_dict() if self.skip_trial is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        self.s_opt.load_state_dict(state["s_opt"])
        self.r_opt.load_state_dict(state["r_opt"])
        self.gate_opt.load_state_dict(state["gate_opt"])
        self.patch_opt.load_state_dict(state["patch_opt"])
        self.grad_steps, self.t = int(state["grad_steps"]), int(state["t"])
        self.max_undershoot = float(state["max_undershoot"])
        if self.trial is not None:
            self.trial.load_state_dict(state.get("trial", {}))
        if self.skip_trial is not None:
            self.skip_trial.load_state_dict(state.get("skip_trial", {}))
