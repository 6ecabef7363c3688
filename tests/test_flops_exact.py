"""The MACs formula (docs/method.md section 3) at its edges: its defaults, the attention switch at
every level, and exact integers at DeiT-Base scale (17.6 GMACs, past float32's exact range)."""
import torch

from models import create_model
from uvc.cost.flops import ViTDims, arch_macs, block_macs, dense_macs, head_macs, patch_embed_macs, vit_macs
from uvc.deploy.freeze import base_spec

MODEL = "deit_base_patch16_224"


def exact_block(n, dim, heads, head_dim, values, hidden, attn=True) -> int:
    """One block's MACs in Python integers, term by term."""
    return (n * dim * (2 * heads * head_dim + values) + n * values * dim + 2 * n * dim * hidden
            + (n * n * (heads * head_dim + values) if attn else 0))


def base():
    with torch.device("meta"):
        vit = create_model(MODEL)
    return vit, ViTDims.of(vit)


def exact_model(dims: ViTDims, blocks, patches: int, attn: bool) -> int:
    """blocks: (heads, value dims, neurons) of each kept block."""
    n = patches + dims.num_prefix_tokens
    return (sum(exact_block(n, dims.embed_dim, h, dims.head_dim, v, m, attn) for h, v, m in blocks)
            + patch_embed_macs(patches, dims) + head_macs(dims))


def test_block_macs_counts_attention_unless_told_not_to():
    args = (197, 768, 12, 64, 700, 3072)
    assert block_macs(*args) == exact_block(*args)
    assert block_macs(*args, with_attn=False) == exact_block(*args, attn=False)


def test_dense_and_vit_macs_are_exact_at_deit_base_scale_with_and_without_attention():
    _, dims = base()
    full = [(dims.num_heads, dims.num_heads * dims.head_dim, dims.mlp_hidden)] * dims.depth
    for attn in (True, False):
        assert dense_macs(dims, with_attn=attn) == exact_model(dims, full, dims.num_patches, attn)
    assert dense_macs(dims) == exact_model(dims, full, dims.num_patches, True)
    ones = torch.ones(dims.depth, dtype=torch.float64)
    assert vit_macs(dims, ones * 12, ones * 768, ones * 3072, ones, 196, with_attn=False) == \
        exact_model(dims, full, 196, False)


def test_arch_macs_counts_kept_dims_unpadded_by_default_and_padded_on_request():
    """Heads of one block keep different value dims: by default V' is their sum; padded, H' x the widest."""
    vit, dims = base()
    spec = base_spec(vit, MODEL)
    spec["blocks"][0]["value_dims"] = [list(range(64 - 3 * h)) for h in range(12)]  # 64, 61, ..., 31 dims
    spec["blocks"][1]["skipped"] = True
    spec["blocks"][2]["neurons"] = list(range(1000))
    spec["patches_kept"] = spec["patches_kept"][:150]
    kept = [(12, sum(64 - 3 * h for h in range(12)), 3072), (12, 768, 1000)] + [(12, 768, 3072)] * 9
    padded = [(12, 12 * 64, 3072)] + kept[1:]
    for attn in (True, False):
        assert arch_macs(dims, spec, with_attn=attn) == exact_model(dims, kept, 150, attn)
        assert arch_macs(dims, spec, pad_value_dims=True, with_attn=attn) == exact_model(dims, padded, 150, attn)
    assert arch_macs(dims, spec) == exact_model(dims, kept, 150, True)
