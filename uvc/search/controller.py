"""The dual of the budget, z, as a PI controller that tracks the target T(u).

The reference raises z by zlr (R - B) every step: a pure integral controller.
It keeps pushing for as long as it took to build up, so after a block-gate flip
takes R under the budget it goes on removing groups for epochs (measured: the
digits demo fell to 0.35 at budget 0.5; a 372-step DeiT run closed every gate).
Here (a PI Lagrangian, as in Stooke et al. 2020, "Responsive Safety in RL by
PID Lagrangian Methods"):

    e = clip(R_hard - T(u), +-z_grad_clip)
    I <- max(I + ki * e, 0)          integral part, never below zero (the reference's clamp)
    z  = kp * e + I                  proportional part: reacts at once

Above the target z grows at once with the gap; under it the proportional part
turns z negative at once, so the search is pushed back up (groups regrow, gates
re-open) instead of pushed further down. At equilibrium e ~ 0 and z = I, the
price of one MAC-share in importance units (uvc.search.primal_dual).

`--reference_rules` (uvc.search.rules): `integral_z` drops the proportional part (z = I >= 0, the
reference's integral-only z). The integral has no upper cap: a cap at kp x clip was measured on the
ledger's 8 cells (log/deviations.md) and never bound.
"""
import torch


class BudgetController:
    """z from the hard MACs ratio and the moving target; state is saved in ArchState.z_integral."""

    def __init__(self, kp: float, ki: float, clip: float, proportional: bool = True):
        self.kp, self.ki, self.clip, self.proportional = kp, ki, clip, proportional

    def update(self, integral: torch.Tensor, ratio: float, target: float, ki_scale: float = 1.0) -> float:
        """Advance the integral in place and return z."""
        with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
            e = max(-self.clip, min(self.clip, ratio - target))
            integral.add_(self.ki * ki_scale * e).clamp_(min=0.0)
            return (self.kp * e if self.proportional else 0.0) + float(integral)
