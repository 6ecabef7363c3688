"""scripts/freeze_padding.py: which groups the fit put back, and zeroing exactly those."""
import torch

from tests.helpers import noisy_tiny_vit
from tests.test_benchmarks import load_script

freeze_padding = load_script("freeze_padding")


def _block(skipped, heads, dims, neurons):
    return {"skipped": skipped, "heads": heads, "value_dims": dims, "neurons": neurons}


def test_put_back_lists_widened_dims_restored_neurons_and_revived_blocks():
    searched = {"blocks": [_block(False, [0, 1], [[0, 1], [2]], [0, 1]), _block(True, [0], [[0]], [0, 1]),
                           _block(True, [0], [[0]], [0])]}
    fitted = {"blocks": [_block(False, [0, 1], [[0, 1], [2, 3]], [0, 1, 5]), _block(False, [1], [[4]], [2]),
                         _block(True, [0], [[0]], [0])]}
    assert freeze_padding.put_back(searched, fitted) == [([(1, 3)], [5]), ([(1, 4)], [2]), ([], [])]


def test_zero_groups_zeroes_exactly_the_v_rows_proj_columns_and_neurons():
    vit = noisy_tiny_vit()  # H=2, d=16, D=32
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    freeze_padding.zero_groups(vit, [([(1, 3)], [5])] + [([], [])] * 3)
    after = vit.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight",
                       "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight"}
    row = 2 * 2 * 16 + 16 + 3
    assert after["blocks.0.attn.qkv.weight"][row].abs().sum() == 0 and after["blocks.0.attn.qkv.bias"][row] == 0
    assert after["blocks.0.attn.proj.weight"][:, 19].abs().sum() == 0
    assert after["blocks.0.mlp.fc1.weight"][5].abs().sum() == 0 and after["blocks.0.mlp.fc2.weight"][:, 5].abs().sum() == 0
    kept = after["blocks.0.attn.qkv.weight"].clone()
    kept[row] = before["blocks.0.attn.qkv.weight"][row]
    assert torch.equal(kept, before["blocks.0.attn.qkv.weight"])  # nothing else in qkv
