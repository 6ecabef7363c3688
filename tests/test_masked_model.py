"""MaskedViT: hooks, patch-gate bias and block gates against physically edited timm models."""
import copy

import pytest
import torch
from helpers import noisy_tiny_vit

from configs.digits_demo import get_config
from models import create_model, set_fused_attn
from uvc.search.gates import patch_attn_bias
from uvc.search.masked_model import MaskedViT
from uvc.search.masks import compute_masks, group_scores, stacked_weights
from uvc.search import UVCSearch

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(seed: int = 0):
    return noisy_tiny_vit(seed, scale=0.1).eval()


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def reference_forward(vit, x, kept_patches=None, gates=None):
    """timm's forward_features + forward_head, with patches physically dropped from the
    sequence (with their pos_embed) and block l computed as x + g (block(x) - x)."""
    x = vit._pos_embed(vit.patch_embed(x))  # (B, 1 + P, D)
    if kept_patches is not None:
        x = torch.cat([x[:, :1], x[:, 1:][:, kept_patches]], dim=1)
    for l, blk in enumerate(vit.blocks):
        g = 1.0 if gates is None else float(gates[l])
        if g == 0.0:
            continue  # the block is not even computed
        x = blk(x) if g == 1.0 else x + g * (blk(x) - x)
    return vit.forward_head(vit.norm(x))


def example_masks(vit):
    """Masks with a removed head, removed dims and removed neurons in varying blocks."""
    scores = group_scores(*stacked_weights(vit), vit.blocks[0].attn.num_heads)
    k_heads = torch.tensor([1, 0, 1, 0])
    k_dims = torch.tensor([[3, 5], [0, 15], [2, 2], [7, 0]])
    k_neurons = torch.tensor([10, 127, 0, 64])
    return compute_masks(scores, k_heads, k_dims, k_neurons)


@torch.no_grad()
def physically_zeroed(vit, masks):
    """A copy of `vit` whose removed q/k/v rows, proj columns, fc1 rows (+ bias) and fc2 columns are 0."""
    ref = copy.deepcopy(vit)
    H, d = masks.dims.shape[1:]
    for l, blk in enumerate(ref.blocks):
        qk = masks.heads[l].repeat_interleave(d)  # (H*d,) whole heads only
        v = masks.dims[l].flatten()  # heads and dims
        rows = torch.cat([qk, qk, v])
        blk.attn.qkv.weight.mul_(rows.unsqueeze(1))
        blk.attn.qkv.bias.mul_(rows)
        blk.attn.proj.weight.mul_(v.unsqueeze(0))
        blk.mlp.fc1.weight.mul_(masks.neurons[l].unsqueeze(1))
        blk.mlp.fc1.bias.mul_(masks.neurons[l])
        blk.mlp.fc2.weight.mul_(masks.neurons[l].unsqueeze(0))
    return ref


@pytest.mark.parametrize("fused", [True, False])
def test_hooks_equal_physically_zeroed_weights(fused):
    """Masks applied by the proj / fc2 pre-hooks give the logits of the model with the groups zeroed."""
    vit = tiny_vit()
    masks = example_masks(vit)
    assert masks.heads.sum() == 6 and masks.neurons.sum() < 4 * 128  # something is removed
    ref = physically_zeroed(vit, masks)
    set_fused_attn(vit, fused)
    set_fused_attn(ref, fused)
    plain = copy.deepcopy(vit)  # the hooks live on vit itself: keep an unhooked copy
    model = MaskedViT(vit)
    x = images()
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=ATOL)  # no masks: the plain model
        model.set_masks(masks)
        out = model(x)
        assert torch.allclose(out, ref(x), atol=ATOL)
        assert not torch.allclose(out, plain(x), atol=1e-3)  # and the masks do change the output
        model.set_masks(None)
        assert torch.allclose(model(x), plain(x), atol=ATOL)
    # the state dict keeps timm's keys
    assert set(model.vit.state_dict()) == set(create_model("vit_digits_tiny_patch2_8").state_dict())


@pytest.mark.parametrize("fused", [True, False])
def test_patch_bias_equals_dropping_tokens(fused):
    """pi ~ 0 (logit -30) equals removing those tokens and their pos_embed; pi ~ 1 is the plain model."""
    vit = tiny_vit()
    set_fused_attn(vit, fused)
    model = MaskedViT(vit)
    x = images()
    dropped = torch.tensor([0, 3, 4, 9, 10, 15])
    kept = torch.tensor([i for i in range(16) if i not in dropped.tolist()])
    logits = torch.full((16,), 40.0)
    with torch.no_grad():
        model.set_patches(bias=patch_attn_bias(logits, vit.num_prefix_tokens))
        assert torch.allclose(model(x), vit(x), atol=ATOL)
        logits[dropped] = -30.0
        model.set_patches(bias=patch_attn_bias(logits, vit.num_prefix_tokens))
        out = model(x)
        assert torch.allclose(out, reference_forward(vit, x, kept_patches=kept), atol=ATOL)
        assert not torch.allclose(out, vit(x), atol=1e-3)
        model.set_patches(index=kept)  # the frozen model drops them physically
        assert torch.allclose(model(x), out, atol=ATOL)


def test_patch_logits_receive_gradients():
    """The loss gradient reaches every patch logit, on the fused and the plain attention path alike."""
    vit = tiny_vit()
    model = MaskedViT(vit)
    x = images()
    grads = []
    for fused in (True, False):
        set_fused_attn(vit, fused)
        logits = torch.randn(16, generator=torch.Generator().manual_seed(2)).requires_grad_()
        model.set_patches(bias=patch_attn_bias(logits, vit.num_prefix_tokens))
        model(x).logsumexp(-1).sum().backward()
        assert torch.isfinite(logits.grad).all() and (logits.grad != 0).all()
        grads.append(logits.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_block_gates_zero_is_identity_and_soft_gates_mix():
    """Gate 0 makes a block the identity; gate g gives x + g (block(x) - x); gates 1 are the plain model."""
    vit = tiny_vit()
    model = MaskedViT(vit)
    x = images()
    with torch.no_grad():
        model.set_block_gates(torch.ones(4))
        assert torch.allclose(model(x), vit(x), atol=ATOL)
        gates = torch.tensor([1.0, 0.0, 1.0, 1.0])
        model.set_block_gates(gates)
        out = model(x)
        assert torch.allclose(out, reference_forward(vit, x, gates=gates), atol=ATOL)
        model.set_block_gates(None, skipped=[1])  # the frozen form: block 1 not computed
        assert torch.allclose(model(x), out, atol=ATOL)
        gates = torch.tensor([0.3, 1.0, 0.7, 0.0])
        model.set_block_gates(gates)
        assert torch.allclose(model(x), reference_forward(vit, x, gates=gates), atol=ATOL)
        assert not torch.allclose(model(x), vit(x), atol=1e-3)


def test_evaluation_uses_the_argmax_gates_without_noise():
    """Evaluation is deterministic (two passes agree) and skips exactly the blocks whose argmax is 'skip';
    training samples Gumbel noise (two samples differ)."""
    vit = tiny_vit()
    model = MaskedViT(vit)
    config = get_config("joint")
    config.enable_warmup = False
    config.enable_pruning = False
    search = UVCSearch(vit, config, torch.device("cpu"), search_steps=100)
    with torch.no_grad():
        search.arch.gate_logits[2] = torch.tensor([0.5, 0.2])  # skip wins, but only slightly
        search.arch.patch_logits[[1, 2]] = -1.0  # two patches dropped at the argmax
    x = images()
    with torch.no_grad():
        search.prepare(model, training=False)
        first = model(x)
        search.prepare(model, training=False)
        assert torch.equal(model(x), first)
        kept = torch.tensor([i for i in range(16) if i not in (1, 2)])
        assert torch.allclose(first, reference_forward(vit, x, kept, gates=[1, 1, 0, 1]), atol=ATOL)
        search.prepare(model, training=True)
        sample = model.block_gates.clone()
        search.prepare(model, training=True)
        assert not torch.equal(model.block_gates, sample)
        assert ((sample > 0) & (sample < 1)).all()  # soft gates while searching
