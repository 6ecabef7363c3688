"""The fit's windows at their exact ends: [B - tolerance, B] (tight), [B - 0.03, B + 0.01] (wide,
aligned steps only). A cost model whose every value is a binary fraction makes the ratios land on
those ends exactly, so each comparison is checked on its boundary."""
import pytest
import torch

from uvc.deploy.fit import WIDE_WINDOW, fit_to_budget
from uvc.deploy.freeze import dims_of_spec
from uvc.search.masks import Scores

L, H, D, M = 2, 2, 4, 4


class _BinaryCost:
    """A kept block costs head x heads + dim x value dims + neuron x neurons; the dense model
    costs 1 and nothing else costs anything: every ratio is an exact binary fraction."""
    name = "binary"
    dense_measured = 1.0

    def __init__(self, spec, head: float, dim: float, neuron: float):
        self.dims, self.per = dims_of_spec(spec), (head, dim, neuron)

    def block(self, tokens, heads, value_dims, neurons):
        return self.per[0] * heads + self.per[1] * value_dims + self.per[2] * neurons

    def embed(self, patches):
        return 0.0

    def head(self):
        return 0.0


def _spec(block0_heads):
    """Block 0 kept at full width with `block0_heads` heads; block 1 skipped."""
    full = {"skipped": False, "heads": list(range(block0_heads)), "value_dims": [list(range(D))] * block0_heads,
            "neurons": list(range(M))}
    return {"model_type": "t", "img_size": 4, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 8,
            "num_heads": H, "head_dim": D, "mlp_hidden": M, "depth": L, "num_prefix_tokens": 1, "distilled": False,
            "qkv_bias": True, "patches_kept": list(range(4)),
            "blocks": [full, dict(full, skipped=True, heads=list(range(H)), value_dims=[list(range(D))] * H)]}


def _scores():
    dims = torch.arange(L * H * D, dtype=torch.float32).view(L, H, D) + 1
    return Scores(heads=dims.sum(-1), dims=dims, neurons=torch.arange(L * M, dtype=torch.float32).view(L, M) + 1)


def test_a_ratio_exactly_at_budget_minus_tolerance_is_tight_and_nothing_is_restored():
    """Block 0 whole is half the dense cost: at B 0.75 and tolerance 0.25 the spec is on B - tolerance,
    inside the tight window, so the skipped block (0.09375 at its smallest shape, under B) stays out."""
    spec = _spec(H)
    out, info = fit_to_budget(spec, _scores(), 0.75, tolerance=0.25, cost=_BinaryCost(spec, 0.0, 2 ** -5, 2 ** -4))
    assert info["fit_window"] == "tight" and info["groups_restored_to_fit"] == 0
    assert out == spec


@pytest.mark.parametrize("round_to,budget,window,restored", [(1, 0.59, "missed", 0), (2, 0.68, "wide", 1)])
def test_only_aligned_steps_restore_past_the_budget(round_to, budget, window, restored):
    """From 0.5, more than 0.03 under B, the only restoration is the skipped block at its smallest
    shape (0.09375 at round_to 1, 0.1875 at 2: 1 head, N dims, N neurons), which lands over B but
    within B + 0.01. At round_to 1 the fit never goes past the budget (missed); at round_to 2, the
    smallest aligned setting, it takes the wide window."""
    spec = _spec(H)
    out, info = fit_to_budget(spec, _scores(), budget, round_to=round_to,
                              cost=_BinaryCost(spec, 0.0, 2 ** -5, 2 ** -4))
    assert (info["fit_window"], info["restored_blocks"], info["groups_restored_to_fit"]) == (window, restored, restored)
    assert out["blocks"][1]["skipped"] == (restored == 0)


def test_an_aligned_fit_exactly_at_budget_minus_wide_under_is_wide_and_not_grown_past_the_budget():
    """Block 0 with one head is at 0.53125 = B - 0.03 for B 0.56125; its second head (0.03125) would
    land over B but within B + 0.01. B - 0.03 is inside the wide window, so the fit stops there."""
    spec, budget = _spec(1), 0.53125 + WIDE_WINDOW[0]
    assert budget - WIDE_WINDOW[0] == 0.53125  # exact in floating point
    out, info = fit_to_budget(spec, _scores(), budget, round_to=2, cost=_BinaryCost(spec, 2 ** -6, 2 ** -8, 2 ** -3))
    assert info["fit_window"] == "wide" and info["groups_restored_to_fit"] == 0
    assert out == spec


def test_an_aligned_restore_landing_exactly_on_budget_plus_wide_over_is_wide():
    """Block 0 with one head is at 0.5625, more than 0.03 under B = 0.615; its second head (0.0625)
    lands exactly on B + 0.01 = 0.625, the wide window's upper end: restored, and `wide`."""
    spec, budget = _spec(1), 0.625 - WIDE_WINDOW[1]
    assert budget + WIDE_WINDOW[1] == 0.625  # exact in floating point
    out, info = fit_to_budget(spec, _scores(), budget, round_to=2, cost=_BinaryCost(spec, 2 ** -5, 2 ** -7, 2 ** -3))
    assert info["fit_window"] == "wide" and info["restored_heads"] == info["groups_restored_to_fit"] == 1
    assert out["blocks"][0]["heads"] == [0, 1]
