"""Freezing: fit_to_budget lands every architecture in [budget - 1%, budget], fast, lowest scores first."""
import pytest
import torch

from models.vit import create_model
from uvc.deploy import fit
from uvc.deploy.fit import fit_to_budget
from uvc.deploy.freeze import base_spec, spec_ratio
from uvc.search.masks import group_scores, stacked_weights


def scores_of(vit):
    return group_scores(*stacked_weights(vit), vit.blocks[0].attn.num_heads)


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_fit_lands_in_window_on_deit_tiny_quickly(budget, monkeypatch):
    """From the dense DeiT-Tiny, thousands of greedy removals, each one step over at most two
    candidates per block: the loop is O(removals x blocks), counted rather than timed."""
    torch.manual_seed(0)
    vit = create_model("deit_tiny_patch16_224", num_classes=10)
    sizes, candidates = [], fit._Pool.candidates

    def counted(self, spec, tokens, cost):
        out = candidates(self, spec, tokens, cost)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(fit._Pool, "candidates", counted)
    spec, info = fit_to_budget(base_spec(vit, "deit_tiny_patch16_224"), scores_of(vit), budget)
    assert budget - 0.01 <= spec_ratio(spec) <= budget
    assert info["groups_removed_to_fit"] > 100
    assert len(sizes) <= info["groups_removed_to_fit"] + 1  # one candidate scan per removal step
    assert max(sizes) <= 2 * len(vit.blocks)  # neurons or value dims, per block


def test_fit_removes_lowest_scores_and_restores_best_neurons():
    """Removed neurons of a block are its lowest-score ones; an over-pruned spec gets its best neurons back."""
    torch.manual_seed(0)
    vit = create_model("vit_digits_patch2_8", num_classes=10)
    sc = scores_of(vit)
    spec, _ = fit_to_budget(base_spec(vit, "vit_digits_patch2_8"), sc, 0.6)
    for l, block in enumerate(spec["blocks"]):
        kept = set(block["neurons"])
        removed = [m for m in range(256) if m not in kept]
        if removed:
            assert max(sc.neurons[l, removed]) <= min(sc.neurons[l, sorted(kept)])
    over = base_spec(vit, "vit_digits_patch2_8")
    for block in over["blocks"]:
        block["neurons"] = block["neurons"][:8]  # far below budget
    fitted, info = fit_to_budget(over, sc, 0.6)
    assert info["groups_restored_to_fit"] > 0
    assert 0.59 <= spec_ratio(fitted) <= 0.6
