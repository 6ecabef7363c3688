"""Stage 1 of UVC: search heads, head dims, neurons, block skips and patches under a
MACs budget with the primal-dual algorithm, while the weights train under
distillation from the dense model. Ends by freezing the architecture into
<output_dir>/<model_type>_uvc.pth, the input of post_train.py.

    python joint_train.py --config configs/digits_demo.py --budget 0.5
    torchrun --nproc_per_node=2 joint_train.py --model_type deit_tiny_patch16_224 ...
"""
import os
import sys

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
from engine import evaluate, train_one_epoch
from engine.build import (build_data, build_loss, build_optimizer, build_student, build_teacher,
                          check_output_dir, prepare_output_dir, seed_everything, steps_per_epoch,
                          teacher_record, wrap_ddp)
from engine.entry import run_entry
from engine.loop import step_hook
from engine.run_state import RunState, StopSignal
from engine.stage1_log import log_epoch, log_freeze, log_search_start


def main(argv=None) -> None:
    config = parse_config("joint", argv, prog="joint_train.py")
    check_output_dir(config.output_dir)
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
    probe = probe_batch(data.train_loader.dataset, config.patch_probe, config.seed)
    search = UVCSearch(vit, config, env.device, search_steps=search_epochs * steps, probe=probe)
    ddp_model = wrap_ddp(model, env)
    plan = batch_plan(config, "joint", env.world_size)  # --learning_rate unscaled in stage 1
    optimizer, scheduler = build_optimizer(config, vit, search_epochs, steps, plan.peak_lr)
    scaler = make_scaler(env.device, config.fp16)
    yardstick = teacher if teacher is not None else (vit if config.pretrained and config.model_path else None)
    # the dense model's top-1, what the end of the search is checked against; before a resume restores
    # the RNG (a loader's iterator draws from it)
    teacher_top1 = None
    if yardstick is not None:
        teacher_top1 = evaluate(yardstick, data.val_loader, env.device, None, config.fp16)["top1"]
    run = RunState("joint", vit, optimizer, scheduler, scaler, config, search=search)
    resumed = run.maybe_resume(config.resume, config.output_dir)
    prepare_output_dir(config.output_dir)  # every check has passed: the first write
    logger = RunLogger(config.output_dir)
    logger.start(plan.line(), plan.record())
    if resumed:
        logger.info(f"resumed from {resumed} at epoch {run.epoch}, step {run.global_step}")
    log_search_start(logger, search, config.budget, config.target_ramp, teacher_top1, steps)

    on_step = step_hook(config, logger, ddp_model, data.val_loader, env.device, search)
    stop = StopSignal()  # SIGTERM or Ctrl-C: save between two steps and exit
    try:
        warmup_steps = search.warmup_epochs * steps
        for epoch in range(run.epoch, config.epochs):
            skip_steps, progress = run.take_resume_point()  # > 0: resuming a run stopped mid-epoch
            search.set_epoch(epoch)
            data.train_sampler.set_epoch(epoch, skip=skip_steps * config.gradient_accumulation_steps
                                         * data.train_loader.batch_size)
            if not search.active:  # warm-up: weights only, at --warmup_lr
                for group in optimizer.param_groups:
                    group["lr"] = config.warmup_lr
            else:  # the cosine schedule runs over the search epochs
                scheduler.step_update(num_updates=run.global_step - warmup_steps)
            stats = train_one_epoch(
                ddp_model, criterion, data.train_loader, optimizer, scaler, env.device, epoch,
                lr_scheduler=scheduler if search.active else None, lr_step_offset=warmup_steps, mixup=data.mixup,
                arch_step=search, amp=config.fp16, clip_grad=config.clip_grad,
                accumulation=config.gradient_accumulation_steps,
                max_steps=config.max_steps_per_epoch, global_step=run.global_step, on_step=on_step,
                skip_steps=skip_steps, progress=progress, should_stop=stop.requested)
            run.global_step = stats.pop("global_step")
            if "stopped_at" in stats:
                run.exit_preempted(config.output_dir, logger, stats, stop.exit_code())  # saves mid-epoch, exits 143
            metrics = evaluate(ddp_model, data.val_loader, env.device, search, config.fp16)
            log_epoch(logger, search, model, epoch, run.global_step, stats, metrics)
            run.epoch = epoch + 1
            if stop.requested():
                run.exit_preempted(config.output_dir, logger, code=stop.exit_code())  # saves, exits 143
            run.save(config.output_dir)  # on every rank: checks that the ranks agree, rank 0 writes
    finally:  # also when the run stops on an error: Ctrl-C and SIGTERM get their handlers back
        stop.close()

    spec, fit = search.freeze(model, model_type)
    keep = param_keep_masks(vit, spec)
    zero_removed_weights(vit, keep)
    apply_spec(model, spec)
    final = evaluate(ddp_model, data.val_loader, env.device, None, config.fp16)
    fit.update(final_top1=final["top1"], teacher_top1=teacher_top1, search_steps=search.rates.steps)
    fit.update(search.trial_state())  # flip trials, refused
    log_freeze(logger, fit, config.budget, final["top1"], teacher_top1)
    if is_main_process():
        path = os.path.join(config.output_dir, f"{model_type}_uvc.pth")
        atomic_save(stage1_record(spec, vit.state_dict(), config.to_dict(), fit,
                                  teacher_record(config, vit, model_type), search.latency_table), path)
        logger.epoch({"stage1_file": path, **fit})
    logger.close()
    cleanup()


if __name__ == "__main__":
    run_entry(main, sys.argv[1:])
