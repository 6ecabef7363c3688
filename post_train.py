"""Stage 2 of UVC: fix the architecture found by joint_train.py and fine-tune it under
distillation, as the physically smaller model it defines (the masked model's steps at the
compact model's cost: uvc/deploy/compact_student.py). Ends by exporting the best model
(<output_dir>/compact.pth); its stage-2 file holds the full-size weights, removed ones zero.

Without --checkpoint_dir this is the dense training path: it trains
(--pretrained 0) or fine-tunes (--model_path) the dense model, which is how a
teacher is made for a new dataset.

    python post_train.py --config configs/digits_demo.py --checkpoint_dir runs/stage1/vit_digits_patch2_8_uvc.pth
    python post_train.py --config configs/digits_demo.py:dense      # the dense teacher
    python post_train.py --model_type vit_tiny_patch16_224 --embed_dim 96 --depth 6 --num_heads 3 \
        --in_chans 1 --img_size 64 --patch_size 8 --pretrained 0 --distillation-type none \
        --dataset imagenet --data_dir /path/to/grey/imagefolder     # a teacher of your own shape
"""
import os
import sys
from dataclasses import dataclass
from typing import Optional

from torch import nn

from models import model_kwargs_of, resolve_model_type
from models.compact import save_compact
from uvc.deploy.export import export_compact
from uvc.deploy.compact_student import compact_student, write_back
from uvc.deploy.freeze import param_keep_masks, spec_ratio, zero_removed_weights
from uvc.deploy.stagefile import data_record, read_stage1, read_stage_file, stage2_record
from utils.amp import make_scaler
from utils.batch import batch_plan
from utils.checkpoint import atomic_save
from utils.config import parse_config
from utils.dist import cleanup, init_distributed, is_main_process
from utils.logger import RunLogger
from engine.loop import evaluate, train_one_epoch
from engine.build import (build_data, build_loss, build_optimizer, build_student, build_teacher,
                          check_output_dir, load_stage2_start, seed_everything, steps_per_epoch, wrap_ddp)
from engine.entry import run_entry
from engine.run_state import RunState, StopSignal
from engine.stage import Stage, close_epoch, open_run, run_epochs, settle_epoch, start_epoch


@dataclass(kw_only=True)
class Stage2(Stage):
    """A stage-2 run (or, without a stage-1 file, a dense training run): the stage-1 file (None on the
    dense path) and the model trained, the compact one after a stage-1 file (uvc.deploy.compact_student),
    else `vit` itself."""
    stage1: Optional[dict]
    student: nn.Module

    @property
    def best_path(self) -> str:
        kind = "uvc_post" if self.stage1 is not None else "dense"
        return os.path.join(self.config.output_dir, f"{self.model_type}_{kind}_best.pth")


def build(config) -> Stage2:
    """Data, student (the stage-1 file fixes its type, shape, resolution and weights), teacher,
    optimizer and run state."""
    env = init_distributed(config.gpu_num, config.local_rank)
    seed_everything(config.seed, config.deterministic)
    compress = bool(config.checkpoint_dir)
    stage1 = read_stage1(config.checkpoint_dir, resolve_model_type(config.model_type, config.enable_deit)) \
        if compress else None
    arch = stage1["arch"] if stage1 else None  # the stage-1 file fixes the model: its type, shape and resolution
    data = build_data(config, env, arch)
    vit, model_type = build_student(config, data.num_classes, env.device,
                                    load_weights=config.pretrained and not compress, record=arch)
    student = vit
    if stage1 is not None:
        start = load_stage2_start(vit, config, stage1, model_type)  # --finetune_from
        if is_main_process():
            print(f"stage 2 starts from {start}", flush=True)
        zero_removed_weights(vit, param_keep_masks(vit, arch))  # the stage-2 file's removed weights: exactly zero
        student = compact_student(vit, arch)  # the same steps at the compact model's cost
    teacher = build_teacher(config, data.num_classes, env.device, fallback=stage1["teacher"] if stage1 else None)
    criterion = build_loss(config, data.base_criterion, teacher)

    ddp_model = wrap_ddp(student, env)
    plan = batch_plan(config, "post", env.world_size)  # --learning_rate x global batch / 512
    optimizer, scheduler = build_optimizer(config, student, config.epochs,
                                           steps_per_epoch(config, data.train_loader), plan.peak_lr)
    scaler = make_scaler(env.device, config.fp16)
    run = RunState("post", student, optimizer, scheduler, scaler, config)
    return Stage2(config, env, data, vit, model_type, ddp_model, criterion, plan, optimizer, scheduler, scaler,
                  run, stage1=stage1, student=student)


def best_record(s: Stage2) -> dict:
    """The best-model file: a stage-2 file, or the dense model in DeiT's layout."""
    if s.stage1 is None:  # DeiT's layout, plus what rebuilds the model (python -m uvc.evaluate, uvc.report)
        return {"model": s.vit.state_dict(), "model_type": s.model_type, "model_kwargs": model_kwargs_of(s.vit),
                "config": s.config.to_dict()}
    write_back(s.vit, s.student, s.stage1["arch"])
    return stage2_record(s.stage1, s.model_type, s.vit.state_dict(), s.config.to_dict())


def run_epoch(s: Stage2, epoch: int, logger: RunLogger, on_step, stop: StopSignal) -> None:
    """One epoch of fine-tuning, its evaluation and record; the best model so far is written to
    s.best_path, the run state to the checkpoint."""
    config, run = s.config, s.run
    skip_steps, progress = start_epoch(run, config, s.data, epoch)  # > 0: resuming a run stopped mid-epoch
    stats = train_one_epoch(
        s.ddp_model, s.criterion, s.data.train_loader, s.optimizer, s.scaler, s.env.device, epoch,
        lr_scheduler=s.scheduler, mixup=s.data.mixup, amp=config.fp16,
        clip_grad=config.clip_grad, accumulation=config.gradient_accumulation_steps,
        max_steps=config.max_steps_per_epoch, global_step=run.global_step, on_step=on_step,
        skip_steps=skip_steps, progress=progress, should_stop=stop.requested)
    settle_epoch(run, stats, config, logger, stop)  # stopped mid-epoch: saves, exits 143
    metrics = evaluate(s.ddp_model, s.data.val_loader, s.env.device, amp=config.fp16)
    is_best = metrics["top1"] > run.best_top1
    run.best_top1 = max(run.best_top1, metrics["top1"])
    record = {"epoch": epoch, "step": run.global_step, **{f"train_{k}": v for k, v in stats.items()},
              **{f"val_{k}": v for k, v in metrics.items()}, "best_top1": run.best_top1}
    logger.scalars("epoch", record, epoch)
    logger.epoch(record)
    if is_main_process() and is_best:
        atomic_save(best_record(s), s.best_path)
    close_epoch(run, epoch, config, logger, stop)  # after a signal: saves, exits 143


def export_best(s: Stage2, logger: RunLogger) -> None:
    """The last record: the best model's file and top-1; after a stage-1 file, also the best model
    exported physically smaller to <output_dir>/compact.pth."""
    if not is_main_process():
        return
    if s.stage1 is None:
        logger.epoch({"best_file": s.best_path, "best_top1": s.run.best_top1})
        return
    best = read_stage_file(s.best_path)
    s.vit.load_state_dict(best["model"])
    compact = export_compact(s.vit.eval(), best["arch"])
    compact_path = os.path.join(s.config.output_dir, "compact.pth")
    save_compact(compact, compact_path, data_record(s.config))
    logger.epoch({"best_file": s.best_path, "best_top1": s.run.best_top1, "compact_file": compact_path,
                  "macs_ratio": spec_ratio(best["arch"])})


def main(argv=None) -> None:
    config = parse_config("post", argv, prog="post_train.py")
    check_output_dir(config.output_dir)
    s = build(config)
    logger = open_run(s.run, config, s.plan)  # resumes, then the first write

    run_epochs(s, logger, None, run_epoch)
    export_best(s, logger)
    logger.close()
    cleanup()


if __name__ == "__main__":
    run_entry(main, sys.argv[1:])
