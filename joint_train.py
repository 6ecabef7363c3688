"""Stage 1 of UVC: search heads, head dims, neurons, block skips and patches under a
MACs budget with the primal-dual algorithm, while the weights train under
distillation from the dense model. Ends by freezing the architecture into
<output_dir>/<model_type>_uvc.pth, the input of post_train.py.

    python joint_train.py --config configs/digits_demo.py --budget 0.5
    torchrun --nproc_per_node=2 joint_train.py --model_type deit_tiny_patch16_224 ...
"""
import os
import sys
from dataclasses import dataclass
from typing import Optional

from data import probe_batch
from uvc.deploy.freeze import apply_spec, param_keep_masks, zero_removed_weights
from uvc.search.masked_model import MaskedViT
from uvc.deploy.stagefile import stage1_record
from uvc.search import UVCSearch
from utils.amp import make_scaler
from utils.batch import batch_plan
from utils.checkpoint import atomic_save
from utils.config import parse_config
from utils.dist import cleanup, init_distributed, is_main_process
from utils.logger import RunLogger
from engine.loop import evaluate, train_one_epoch
from engine.build import (build_data, build_loss, build_optimizer, build_student, build_teacher,
                          check_output_dir, seed_everything, steps_per_epoch, teacher_record, wrap_ddp)
from engine.entry import run_entry
from engine.run_state import RunState, StopSignal
from engine.stage import Stage, close_epoch, open_run, run_epochs, settle_epoch, start_epoch
from engine.stage1_log import log_epoch, log_freeze, log_search_start


@dataclass(kw_only=True)
class Stage1(Stage):
    """A stage-1 run: the masked model, the search, the steps per epoch and the dense model's top-1
    (None without dense weights)."""
    model: MaskedViT
    search: UVCSearch
    steps: int  # optimizer steps per epoch
    teacher_top1: Optional[float]


def build(config) -> Stage1:
    """Data, student, teacher, search, optimizer and run state. The dense model's top-1, what the end of
    the search is checked against, is measured here: before a resume restores the RNG (a loader's
    iterator draws from it)."""
    env = init_distributed(config.gpu_num, config.local_rank)
    seed_everything(config.seed, config.deterministic)
    data = build_data(config, env)
    vit, model_type = build_student(config, data.num_classes, env.device, load_weights=config.pretrained)
    teacher = build_teacher(config, data.num_classes, env.device)
    criterion = build_loss(config, data.base_criterion, teacher)

    model = MaskedViT(vit)
    steps = steps_per_epoch(config, data.train_loader)
    warmup_epochs = int(config.warmup_epochs) if config.enable_warmup else 0
    search_epochs = max(config.epochs - warmup_epochs, 1)
    probe = probe_batch(data.train_loader.dataset, max(config.patch_probe, config.skip_probe), config.seed)
    search = UVCSearch(vit, config, env.device, search_steps=search_epochs * steps, probe=probe)
    ddp_model = wrap_ddp(model, env)
    plan = batch_plan(config, "joint", env.world_size)  # --learning_rate unscaled in stage 1
    optimizer, scheduler = build_optimizer(config, vit, search_epochs, steps, plan.peak_lr)
    scaler = make_scaler(env.device, config.fp16)
    yardstick = teacher if teacher is not None else (vit if config.pretrained and config.model_path else None)
    teacher_top1 = None
    if yardstick is not None:
        teacher_top1 = evaluate(yardstick, data.val_loader, env.device, None, config.fp16)["top1"]
    run = RunState("joint", vit, optimizer, scheduler, scaler, config, search=search)
    return Stage1(config, env, data, vit, model_type, ddp_model, criterion, plan, optimizer, scheduler, scaler,
                  run, model=model, search=search, steps=steps, teacher_top1=teacher_top1)


def run_epoch(s: Stage1, epoch: int, logger: RunLogger, on_step, stop: StopSignal) -> None:
    """One epoch: warm-up (weights only, at --warmup_lr) or search (the cosine schedule runs over the
    search epochs), then its evaluation, record and checkpoint."""
    config, run, search = s.config, s.run, s.search
    warmup_steps = search.warmup_epochs * s.steps
    search.set_epoch(epoch)
    skip_steps, progress = start_epoch(run, config, s.data, epoch)  # > 0: resuming a run stopped mid-epoch
    if not search.active:
        for group in s.optimizer.param_groups:
            group["lr"] = config.warmup_lr
    else:
        s.scheduler.step_update(num_updates=run.global_step - warmup_steps)
    stats = train_one_epoch(
        s.ddp_model, s.criterion, s.data.train_loader, s.optimizer, s.scaler, s.env.device, epoch,
        lr_scheduler=s.scheduler if search.active else None, lr_step_offset=warmup_steps, mixup=s.data.mixup,
        arch_step=search, amp=config.fp16, clip_grad=config.clip_grad,
        accumulation=config.gradient_accumulation_steps,
        max_steps=config.max_steps_per_epoch, global_step=run.global_step, on_step=on_step,
        skip_steps=skip_steps, progress=progress, should_stop=stop.requested)
    settle_epoch(run, stats, config, logger, stop)  # stopped mid-epoch: saves, exits 143
    metrics = evaluate(s.ddp_model, s.data.val_loader, s.env.device, search, config.fp16)
    log_epoch(logger, search, s.model, epoch, run.global_step, stats, metrics)
    close_epoch(run, epoch, config, logger, stop)  # after a signal: saves, exits 143


def freeze_and_save(s: Stage1, logger: RunLogger) -> None:
    """Freeze the searched architecture (fitted to the budget), zero the removed weights, evaluate the
    frozen model and write <output_dir>/<model_type>_uvc.pth, the input of post_train.py."""
    config, vit, search = s.config, s.vit, s.search
    spec, fit = search.freeze(s.model, s.model_type)
    keep = param_keep_masks(vit, spec)
    zero_removed_weights(vit, keep)
    apply_spec(s.model, spec)
    final = evaluate(s.ddp_model, s.data.val_loader, s.env.device, None, config.fp16)
    fit.update(final_top1=final["top1"], teacher_top1=s.teacher_top1, search_steps=search.rates.steps)
    fit.update(search.trial_state())  # flip trials, refused
    log_freeze(logger, fit, config.budget, final["top1"], s.teacher_top1)
    if is_main_process():
        path = os.path.join(config.output_dir, f"{s.model_type}_uvc.pth")
        atomic_save(stage1_record(spec, vit.state_dict(), config.to_dict(), fit,
                                  teacher_record(config, vit, s.model_type), search.latency_table), path)
        logger.epoch({"stage1_file": path, **fit})


def main(argv=None) -> None:
    config = parse_config("joint", argv, prog="joint_train.py")
    check_output_dir(config.output_dir)
    s = build(config)
    logger = open_run(s.run, config, s.plan)  # resumes, then the first write
    log_search_start(logger, s.search, config.budget, config.target_ramp, s.teacher_top1, s.steps)

    run_epochs(s, logger, s.search, run_epoch)
    freeze_and_save(s, logger)
    logger.close()
    cleanup()


if __name__ == "__main__":
    run_entry(main, sys.argv[1:])
