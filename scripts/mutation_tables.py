"""What scripts/mutation.py mutates and how it judges the survivors: the method-core modules,
the fast tests that exercise each, and the survivors listed with their reason (equivalent
mutants, and those only a GPU could kill), each checked by reading the mutated code."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the method core: search maths, cost models, freeze / fit / export, checkpoint writing
MODULES = ["uvc/search/masks.py", "uvc/search/prox.py", "uvc/search/controller.py", "uvc/search/schedule.py",
           "uvc/search/gates.py", "uvc/search/trial.py", "uvc/search/primal_dual.py", "uvc/search/gate_update.py",
           "uvc/search/structure.py",
           "uvc/cost/flops.py", "uvc/cost/cost.py", "uvc/cost/budget.py", "uvc/deploy/freeze.py", "uvc/deploy/fit.py",
           "uvc/deploy/export.py", "utils/checkpoint.py"]


def unit_tests(test_file: str, *whole_runs: str):
    """Node ids of the tests of `test_file` but `whole_runs` (end-to-end runs of 10 s or more, which
    would take hours over hundreds of mutants): new unit tests join the selection by themselves."""
    names = re.findall(r"^def (test_\w+)", (REPO / test_file).read_text(), flags=re.M)
    return [f"{test_file}::{n}" for n in names if n not in whole_runs]


RULES_UNIT_TESTS = unit_tests("tests/test_reference_rules.py",
                              "test_digits_search_with_rules_logs_them_and_resumes_exactly")
CONTROL_UNIT_TESTS = unit_tests("tests/test_search_control.py", "test_the_collapse_is_gone",
                                "test_run_length_invariance")
SEARCH_UNIT_TESTS = (["tests/test_properties_search.py", "tests/test_primal_dual.py",
                      "tests/test_primal_dual_updates.py", "tests/test_primal_dual_state.py", "tests/test_trial.py"]
                     + CONTROL_UNIT_TESTS + RULES_UNIT_TESTS)

# module -> the fast tests that exercise it (each mutant runs those of them that reach the mutated function)
TESTS = {
    "uvc/search/schedule.py": ["tests/test_properties_search.py"] + CONTROL_UNIT_TESTS,
    "uvc/search/controller.py": ["tests/test_properties_search.py", "tests/test_primal_dual_state.py"]
                                + CONTROL_UNIT_TESTS + RULES_UNIT_TESTS,
    "uvc/search/gates.py": SEARCH_UNIT_TESTS + ["tests/test_gates.py", "tests/test_masked_model.py",
                                                "tests/test_model_kinds.py"],
    "uvc/search/primal_dual.py": SEARCH_UNIT_TESTS + ["tests/test_aligned_search.py"],
    "uvc/search/gate_update.py": SEARCH_UNIT_TESTS,
    "uvc/search/masks.py": ["tests/test_masks.py", "tests/test_primal_dual.py", "tests/test_aligned_search.py"],
    "uvc/search/structure.py": ["tests/test_aligned_search.py", "tests/test_masks.py", "tests/test_budget.py"],
    "uvc/search/prox.py": ["tests/test_masks.py", "tests/test_primal_dual.py", "tests/test_reference_mode.py::"
                           "test_reference_prox_shrinks_only_the_scoring_columns_unscaled"] + RULES_UNIT_TESTS,
    "uvc/search/trial.py": ["tests/test_trial.py", "tests/test_primal_dual_updates.py"] + RULES_UNIT_TESTS,
    "uvc/cost/flops.py": ["tests/test_flops_exact.py", "tests/test_properties_freeze.py", "tests/test_budget.py",
                          "tests/test_model_kinds.py"],
    "uvc/cost/cost.py": ["tests/test_cost.py", "tests/test_latency.py", "tests/test_budget.py"],
    "uvc/cost/budget.py": ["tests/test_budget.py", "tests/test_primal_dual.py"],
    "uvc/deploy/freeze.py": ["tests/test_freeze.py", "tests/test_properties_freeze.py", "tests/test_model_kinds.py"],
    # fit.py has about 900 mutants: its unit tests only (the property tests take 10 s or more each)
    "uvc/deploy/fit.py": ["tests/test_freeze.py", "tests/test_align.py", "tests/test_fit_bounds.py"],
    "uvc/deploy/export.py": ["tests/test_export.py", "tests/test_export_spec.py", "tests/test_model_kinds.py"],
    "utils/checkpoint.py": ["tests/test_properties_checkpoint.py"],  # (test_checkpoint.py: models/checkpoint.py)
}

# mutant name -> (its mutated line, why it changes no behaviour), checked by reading the mutated code.
# mutmut numbers a function's mutants in order, so an edit above renumbers them: a survivor is
# equivalent only if its name is here AND its diff adds exactly this line.
EQUIVALENT = {
    'uvc.deploy.export.x__check_supported__mutmut_6': (
        'check_supported(model, arch.get("model_type", None))',
        'check_supported names the model by `model_type or its class name`: None and "" both give the class'),
    'uvc.deploy.export.x__check_supported__mutmut_8': (
        'check_supported(model, arch.get("model_type", ))',
        'check_supported names the model by `model_type or its class name`: None and "" both give the class'),
    'uvc.deploy.export.x_build_masked_source__mutmut_16': (
        'result = model.load_state_dict(state, strict=None)  # a shape mismatch still raises',
        'load_state_dict tests `if strict:`, where None reads as False'),
    'uvc.deploy.export.x__check_supported__mutmut_13': (
        'attn = model.blocks[1].attn',
        "models.vit.check_supported, called first, refuses a model whose blocks' attention shapes differ: "
        'block 1 has block 0\'s heads and head dim (and a one-block model fails both ways alike)'),
    'uvc.deploy.export.x__scale_input__mutmut_6': (
        'return lambda module, args: (args[0] * mask,) + tuple(args[2:])',
        'the hooks sit on nn.Linear layers (attn.proj, mlp.fc2), whose forward takes one input: args[1:] '
        'and args[2:] are both empty'),
    'uvc.deploy.export.x__value_index__mutmut_18': (
        'index[row, :len(dims)] = h * head_dim + torch.as_tensor(dims, dtype=None)',
        'kept_heads leaves out heads with no kept dim, so `dims` is a non-empty list of Python ints, '
        'which as_tensor makes int64 without a dtype'),
    'uvc.deploy.export.x__value_index__mutmut_20': (
        'index[row, :len(dims)] = h * head_dim + torch.as_tensor(dims, )',
        'kept_heads leaves out heads with no kept dim, so `dims` is a non-empty list of Python ints, '
        'which as_tensor makes int64 without a dtype'),
    'uvc.search.gates.x_block_gate_sample__mutmut_3': (
        'return F.gumbel_softmax(logits, tau=tau, hard=None, dim=-1)[:, 1]',
        'gumbel_softmax branches on `if hard:`, where None reads as False'),
    'uvc.search.gates.x_block_gate_sample__mutmut_7': (
        'return F.gumbel_softmax(logits, tau=tau, dim=-1)[:, 1]',
        "hard=False is gumbel_softmax's default"),
    'uvc.search.gates.x_block_gate_sample__mutmut_8': (
        'return F.gumbel_softmax(logits, tau=tau, hard=False, )[:, 1]',
        "dim=-1 is gumbel_softmax's default"),
    'uvc.search.gates.x_block_gate_sample__mutmut_10': (
        'return F.gumbel_softmax(logits, tau=tau, hard=False, dim=+1)[:, 1]',
        'the gate logits are (L, 2): dim +1 is dim -1'),
    'uvc.search.gates.x_block_keep_prob__mutmut_2': (
        'return logits.softmax(+1)[:, 1]',
        'the gate logits are (L, 2): dim +1 is dim -1'),
    'uvc.cost.flops.xǁViTDimsǁof__mutmut_28': (
        'patch_size=patch[0] if (isinstance(patch, (tuple, list))) or True else patch,',
        "timm's PatchEmbed keeps patch_size as a tuple, so the int branch is never taken: always "
        'patch[0], as before'),
    'uvc.cost.flops.xǁViTDimsǁof__mutmut_29': (
        'patch_size=patch[1] if isinstance(patch, (tuple, list)) else patch,',
        'patch[1] for patch[0]: the models UVC accepts have square patches (models/vit.py refuses '
        'others), so both are the same number'),
    'uvc.cost.budget.xǁBudgetǁhard_ratio__mutmut_9': (
        'heads, value_dims, neurons = masks.heads.sum(+1), masks.value_dims(), masks.neurons.sum(-1)',
        'masks.heads is (L, H): summing over dim +1 is summing over dim -1'),
    'uvc.cost.budget.xǁBudgetǁhard_ratio__mutmut_12': (
        'heads, value_dims, neurons = masks.heads.sum(-1), masks.value_dims(), masks.neurons.sum(+1)',
        'masks.neurons is (L, M): summing over dim +1 is summing over dim -1'),
    'uvc.cost.budget.xǁBudgetǁexpected_cost__mutmut_20': (
        'widest = ((d.head_dim - k_dims) * kept - (1 - kept) / d.head_dim).amax(-1)  # (L,)',
        "a removed head's width is below every kept head's either way (-d or -1/d): ArchState keeps one "
        'head and one value dim per kept head (structure.py), so the widest kept head is >= 1 and wins '
        'the max'),
    'uvc.cost.budget.xǁBudgetǁexpected_cost__mutmut_23': (
        'widest = ((d.head_dim - k_dims) * kept - (1 - kept) * d.head_dim).amax(+1)  # (L,)',
        'the kept-width matrix is (L, H): amax over dim +1 is amax over dim -1'),
    'uvc.deploy.fit.x__round_widths__mutmut_57': (
        'changed["rounded_up" if target >= m else "rounded_down"] += abs(target - m)',
        'inside `if target != m`, target >= m is target > m'),
    'uvc.deploy.fit.x__round_widths__mutmut_100': (
        'changed["rounded_up" if target >= w else "rounded_down"] += abs(target - w) * len(block["heads"])',
        'inside `if target != w`, target >= w is target > w'),
    'uvc.deploy.fit.xǁ_Poolǁcandidates__mutmut_12': (
        'w = len(self.dims[l][0]) if h else 1',
        'w for a block without heads (h = 0) enters the cost only as h * w = 0, and the dims branch needs '
        'h'),
    'uvc.deploy.fit.x__restore_candidates__mutmut_47': (
        'w = len(block["value_dims"][0]) if h else 1',
        'w for a block without heads (h = 0) enters the cost only as h * w = 0, and the dims and head '
        'branches need h'),
    'uvc.deploy.fit.xǁ_Poolǁcandidates__mutmut_57': (
        'lower = _below(w, self.widths_d) if (h) or True else None',
        'for h = 0, w is 0 and no allowed width is below 0: _below gives None, as the else branch'),
    'uvc.deploy.fit.x_fit_to_budget__mutmut_11': (
        'spec = {**spec, "blocks": [dict(b, ) for b in spec["blocks"]]}',
        "the fit assigns new lists to a block's keys and changes none in place, so the copy of each "
        "block's dict alone keeps the caller's spec as it was"),
    'uvc.deploy.fit.x_fit_to_budget__mutmut_41': (
        'rounded = _round_widths(spec, scores, round_to) if round_to >= 1 and groups else {}',
        'round_to 1 allows every width: rounding to it changes nothing and counts 0 up and 0 down, as no '
        'rounding'),
    'uvc.search.masks.xǁMasksǁvalue_dims__mutmut_3': (
        'return self.heads.sum(+1) * self.dims.sum(-1).amax(-1)',
        'masks.heads is (L, H): summing over dim +1 is summing over dim -1'),
    'uvc.search.masks.xǁMasksǁvalue_dims__mutmut_9': (
        'return self.heads.sum(-1) * self.dims.sum(-1).amax(+1)',
        'the per-head kept dims are (L, H): amax over dim +1 is amax over dim -1'),
    'uvc.search.masks.x_lowest_k_mask__mutmut_5': (
        'rank = scores.argsort(stable=True).argsort(dim=-1)',
        "argsort's dim defaults to -1: the same sort"),
    'uvc.search.masks.x_least_sum__mutmut_15': (
        'csum = torch.nn.functional.pad(ordered.cumsum(-1), (1, 1))  # csum[..., k] = sum of k smallest',
        'the zero padded after csum[..., G] is never gathered: the indices gathered, k and hi, are at '
        'most G'),
    'uvc.search.structure.xǁArchStateǁste_counts__mutmut_7': (
        'if self.round_to < 1:',
        'round_to 1 then takes the aligned branch, which gives the same counts and gradients: '
        'aligned_removed returns the count, clamp_min(0) changes nothing as s, r >= LOWEST (init and '
        'projection), and x + (ceil(x) - x).detach() is ste_ceil itself'),
    'uvc.search.gate_update.xǁGateUpdateǁ_limit_gates__mutmut_30': (
        'limit_gate_flips(self.arch, before, torch.zeros_like(before[:, 1]), lambda: True, trial)',
        'before[:, 1] has the shape, dtype and device of before[:, 0]: the same zeros'),
    'uvc.search.gate_update.xǁGateUpdateǁ_spec_of__mutmut_14': (
        'else torch.ones(self.arch.dims.num_patches, dtype=None)',
        "the all-kept patches without patch gating reach only Architecture.from_search's torch.nonzero, "
        'which gives every index for float ones as for bool ones'),
    'uvc.search.gate_update.xǁGateUpdateǁ_spec_of__mutmut_16': (
        'else torch.ones(self.arch.dims.num_patches, )',
        "the all-kept patches without patch gating reach only Architecture.from_search's torch.nonzero, "
        'which gives every index for float ones as for bool ones'),
    'uvc.search.primal_dual.xǁPrimalDualǁ_budget_grads__mutmut_13': (
        'grads = torch.autograd.grad(ratio, params, allow_unused=True) if ratio.requires_grad else [None] * 5',
        'zip stops at the four parameter names: a fifth None is never read'),
    'uvc.search.primal_dual.xǁPrimalDualǁ_budget_grads__mutmut_14': (
        'return {name: (torch.zeros_like(p) if (g is None) and False else g)',
        'a gradient of R is None only for the parameters of a kind that is off (R does not depend on '
        'them), and only the steps of the kinds that are on read theirs (structure_step: s, r; gate_step: '
        'gate, patch)'),
    'uvc.search.primal_dual.xǁPrimalDualǁ__init____mutmut_68': (
        'self.coarse_end = (1.0 + cfg.ramp) / 2 if rules.gate_safety else float("INF")',
        'float("INF") is float("inf"): Python parses the name without regard to case'),
    'uvc.search.primal_dual.xǁPrimalDualǁ__init____mutmut_77': (
        'self.masks: Masks = ""',
        'a placeholder read only after it is set: with pruning, prepare (update_masks) sets the masks '
        'before any step, prox or trial reads them; without pruning they reach only a Budget, which then '
        'ignores them'),
    'uvc.search.primal_dual.xǁPrimalDualǁ__init____mutmut_78': (
        'self.scores: Scores = ""',
        'a placeholder read only after it is set: update_masks and step() set the scores before the prox, '
        '_importance or a trial reads them'),
    'uvc.search.primal_dual.xǁPrimalDualǁ__init____mutmut_79': (
        'self._scores_fresh = None  # scores of the current weights, from step()',
        'None is falsy as False is: `if not self._scores_fresh` reads them alike'),
    'uvc.search.primal_dual.xǁPrimalDualǁprepare__mutmut_1': (
        'def prepare(self, model: MaskedViT, training: bool = False) -> None:',
        'every caller passes `training` (UVCSearch.prepare, ReferencePrimalDual.prepare): the default is '
        'never used'),
    'uvc.search.primal_dual.xǁPrimalDualǁprepare__mutmut_12': (
        'self._scores_fresh = None  # the weights change after this forward pass',
        'None is falsy as False is: `if not self._scores_fresh` reads them alike'),
    'uvc.search.primal_dual.xǁPrimalDualǁstep__mutmut_11': (
        'self._scores_fresh = None',
        '_scores_fresh only spares the next update_masks recomputing the scores: between step() and the '
        'next prepare() the weights do not change (the optimizer steps before step()), so the same '
        'numbers come back'),
    'uvc.search.primal_dual.xǁPrimalDualǁstep__mutmut_12': (
        'self._scores_fresh = False',
        '_scores_fresh only spares the next update_masks recomputing the scores: between step() and the '
        'next prepare() the weights do not change (the optimizer steps before step()), so the same '
        'numbers come back'),
    'uvc.search.primal_dual.xǁPrimalDualǁstep__mutmut_15': (
        'masks = self.masks if (self.space.pruning) or True else None',
        'with pruning off the Budget takes full widths and never reads the masks it is given '
        '(expected_cost, hard_ratio), so self.masks (set by UVCSearch.ratios) for None changes no ratio'),
    'uvc.search.gate_update.xǁGateUpdateǁ_patch_check__mutmut_17': (
        'flip = self._spec_of(model, None, a.patch_logits)',
        'ArchState.block_keep_hard and patch_keep_hard read None as the current logits, and the current '
        'logits (a.gate_logits, a.patch_logits) are what is passed here'),
    'uvc.search.gate_update.xǁGateUpdateǁ_patch_check__mutmut_18': (
        'flip = self._spec_of(model, a.gate_logits, None)',
        'ArchState.block_keep_hard and patch_keep_hard read None as the current logits, and the current '
        'logits (a.gate_logits, a.patch_logits) are what is passed here'),
    'uvc.search.gate_update.xǁGateUpdateǁ_patch_check__mutmut_24': (
        'base = self._spec_of(model, None, before)',
        'ArchState.block_keep_hard and patch_keep_hard read None as the current logits, and the current '
        'logits (a.gate_logits, a.patch_logits) are what is passed here'),
    'uvc.search.gate_update.xǁGateUpdateǁ_skip_check__mutmut_17': (
        'return lambda: self.skip_trial.accept(model, self._spec_of(model, None, a.patch_logits),',
        'ArchState.block_keep_hard and patch_keep_hard read None as the current logits, and the current '
        'logits (a.gate_logits, a.patch_logits) are what is passed here'),
    'uvc.search.gate_update.xǁGateUpdateǁ_skip_check__mutmut_18': (
        'return lambda: self.skip_trial.accept(model, self._spec_of(model, a.gate_logits, None),',
        'ArchState.block_keep_hard and patch_keep_hard read None as the current logits, and the current '
        'logits (a.gate_logits, a.patch_logits) are what is passed here'),
    'uvc.search.gate_update.xǁGateUpdateǁ_skip_check__mutmut_24': (
        'self._spec_of(model, before, None), self.scores)',
        'ArchState.block_keep_hard and patch_keep_hard read None as the current logits, and the current '
        'logits (a.gate_logits, a.patch_logits) are what is passed here'),
    'uvc.search.primal_dual.xǁPrimalDualǁload_state_dict__mutmut_35': (
        'self.skip_trial.load_state_dict(state.get("skip_trial", None))',
        "state_dict always writes the key (the trial's state, or {} without one), so the default is neve"
        'r taken'),
    'uvc.search.primal_dual.xǁPrimalDualǁload_state_dict__mutmut_37': (
        'self.skip_trial.load_state_dict(state.get("skip_trial", ))',
        "state_dict always writes the key (the trial's state, or {} without one), so the default is neve"
        'r taken'),
}

# mutant name -> (its mutated line, why no test here can kill it): a tensor left on the CPU (`.to(None)`,
# no device) differs from the model's device only on a GPU, which this machine lacks. Not equivalent:
# these stay survivors in the score.
NEEDS_A_GPU = {name: (line, "leaves a tensor on the CPU where the model's device is asked for: the same on a "
                            "CPU, a device mismatch on a GPU, which this machine does not have")
               for name, line in (
    ("uvc.deploy.export.x__export_attention__mutmut_26",
     "row_keep = torch.cat([torch.ones(2 * len(qk)), keep]).to(None)"),
    ("uvc.deploy.export.x__export_attention__mutmut_38",
     "dst.proj.weight.copy_(src.proj.weight[:, v] * keep.to(None)[None, :])"),
    ("uvc.deploy.export.x__export_embeddings__mutmut_11", "dst.pos_embed.copy_(src.pos_embed[:, rows.to(None)])"),
    ("uvc.deploy.export.x__input_mask__mutmut_4", "mask = torch.zeros(size, dtype=like.dtype, device=None)"),
    ("uvc.deploy.export.x__input_mask__mutmut_7", "mask = torch.zeros(size, dtype=like.dtype, )"),
    ("uvc.deploy.export.x__input_mask__mutmut_9", "mask[kept.to(None)] = 1.0"),
    ("uvc.deploy.export.x_export_compact__mutmut_9", "compact.to(None)"),
    ("uvc.deploy.export.x_masked_forward_reference__mutmut_63",
     "x = model._pos_embed(model.patch_embed(x)).index_select(1, tokens.to(None))  # (B, prefix + P', D)"))}
