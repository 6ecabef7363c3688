"""Assembling the stage-1 search from a config.

`UVCSearch` bundles the architecture variables, the budget and the primal-dual
updates behind the two calls the engine makes (prepare / step), and freezes
the result into the architecture a stage-1 file records (uvc.deploy.stagefile).
"""
import copy
from typing import Dict, Optional, Tuple

import torch

from uvc.cost.budget import Budget, SearchSpace
from uvc.cost.cost import MacsCost, dense_cost, full_cost, spec_cost
from uvc.cost.flops import ViTDims
from uvc.deploy.patch_align import align_patches
from uvc.deploy.fit import fit_to_budget
from uvc.deploy.freeze import spec_from_search, spec_ratio
from uvc.cost.latency import LatencyCost
from uvc.cost.latency_check import checked_fit, measured_ratio
from uvc.cost.latency_table import load_or_measure
from uvc.search.masked_model import MaskedViT
from uvc.search.primal_dual import PrimalDual, PrimalDualConfig
from uvc.search.reference import ReferenceConfig, ReferencePrimalDual
from uvc.search.rules import INIT as REFERENCE_INIT, Rules
from uvc.search.schedule import SearchRates
from uvc.search.structure import ArchState
from uvc.search.trial import FlipTrial
from utils.dist import broadcast_object, is_main_process

def search_space(config) -> SearchSpace:
    return SearchSpace(pruning=bool(config.enable_pruning), block_gating=bool(config.enable_block_gating),
                       patch_gating=bool(config.enable_patch_gating), use_gumbel=bool(config.use_gumbel),
                       with_attn=bool(config.flops_with_mhsa))


def budget_cost(vit, config, device):
    """(cost model, latency table or None) of `--budget_metric`: MACs, or the latency of the model's
    parts measured on `device` once (rank 0; every rank uses its table) and cached (uvc.cost.latency_table)."""
    dims = ViTDims.of(vit)
    if config.budget_metric == "macs":
        return MacsCost(dims, bool(config.flops_with_mhsa), token_step=int(config.token_step)), None
    table = path = None
    if is_main_process():
        table, path = load_or_measure(vit, str(config.model_type), device, str(config.latency_cache),
                                      int(config.latency_batch))
    table = broadcast_object(table)
    cost = LatencyCost(dims, table)
    if is_main_process():
        warn_if_inconsistent(cost, path)
    return cost, table


TABLE_CONSISTENCY = 0.05  # |the table's price of the unpruned model / its whole timing - 1| allowed silently


def warn_if_inconsistent(cost, path: str) -> None:
    """R(unpruned) = full_cost / dense_cost should be 1: the parts and the whole were timed on the same
    device. Timed beside other jobs they disagree (0.92 at one thread, 1.24 at two, against 0.98 timed
    quietly on the MNIST ViT), and every latency budget is off by about as much: say so before the search."""
    ratio = full_cost(cost) / dense_cost(cost)
    if abs(ratio - 1) > TABLE_CONSISTENCY:
        print(f"WARNING: the latency table {path} prices the unpruned model at {ratio:.3f} of its time timed whole, "
              f"so latency budgets will be off by about {abs(ratio - 1):.0%}: its timings were disturbed (a busy "
              f"machine); delete it and measure it again on a quiet machine", flush=True)


class UVCSearch:
    """Stage 1: s, r, gates, patches and duals, updated by the primal-dual step.

    During warm-up (`active` False) the architecture is frozen at "keep
    everything" and only the weights train. `search_steps` (optimizer steps after
    warm-up) sets the pace: the target reaches the budget at the same fraction of
    any search (uvc.search.schedule). `probe`: (images, targets) of training images on
    whose first --patch_probe each proposed patch drop, and first --skip_probe each proposed
    block skip, is tried (uvc.search.trial); None: no trial.
    `--search_algorithm reference`: the reference's updates (uvc.search.reference), its initial
    values and no trial. `--reference_rules`: some of the reference's
    rules in the default search (uvc.search.rules), its initial values among them.
    """

    def __init__(self, vit, config, device, search_steps: int, probe=None):
        self.dims = ViTDims.of(vit)
        self.space = search_space(config)
        self.round_to, self.target_budget = int(config.round_to), float(config.budget)
        self.algorithm, self.rules = str(config.search_algorithm), Rules.of_config(config)
        self.reference = self.algorithm == "reference"
        # the reference's initial s, r, gates, patches, z (or those of the rules chosen)
        init = REFERENCE_INIT if self.reference else self.rules.initial_values()
        self.arch = ArchState(self.dims, round_to=self.round_to if self.space.pruning else 1,
                              dual_init=float(config.dual_init), **init).to(device)
        self.device, self.latency_batch = device, int(config.latency_batch)
        self.latency_check = int(config.latency_check)  # fits timed whole at the freeze (latency metric)
        self.greedy_fit = bool(config.greedy_fit)  # the freeze fits the architecture into the budget
        self.rates = SearchRates.for_search(config, search_steps)
        self.warmup_epochs = int(config.warmup_epochs) if config.enable_warmup else 0
        self.active = self.warmup_epochs == 0
        self.pd_config = PrimalDualConfig.from_config(config, self.dims.depth)
        if self.reference:  # the reference counts its steps from the first warm-up step
            per_epoch = self.rates.steps // max(int(config.epochs) - self.warmup_epochs, 1)
            self.pd_config = ReferenceConfig.from_config(config, step_offset=self.warmup_epochs * per_epoch)
        self.trial = self.skip_trial = None  # the trials of every patch drop and of every block skip
        if probe is not None and not self.reference:
            batch, attn = int(config.train_batch_size), self.space.with_attn
            n, m = int(config.patch_probe), int(config.skip_probe)
            if n > 0 and len(probe[0]):
                self.trial = FlipTrial(probe[0][:n], probe[1][:n], batch, attn, margin=float(config.trial_margin))
            if m > 0 and len(probe[0]):
                self.skip_trial = FlipTrial(probe[0][:m], probe[1][:m], batch, attn, kind="skip",
                                            margin=float(config.trial_margin))
        cost, table = budget_cost(vit, config, device)
        self.set_cost(cost, table)

    def set_cost(self, cost, latency_table: Optional[dict] = None) -> None:
        """The budget in units of `cost` (uvc.cost.cost) and the primal-dual updates that depend on it."""
        self.budget = Budget(self.dims, self.target_budget, self.space, cost)
        self.metric, self.latency_table = cost.name, latency_table  # macs | latency
        for trial in (self.trial, self.skip_trial):
            if trial is not None:
                trial.cost = cost
        if self.reference:
            self.pd = ReferencePrimalDual(self.arch, self.budget, self.pd_config)
        else:
            self.pd = PrimalDual(self.arch, self.budget, self.pd_config, self.rates, self.trial, self.skip_trial)

    def set_epoch(self, epoch: int) -> None:
        self.active = epoch >= self.warmup_epochs
        self.pd.set_epoch(epoch, epoch - self.warmup_epochs)

    # --- the engine's two calls -----------------------------------------------------
    def prepare(self, model: MaskedViT, training: bool = True) -> None:
        if self.active:
            self.pd.prepare(model, training)
        else:
            model.set_masks(None)
            model.set_block_gates(None)
            model.set_patches()

    def step(self, model: MaskedViT, lr: float) -> Dict[str, float]:
        return self.pd.step(model, lr) if self.active else {}

    def skip_step(self, model: MaskedViT) -> None:
        """The weights' step was skipped (AMP found inf/nan gradients): no architecture step either, and
        the gate and patch loss gradients gathered since the last gate update are dropped."""
        if self.active:
            self.pd.discard_loss_grads()

    # --- reporting -------------------------------------------------------------------
    @torch.no_grad()
    def ratios(self, model: MaskedViT) -> Dict[str, float]:
        """Expected ("Expectation FLOPs") and hard ("Real FLOPs") ratios now, of the budget's metric
        (`*_macs_ratio` or `*_latency_ratio`; with latency the hard MACs ratio too)."""
        masks = self.pd.update_masks(model.vit)
        m = self.metric
        out = {f"expected_{m}_ratio": float(self.budget.expected_ratio(self.arch, masks, self.pd.eps)),
               f"hard_{m}_ratio": self.budget.hard_ratio(self.arch, masks),
               f"target_{m}_ratio": self.pd.target() if self.active else 1.0}
        if m != "macs":
            out["hard_macs_ratio"] = Budget(self.dims, 1.0, self.space).hard_ratio(self.arch, masks)
        return out

    @property
    def progress(self) -> float:
        """Search steps done over the search's length (1 at its end)."""
        return self.pd.t / self.rates.steps

    def record(self) -> Dict[str, float]:
        """The controller's scalars logged each epoch: the integral gain's scale, the deepest dip of the
        hard ratio under the target, and the search's progress."""
        return {**self.pd.record(), "search_progress": self.progress}

    def trial_state(self) -> Dict[str, int]:
        """The counts of the patch-drop and block-skip trials (empty without a probe)."""
        trials = [t for t in (self.trial, self.skip_trial) if t is not None]
        return {k: v for t in trials for k, v in t.state_dict().items()}

    @torch.no_grad()
    def spec(self, model: MaskedViT, model_type: str) -> dict:
        """The argmax architecture now, as an architecture spec."""
        sp, a = self.space, self.arch
        masks = self.pd.update_masks(model.vit) if sp.pruning else None
        keep = a.block_keep_hard() if sp.block_gating else torch.ones(self.dims.depth)
        patches = a.patch_keep_hard() if sp.patch_gating else torch.ones(self.dims.num_patches, dtype=torch.bool)
        return spec_from_search(model.vit, model_type, masks, keep, patches)

    def frozen_spec(self, model: MaskedViT, model_type: str) -> Tuple[dict, dict]:
        """The argmax architecture with its patches aligned to the token count it was priced at (uvc.deploy.
        patch_align: the fastest at or above it under a uvc-latency-v4 table, the next multiple of --token_step
        under MACs), and what the alignment did, for the record."""
        spec = self.spec(model, model_type)
        if not self.space.patch_gating:
            return spec, {}
        searched = len(spec["patches_kept"])
        spec, restored = align_patches(self.budget.cost, spec, self.arch.patch_logits)
        step = {"token_step": self.budget.cost.token_step} if self.metric == "macs" else {}
        return spec, {"patches_searched": searched, "patches_restored_to_align": restored, **step}

    def freeze(self, model: MaskedViT, model_type: str):
        """The final architecture: as the search ended (the reference's rule; freeze_as_searched), or with
        `--greedy_fit` fitted into [budget - 0.01, budget] of the dense cost (uvc.deploy.fit; without
        pruning only skipped blocks can be put back), with MLP widths and value dims per head at multiples
        of `round_to` (then in [budget - 0.03, budget + 0.01] when the aligned steps cannot fill the
        narrow window). With the latency metric the fit is timed whole on the device and refitted while
        off the budget (uvc.cost.latency_check; rank 0 times, every rank takes its architecture)."""
        if not self.greedy_fit:
            return self.freeze_as_searched(model, model_type)
        spec, aligned = self.frozen_spec(model, model_type)
        searched = spec_ratio(spec, True, self.space.with_attn)
        cost, dense = self.budget.cost, self.budget.dense
        searched_cost = spec_cost(cost, spec) / dense
        scores = self.pd.scores_now(model.vit)

        def fit_to(target: float):
            fitted, info = fit_to_budget(spec, scores, target, self.space.with_attn, groups=self.space.pruning,
                                         round_to=self.round_to, cost=cost)
            return fitted, info, spec_cost(cost, fitted) / dense

        checks = None
        if self.timed_freeze:
            timed = checked_fit(fit_to, self._measure, self.budget.budget, self.latency_check) \
                if is_main_process() else None
            spec, fit, checks = broadcast_object(timed)
        else:
            spec, fit, _ = fit_to(self.budget.budget)
        fit = dict(fit, **aligned, budget_metric=self.metric, budget=self.budget.budget, searched_macs_ratio=searched,
                   macs_ratio=spec_ratio(spec, True, self.space.with_attn), search_algorithm=self.algorithm,
                   greedy_changed_frac=greedy_changed_frac(fit, self.dims), reference_rules=list(self.rules.names()))
        if self.metric != "macs":
            fit.update({f"searched_{self.metric}_ratio": searched_cost,
                        f"{self.metric}_ratio": spec_cost(cost, spec) / dense})
        if checks:
            fit.update(latency_checks=checks, measured_latency_ratio=next(c["measured"] for c in checks if c["kept"]))
        return spec, fit

    @property
    def timed_freeze(self) -> bool:
        """Whether the freeze times the frozen model against the dense one (latency metric, --latency_check)."""
        return self.metric == "latency" and self.latency_check > 0

    def _measure(self, spec: dict) -> float:
        return measured_ratio(spec, self.device, self.latency_batch, threads=self.latency_table.get("threads"))

    def freeze_as_searched(self, model: MaskedViT, model_type: str):
        """The architecture the search ended with, as the reference exports it (the export still pads
        value dims per block). The greedy fit runs on a copy, for the record only: `greedy_would_change_frac`
        is what it would have changed; `budget_gap` is the ratio of the budget's metric minus the budget.
        With the latency metric the frozen model is timed whole once (`measured_latency_ratio`)."""
        spec, aligned = self.frozen_spec(model, model_type)
        cost, dense, with_attn = self.budget.cost, self.budget.dense, self.space.with_attn
        _, would = fit_to_budget(copy.deepcopy(spec), self.pd.scores_now(model.vit), self.budget.budget, with_attn,
                                 groups=self.space.pruning, round_to=self.round_to, cost=cost)
        ratio = spec_ratio(spec, True, with_attn)
        metric_ratio = spec_cost(cost, spec) / dense
        fit = {"search_algorithm": self.algorithm, "reference_rules": list(self.rules.names()),
               "exported_as_searched": True, "budget_metric": self.metric, "budget": self.budget.budget,
               "searched_macs_ratio": ratio,
               "macs_ratio": ratio, "budget_gap": metric_ratio - self.budget.budget, "greedy_changed_frac": 0.0,
               "greedy_would_change_frac": greedy_changed_frac(would, self.dims), "round_to": self.round_to,
               **aligned}
        if self.metric != "macs":
            fit.update({f"searched_{self.metric}_ratio": metric_ratio, f"{self.metric}_ratio": metric_ratio})
        if self.timed_freeze:
            fit["measured_latency_ratio"] = broadcast_object(self._measure(spec) if is_main_process() else None)
        return spec, fit

    # --- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"arch": self.arch.state_dict(), "primal_dual": self.pd.state_dict()}
        if self.latency_table is not None:
            state["latency_table"] = self.latency_table
        return state

    def load_state_dict(self, state: dict) -> None:
        """A latency search resumes with the table it started with, whatever the cache holds now."""
        table = state.get("latency_table")
        if table is not None and table != self.latency_table:
            self.set_cost(LatencyCost(self.dims, table), table)
        self.arch.load_state_dict(state["arch"])
        self.pd.load_state_dict(state["primal_dual"])

    def local_state_dict(self) -> dict:
        """This rank's loss gradients of the architecture parameters, accumulated since the last
        gate update (averaged over ranks only at the update): saved per rank for an exact resume."""
        return {name: p.grad for name, p in self.arch.named_parameters()}

    def load_local_state_dict(self, state: dict) -> None:
        for name, p in self.arch.named_parameters():
            g = state.get(name)
            p.grad = None if g is None else g.to(p.device, p.dtype).clone()


def greedy_changed_frac(fit: dict, dims: ViTDims) -> float:
    """Groups the greedy fit removed, restored or rounded, over all groups (heads, value dims,
    neurons, blocks)."""
    total = dims.depth * (1 + dims.num_heads * (1 + dims.head_dim) + dims.mlp_hidden)
    changed = fit["groups_removed_to_fit"] + fit["groups_restored_to_fit"]
    return (changed + fit.get("rounded_up", 0) + fit.get("rounded_down", 0)) / total
