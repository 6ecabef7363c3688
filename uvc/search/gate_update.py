"""Step 4 of the primal-dual update (docs/method.md section 5): the block gates and patch logits.

Their loss gradients are summed by backward over `gating_interval` steps and averaged (and over
ranks); each update then takes

    g <- g - lr (dL/dg / mean|dL/dg|  +  z w dR/dg / mean|dR/dg|)        (+ the L1 pull on patches)

so `gating_weight` and `patch_weight` are exchange rates without units. The safety rules around it
(uvc.search.gates): at most one block flips and one patch drops per update, a protected block is
never skipped, a skip or drop happens only while z > 0 and when it leaves the hard ratio no
further from the target than it was, a patch drop (--patch_probe) and a block skip (--skip_probe)
pass their trial (uvc.search.trial), and gates and patches settle in the last part of the search.
`--reference_rules no_gate_safety` turns the rules off but the trials.

`GateUpdate` is a part of `PrimalDual` (uvc.search.primal_dual), which sets what it reads: arch,
budget, cfg, rates, space, masks, scores, trial, skip_trial, gate_opt, patch_opt,
coarse_end, t and grad_steps.
"""
from typing import Dict, Optional

import torch

from uvc.deploy.freeze import spec_from_search
from uvc.search.gates import limit_gate_flips, limit_patch_drops
from uvc.search.masked_model import MaskedViT
from utils.dist import all_reduce_mean, same_on_every_rank


def _furthest(was_kept: torch.Tensor, past: torch.Tensor) -> int:
    """The index that was kept and is now furthest past the boundary (`past` > 0), or -1."""
    moved = torch.nonzero(was_kept & (past > 0)).flatten()
    return int(moved[past[moved].argmax()]) if len(moved) else -1


def _normalised(t: torch.Tensor) -> torch.Tensor:
    """t over its mean magnitude: the direction and the ranking, without the units."""
    return t / t.abs().mean().clamp_min(1e-30)


class GateUpdate:
    """The gate and patch update of the search, with its safety rules."""

    def protected_blocks(self, logits: torch.Tensor = None) -> torch.Tensor:
        """(L,) 1.0 for kept blocks that may not be skipped: with only `min_blocks` left, all of them.
        `logits`: the gate logits to read (default the current ones). No block with no_gate_safety."""
        if not self.cfg.rules.gate_safety:
            return torch.zeros(self.arch.dims.depth, device=self.arch.gate_logits.device)
        keep = self.arch.block_keep_hard(logits)
        return keep if keep.sum() <= self.cfg.min_blocks else torch.zeros_like(keep)

    def trial_counts(self) -> Dict[str, float]:
        """The trials' counters so far (patch drops: flip_*, block skips: skip_*), for the log."""
        trials = [t for t in (self.trial, self.skip_trial) if t is not None]
        return {k: float(v) for t in trials for k, v in t.state_dict().items()}

    def discard_loss_grads(self) -> None:
        """Drop the gate and patch loss gradients summed since the last gate update (a skipped AMP step
        left inf or nan in them)."""
        self.arch.gate_logits.grad = None
        self.arch.patch_logits.grad = None
        self.grad_steps = 0

    def gate_step(self, grads: Dict[str, torch.Tensor], target: float, model: MaskedViT = None) -> None:
        """Gates and patch logits: loss gradients are summed in .grad by backward and
        averaged over `gating_interval` steps (and over ranks) before the update.
        Each term is normalised; the update may flip at most one block and drop at most
        one patch, never skip a protected block, no flip may take the hard ratio further from
        the target than it was, a patch drop or a block skip must pass its trial
        (uvc.search.trial), and a flip is settled past the boundary (uvc.search.gates)."""
        with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
            a, r, sp = self.arch, self.rates, self.space
            self.grad_steps += 1
            if self.grad_steps < self.rates.gate_interval:
                return
            n, self.grad_steps = self.grad_steps, 0
            z = float(a.z)
            if self.t > self.coarse_end * r.steps:  # the last part of the search: gates and patches are settled
                a.gate_logits.grad = None
                a.patch_logits.grad = None
                return
            if sp.block_gating:
                before = a.gate_logits.detach().clone()
                loss_grad = self._averaged_grad(a.gate_logits, n)
                a.gate_logits.grad = _normalised(loss_grad) + z * r.gate_weight * _normalised(grads["gate"])
                self.gate_opt.step()
                if self.skip_trial is not None:  # every rank, every update: the trial below is collective
                    past = a.gate_logits[:, 0] - a.gate_logits[:, 1]  # skip - keep: > 0 is skipped
                    same_on_every_rank(_furthest(before[:, 1] >= before[:, 0], past),
                                       "the block skip proposed to the trial")
                self._limit_gates(before, target, model)
            if sp.patch_gating:
                before = a.patch_logits.detach().clone()
                loss_grad = self._averaged_grad(a.patch_logits, n)
                pi = a.patch_keep_prob()
                l1 = r.patch_l1 * _normalised(pi * (1 - pi))  # d mean(pi) / da, unit-free
                a.patch_logits.grad = _normalised(loss_grad) + z * r.patch_weight * _normalised(grads["patch"]) + l1
                self.patch_opt.step()
                # every rank, every update: the trial below is collective, so the ranks must agree on it
                same_on_every_rank(_furthest(before >= 0, -a.patch_logits), "the patch drop proposed to the trial")
                self._limit_patches(before, target, model)
            a.gate_logits.grad = None
            a.patch_logits.grad = None

    def _limit_gates(self, before: torch.Tensor, target: float, model: Optional[MaskedViT] = None) -> None:
        """Gate safety and the skip trial (uvc.search.gates.limit_gate_flips); with no_gate_safety,
        the trial alone (if any). `before`: the gate logits before the update."""
        trial = self._skip_check(model, before)
        if self.cfg.rules.gate_safety:
            floor = self._floor_check(target, gate_logits=before)
            limit_gate_flips(self.arch, before, self.protected_blocks(before), floor, trial)
        elif trial is not None:
            limit_gate_flips(self.arch, before, torch.zeros_like(before[:, 0]), lambda: True, trial)

    def _skip_check(self, model: Optional[MaskedViT], before: torch.Tensor):
        """A callable: does the proposed skip cost the probe no more loss than the same MACs taken
        from the groups (uvc.search.trial)? None without a skip trial, a model or pruning."""
        if self.skip_trial is None or model is None or not self.space.pruning:
            return None
        a = self.arch
        return lambda: self.skip_trial.accept(model, self._spec_of(model, a.gate_logits, a.patch_logits),
                                              self._spec_of(model, before, a.patch_logits), self.scores)

    def _limit_patches(self, before: torch.Tensor, target: float, model: Optional[MaskedViT]) -> None:
        """Patch safety and trial (limit_patch_drops); with no_gate_safety, the trial alone (if any)."""
        if self.cfg.rules.gate_safety or (self.trial is not None and self.space.pruning):
            limit_patch_drops(self.arch.patch_logits, before, self._patch_check(target, model, before))

    def _patch_check(self, target: float, model: Optional[MaskedViT], before: torch.Tensor):
        """A callable: may the proposed patch drop stand? The floor check, then (with pruning and
        a probe) its trial against the same MACs taken from the groups (uvc.search.trial).
        `before`: the patch logits before the update (the architecture without the drop)."""
        floor = self._floor_check(target, patch_logits=before)

        def check() -> bool:
            if not floor():
                return False
            if self.trial is None or model is None or not self.space.pruning:
                return True
            a = self.arch
            flip = self._spec_of(model, a.gate_logits, a.patch_logits)
            base = self._spec_of(model, a.gate_logits, before)
            return self.trial.accept(model, flip, base, self.scores)
        return check

    def _spec_of(self, model: MaskedViT, gate_logits: torch.Tensor, patch_logits: torch.Tensor) -> dict:
        """The argmax architecture of the current masks with these gate and patch logits."""
        keep = self.arch.block_keep_hard(gate_logits) if self.space.block_gating \
            else torch.ones(self.arch.dims.depth)
        patches = self.arch.patch_keep_hard(patch_logits) if self.space.patch_gating \
            else torch.ones(self.arch.dims.num_patches, dtype=torch.bool)
        return spec_from_search(model.vit, "", self.masks, keep, patches)

    def _floor_check(self, target: float, gate_logits: torch.Tensor = None, patch_logits: torch.Tensor = None):
        """A callable: may the current logits stand? Always with no_gate_safety; else only while the
        budget still pushes down (z > 0) and if the move leaves the hard ratio no further from the target
        than the logits before it (`gate_logits` or `patch_logits`) did:

            (before + after) / 2 >= target,  i.e. a move of cost c needs before - target >= c / 2

        (the discrete move is rounded to the nearer side). Skips and drops are not undone and s, r win
        back an undershoot only slowly, so an allowance of a fixed size under the target (rather than the
        move's own half cost) lets a run of small patch drops end the search under the budget by it."""
        if not self.cfg.rules.gate_safety:
            return lambda: True
        a, ratio = self.arch, self.budget.hard_ratio
        return lambda: (float(a.z) > 0
                        and ratio(a, self.masks, gate_logits, patch_logits) + ratio(a, self.masks) >= 2 * target)

    @staticmethod
    def _averaged_grad(param: torch.Tensor, steps: int) -> torch.Tensor:
        g = torch.zeros_like(param) if param.grad is None else param.grad / steps
        return all_reduce_mean(g.contiguous())
