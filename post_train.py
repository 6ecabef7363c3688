"""Stage 2 of UVC: fix the architecture found by joint_train.py and fine-tune the
weights under distillation; removed weights stay exactly zero. Ends by
exporting a physically smaller model (<output_dir>/compact.pth).

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

from models import model_kwargs_of, resolve_model_type
from models.compact import save_compact
from uvc.deploy.export import export_compact
from uvc.deploy.freeze import spec_ratio
from uvc.search.masked_model import MaskedViT
from uvc.deploy.frozen import FrozenArchitecture
from uvc.deploy.stagefile import data_record, read_stage1, read_stage_file, stage2_record
from utils.amp import make_scaler
from utils.batch import batch_plan
from utils.checkpoint import atomic_save
from utils.config import parse_config
from utils.dist import cleanup, init_distributed, is_main_process
from utils.logger import RunLogger
from engine import evaluate, train_one_epoch
from engine.build import (build_data, build_loss, build_optimizer, build_student, build_teacher,
                          check_output_dir, prepare_output_dir, seed_everything, steps_per_epoch,
                          wrap_ddp)
from engine.entry import run_entry
from engine.loop import step_hook
from engine.run_state import RunState, StopSignal


def main(argv=None) -> None:
    config = parse_config("post", argv, prog="post_train.py")
    check_output_dir(config.output_dir)
    env = init_distributed(config.gpu_num, config.local_rank)
    seed_everything(config.seed, config.deterministic)
    compress = bool(config.checkpoint_dir)
    stage1 = read_stage1(config.checkpoint_dir, resolve_model_type(config.model_type, config.enable_deit)) \
        if compress else None
    arch = stage1["arch"] if stage1 else None  # the stage-1 file fixes the model: its type, shape and resolution
    data = build_data(config, env, arch)
    vit, model_type = build_student(config, data.num_classes, env.device,
                                    load_weights=config.pretrained and not compress, record=arch)
    if stage1 is not None:
        vit.load_state_dict(stage1["model"])
    teacher = build_teacher(config, data.num_classes, env.device, fallback=stage1["teacher"] if stage1 else None)
    criterion = build_loss(config, data.base_criterion, teacher)

    model = MaskedViT(vit)
    frozen = FrozenArchitecture(model, stage1["arch"]) if stage1 else None
    ddp_model = wrap_ddp(model, env)
    plan = batch_plan(config, "post", env.world_size)  # --learning_rate x global batch / 512
    optimizer, scheduler = build_optimizer(config, vit, config.epochs, steps_per_epoch(config, data.train_loader),
                                           plan.peak_lr)
    scaler = make_scaler(env.device, config.fp16)
    run = RunState("post", vit, optimizer, scheduler, scaler, config)
    resumed = run.maybe_resume(config.resume, config.output_dir)
    prepare_output_dir(config.output_dir)  # every check has passed: the first write
    logger = RunLogger(config.output_dir)
    logger.start(plan.line(), plan.record())
    if resumed:
        logger.info(f"resumed from {resumed} at epoch {run.epoch}, step {run.global_step}")
    best_path = os.path.join(config.output_dir, f"{model_type}_{'uvc_post' if compress else 'dense'}_best.pth")

    def record_of_model() -> dict:
        """The best-model file: a stage-2 file, or the dense model in DeiT's layout."""
        if not compress:  # DeiT's layout, plus what rebuilds the model (python -m uvc.evaluate, uvc.report)
            return {"model": vit.state_dict(), "model_type": model_type, "model_kwargs": model_kwargs_of(vit),
                    "config": config.to_dict()}
        return stage2_record(stage1, model_type, vit.state_dict(), config.to_dict())

    on_step = step_hook(config, logger, ddp_model, data.val_loader, env.device, frozen)
    stop = StopSignal()  # SIGTERM or Ctrl-C: save between two steps and exit
    try:
        for epoch in range(run.epoch, config.epochs):
            skip_steps, progress = run.take_resume_point()  # > 0: resuming a run stopped mid-epoch
            data.train_sampler.set_epoch(epoch, skip=skip_steps * config.gradient_accumulation_steps
                                         * data.train_loader.batch_size)
            stats = train_one_epoch(
                ddp_model, criterion, data.train_loader, optimizer, scaler, env.device, epoch,
                lr_scheduler=scheduler, mixup=data.mixup, arch_step=frozen, amp=config.fp16,
                clip_grad=config.clip_grad, accumulation=config.gradient_accumulation_steps,
                max_steps=config.max_steps_per_epoch, global_step=run.global_step, on_step=on_step,
                skip_steps=skip_steps, progress=progress, should_stop=stop.requested)
            run.global_step = stats.pop("global_step")
            if "stopped_at" in stats:
                run.exit_preempted(config.output_dir, logger, stats, stop.exit_code())  # saves mid-epoch, exits 143
            metrics = evaluate(ddp_model, data.val_loader, env.device, frozen, config.fp16)
            is_best = metrics["top1"] > run.best_top1
            run.best_top1 = max(run.best_top1, metrics["top1"])
            record = {"epoch": epoch, "step": run.global_step, **{f"train_{k}": v for k, v in stats.items()},
                      **{f"val_{k}": v for k, v in metrics.items()}, "best_top1": run.best_top1}
            logger.scalars("epoch", record, epoch)
            logger.epoch(record)
            run.epoch = epoch + 1
            if is_main_process() and is_best:
                atomic_save(record_of_model(), best_path)
            if stop.requested():
                run.exit_preempted(config.output_dir, logger, code=stop.exit_code())  # saves, exits 143
            run.save(config.output_dir)  # on every rank: checks that the ranks agree, rank 0 writes
    finally:  # also when the run stops on an error: Ctrl-C and SIGTERM get their handlers back
        stop.close()

    if compress and is_main_process():
        best = read_stage_file(best_path)
        vit.load_state_dict(best["model"])
        compact = export_compact(vit.eval(), best["arch"])
        compact_path = os.path.join(config.output_dir, "compact.pth")
        save_compact(compact, compact_path, data_record(config))
        logger.epoch({"best_file": best_path, "best_top1": run.best_top1, "compact_file": compact_path,
                      "macs_ratio": spec_ratio(best["arch"])})
    elif is_main_process():
        logger.epoch({"best_file": best_path, "best_top1": run.best_top1})
    logger.close()
    cleanup()


if __name__ == "__main__":
    run_entry(main, sys.argv[1:])
