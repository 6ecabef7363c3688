"""python -m uvc.import_reference: checkpoints in the reference implementation's two layouts (built
here from a small DeiT with the reference's key names) become stage-1 files that export and fine-tune."""
import argparse
import random

import pytest
import torch

import post_train
from models import create_model
from models.compact import load_compact
from uvc import export
from uvc.deploy.freeze import base_spec
from uvc.import_reference import convert, main
from uvc.search.masks import group_scores, stacked_weights

MODEL = "deit_tiny_patch16_224"
SHAPE = dict(num_classes=10, embed_dim=32, depth=3, num_heads=2, img_size=32, patch_size=8)  # 16 patches


def reference_file(seed: int = 0, drop_patches: bool = True):
    """(state dict in the reference's layout, expected arch): a mask buffer beside every weight,
    removed heads / value dims as zero attn.proj columns, removed neurons as zero fc2 columns and
    fc1 rows, block 1 gated off, part gates and the patch-mode-2 scorer at their initial values."""
    torch.manual_seed(seed)
    vit = create_model(MODEL, **SHAPE).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    sd = dict(vit.state_dict())
    for name, module in vit.named_modules():
        if hasattr(module, "weight") and isinstance(module.weight, torch.Tensor):
            sd[f"{name}.mask"] = torch.ones_like(module.weight)
    rng = random.Random(seed)
    arch = base_spec(vit, MODEL)
    H, d, M = arch["num_heads"], arch["head_dim"], arch["mlp_hidden"]
    for l, block in enumerate(arch["blocks"]):
        heads = [rng.randrange(H)] if l == 0 else list(range(H))
        dims = [sorted(rng.sample(range(d), rng.randint(1, d))) for _ in heads]
        neurons = sorted(rng.sample(range(M), rng.randint(1, M)))
        block.update(heads=heads, value_dims=dims, neurons=neurons, skipped=l == 1)
        proj = torch.zeros(H * d)
        for h, kept in zip(heads, dims):
            proj[[h * d + j for j in kept]] = 1
        sd[f"blocks.{l}.attn.proj.mask"] = proj.expand(SHAPE["embed_dim"], -1).clone()
        keep = torch.zeros(M)
        keep[neurons] = 1
        sd[f"blocks.{l}.mlp.fc2.mask"] = keep.expand(SHAPE["embed_dim"], -1).clone()
        sd[f"blocks.{l}.mlp.fc1.mask"] = keep[:, None].expand(-1, SHAPE["embed_dim"]).clone()
        sd[f"blocks.{l}.attn_skip_gating"] = torch.tensor([-1.0, 1.0])
        sd[f"blocks.{l}.mlp_skip_gating"] = torch.tensor([-1.0, 1.0])
    sd["block_skip_gating"] = torch.tensor([[-1.0, 1.0], [0.3, -0.2], [-1.0, 1.0]])
    logits = torch.full((1, 16, 1), 3.0)
    if drop_patches:
        logits[0, [0, 5, 6, 9], 0] = -2.0  # patch 0 stays: the reference never drops it
        arch["patches_kept"] = [i for i in range(16) if i not in (5, 6, 9)]
    sd["patch_gating"] = logits
    sd["gumbel.weight"], sd["gumbel.bias"], sd["gumbel.mask"] = torch.randn(1, 32), torch.zeros(1), torch.ones(1, 32)
    return sd, arch


def reference_logits(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The reference's stage-2 model with every patch kept, written independently: weights times
    masks, blocks with block_skip_gating[l, 1] <= [l, 0] skipped."""
    vit = create_model(MODEL, **SHAPE).eval()
    vit.load_state_dict({k: v * sd[k[:-6] + "mask"] if k.endswith("weight") and k[:-6] + "mask" in sd else v
                         for k, v in sd.items() if k in vit.state_dict()})
    g = sd["block_skip_gating"]
    with torch.no_grad():
        h = vit._pos_embed(vit.patch_embed(x))
        for l, blk in enumerate(vit.blocks):
            if g[l, 1] > g[l, 0]:
                h = blk(h)
        return vit.forward_head(vit.norm(h))


def same_arch(found: dict, expected: dict) -> bool:
    keys = ("skipped", "heads", "value_dims", "neurons")
    return [{k: b[k] for k in keys} for b in found["blocks"]] == [{k: b[k] for k in keys}
                                                                  for b in expected["blocks"]] \
        and found["patches_kept"] == expected["patches_kept"]


def test_plain_state_dict_layout_converts_and_exports(tmp_path, capsys):
    sd, expected = reference_file(drop_patches=False)
    source, out, compact = tmp_path / f"{MODEL}_3.pth.tar", tmp_path / "imported.pth", tmp_path / "compact.pth"
    torch.save(sd, source)
    assert main([str(source), str(out), "--model_type", MODEL, "--num_heads", "2"]) == 0
    assert "2/3 blocks" in capsys.readouterr().out
    record = torch.load(out, weights_only=True)
    assert record["format"] == "uvc-stage1-v1" and same_arch(record["arch"], expected)
    assert export.main(["--checkpoint", str(out), "--output", str(compact)]) == 0
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load_compact(str(compact)).eval()(x), reference_logits(sd, x), atol=1e-5)


def test_dict_layout_with_args_and_dropped_patches_fine_tunes(tmp_path):
    sd, expected = reference_file(seed=1)
    args = argparse.Namespace(model_type=MODEL, num_heads=2, budget=0.5, model_path="", enable_patch_gating=1)
    source, out = tmp_path / "stage1.pth.tar", tmp_path / "imported.pth"
    torch.save({"args": args, "model": sd, "s": torch.zeros(3, 2), "r": torch.zeros(3, 2)}, source)
    assert main([str(source), str(out)]) == 0  # the model type and heads come from args
    record = torch.load(out, weights_only=True)
    assert same_arch(record["arch"], expected) and record["config"]["budget"] == 0.5
    post_train.main(["--model_type", MODEL, "--checkpoint_dir", str(out), "--dataset", "synthetic",
                     "--synthetic_size", "16", "--epochs", "1", "--max_steps_per_epoch", "1", "--train_batch_size", "4",
                     "--eval_batch_size", "4", "--num_workers", "0", "--distillation-type", "none", "--mixup", "0",
                     "--cutmix", "0", "--output_dir", str(tmp_path / "s2")])
    compact = load_compact(str(tmp_path / "s2" / "compact.pth"))
    assert compact.patch_index.tolist() == expected["patches_kept"] and len(compact.blocks) == 2


def test_counts_from_s_and_r_when_the_file_has_no_masks(tmp_path):
    sd, _ = reference_file(seed=2)
    sd = {k: v for k, v in sd.items() if not k.endswith(".mask")}
    s, r = torch.tensor([[0.4, 30.2], [0.0, 0.0], [1.0, 100.0]]), torch.tensor([[3.5, 0.0], [0.0, 0.0], [2.0, 5.0]])
    source = tmp_path / "sr.pth.tar"
    torch.save({"args": argparse.Namespace(model_type=MODEL, num_heads=2), "model": sd, "s": s, "r": r}, source)
    record, vit = convert(str(source))
    blocks = record["arch"]["blocks"]
    scores = group_scores(*stacked_weights(vit), 2)
    assert [len(b["heads"]) for b in blocks] == [1, 2, 1]  # ceil(s[:, 0]) heads removed
    assert [len(b["neurons"]) for b in blocks] == [128 - 31, 128, 128 - 100]
    assert blocks[0]["heads"] == [int(scores.heads[0].argmax())]  # the lowest-score head went
    kept = blocks[2]["heads"][0]
    assert len(blocks[2]["value_dims"][0]) == 16 - int(r[2, kept].ceil())  # ceil(r) dims removed per head


@pytest.mark.parametrize("change, expected", [
    (lambda sd: {k: v for k, v in sd.items() if not k.endswith(".mask") and "gating" not in k},
     "not a checkpoint of VITA-Group/UVC"),
    (lambda sd: dict(sd, **{"blocks.0.mlp_skip_gating": torch.tensor([0.5, 0.1])}), "--enable_part_gating 1"),
    (lambda sd: {k: v for k, v in sd.items() if k != "blocks.2.norm1.weight"}, "do not fit"),
])
def test_bad_files_are_refused_in_one_line(tmp_path, capsys, change, expected):
    sd, _ = reference_file()
    source = tmp_path / "bad.pth.tar"
    torch.save(change(sd), source)
    assert main([str(source), str(tmp_path / "out.pth"), "--model_type", MODEL, "--num_heads", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out.pth").exists()


def test_a_file_of_another_width_than_the_model_type_is_refused(tmp_path, capsys):
    """The reference saves no args: a 32-wide file under --model_type deit_tiny_patch16_224 (192 wide, 3
    heads) would build 3 heads of an invented size; without --num_heads it is refused in one line."""
    sd, _ = reference_file()
    source = tmp_path / "other_width.pth.tar"
    torch.save(sd, source)
    assert main([str(source), str(tmp_path / "out.pth"), "--model_type", MODEL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the file's weights are 32 wide but --model_type deit_tiny_patch16_224 is 192" in err[0]
    assert not (tmp_path / "out.pth").exists()
