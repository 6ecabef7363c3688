"""uvc.search.gates by hand: the SoftL0 and Gumbel gate values, the patch attention bias, the settling of
a flip past the boundary and the choice of the one flip an update may keep."""
from types import SimpleNamespace

import pytest
import torch

from uvc.search.gates import (HYSTERESIS, REFUSED, block_gate_sample, limit_gate_flips, limit_patch_drops,
                              patch_attn_bias, settle_flips, soft_l0_keep)


def test_soft_l0_is_the_stretched_sigmoid_of_keep_minus_skip_clamped_to_0_1():
    """clamp((1 + 2 eps) sigmoid(keep - skip) - eps, 0, 1): exact 0 and 1 within eps of the ends."""
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 10.0], [0.0, -10.0], [-1.0, -3.0]])
    sig = torch.sigmoid(torch.tensor([0.0, 1.0, 10.0, -10.0, -2.0]))
    for eps in (0.1, 0.3):
        expected = ((1 + 2 * eps) * sig - eps).clamp(0.0, 1.0)
        assert torch.allclose(soft_l0_keep(logits, eps), expected, atol=1e-7)
    values = soft_l0_keep(logits, 0.1)
    assert values[0] == pytest.approx(0.5) and values[1] == pytest.approx(1.2 * 0.7310586 - 0.1)
    assert values[2] == 1.0 and values[3] == 0.0  # clamped: the gate is exactly open / shut
    assert block_gate_sample(logits, 1.0, False, 0.1).equal(values)


def test_a_gumbel_gate_sample_is_soft_and_tempered_by_tau():
    """A Gumbel-softmax sample over (skip, keep): soft values, concentrated at the softmax's 1/2 for a
    high temperature and spread towards 0 and 1 for a low one (same noise)."""
    logits = torch.zeros(2000, 2)
    torch.manual_seed(0)
    hot = block_gate_sample(logits, 100.0, True, 0.1)
    torch.manual_seed(0)
    cold = block_gate_sample(logits, 0.1, True, 0.1)
    assert (hot - 0.5).abs().max() < 0.05  # the noise (logistic, scale 1) divided by tau = 100
    assert ((cold < 0.01) | (cold > 0.99)).float().mean() > 0.5 and ((cold > 0) & (cold < 1)).any()


def test_the_patch_bias_is_log_pi_on_patch_keys_and_zero_on_prefix_keys():
    """(1, 1, 1, prefix + P): one bias per key, broadcast over batch, heads and queries."""
    logits = torch.tensor([4.0, 0.0, -2.0])
    bias = patch_attn_bias(logits, 2)
    assert bias.shape == (1, 1, 1, 5)
    assert torch.allclose(bias.flatten(), torch.cat([torch.zeros(2), torch.sigmoid(logits).log()]))


def test_a_flipped_gate_is_settled_half_a_hysteresis_each_side_of_its_midpoint():
    """keep and skip move apart about their mean (kept) to HYSTERESIS apart; a gate that did not flip,
    or that is already further past, is left as it is."""
    before = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    logits = torch.tensor([[0.3, 0.1], [0.1, 0.5], [3.0, 0.0], [0.2, 0.6], [0.5, 0.5]])
    flipped = settle_flips(logits, before)
    assert flipped.tolist() == [True, True, True, False, False]
    expected = torch.tensor([[0.7, -0.3], [-0.2, 0.8], [3.0, 0.0], [0.2, 0.6], [0.5, 0.5]])  # a tie is kept
    assert torch.allclose(logits, expected, atol=1e-6)


def test_a_flipped_patch_is_set_hysteresis_past_the_boundary():
    """Patches: a drop goes to -HYSTERESIS, a re-opening (landing at 0 or above) to +HYSTERESIS; a patch
    that moved without crossing (0 counts as kept) is left as it is."""
    before = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0, 0.5])
    logits = torch.tensor([-0.2, 0.0, 0.0, 0.5, 0.5, -3.0])
    assert settle_flips(logits, before).tolist() == [True, False, True, True, False, True]
    assert logits.tolist() == [-HYSTERESIS, 0.0, HYSTERESIS, HYSTERESIS, 0.5, -HYSTERESIS]


def _flips(before, after, protected=(0, 0, 0), floor=True):
    arch = SimpleNamespace(gate_logits=torch.tensor(after))
    limit_gate_flips(arch, torch.tensor(before), torch.tensor(protected, dtype=torch.float), lambda: floor)
    logits = arch.gate_logits
    return (logits[:, 1] >= logits[:, 0]).tolist()


def test_an_update_keeps_a_reopened_block_before_any_skip():
    """Block 0 re-opens and block 1 skips in the same update: the re-opening stands, the skip is undone."""
    kept = _flips([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [[0.0, 0.5], [2.0, 0.0], [0.0, 1.0]])
    assert kept == [True, True, True]
    # alone, the same skip stands (and is settled), unless the floor refuses it or the block is protected
    assert _flips([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]) == [False, False, True]
    assert _flips([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], floor=False) == \
        [False, True, True]
    assert _flips([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], (0, 1, 0)) == \
        [False, True, True]


def test_a_tie_counts_as_kept_before_and_after_an_update():
    """keep >= skip is kept: a gate moved onto the tie did not flip, nor did one moved off it upwards."""
    after = torch.tensor([[0.5, 0.5], [0.5, 0.6], [0.0, 1.0]])
    for floor in (True, False):  # a refusing floor would put back a block taken for a skip
        arch = SimpleNamespace(gate_logits=after.clone())
        limit_gate_flips(arch, torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.0, 1.0]]), torch.zeros(3), lambda: floor)
        assert torch.equal(arch.gate_logits, after)  # nothing flipped: nothing settled or restored


def test_a_patch_at_zero_after_the_update_is_not_a_drop():
    before, logits = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])
    limit_patch_drops(logits, before, lambda: False)  # a refusal would set a drop back to REFUSED
    assert logits.tolist() == [0.0, 1.0] and REFUSED > 1.0


def test_the_skip_trial_is_asked_only_for_a_skip_the_floor_allows():
    """A skip the floor refuses is put back as it was, untried; one it allows faces the trial, and a
    refused skip goes back to keep - skip = REFUSED about its midpoint; a re-opening is never tried."""
    before, after = [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]
    for floor, verdict in ((False, True), (True, False), (True, True)):
        asked = []
        arch = SimpleNamespace(gate_logits=torch.tensor(after))
        limit_gate_flips(arch, torch.tensor(before), torch.zeros(3), lambda: floor,
                         lambda: asked.append(1) or verdict)
        assert asked == ([1] if floor else [])
        skip, keep = arch.gate_logits[1].tolist()
        if not floor:
            assert (skip, keep) == (0.0, 1.0)
        elif not verdict:
            assert (keep - skip, (keep + skip) / 2) == (pytest.approx(REFUSED), pytest.approx(0.5))
        else:
            assert skip - keep >= HYSTERESIS
    asked = []
    arch = SimpleNamespace(gate_logits=torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]))
    limit_gate_flips(arch, torch.tensor(before), torch.zeros(3), lambda: True, lambda: asked.append(1) or False)
    assert asked == [] and arch.gate_logits[0, 1] > arch.gate_logits[0, 0]  # block 0 re-opened, untried


def test_a_refused_skip_far_on_the_keep_side_keeps_its_logits():
    """REFUSED is a floor on keep - skip: a gate that started further on the keep side (6 here) and
    was pushed past the boundary in one update goes back to where it was."""
    arch = SimpleNamespace(gate_logits=torch.tensor([[3.0, -3.0], [0.0, 1.0]]))
    limit_gate_flips(arch, torch.tensor([[-3.0, 3.0], [0.0, 1.0]]), torch.zeros(2), lambda: True, lambda: False)
    assert arch.gate_logits[0].tolist() == [-3.0, 3.0]
