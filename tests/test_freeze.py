"""Freezing: fit_to_budget lands every architecture in [budget - 1%, budget], fast, lowest scores first."""
import pytest
import torch

from models.vit import create_model
from uvc.deploy import fit
from uvc.deploy.fit import fit_to_budget
from uvc.cost.cost import MacsCost
from uvc.cost.flops import arch_macs, dense_macs
from uvc.deploy.freeze import (apply_spec, base_spec, dims_of_spec, masks_from_spec, param_keep_masks, spec_from_search,
                               spec_ratio, zero_removed_weights)
from uvc.search.masked_model import MaskedViT
from uvc.search.masks import Scores, group_scores, stacked_weights
from helpers import over_pruned_tiny


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


def _pruned_tiny_spec(vit):
    """vit_digits_tiny's spec with block 0's head 1 removed, head 0 at 5 of 16 value dims,
    block 1's first 20 neurons removed and patch 3 dropped."""
    spec = base_spec(vit, "vit_digits_tiny_patch2_8")
    block = spec["blocks"][0]
    block["heads"], block["value_dims"] = [0], [list(range(5))]
    spec["blocks"][1]["neurons"] = list(range(20, 128))
    spec["patches_kept"] = [p for p in spec["patches_kept"] if p != 3]
    return spec


def test_spec_ratio_pads_value_dims_and_counts_attention_by_default():
    """spec_ratio is the deployed MACs over the dense MACs, by uvc.cost.flops: value dims padded to
    the block's widest head and attention counted unless told otherwise."""
    vit = create_model("vit_digits_tiny_patch2_8")
    spec = _pruned_tiny_spec(vit)
    spec["blocks"][2]["value_dims"][1] = list(range(9))  # head 1 narrower than head 0: padding counts
    dims = dims_of_spec(spec)
    ratios = {(pad, attn): arch_macs(dims, spec, pad, attn) / dense_macs(dims, attn)
              for pad in (True, False) for attn in (True, False)}
    assert len(set(ratios.values())) == 4  # each flag changes the ratio of this spec
    assert spec_ratio(spec) == pytest.approx(ratios[True, True], rel=1e-12)
    for (pad, attn), ratio in ratios.items():
        assert spec_ratio(spec, pad_value_dims=pad, with_attn=attn) == pytest.approx(ratio, rel=1e-12)


def test_spec_from_search_records_the_model_type():
    vit = create_model("vit_digits_tiny_patch2_8")
    spec = spec_from_search(vit, "vit_digits_tiny_patch2_8", None, torch.ones(4), torch.ones(16, dtype=torch.bool))
    assert spec["model_type"] == "vit_digits_tiny_patch2_8"
    assert spec == base_spec(vit, "vit_digits_tiny_patch2_8")  # nothing pruned, every block and patch kept


def test_param_keep_masks_zero_the_removed_rows_and_columns():
    """A removed head loses its q, k, v rows (weight and bias) and its proj columns; a removed value
    dim its v row and proj column; a removed neuron its fc1 row, fc1 bias and fc2 column."""
    vit = create_model("vit_digits_tiny_patch2_8")
    spec = _pruned_tiny_spec(vit)
    keep = param_keep_masks(vit, spec)
    params = dict(vit.named_parameters())
    assert {n: k.shape for n, k in keep.items()} == {n: params[n].shape for n in keep}
    assert {"blocks.0.attn.qkv.bias", "blocks.0.attn.qkv.weight"} <= set(keep)
    d = 16  # head_dim: rows [q heads | k heads | v heads], each head d rows
    value = torch.zeros(2 * d)
    value[:5] = 1  # head 0's first 5 dims; head 1 removed
    qk = torch.tensor([1.0] * d + [0.0] * d)
    rows = torch.cat([qk, qk, value])
    assert torch.equal(keep["blocks.0.attn.qkv.bias"], rows)
    assert torch.equal(keep["blocks.0.attn.qkv.weight"], rows[:, None].expand(-1, 32))
    assert torch.equal(keep["blocks.0.attn.proj.weight"], value[None, :].expand(32, -1))
    neurons = (torch.arange(128) >= 20).float()
    assert torch.equal(keep["blocks.1.mlp.fc1.bias"], neurons)
    assert torch.equal(keep["blocks.1.mlp.fc2.weight"], neurons[None, :].expand(32, -1))
    with torch.no_grad():
        params["blocks.0.attn.qkv.bias"].fill_(2.0)
    zero_removed_weights(vit, keep)
    assert torch.equal(params["blocks.0.attn.qkv.bias"].detach(), 2.0 * rows)


def test_param_keep_masks_have_no_qkv_bias_entry_without_a_qkv_bias():
    vit = create_model("vit_digits_tiny_patch2_8", qkv_bias=False)
    keep = param_keep_masks(vit, _pruned_tiny_spec(vit))
    assert not any(n.endswith("qkv.bias") for n in keep)
    zero_removed_weights(vit, keep)  # every entry names a parameter


def test_masks_of_a_spec_are_on_the_models_device():
    """apply_spec and param_keep_masks build masks and the patch index where the model is (a GPU
    in training; the meta device here stands for any device other than the default)."""
    vit = create_model("vit_digits_tiny_patch2_8").to("meta")
    spec = _pruned_tiny_spec(vit)
    assert masks_from_spec(spec, torch.device("meta")).neurons.device.type == "meta"
    assert {k.device.type for k in param_keep_masks(vit, spec).values()} == {"meta"}
    model = MaskedViT(vit)
    apply_spec(model, spec)
    assert {model.fc2_mask.device.type, model.proj_mask.device.type, model.patch_index.device.type} == {"meta"}


@pytest.mark.parametrize("img_size", [8, 9])
def test_apply_spec_with_every_patch_kept_gathers_no_patches(img_size):
    """A spec that keeps all (img_size // patch_size)^2 patches runs the dense path (no index);
    one that drops a patch gathers the kept ones."""
    vit = create_model("vit_digits_tiny_patch2_8", img_size=img_size)
    spec = base_spec(vit, "vit_digits_tiny_patch2_8")
    model = MaskedViT(vit)
    apply_spec(model, spec)
    assert model.patch_index is None
    spec["patches_kept"] = spec["patches_kept"][1:]
    apply_spec(model, spec)
    assert model.patch_index.tolist() == list(range(1, 16))


def _best(scores: torch.Tensor, k: int) -> list:
    return sorted(scores.argsort(descending=True)[:k].tolist())


def test_fit_restores_heads_dims_neurons_and_blocks_best_first():
    """Under budget - 1%, the fit puts back removed heads, value dims, neurons and the skipped
    block until the window is reached: every kept head ends with its best-scoring dims, every
    block's neurons are the ones it kept plus its best others, and the counts say what came back
    (a restored block brings its best head with 1 dim and 1 neuron)."""
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = over_pruned_tiny(vit)
    out, info = fit_to_budget(spec, sc, 0.9)
    assert 0.89 <= spec_ratio(out) <= 0.9 and info["fit_window"] == "tight"
    assert [b["skipped"] for b in out["blocks"]] == [False] * 4 and info["restored_blocks"] == 1
    assert [b["heads"] for b in out["blocks"]] == [[0, 1]] * 4  # each removed head back once
    assert info["restored_heads"] == sum(len(b["heads"]) for b in out["blocks"]) - 4 > 0
    assert info["restored_neurons"] == sum(len(b["neurons"]) for b in out["blocks"]) - 3 * 40 - 1
    assert info["groups_restored_to_fit"] == sum(info[f"restored_{k}s"] for k in ("neuron", "dim", "head", "block"))
    for l, block in enumerate(out["blocks"]):
        for h, dims in zip(block["heads"], block["value_dims"]):
            assert dims == _best(sc.dims[l, h], len(dims))
        if l == 2:
            assert block["neurons"] == _best(sc.neurons[l], len(block["neurons"]))
        else:
            others = torch.tensor([-1.0 if i < 40 else float(s) for i, s in enumerate(sc.neurons[l])])
            assert block["neurons"] == sorted(set(range(40)) | set(_best(others, len(block["neurons"]) - 40)))


class _InOtherUnits(MacsCost):
    """MACs times 2^-40: every cost under 1, and every ratio and score per cost the same bits."""

    def block(self, *counts):
        return super().block(*counts) * 2.0 ** -40

    def embed(self, patches):
        return super().embed(patches) * 2.0 ** -40

    def head(self):
        return super().head() * 2.0 ** -40


@pytest.mark.parametrize("budget,start", [(0.5, "over-pruned"), (0.7, "over-pruned"), (0.9, "over-pruned"),
                                          (0.5, "dense")])
def test_fit_is_the_same_in_any_unit_of_cost(budget, start):
    """The fit ranks by score per unit of cost and stops at a ratio: a cost model in other units
    (a latency in seconds) gives the same architecture, restoring or removing."""
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = over_pruned_tiny(vit)
    if start == "dense":
        spec = base_spec(vit, "vit_digits_tiny_patch2_8")
    assert fit_to_budget(spec, sc, budget, cost=_InOtherUnits(dims_of_spec(spec))) == fit_to_budget(spec, sc, budget)


def test_restore_candidates_price_a_head_and_a_skipped_block():
    """A removed head is offered at the block's value width with its best dims, priced by the
    cost it adds; a skipped block at its smallest shape, ranked by all its scores over its
    whole cost; without groups only skipped blocks are offered, wherever they are."""
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = over_pruned_tiny(vit)
    cost, tokens = MacsCost(dims_of_spec(spec)), 17
    cands = fit._restore_candidates(spec, fit._Removed(spec, sc, 1), tokens, cost, True)
    assert sorted((l, kind) for _, _, l, kind, _ in cands) == sorted(
        [(l, kind) for l in (0, 1, 3) for kind in ("neuron", "dim", "head")] + [(2, "block")])
    head = next(c for c in cands if c[2:4] == (0, "head"))
    extra = cost.block(tokens, 2, 12, 40) - cost.block(tokens, 1, 6, 40)
    top6 = sc.dims[0, 1].sort(descending=True).values[:6].sum()
    assert head[1:] == (extra, 0, "head", 1) and head[0] == pytest.approx(float(top6) / extra, rel=1e-6)
    block = next(c for c in cands if c[3] == "block")
    whole = cost.block(tokens, 2, 32, 128)
    total = float(sc.heads[2].sum() + sc.neurons[2].sum())
    assert block[1:] == (cost.block(tokens, 1, 1, 1), 2, "block", 1)
    assert block[0] == pytest.approx(total / whole, rel=1e-6)
    only_blocks = fit._restore_candidates(spec, fit._Removed(spec, sc, 1), tokens, cost, False)
    assert [c[2:] for c in only_blocks] == [(2, "block", 1)]


def test_a_kept_block_without_heads_gets_no_head_back():
    """A block whose heads were all removed keeps running its MLP: the fit grows its neurons but
    offers it no head or value dim (it has no value width to restore them at), and ends."""
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = over_pruned_tiny(vit)
    spec["blocks"][1].update(heads=[], value_dims=[])
    out, info = fit_to_budget(spec, sc, 0.9)
    assert 0.89 <= spec_ratio(out) <= 0.9
    assert out["blocks"][1]["heads"] == [] and out["blocks"][1]["value_dims"] == []
    assert len(out["blocks"][1]["neurons"]) > 40


def test_a_restored_block_comes_back_with_its_best_head():
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = over_pruned_tiny(vit)
    sc = sc._replace(heads=sc.heads.flip(-1))  # head 0 the better one everywhere
    out, info = fit_to_budget(spec, sc, 0.7)
    assert info["restored_blocks"] == 1 and info["restored_heads"] == 0
    assert out["blocks"][2]["heads"] == [0]


def test_fit_over_budget_passes_over_what_cannot_shrink():
    """Removing groups over budget leaves alone a block without heads at one neuron (nothing
    left to remove there) and lands in the window from the others."""
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = base_spec(vit, "vit_digits_tiny_patch2_8"), scores_of(vit)
    spec["blocks"][1].update(heads=[], value_dims=[], neurons=[5])
    spec["blocks"][2]["value_dims"][1] = list(range(9))  # equalised to its widest head first
    out, info = fit_to_budget(spec, sc, 0.5)
    assert 0.49 <= spec_ratio(out) <= 0.5 and info["groups_removed_to_fit"] > 0
    assert out["blocks"][1] == spec["blocks"][1]
    assert [len({len(v) for v in b["value_dims"]}) for b in out["blocks"]] == [1, 0, 1, 1]


def test_groups_removed_to_fit_counts_every_neuron_and_value_dim_per_head():
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = base_spec(vit, "vit_digits_tiny_patch2_8"), scores_of(vit)
    out, info = fit_to_budget(spec, sc, 0.5)
    assert info["groups_restored_to_fit"] == 0
    gone = sum(128 - len(b["neurons"]) + sum(16 - len(v) for v in b["value_dims"]) for b in out["blocks"])
    assert info["groups_removed_to_fit"] == gone > 0
    assert 0 < sum(128 - len(b["neurons"]) for b in out["blocks"]) < gone  # both kinds removed


def test_a_spec_on_the_budget_is_left_as_it_is():
    vit = create_model("vit_digits_tiny_patch2_8")
    spec = base_spec(vit, "vit_digits_tiny_patch2_8")
    out, info = fit_to_budget(spec, scores_of(vit), 1.0, tolerance=0.0)
    assert out == spec and info["groups_removed_to_fit"] == info["groups_restored_to_fit"] == 0
    assert info["fit_window"] == "tight"  # [B - tolerance, B] holds its ends


def test_an_unreachable_budget_ends_at_the_smallest_widths_missed():
    vit = create_model("vit_digits_tiny_patch2_8")
    out, info = fit_to_budget(base_spec(vit, "vit_digits_tiny_patch2_8"), scores_of(vit), 0.01)
    assert info["fit_window"] == "missed"
    assert all(len(b["neurons"]) == 1 and [len(v) for v in b["value_dims"]] == [1, 1] for b in out["blocks"])


def test_without_groups_only_skipped_blocks_come_back_and_nothing_is_rounded():
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = over_pruned_tiny(vit)
    out, info = fit_to_budget(spec, sc, 0.5, groups=False, round_to=8)
    assert info["restored_blocks"] == 1 and info["groups_restored_to_fit"] == 1
    assert (info["restored_neurons"], info["restored_dims"], info["rounded_up"], info["rounded_down"]) == (0, 0, 0, 0)
    # kept blocks as they were (6 dims, 40 neurons: not multiples of 8); block 2 back at the smallest aligned shape
    assert [(len(b["neurons"]), len(b["value_dims"][0])) for b in out["blocks"]] == [(40, 6), (40, 6), (8, 8), (40, 6)]


def test_fit_counts_in_the_cost_model_it_is_given():
    """`cost` replaces MACs with `with_attn`: MACs without the attention terms passed as a cost
    fit as with_attn=False does, and not as the default."""
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = over_pruned_tiny(vit)
    given = fit_to_budget(spec, sc, 0.6, cost=MacsCost(dims_of_spec(spec), with_attn=False))
    assert given == fit_to_budget(spec, sc, 0.6, with_attn=False) != fit_to_budget(spec, sc, 0.6)


def test_removal_candidates_are_priced_by_score_per_cost_saved():
    """Over budget, each block offers its lowest-score neuron and, on every kept head, its
    lowest-score value dim, each at its score over the cost it saves."""
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = base_spec(vit, "vit_digits_tiny_patch2_8"), scores_of(vit)
    cost, tokens = MacsCost(dims_of_spec(spec)), 17
    cands = fit._Pool(spec, sc, 1).candidates(spec, tokens, cost)
    assert sorted(c[2:] for c in cands) == sorted((l, kind, 1) for l in range(4) for kind in ("neuron", "dim"))
    full = cost.block(tokens, 2, 32, 128)
    neuron = next(c for c in cands if c[2:4] == (0, "neuron"))
    saving = full - cost.block(tokens, 2, 32, 127)
    assert neuron[1] == saving and neuron[0] == pytest.approx(float(sc.neurons[0].min()) / saving, rel=1e-6)
    dim = next(c for c in cands if c[2:4] == (0, "dim"))
    saving = full - cost.block(tokens, 2, 30, 128)
    assert dim[1] == saving and dim[0] == pytest.approx(float(sc.dims[0].min(-1).values.sum()) / saving, rel=1e-6)


def test_restore_takes_the_best_candidate_landing_exactly_on_the_limit_earlier_block_first():
    """The restore loop takes the best score per cost among the restorations that keep the ratio
    <= the limit (one landing exactly on it included); on a tie, the earlier block; value dims
    restored on every kept head count once per head."""
    vit = create_model("vit_digits_tiny_patch2_8")
    spec, sc = over_pruned_tiny(vit)
    spec["blocks"][2]["skipped"] = False
    for block in spec["blocks"]:
        block["heads"], block["value_dims"] = [0, 1], [list(range(6))] * 2
    dims = torch.full((4, 2, 16), 100.0)  # blocks alike, value dims worth most
    sc = Scores(heads=dims.sum(-1), dims=dims, neurons=torch.full((4, 128), 0.01))
    cost, tokens = MacsCost(dims_of_spec(spec)), 17
    dense = float(fit.dense_cost(cost))
    ratio = fit.spec_cost(cost, spec) / dense
    removed = fit._Removed(spec, sc, 1)
    best = max(fit._restore_candidates(spec, removed, tokens, cost, True), key=lambda c: c[0])
    assert best[2:] == (0, "dim", 1)
    counts = {"neuron": 0, "dim": 0, "head": 0, "block": 0}
    fit._restore(spec, removed, ratio + best[1] / dense, ratio, dense, tokens, cost, True, counts)
    assert [len(b["value_dims"][0]) for b in spec["blocks"]] == [7, 6, 6, 6]
    assert counts["dim"] == 2
