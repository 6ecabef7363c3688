"""Export: the compact model reproduces the masked model (docs/method.md section 7)."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.models.deit import VisionTransformerDistilled

from models import create_model, model_kwargs_of, set_fused_attn, vit_structure
from models.compact import CompactViT, load_compact, save_compact
from uvc.deploy.export import compact_macs, compact_spec_from_arch, export_compact, masked_forward_reference, spec_dims
from uvc.export import main
from uvc.cost.flops import ViTDims, arch_macs

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-4


# ----------------------------------------------------------------------------- helpers

def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """timm initialises biases to 0 and norms to identity: add noise so every weight matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def digits_model(name: str = "vit_digits_patch2_8", seed: int = 0):
    torch.manual_seed(seed)
    return perturbed(create_model(name), seed), name


def distilled_model(seed: int = 0):
    torch.manual_seed(seed)
    model = VisionTransformerDistilled(img_size=16, patch_size=4, embed_dim=48, depth=3, num_heads=3, num_classes=10)
    return perturbed(model, seed), "deit_test_distilled_patch4_16"


def dense_arch(model, model_type: str) -> dict:
    """The arch spec that removes nothing."""
    attn = model.blocks[0].attn
    d, heads, hidden = attn.head_dim, attn.num_heads, model.blocks[0].mlp.fc1.out_features
    patch = model.patch_embed.patch_size[0]
    return {
        "model_type": model_type, "img_size": model.patch_embed.img_size[0], "patch_size": patch,
        "in_chans": model.patch_embed.proj.in_channels, "num_classes": model.num_classes,
        "embed_dim": model.embed_dim, "num_heads": heads, "head_dim": d, "mlp_hidden": hidden,
        "depth": len(model.blocks), "num_prefix_tokens": model.num_prefix_tokens,
        "distilled": model.num_prefix_tokens == 2, "qkv_bias": attn.qkv.bias is not None,
        "blocks": [{"skipped": False, "heads": list(range(heads)), "value_dims": [list(range(d))] * heads,
                    "neurons": list(range(hidden))} for _ in model.blocks],
        "patches_kept": list(range(model.patch_embed.num_patches)),
        **vit_structure(model), "model_kwargs": model_kwargs_of(model),
    }


def _subset(rng: random.Random, n: int, k: int) -> list:
    return sorted(rng.sample(range(n), k))


def random_arch(model, model_type: str, seed: int, skipped=(), one_head=(), patches_kept: float = 1.0) -> dict:
    """A random arch: each block keeps a random subset of heads, of dims per kept
    head and of neurons; blocks in `skipped` are skipped, blocks in `one_head`
    keep a single head; a `patches_kept` fraction of patch positions stays."""
    rng = random.Random(seed)
    arch = dense_arch(model, model_type)
    H, d, M, P = arch["num_heads"], arch["head_dim"], arch["mlp_hidden"], len(arch["patches_kept"])
    for index, block in enumerate(arch["blocks"]):
        heads = _subset(rng, H, 1 if index in one_head else rng.randint(1, H))
        block.update(skipped=index in skipped, heads=heads,
                     value_dims=[_subset(rng, d, rng.randint(1, d)) for _ in heads],
                     neurons=_subset(rng, M, rng.randint(1, M)))
    arch["patches_kept"] = _subset(rng, P, max(1, round(P * patches_kept)))
    return arch


def images(arch: dict, batch: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, arch["in_chans"], arch["img_size"], arch["img_size"], generator=gen)


def assert_export_matches(model, arch) -> CompactViT:
    compact = export_compact(model, arch).eval()
    x = images(arch)
    with torch.no_grad():
        out, ref = compact(x), masked_forward_reference(model, arch, x)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=ATOL), (out - ref).abs().max()
    return compact


# ----------------------------------------------------------------------------- equivalence

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_arch_matches_masked_model(seed):
    model, name = digits_model(seed=seed)
    arch = random_arch(model, name, seed, skipped={2, 5}, one_head={0, 3}, patches_kept=0.6)
    uneven = [b for b in arch["blocks"] if len({len(v) for v in b["value_dims"]}) > 1]
    assert uneven, "the test arch should have a block whose heads keep different dims"
    compact = assert_export_matches(model, arch)
    assert len(compact.blocks) == len(model.blocks) - 2
    assert compact.blocks[0].attn.num_heads == 1
    assert compact.pos_embed.shape[1] == 1 + len(arch["patches_kept"])


def test_uneven_value_dims_are_zero_padded():
    model, name = digits_model()
    arch = dense_arch(model, name)
    arch["blocks"][1].update(heads=[0, 2, 3], value_dims=[[1], [0, 5, 9, 15], [3, 4]])
    compact = assert_export_matches(model, arch)
    attn = compact.blocks[1].attn
    d = arch["head_dim"]
    assert (attn.num_heads, attn.value_dim) == (3, 4)
    assert attn.qkv.weight.shape == (3 * (2 * d + 4), arch["embed_dim"])
    assert attn.proj.weight.shape == (arch["embed_dim"], 3 * 4)
    assert (attn.proj.weight[:, 1:4] == 0).all()  # head 0 keeps 1 of 4 padded dims


def test_all_blocks_but_one_skipped():
    model, name = digits_model(seed=3)
    arch = random_arch(model, name, 3, skipped=set(range(len(model.blocks))) - {4})
    compact = assert_export_matches(model, arch)
    assert [b["source_block"] for b in compact.spec["blocks"]] == [4]


def test_block_without_heads_keeps_its_mlp():
    model, name = digits_model(seed=4)
    arch = random_arch(model, name, 4)
    arch["blocks"][1].update(heads=[], value_dims=[])
    compact = assert_export_matches(model, arch)
    assert compact.blocks[1].attn.num_heads == 0


def test_distilled_variant():
    model, name = distilled_model()
    arch = random_arch(model, name, 5, skipped={1}, one_head={0}, patches_kept=0.5)
    compact = assert_export_matches(model, arch)
    assert compact.pos_embed.shape[1] == 2 + len(arch["patches_kept"])
    compact.train().set_distilled_training(True)
    logits, logits_dist = compact(images(arch))
    assert logits.shape == logits_dist.shape == (4, 10)


@pytest.mark.parametrize("build", [digits_model, distilled_model])
def test_full_arch_equals_original_model(build):
    model, name = build()
    arch = dense_arch(model, name)
    compact = export_compact(model, arch).eval()
    x = images(arch)
    with torch.no_grad():
        assert torch.allclose(compact(x), model(x), atol=ATOL)
    assert sum(p.numel() for p in compact.parameters()) == sum(p.numel() for p in model.parameters())


def test_arch_format_matches_the_search_code():
    from uvc.deploy.freeze import base_spec

    for model, name in (digits_model(), distilled_model()):
        assert base_spec(model, name) == dense_arch(model, name)


def test_fused_and_explicit_attention_agree():
    model, name = digits_model(seed=6)
    arch = random_arch(model, name, 6, skipped={1}, patches_kept=0.75)
    compact = export_compact(model, arch).eval()
    x = images(arch)
    with torch.no_grad():
        fused = compact(x)
        set_fused_attn(compact, False)
        explicit = compact(x)
    assert torch.allclose(fused, explicit, atol=1e-5)


# ----------------------------------------------------------------------------- MACs

def test_compact_macs_agree_with_arch_formula_and_fvcore():
    from fvcore.nn import FlopCountAnalysis

    model, name = digits_model(seed=7)
    arch = random_arch(model, name, 7, skipped={3}, patches_kept=0.5)
    compact = export_compact(model, arch).eval()
    spec = compact.spec
    assert spec_dims(spec) == ViTDims.of(model)
    assert compact_macs(spec) == pytest.approx(arch_macs(ViTDims.of(model), arch, pad_value_dims=True))
    set_fused_attn(compact, False)
    counter = FlopCountAnalysis(compact, images(arch, batch=1))
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = counter.by_operator()
    # fvcore also counts the LayerNorms (~3% at this tiny width, 0.4% on DeiT); the rest is exact
    assert by_op["linear"] + by_op["matmul"] == compact_macs(spec)
    assert counter.total() == pytest.approx(compact_macs(spec), rel=0.05)


# ----------------------------------------------------------------------------- files

def test_save_and_load_in_fresh_process(tmp_path):
    model, name = digits_model(seed=8)
    arch = random_arch(model, name, 8, skipped={0}, one_head={2}, patches_kept=0.5)
    compact = export_compact(model, arch).eval()
    path, inputs = tmp_path / "compact.pth", tmp_path / "x.pt"
    save_compact(compact, str(path))
    assert not (tmp_path / "compact.pth.tmp").exists()
    x = images(arch)
    torch.save(x, inputs)
    code = ("import json, sys, torch\n"
            "from models.compact import load_compact\n"
            "model = load_compact(sys.argv[1]).eval()\n"
            "assert not any(m == 'uvc' or m.startswith('uvc.') for m in sys.modules), 'search code imported'\n"
            "with torch.no_grad():\n"
            "    print(json.dumps(model(torch.load(sys.argv[2])).tolist()))\n")
    run = subprocess.run([sys.executable, "-c", code, str(path), str(inputs)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    logits = torch.tensor(json.loads(run.stdout))
    with torch.no_grad():
        assert torch.allclose(logits, masked_forward_reference(model, arch, x), atol=ATOL)


def test_load_compact_rejects_other_files(tmp_path):
    model, _ = digits_model()
    dense = tmp_path / "dense.pth"
    torch.save({"model": model.state_dict()}, dense)
    stage1 = tmp_path / "stage1.pth"
    torch.save({"format": "uvc-stage1-v1", "model": {}}, stage1)
    junk = tmp_path / "junk.txt"
    junk.write_text("not a checkpoint\n")
    for path, expected in ((dense, "plain (dense) model checkpoint"), (stage1, "python -m uvc.export"),
                           (junk, "not a weights-only torch file")):
        with pytest.raises(ValueError) as info:
            load_compact(str(path))
        message = str(info.value)
        assert "\n" not in message and expected in message and "save_compact" in message


def test_cli_exports_a_stage1_file(tmp_path):
    torch.manual_seed(9)
    model, name = perturbed(create_model("vit_digits_tiny_patch2_8"), 9), "vit_digits_tiny_patch2_8"
    arch = random_arch(model, name, 9, skipped={2}, one_head={0}, patches_kept=0.5)
    checkpoint, output = tmp_path / "stage1.pth", tmp_path / "newdir" / "compact.pth"  # a folder not made yet
    torch.save({"format": "uvc-stage1-v1", "model_type": name, "arch": arch,
                "model": model.state_dict(), "config": {"budget": 0.5}}, checkpoint)
    run = subprocess.run([sys.executable, "-m", "uvc.export", "--checkpoint", str(checkpoint),
                          "--output", str(output)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.strip().splitlines()) == 1 and "MACs" in run.stdout and "params" in run.stdout
    compact = load_compact(str(output)).eval()
    assert compact.spec == compact_spec_from_arch(arch)
    x = images(arch)
    with torch.no_grad():
        assert torch.allclose(compact(x), masked_forward_reference(model, arch, x), atol=ATOL)


def test_cli_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"format": "uvc-compact-v1", "spec": {}, "state_dict": {}}, bad)
    assert main(["--checkpoint", str(bad), "--output", str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "uvc-compact-v1" in err
    assert main(["--checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "out.pth")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out.pth").exists()
