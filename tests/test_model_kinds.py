"""Any timm VisionTransformer: small random instances of every supported kind go through the
masks, patch gating, freeze, export and the MACs model; unsupported structures stop in one line."""
import json
import random

import pytest
import torch

from models import UnsupportedModelError, create_model, set_fused_attn
from models.compact import load_compact, save_compact
from uvc.deploy.export import compact_macs, export_compact, masked_forward_reference
from uvc.cost.flops import ViTDims, dense_macs
from uvc.deploy.freeze import apply_spec, base_spec
from uvc.search.gates import patch_attn_bias
from uvc.search.masked_model import MaskedViT
from uvc.report import build_report, read_subject
from uvc.deploy.stagefile import stage1_record

SMALL = dict(num_classes=10, embed_dim=32, depth=3, num_heads=2, img_size=32, patch_size=8)  # 16 patches
KINDS = {  # kind -> (timm model type, arguments on top of SMALL)
    "vit": ("vit_tiny_patch16_224", {}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
    "deit3_layerscale": ("deit3_small_patch16_224", {}),  # LayerScale, no pos_embed on the class token
    "registers_avg_pool": ("vit_little_patch16_reg4_gap_256", {}),  # 4 registers, no class token, fc_norm
    "registers_cls_token": ("vit_small_patch14_reg4_dinov2", {}),  # class token + 4 registers, LayerScale
    "no_qkv_bias_qk_norm": ("vit_tiny_patch16_224", dict(qkv_bias=False, qk_norm=True)),
    "clip_pre_norm_quickgelu": ("vit_base_patch32_clip_quickgelu_224", {}),  # pre-norm, no patch bias
    "avg_pool_with_prefix": ("vit_tiny_patch16_224", dict(global_pool="avg", pool_include_prefix=True)),
}


def build(kind: str, seed: int = 0):
    """The kind's small model, every weight perturbed (timm inits biases to 0, LayerScale to 1e-5)."""
    name, extra = KINDS[kind]
    torch.manual_seed(seed)
    vit = create_model(name, **SMALL, **extra).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return vit, name


def random_arch(vit, name: str, seed: int = 0) -> dict:
    """Random heads, value dims (uneven per head) and neurons, block 1 skipped, a block without
    heads, half the patches dropped."""
    rng = random.Random(seed)
    arch = base_spec(vit, name)
    H, d, M, P = arch["num_heads"], arch["head_dim"], arch["mlp_hidden"], len(arch["patches_kept"])
    for index, block in enumerate(arch["blocks"]):
        heads = sorted(rng.sample(range(H), rng.randint(1, H)))
        block.update(skipped=index == 1, heads=heads, neurons=sorted(rng.sample(range(M), rng.randint(1, M))),
                     value_dims=[sorted(rng.sample(range(d), rng.randint(1, d))) for _ in heads])
    arch["blocks"][2].update(heads=[], value_dims=[])
    arch["patches_kept"] = sorted(rng.sample(range(P), P // 2))
    return arch


def modelled_ops(model, x) -> float:
    """fvcore's linear + matmul + conv MACs (what the formula models; it also counts LayerNorm)."""
    from fvcore.nn import FlopCountAnalysis

    set_fused_attn(model, False)
    counter = FlopCountAnalysis(model.eval(), x)
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return sum(v for k, v in counter.by_operator().items() if k in ("linear", "matmul", "conv"))


@pytest.mark.parametrize("kind", KINDS)
def test_compact_equals_masked_and_macs_equal_fvcore(kind, one_thread):
    vit, name = build(kind)
    arch = random_arch(vit, name)
    json.dumps(arch)  # the spec goes into the stage-1 file as plain values
    compact = export_compact(vit, arch).eval()
    masked = MaskedViT(vit).eval()
    apply_spec(masked, arch)
    x = torch.randn(3, arch["in_chans"], arch["img_size"], arch["img_size"])
    with torch.no_grad():
        out, reference, frozen = compact(x), masked_forward_reference(vit, arch, x), masked(x)
    assert torch.allclose(out, reference, atol=1e-5), (out - reference).abs().max()
    assert torch.allclose(out, frozen, atol=1e-5), (out - frozen).abs().max()
    assert compact.num_prefix_tokens == vit.num_prefix_tokens
    assert modelled_ops(compact, x[:1]) == compact_macs(compact.spec)
    assert modelled_ops(vit, x[:1]) == dense_macs(ViTDims.of(vit))


@pytest.mark.parametrize("kind", ["vit", "registers_avg_pool", "avg_pool_with_prefix", "deit_distilled"])
def test_patch_gates_in_search_equal_dropping_the_patches(kind, one_thread):
    """pi -> 0 in the search (attention bias, and pi-weighted average pooling) is the frozen
    model that drops the patch; the patch logits get gradients."""
    vit, name = build(kind)
    arch = random_arch(vit, name)
    P = len(base_spec(vit, name)["patches_kept"])
    logits = torch.full((P,), -40.0)
    logits[arch["patches_kept"]] = 40.0
    logits.requires_grad_(True)
    masked = MaskedViT(vit).eval()
    apply_spec(masked, arch)
    x = torch.randn(2, arch["in_chans"], arch["img_size"], arch["img_size"])
    with torch.no_grad():
        dropped = masked(x)
    masked.set_patches(bias=patch_attn_bias(logits, vit.num_prefix_tokens))
    searched = masked(x)
    assert torch.allclose(searched, dropped, atol=1e-5), (searched - dropped).abs().max()
    with torch.no_grad():
        logits[0] = 0.0  # pi = 1/2: the patch counts half in attention and in the average
    masked.set_patches(bias=patch_attn_bias(logits, vit.num_prefix_tokens))
    masked(x).square().sum().backward()
    assert logits.grad[0].abs() > 0


def test_stage1_file_of_each_kind_reports_and_rebuilds(tmp_path, one_thread):
    """The stage-1 file records what rebuilds the model: the report counts it like fvcore,
    and its compact file loads on its own."""
    for kind in ("registers_avg_pool", "clip_pre_norm_quickgelu"):
        vit, name = build(kind)
        arch = random_arch(vit, name)
        path = tmp_path / f"{kind}.pth"
        torch.save(stage1_record(arch, vit.state_dict(), {"budget": 0.5}, {}), path)
        report = build_report(read_subject(str(path)), with_fvcore=True)
        assert report["fvcore_macs_modelled_ops"] == report["macs"]
        assert report["model_type"] == name and report["blocks_kept"] == 2
        compact = export_compact(vit, arch).eval()
        save_compact(compact, str(tmp_path / "compact.pth"))
        x = torch.randn(2, arch["in_chans"], arch["img_size"], arch["img_size"])
        with torch.no_grad():
            assert torch.equal(load_compact(str(tmp_path / "compact.pth")).eval()(x), compact(x))
        assert read_subject(str(tmp_path / "compact.pth")).dense_spec["num_reg_tokens"] == vit.num_reg_tokens


@pytest.mark.parametrize("model_type, kwargs, expected", [
    ("resnet18", {}, "builds ResNet, not a timm VisionTransformer"),
    ("vit_base_patch16_siglip_224", {}, "global_pool 'map' is not supported"),
    ("vit_giant_patch14_dinov2", {}, "gated MLPs (SwiGLU, GLU) are not supported"),
    ("vit_base_patch16_xp_224", {}, "blocks are ParallelScalingBlock"),
    ("vit_base_patch16_rpn_224", {}, "blocks are ResPostBlock"),
    ("eva02_tiny_patch14_224", {}, "builds Eva, not a timm VisionTransformer"),
    ("vit_tiny_patch16_224", {"dynamic_img_size": True}, "dynamic_img_size"),
    ("beit3_base_patch16_224", {}, "scale_attn_norm"),
    ("vit_tiny_patch16_224", {"proj_bias": False}, "without bias"),
    ("vit_tiny_patch16_224", {"norm_layer": "rmsnorm"}, "only LayerNorm"),
    ("vit_tiny_patch16_224", {"global_pool": "max"}, "global_pool 'max' is not supported"),
    ("vit_tiny_patch16_224", {"num_heads": 5}, "num_heads=5, num_classes=10: dim should be divisible"),
    ("vit_tiny_patch16_224", {"no_such_argument": 1}, "cannot build"),
    ("vit_tiny_patch16_22", {}, "did you mean vit_tiny_patch16_224"),
])
def test_unsupported_structures_stop_in_one_line(model_type, kwargs, expected):
    with pytest.raises(ValueError) as info, torch.device("meta"):  # no memory, no init time
        create_model(model_type, num_classes=10, **kwargs)
    message = str(info.value)
    assert expected in message and "\n" not in message, message
    if "cannot compress" in message:
        assert isinstance(info.value, UnsupportedModelError)


def test_timm_hub_safetensors_and_deit3_release_names_load(tmp_path):
    """timm's Hugging Face files (bare state dict, .safetensors) and DeiT III's release layout
    ({"model": sd} with blocks.N.gamma_1 / gamma_2 for LayerScale) load into the timm model."""
    from safetensors.torch import save_file

    from models import load_pretrained

    vit, name = build("deit3_layerscale")
    state = vit.state_dict()
    save_file(state, str(tmp_path / "model.safetensors"))
    release = {k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"): v for k, v in state.items()}
    assert "blocks.0.gamma_1" in release
    torch.save({"model": release}, tmp_path / "deit3_release.pth")
    for file in ("model.safetensors", "deit3_release.pth"):
        fresh = create_model(name, **SMALL)
        load_pretrained(fresh, str(tmp_path / file))
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items()), file
