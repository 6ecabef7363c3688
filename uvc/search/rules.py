"""`--reference_rules`: the default search with some of its departures replaced by the reference's rule.

Each name switches one rule of the default search (uvc.search.primal_dual) to the reference's
(uvc.search.reference), everything else staying ours, so that each departure can be measured
alone (scripts/deviations.py, the ledger of issue 25):

  fixed_target       z is driven by the expected ratio against the fixed budget B, not the hard
                     ratio against the moving target T(u) (which then is B everywhere)
  integral_z         z = its integral alone: no proportional term, so z >= 0
  absolute_leastsum  LeastSum (s, r slopes and dual ascent) over the absolute scores, not MAC-share units
  zero_start         s and r start at 0 (the first push removes a group), not one group under it
  grad_clip          the budget term is z d clamp(R - T, +-z_grad_clip)/d(s, r) (no push while the
                     gap is past the clip), and the s and r gradients are clipped to inf-norm 1
  gate_sgd           the gates take SGD with momentum 0.9 and weight decay 1e-4 (at the rule's rate),
                     start at the reference's logits (skip, keep) = (-1, 1), and the Gumbel temperature
                     is the reference's, fixed (configs.common.RULE_DEFAULTS)
  no_gate_safety     no gate safety: no limit of one block flip and one patch drop per update, no
                     protected blocks, no z > 0 / midpoint floor, no settling of flips, gates move to the
                     end of the search, no minimum of gate updates (the patch trial, --patch_probe,
                     still tries each proposed drop alone)

What is not here has a flag of its own: y, p from the reference's value (--dual_init 0.001), no patch
trial (--patch_probe 0), no skip trial (--skip_probe 0), any width (--round_to 1), every token
counted (--token_step 1). Three former departures measured no better than the reference's rule and
are gone (log/deviations.md): the cap of z's integral, the scaled prox, and the freeze's greedy fit
(now opt-in, `--greedy_fit`).
"""
from dataclasses import dataclass, fields

import torch

from utils.config import parse_reference_rules

GATE_MOMENTUM, GATE_WEIGHT_DECAY = 0.9, 1e-4  # the reference's gating optimizer
# the reference's initial values: s = r = 0, duals 1e-3 (y, p: --dual_init), gate logits (skip, keep)
# = (-1, 1), patch logits 3
INIT = dict(s_init=0.0, skip_init=-1.0, gate_init=1.0, patch_init=3.0, z_init=1e-3)


def inf_norm_clip_(grad: torch.Tensor) -> torch.Tensor:
    """The reference's clip of the s and r gradients: to inf-norm 1 over the whole tensor, in place
    (torch's clip_grad_norm_, whose 1e-6 it keeps)."""
    return grad.mul_((1.0 / (grad.abs().max() + 1e-6)).clamp(max=1.0))


@dataclass(frozen=True)
class Rules:
    """Which rules are the reference's (True) instead of ours."""
    fixed_target: bool = False
    integral_z: bool = False
    absolute_leastsum: bool = False
    zero_start: bool = False
    grad_clip: bool = False
    gate_sgd: bool = False
    no_gate_safety: bool = False

    @classmethod
    def of(cls, text: str) -> "Rules":
        return cls(**dict.fromkeys(parse_reference_rules(text), True))

    @classmethod
    def of_config(cls, config) -> "Rules":
        return cls.of(config.get("reference_rules", ""))

    def names(self) -> tuple:
        return tuple(f.name for f in fields(self) if getattr(self, f.name))

    @property
    def gate_safety(self) -> bool:
        return not self.no_gate_safety

    def initial_values(self) -> dict:
        """ArchState's keyword arguments of the reference's initial values these rules take."""
        out = {}
        if self.zero_start:
            out["s_init"] = INIT["s_init"]
        if self.gate_sgd:
            out.update(skip_init=INIT["skip_init"], gate_init=INIT["gate_init"])
        return out


def budget_term(rules: Rules, ratio: torch.Tensor, target: float, clip: float) -> torch.Tensor:
    """What z multiplies in the Lagrangian: R (ours), or with grad_clip the reference's
    clamp(R - T, +-clip), whose gradient is 0 while the gap is past the clip."""
    return (ratio - target).clamp(-clip, clip) if rules.grad_clip else ratio


def gate_optimizer(rules: Rules, logits: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    """Adam (ours: the same travel per update whatever the gradient's scale), or with gate_sgd the
    reference's SGD, momentum 0.9 and weight decay 1e-4, at the same rate."""
    if rules.gate_sgd:
        return torch.optim.SGD([logits], lr=lr, momentum=GATE_MOMENTUM, weight_decay=GATE_WEIGHT_DECAY)
    return torch.optim.Adam([logits], lr=lr)


def clip_before_step(optimizer: torch.optim.Optimizer) -> None:
    """grad_clip: every step of `optimizer` first clips its parameters' gradient to inf-norm 1 (the
    reference's bounded_sgd_step, with the projection ours)."""
    def hook(opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    inf_norm_clip_(p.grad)
    optimizer.register_step_pre_hook(hook)
