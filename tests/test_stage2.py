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


def test_the_compact_student_takes_the_masked_models_steps():
    """Stage 2 fine-tunes the compact model (uvc.deploy.compact_student): with padded heads, a skipped block,
    dropped patches and removed neurons, steps on it, written back, give the weights that the same steps on the
    masked full-size model give (removed weights zero), and the tokens stay out of weight decay. SGD with
    momentum and weight decay: Adam would turn float noise in gradients that are zero in exact arithmetic
    (the keys' bias, which softmax ignores) into whole steps, differently in the two models."""
    from timm.optim import create_optimizer_v2
    from test_report import random_arch
    from uvc.deploy.compact_student import compact_student, write_back
    from uvc.deploy.freeze import zero_removed_weights
    torch.manual_seed(0)
    dense = create_model(TINY, num_classes=10)
    arch = random_arch(dense, TINY, seed=3, skipped=(1,))
    assert any(len({len(v) for v in b["value_dims"]}) > 1 for b in arch["blocks"])  # heads padded to the widest
    zero_removed_weights(dense, param_keep_masks(dense, arch))
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(10, (8,))) for _ in range(4)]
    masked_vit, compact_vit = dense, create_model(TINY, num_classes=10)
    compact_vit.load_state_dict(dense.state_dict())
    masked = MaskedViT(masked_vit)
    frozen = FrozenArchitecture(masked, arch)
    student = compact_student(compact_vit, arch)
    assert {"pos_embed", "cls_token"} <= student.no_weight_decay()
    scaler, cpu = make_scaler(torch.device("cpu"), False), torch.device("cpu")
    for model, vit, step in ((masked, masked_vit, frozen), (student, student, None)):
        opt = create_optimizer_v2(vit, opt="momentum", lr=0.1, weight_decay=0.5)
        train_one_epoch(model, _CE(), batches, opt, scaler, cpu, 0, arch_step=step, clip_grad=1.0)
    write_back(compact_vit, student, arch)
    trained, written = masked_vit.state_dict(), compact_vit.state_dict()
    for name, value in trained.items():
        assert torch.allclose(written[name], value, atol=2e-5), name
    assert torch.count_nonzero(removed_values(compact_vit, frozen.keep)) == 0
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(student.eval()(x), masked_forward_reference(masked_vit, arch, x), atol=1e-5)


def test_a_checkpoint_of_the_masked_stage_2_is_refused_in_one_line():
    """A stage-2 checkpoint written before stage 2 trained the compact model holds the full-size model and no
    "student" key: resuming the compact student from it says to start stage 2 again; a checkpoint of the
    compact student resumes the compact student."""
    import ml_collections
    import pytest
    from engine.run_state import RUN_FORMAT, ResumeError, RunState
    from uvc.deploy.compact_student import compact_student
    vit = create_model(TINY, num_classes=10)
    spec = base_spec(vit, TINY)
    student = compact_student(vit, spec)
    config = ml_collections.ConfigDict({"model_type": TINY})
    run = RunState("post", student, torch.optim.SGD(student.parameters(), lr=0.1), None, None, config)
    old = {"format": RUN_FORMAT, "stage": "post", "model_type": TINY, "model": vit.state_dict()}
    with pytest.raises(ResumeError, match="fine-tuned the masked full-size model, this run fine-tunes CompactViT"):
        run.load_state_dict(old)
    assert RunState("post", student, run.optimizer, None, make_scaler(torch.device("cpu"), False),
                    config).shared_state_dict()["student"] == "CompactViT"


def test_finetune_from_picks_the_weights_stage_2_starts_from(tmp_path):
    """--finetune_from search (the default) starts from the stage-1 file's weights, pretrained from the dense file
    the search started from (--model_path, else the one the stage-1 file records), cut to the searched
    architecture; a search that started from random weights (no file recorded, or --pretrained 0) has no pretrained
    start; a dense file of another class count stops in one line."""
    import pytest
    from utils.config import ConfigError, parse_config
    from uvc.deploy.stagefile import stage1_record
    torch.manual_seed(0)
    dense, searched = create_model(TINY, num_classes=10), create_model(TINY, num_classes=10)
    spec, _ = fit_to_budget(base_spec(dense, TINY), group_scores(*stacked_weights(dense), 2), 0.5)
    torch.save({"model": dense.state_dict()}, tmp_path / "dense.pth")
    config = {"model_path": str(tmp_path / "dense.pth")}
    for name, own in (("s1.pth", config), ("s1_no_path.pth", {}), ("s1_scratch.pth", dict(config, pretrained=False))):
        torch.save(stage1_record(spec, searched.state_dict(), own, {}), tmp_path / name)
    keep = param_keep_masks(dense, spec)

    def start(*flags, stage1="s1.pth"):
        argv = DIGITS + ["--checkpoint_dir", str(tmp_path / stage1), "--distillation-type", "none",
                         "--output_dir", str(tmp_path / "out"), *flags]
        vit = post_train.build(parse_config("post", argv)).vit
        return {n: p.detach() * keep.get(n, 1) for n, p in vit.named_parameters()}

    dense_file = str(tmp_path / "dense.pth")
    for flags, stage1, source in (((), "s1.pth", searched), (("--finetune_from", "search"), "s1.pth", searched),
                                  (("--finetune_from", "pretrained"), "s1.pth", dense),
                                  (("--finetune_from", "pretrained", "--model_path", dense_file), "s1_no_path.pth",
                                   searched),  # the search started from random weights
                                  (("--finetune_from", "pretrained", "--model_path", dense_file), "s1_scratch.pth",
                                   searched)):
        expected = {n: p.detach() * keep.get(n, 1) for n, p in source.named_parameters()}
        got = start(*flags, stage1=stage1)
        assert all(torch.equal(got[n], expected[n]) for n in expected), (flags, stage1)
    torch.save({"model": create_model(TINY, num_classes=7).state_dict()}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="other.pth has no classifier for this model's 10 classes; use --finetune"):
        start("--model_path", str(tmp_path / "other.pth"), "--finetune_from", "pretrained")
