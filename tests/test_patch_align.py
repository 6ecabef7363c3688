"""Token alignment at the freeze (uvc.deploy.patch_align): under a table that prices a count at the fastest
count at or above it, the frozen model keeps the patches up to that count, the least surely dropped first."""
import json

import pytest
import torch

from helpers import TINY_MODEL, demo_search_config, noisy_tiny_vit
from test_latency import fake_table, sawtooth
from uvc.cost.cost import MacsCost, spec_cost
from uvc.cost.flops import ViTDims
from uvc.cost.latency import LatencyCost
from uvc.cost import latency_table
from uvc.deploy.patch_align import TOLERANCE, align_patches
from uvc.deploy.freeze import base_spec
from uvc.search import UVCSearch
from uvc.search.masked_model import MaskedViT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def tiny():
    vit = noisy_tiny_vit(0)
    return vit, ViTDims.of(vit)  # 16 patches and a class token: N0 = 17


def dropped_after(kept: int, patches: int = 16) -> torch.Tensor:
    """Patch logits: the first `kept` patches kept, the rest dropped, the later ones less surely (closer to 0)."""
    logits = torch.full((patches,), 3.0)
    logits[kept:] = -torch.arange(patches - kept, 0, -1, dtype=torch.float32)  # ..., -2, -1: the last patch nearest
    return logits


def test_the_freeze_keeps_the_patches_up_to_the_fastest_count_at_or_above(tiny):
    """Blocks run faster at 14 tokens than at 12 or 13: a model searched to 12 tokens keeps 14, the two dropped
    patches of highest logits put back, and priced as timed it runs faster; one searched to 11 tokens keeps 11 (12 costs
    more), and the spec given is not changed."""
    vit, dims = tiny
    cost = LatencyCost(dims, sawtooth(dims, 14, (12, 13)))
    spec = dict(base_spec(vit, TINY_MODEL), patches_kept=list(range(11)))
    aligned, restored = align_patches(cost, spec, dropped_after(11))
    assert restored == 2 and aligned["patches_kept"] == list(range(11)) + [14, 15]
    assert spec["patches_kept"] == list(range(11))
    assert spec_cost(cost.timed(), aligned) < spec_cost(cost.timed(), spec)
    fewer = dict(spec, patches_kept=list(range(10)))
    assert align_patches(cost, fewer, dropped_after(10)) == (fewer, 0)
    at_14 = dict(spec, patches_kept=list(range(13)))  # already at the plateau's top: 15 tokens cost more
    assert align_patches(cost, at_14, dropped_after(13))[1] == 0


def test_nothing_is_put_back_where_every_token_costs(tiny):
    """Under MACs at any token count (token_step 1) or a uvc-latency-v3 table (non-decreasing by least
    squares) a token always costs."""
    vit, dims = tiny
    spec = dict(base_spec(vit, TINY_MODEL), patches_kept=list(range(11)))
    v3 = sawtooth(dims, 14, (12, 13))
    v3["format"] = "uvc-latency-v3"
    for cost in (MacsCost(dims), LatencyCost(dims, v3), LatencyCost(dims, fake_table(dims))):
        assert align_patches(cost, spec, dropped_after(11)) == (spec, 0)


@pytest.mark.parametrize("greedy_fit", [False, True])
def test_both_freezes_align_and_record_it(tmp_path, tiny, greedy_fit):
    """The search's freeze (as searched, or with the greedy fit) keeps the aligned patches and records how
    many the search kept and how many were put back; its latency ratio is the aligned model's."""
    vit, dims = tiny
    path = tmp_path / "table.json"
    path.write_text(json.dumps(sawtooth(dims, 14, (12, 13))))
    config = demo_search_config(model_type=TINY_MODEL, budget_metric="latency", latency_cache=str(path),
                                latency_check=0, greedy_fit=greedy_fit)
    search = UVCSearch(vit, config, torch.device("cpu"), search_steps=100)
    search.set_epoch(0)
    model = MaskedViT(vit)
    search.prepare(model, training=True)
    with torch.no_grad():
        search.arch.patch_logits.copy_(dropped_after(11))
    spec, fit = search.freeze(model, TINY_MODEL)
    assert fit["patches_searched"] == 11 and fit["patches_restored_to_align"] == 2
    assert spec["patches_kept"] == list(range(11)) + [14, 15]
    assert fit["latency_ratio"] == pytest.approx(spec_cost(search.budget.cost, spec) / search.budget.dense)


def test_a_table_prices_the_sawtooth_it_was_timed_at():
    """The counts a table times blocks at: every count from N0 / 2 up, so the sawtooth is seen where searches
    drop patches; below, the ladder's k/8 of N0."""
    counts = latency_table.token_counts(197, 1)
    assert counts[-99:] == list(range(99, 198)) and counts[:4] == [25, 49, 74, 98]


class ByTokens:
    """A cost that prices a whole model by its token count alone (a table as timed)."""
    envelope = True

    def __init__(self, dims: ViTDims, prices: dict):
        self.dims, self.prices = dims, prices

    def timed(self):
        return self

    def block(self, tokens, heads, value_dims, neurons):
        return torch.full_like(heads, self.prices[int(tokens)] / self.dims.depth, dtype=torch.float64)

    def embed(self, patches):
        return 0.0

    def head(self):
        return 0.0


@pytest.mark.parametrize("at_n0, kept", [(0.9, 16), (0.9011, 14)])
def test_counts_within_the_tolerance_of_the_fastest_keep_the_most_patches(tiny, at_n0, kept):
    """Priced 0.9 at 14 tokens and 0.9005 at 15 (within TOLERANCE): 15 is kept over 14, and all 17 when N0 is
    as fast; N0 at 0.9011 is past the tolerance and stays out."""
    vit, dims = tiny
    assert TOLERANCE == 1e-3
    cost = ByTokens(dims, {12: 1.0, 13: 0.95, 14: 0.9, 15: 0.9005, 16: 0.93, 17: at_n0})
    spec = dict(base_spec(vit, TINY_MODEL), patches_kept=list(range(11)))
    aligned, restored = align_patches(cost, spec, dropped_after(11))
    assert restored == kept - 11 and len(aligned["patches_kept"]) == kept


def test_under_macs_in_token_steps_the_freeze_keeps_the_count_priced(tiny):
    """MACs with token_step 8 (N0 = 17: counts 8, 16 and 17): 12 tokens are priced as 16, so the frozen model
    keeps 16, the four dropped patches of highest logit put back, at the MACs priced; 16 tokens stay (17 cost more)."""
    vit, dims = tiny
    cost, plain = MacsCost(dims, token_step=8), MacsCost(dims)
    spec = dict(base_spec(vit, TINY_MODEL), patches_kept=list(range(11)))
    aligned, restored = align_patches(cost, spec, dropped_after(11))
    assert restored == 4 and aligned["patches_kept"] == list(range(11)) + [12, 13, 14, 15]
    assert spec_cost(plain, aligned) == spec_cost(cost, spec) == spec_cost(cost, aligned)
    at_16 = dict(spec, patches_kept=list(range(15)))
    assert align_patches(cost, at_16, dropped_after(15)) == (at_16, 0)


def test_the_macs_freeze_in_token_steps_exports_the_macs_it_searched(tiny):
    """--budget_metric macs --token_step 8: the search's cost prices tokens in steps of 8 and the freeze puts back
    patches to the count priced, so the model exported has the MACs ratio the search ended with."""
    vit, dims = tiny
    config = demo_search_config(model_type=TINY_MODEL, budget_metric="macs", token_step=8)
    search = UVCSearch(vit, config, torch.device("cpu"), search_steps=100)
    assert search.budget.cost.token_step == 8
    search.set_epoch(0)
    model = MaskedViT(vit)
    search.prepare(model, training=True)
    with torch.no_grad():
        search.arch.patch_logits.copy_(dropped_after(11))
    searched = search.budget.hard_ratio(search.arch, search.pd.update_masks(model.vit))
    spec, fit = search.freeze(model, TINY_MODEL)
    assert fit["patches_searched"] == 11 and fit["patches_restored_to_align"] == 4 and fit["token_step"] == 8
    assert fit["macs_ratio"] == pytest.approx(searched, rel=1e-9)
