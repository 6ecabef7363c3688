"""Aligned shapes (--round_to N): the fit keeps MLP widths and value dims per head at
multiples of N and lands in the budget window; N = 1 is the fit as it was before."""
import pytest
import torch

from models import create_model
from uvc.deploy import fit
from uvc.deploy.fit import allowed_widths, fit_to_budget
from uvc.deploy.freeze import base_spec, spec_ratio
from uvc.search.masks import Scores, group_scores, stacked_weights
from utils.config import ConfigError, parse_config
from helpers import TINY_MODEL, noisy_tiny_vit, over_pruned_tiny

L, H, D_HEAD, M = 4, 2, 16, 128  # the tiny test model's sizes


def _shape_spec(depth, heads, head_dim, mlp, embed, img, patch, in_chans=3):
    return {"model_type": "t", "img_size": img, "patch_size": patch, "in_chans": in_chans, "num_classes": 10,
            "embed_dim": embed, "num_heads": heads, "head_dim": head_dim, "mlp_hidden": mlp, "depth": depth,
            "num_prefix_tokens": 1, "distilled": False, "qkv_bias": True,
            "patches_kept": list(range((img // patch) ** 2)),
            "blocks": [{"skipped": False, "heads": list(range(heads)), "value_dims": [list(range(head_dim))] * heads,
                        "neurons": list(range(mlp))} for _ in range(depth)]}


def integer_scores():
    """Scores with exact float values, so the fit's choices do not depend on the platform."""
    dims = torch.tensor([[[float((j * 7 + h * 5 + l * 3) % D_HEAD + 1 + 16 * h) for j in range(D_HEAD)]
                          for h in range(H)] for l in range(L)])
    neurons = torch.tensor([[float((m * 37 + l * 11) % M + 1) for m in range(M)] for l in range(L)])
    return Scores(heads=dims.sum(-1), dims=dims, neurons=neurons)


def awkward_spec():
    """What a search leaves: odd widths, unequal heads, a removed head, a skipped block."""
    spec = _shape_spec(L, H, D_HEAD, M, 32, 8, 2, in_chans=1)
    spec["blocks"] = [
        {"skipped": False, "heads": [0, 1], "value_dims": [list(range(5)), list(range(3, 9))],
         "neurons": list(range(0, 128, 3))},
        {"skipped": True, "heads": [0, 1], "value_dims": [list(range(16))] * 2, "neurons": list(range(128))},
        {"skipped": False, "heads": [1], "value_dims": [list(range(1, 12))], "neurons": list(range(77))},
        {"skipped": False, "heads": [0, 1], "value_dims": [list(range(16))] * 2, "neurons": list(range(5, 128))}]
    return spec


def assert_aligned(spec, n):
    for block in spec["blocks"]:
        if block["skipped"]:
            continue
        assert len(block["neurons"]) in allowed_widths(spec["mlp_hidden"], n), block
        widths = {len(v) for v in block["value_dims"]}
        assert len(widths) == 1 and widths.pop() in allowed_widths(spec["head_dim"], n), block


def test_allowed_widths():
    assert allowed_widths(64, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert allowed_widths(20, 8) == [8, 16, 20]  # the dense width always stays possible
    assert allowed_widths(5, 8) == [5]  # narrower than N: whole
    assert allowed_widths(4, 1) == [1, 2, 3, 4]


@pytest.mark.parametrize("budget", [0.4, 0.5, 0.7])
def test_tiny_model_fit_is_aligned_and_in_window(budget):
    vit = noisy_tiny_vit(0)
    scores = group_scores(*stacked_weights(vit), H)
    spec, info = fit_to_budget(base_spec(vit, TINY_MODEL), scores, budget, round_to=8)
    assert_aligned(spec, 8)
    assert budget - 0.03 <= spec_ratio(spec) <= budget + 0.01
    assert info["fit_window"] in ("tight", "wide") and info["round_to"] == 8
    if info["fit_window"] == "tight":
        assert budget - 0.01 <= spec_ratio(spec) <= budget


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_deit_tiny_shaped_fit_is_aligned_and_hits_the_narrow_window(budget):
    """DeiT-Tiny's sizes (197 tokens, 3 heads of 64, MLP 768): steps of 8 are fine enough for [B - 0.01, B]."""
    spec = _shape_spec(12, 3, 64, 768, 192, 224, 16)
    gen = torch.Generator().manual_seed(0)
    dims = torch.rand(12, 3, 64, generator=gen)
    scores = Scores(heads=dims.sum(-1), dims=dims, neurons=torch.rand(12, 768, generator=gen))
    for block, keep in zip(spec["blocks"], range(300, 900, 50)):  # awkward widths, as a search leaves them
        block["neurons"] = block["neurons"][:min(keep, 768)]
        block["value_dims"] = [v[:5 + block_i] for block_i, v in enumerate(block["value_dims"])]
    fitted, info = fit_to_budget(spec, scores, budget, round_to=8)
    assert_aligned(fitted, 8)
    assert budget - 0.01 <= spec_ratio(fitted) <= budget and info["fit_window"] == "tight"
    assert info["rounded_up"] + info["rounded_down"] > 0


def test_rounding_keeps_the_best_groups_and_is_logged():
    spec, info = fit_to_budget(awkward_spec(), integer_scores(), 1.0, round_to=8, tolerance=1.0)
    first = spec["blocks"][0]  # 43 neurons -> 40 (the 3 lowest-score ones go), 6 dims per head -> 8 (best added)
    assert len(first["neurons"]) == 40 and all(len(v) == 8 for v in first["value_dims"])
    sc = integer_scores()
    dropped = set(range(0, 128, 3)) - set(first["neurons"])
    assert max(sc.neurons[0, sorted(dropped)]) <= min(sc.neurons[0, first["neurons"]])
    # down: block 0 43 -> 40 neurons, block 2 11 -> 8 dims (one head), block 3 123 -> 120 neurons;
    # up: block 0 6 -> 8 dims on two heads, block 2 77 -> 80 neurons (the skipped block is left alone)
    assert info["rounded_down"] == 3 + 3 + 3 and info["rounded_up"] == 2 * 2 + 3


def test_aligned_steps_too_coarse_fall_back_to_the_wide_window():
    """N = 16 on the tiny shapes: value dims are 16 per head, neurons move in steps of 16; at 0.75 no
    aligned shape lies in [0.74, 0.75], so the fit ends in [0.72, 0.76] and says so."""
    spec, info = fit_to_budget(awkward_spec(), integer_scores(), 0.75, round_to=16)
    assert_aligned(spec, 16)
    assert info["fit_window"] == "wide" and 0.72 <= spec_ratio(spec) <= 0.76


# the fit of the awkward spec as it was before --round_to (commit c18c36d), per block:
# skipped, heads, sum of kept value-dim indices per head, neuron count, sum of neuron indices
BEFORE = {
    0.3: [[False, [0, 1], [9, 6], 25, 1638], [True, [0, 1], [120, 120], 128, 8128],
          [False, [1], [12], 44, 1680], [False, [0, 1], [10, 7], 72, 4720]],
    0.5: [[False, [0, 1], [45, 43], 43, 2709], [True, [0, 1], [120, 120], 128, 8128],
          [False, [1], [83], 77, 2926], [False, [0, 1], [120, 120], 123, 8118]],
    0.8: [[False, [0, 1], [45, 43], 115, 7332], [False, [1], [45], 107, 6897],
          [False, [1], [83], 120, 7304], [False, [0, 1], [120, 120], 127, 8125]],
}


@pytest.mark.parametrize("budget", sorted(BEFORE))
def test_round_to_1_is_the_fit_as_before(budget):
    spec, info = fit_to_budget(awkward_spec(), integer_scores(), budget, round_to=1)
    summary = [[b["skipped"], b["heads"], [sum(v) for v in b["value_dims"]], len(b["neurons"]), sum(b["neurons"])]
               for b in spec["blocks"]]
    assert summary == BEFORE[budget]
    assert info["rounded_up"] == info["rounded_down"] == 0


def test_round_to_flag():
    assert parse_config("joint", ["--model_type", TINY_MODEL]).round_to == 8
    assert parse_config("joint", ["--model_type", TINY_MODEL, "--round_to", "1"]).round_to == 1
    with pytest.raises(ConfigError, match="--round_to must be at least 1"):
        parse_config("joint", ["--model_type", TINY_MODEL, "--round_to", "0"])
    with pytest.raises(ConfigError, match="stage-1"):
        parse_config("post", ["--model_type", TINY_MODEL, "--round_to", "4"])


def test_token_step_flag():
    """--token_step: 8 by default, 1 in the digits configs (17 tokens), 8 in the MNIST ones; checked, stage 1 only."""
    assert parse_config("joint", ["--model_type", TINY_MODEL]).token_step == 8
    assert parse_config("joint", ["--config", "configs/digits_demo.py:joint"]).token_step == 1
    assert parse_config("joint", ["--config", "configs/mnist_demo.py:joint"]).token_step == 8
    assert parse_config("joint", ["--model_type", TINY_MODEL, "--token_step", "1"]).token_step == 1
    with pytest.raises(ConfigError, match="--token_step must be at least 1"):
        parse_config("joint", ["--model_type", TINY_MODEL, "--token_step", "0"])
    with pytest.raises(ConfigError, match="stage-1"):
        parse_config("post", ["--model_type", TINY_MODEL, "--token_step", "4"])


def test_rounding_up_adds_the_best_scoring_of_the_removed_groups():
    """A width rounded up keeps every group it had and adds the best-scoring of the others."""
    spec = awkward_spec()
    sc = integer_scores()
    spec["blocks"][0].update(neurons=list(range(7)), value_dims=[list(range(5)), list(range(3, 8))])  # 7, 5 -> 8
    changed = fit._round_widths(spec, sc, 8)
    block = spec["blocks"][0]
    best_other = max(range(7, M), key=lambda i: float(sc.neurons[0, i]))
    assert block["neurons"] == list(range(7)) + [best_other]
    for h, kept, dims in zip(block["heads"], (range(5), range(3, 8)), block["value_dims"]):
        others = sorted(set(range(D_HEAD)) - set(kept), key=lambda j: float(sc.dims[0, h, j]), reverse=True)
        assert dims == sorted(list(kept) + others[:8 - len(kept)])
    # up: block 0 +1 neuron and +3 dims on two heads, block 2 77 -> 80 neurons; down: block 2
    # 11 -> 8 dims, block 3 123 -> 120 neurons (the skipped block is left alone)
    assert changed == {"rounded_up": 1 + 3 * 2 + 3, "rounded_down": 3 + 3}


def test_a_width_midway_rounds_to_the_wider_and_a_block_without_heads_stops_nothing():
    allowed = allowed_widths(M, 8)
    assert (fit._nearest(12, allowed), fit._nearest(11, allowed), fit._nearest(13, allowed)) == (16, 8, 16)
    spec = awkward_spec()
    spec["blocks"][0].update(heads=[], value_dims=[])
    fit._round_widths(spec, integer_scores(), 8)
    assert [len(b["neurons"]) for b in spec["blocks"]] == [40, 128, 80, 120]  # blocks after 0 rounded too


def test_steps_too_coarse_restore_into_the_wide_window_over_the_budget():
    """round_to 64 on the tiny model: value dims whole (16 < 64), MLPs at 64 or 128. From a quarter
    of the MACs, no step lands in [0.41, 0.42]; the fit then restores up to budget + 0.01 (a head,
    here) and says `wide`."""
    spec, sc = over_pruned_tiny(create_model(TINY_MODEL))
    out, info = fit_to_budget(spec, sc, 0.42, round_to=64)
    assert info["fit_window"] == "wide" and 0.42 < spec_ratio(out) <= 0.43
    assert info["restored_heads"] == info["groups_restored_to_fit"] == 1


def test_a_coarse_fit_already_in_the_wide_window_under_the_budget_stays():
    """At budget 0.39 the rounded spec is at 0.377, in [B - 0.03, B - 0.01): `wide`, nothing
    restored over the budget."""
    spec, sc = over_pruned_tiny(create_model(TINY_MODEL))
    out, info = fit_to_budget(spec, sc, 0.39, round_to=64)
    assert info["fit_window"] == "wide" and 0.36 <= spec_ratio(out) < 0.38
    assert info["groups_restored_to_fit"] == 0


def test_round_to_2_keeps_even_widths():
    spec, info = fit_to_budget(awkward_spec(), integer_scores(), 0.6, round_to=2)
    assert_aligned(spec, 2)
    assert info["rounded_up"] + info["rounded_down"] > 0 and info["fit_window"] == "tight"
