"""Stage 2: the frozen architecture's removed weights stay exactly zero through every optimizer step
(AdamW momentum and weight decay included), stage 1 -> stage 2 -> export in-process on digits, and
torch.amp (bfloat16 on CPU) through the whole pipeline."""
import json
import os

import torch
import torch.nn.functional as F

import joint_train
import post_train
from models.compact import load_compact
from models.vit import create_model
from engine.loop import train_one_epoch
from uvc.deploy.export import build_masked_source, masked_forward_reference
from uvc.deploy.stagefile import read_stage_file
from uvc.deploy.fit import fit_to_budget
from uvc.deploy.freeze import base_spec, param_keep_masks
from uvc.search.masked_model import MaskedViT
from uvc.search.masks import group_scores, stacked_weights
from uvc.deploy.frozen import FrozenArchitecture
from utils.amp import make_scaler

TINY = "vit_digits_tiny_patch2_8"
DIGITS = ["--config", "configs/digits_demo.py", "--model_type", TINY, "--max_steps_per_epoch", "3",
          "--train_batch_size", "32"]


class _CE(torch.nn.Module):
    def forward(self, inputs, outputs, targets):
        return F.cross_entropy(outputs, targets)


def removed_values(vit, keep):
    params = dict(vit.named_parameters())
    return torch.cat([params[name].detach()[mask == 0].flatten() for name, mask in keep.items()])


def test_removed_weights_stay_exactly_zero_after_every_step():
    """AdamW (momentum + weight decay) steps, checked after each one."""
    torch.manual_seed(0)
    vit = create_model(TINY, num_classes=10)
    spec, _ = fit_to_budget(base_spec(vit, TINY), group_scores(*stacked_weights(vit), 2), 0.5)
    model = MaskedViT(vit)
    frozen = FrozenArchitecture(model, spec)
    keep = param_keep_masks(vit, spec)
    assert removed_values(vit, keep).numel() > 0
    opt = torch.optim.AdamW(vit.parameters(), lr=1e-2, weight_decay=0.5)
    loader = [(torch.randn(8, 1, 8, 8), torch.randint(10, (8,))) for _ in range(5)]
    seen = []

    def check(step, scalars):
        seen.append(step)
        assert torch.count_nonzero(removed_values(vit, keep)) == 0, f"removed weights moved at step {step}"

    train_one_epoch(model, _CE(), loader, opt, make_scaler(torch.device("cpu"), False), torch.device("cpu"), 0,
                    arch_step=frozen, on_step=check)
    assert seen == [1, 2, 3, 4, 5]
    assert any(s["exp_avg"].abs().sum() > 0 for s in opt.state.values())  # the optimizer did move weights


def test_skipped_blocks_are_frozen_so_ddp_sees_no_unused_parameter():
    """A skipped block gets no gradient in stage 2; DDP refuses such parameters, so they are frozen
    before the optimizer and DDP are built. Kept blocks still train."""
    torch.manual_seed(0)
    vit = create_model(TINY, num_classes=10)
    spec = base_spec(vit, TINY)
    spec["blocks"][1]["skipped"] = True
    FrozenArchitecture(MaskedViT(vit), spec)
    assert not any(p.requires_grad for p in vit.blocks[1].parameters())
    assert all(p.requires_grad for l in (0, 2, 3) for p in vit.blocks[l].parameters())


def test_stage1_stage2_export_with_amp(tmp_path):
    """joint_train -> post_train (--fp16 1: bfloat16 autocast on CPU) -> compact.pth equal to the masked model."""
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    joint_train.main(DIGITS + ["--pretrained", "0", "--distillation-type", "none", "--epochs", "2",
                               "--warmup_epochs", "1", "--budget", "0.5", "--fp16", "1", "--greedy_fit", "1",
                               "--output_dir", str(s1)])
    stage1 = s1 / f"{TINY}_uvc.pth"
    record = torch.load(stage1, map_location="cpu", weights_only=True)
    assert 0.5 - 0.01 - 1e-9 <= record["fit"]["macs_ratio"] <= 0.5 + 1e-9  # README: [B - 0.01, B] at round_to 1
    post_train.main(DIGITS + ["--checkpoint_dir", str(stage1), "--distillation-type", "none", "--epochs", "2",
                              "--fp16", "1", "--output_dir", str(s2)])
    best = read_stage_file(str(s2 / f"{TINY}_uvc_post_best.pth"))
    source = build_masked_source(best)
    keep = param_keep_masks(source, best["arch"])
    assert torch.count_nonzero(removed_values(source, keep)) == 0
    compact = load_compact(str(s2 / "compact.pth")).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(compact(x), masked_forward_reference(source, best["arch"], x), atol=1e-4)
    lines = (s2 / "log.jsonl").read_text().splitlines()
    assert len(lines) == 4 and os.path.exists(s2 / "checkpoint.pth")  # batch record, 2 epochs, the final record
    assert json.loads(lines[0]) == {"world_size": 1, "per_process_batch": 32, "gradient_accumulation_steps": 1,
                                    "global_batch": 32, "peak_lr": 8e-3 * 32 / 512}  # the demo's post rate
