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
from uvc.search.schedule import MIN_STEERING_STEPS
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


def log_architecture(logger: RunLogger, search: UVCSearch, model: MaskedViT, step: int) -> dict:
    """Tensorboard histograms/images of the current architecture; returns its counts."""
    a, dims = search.arch, search.dims
    spec = search.spec(model, "")
    kept = {"heads": [len(b["heads"]) for b in spec["blocks"]],
            "value_dims": [sum(len(v) for v in b["value_dims"]) for b in spec["blocks"]],
            "neurons": [len(b["neurons"]) for b in spec["blocks"]],
            "skipped": [int(b["skipped"]) for b in spec["blocks"]],
            "patches_kept": len(spec["patches_kept"])}
    for name in ("heads", "value_dims", "neurons"):
        logger.scalars(f"arch_kept_{name}", {str(l): v for l, v in enumerate(kept[name])}, step)
    keep_prob = a.gate_logits.detach().softmax(-1)[:, 1]
    logger.scalars("arch_block_keep_prob", {str(l): float(p) for l, p in enumerate(keep_prob)}, step)
    logger.histogram("arch/patch_keep_prob", a.patch_keep_prob(), step)
    side = int(dims.num_patches ** 0.5)
    logger.image("arch/patch_keep_map", a.patch_keep_prob().detach().view(side, side), step)
    logger.histogram("arch/y", a.y, step)
    logger.histogram("arch/p", a.p, step)
    return kept


def warn_if_too_short(logger: RunLogger, search_steps: int, steps_per_epoch: int) -> None:
    """A search under MIN_STEERING_STEPS cannot steer to its budget: the greedy fit would do the work."""
    if search_steps >= MIN_STEERING_STEPS:
        return
    epochs = -(-MIN_STEERING_STEPS // max(steps_per_epoch, 1))
    logger.warning(f"WARNING: the search has {search_steps} steps, fewer than the {MIN_STEERING_STEPS} it needs to "
                   f"steer itself to the budget: the freeze's greedy fit will do most of the compression; give it "
                   f"at least {epochs} search epoch(s) of {steps_per_epoch} steps (--epochs beyond --warmup_epochs)")


def warn_if_collapsed(logger: RunLogger, top1: float, teacher_top1) -> None:
    """A result far under the teacher must not look like success: stderr and log.jsonl."""
    if teacher_top1 is None or top1 >= 0.5 * teacher_top1:
        return
    text = (f"WARNING: stage 1 ended at top-1 {top1:.2f}, under half the teacher's {teacher_top1:.2f}: the "
            f"search has damaged the model (budget too low, or too short a search?); stage 2 may not recover it")
    logger.warning(text)


def log_latency_check(logger: RunLogger, fit: dict, budget: float) -> None:
    """The frozen model timed whole against the dense one (uvc.cost.latency_check); loud if still off."""
    checks = fit.get("latency_checks")
    if not checks:
        return
    logger.info("latency check, compact time / dense time, timed whole: " + "; ".join(
        f"fit to {c['target']:.3f} -> estimated {c['estimated']:.3f}, measured {c['measured']:.3f}"
        + (" (kept)" if c["kept"] else "") for c in checks))
    measured = fit["measured_latency_ratio"]
    if abs(measured - budget) > 0.1 * budget:
        logger.warning(f"WARNING: the frozen model takes {measured:.3f} of the dense model's time, more than 10% "
                       f"off budget {budget} after {len(checks)} fits: timings on this device are unsteady, or the "
                       f"fit cannot reach it; a higher --latency_check allows more fits")


def log_frozen(logger: RunLogger, fit: dict, budget: float, top1: float) -> None:
    """One line on the frozen architecture: what the greedy fit did, or (a search exported as it ended) how far the
    search ended from the budget and what the fit would have changed."""
    if fit.get("exported_as_searched"):
        logger.info(f"frozen architecture as searched (no fit): MACs ratio {fit['macs_ratio']:.4f}, "
                    f"{fit['budget_gap']:+.4f} from budget {budget} in {fit['budget_metric']}; the greedy fit "
                    f"would have changed {100 * fit['greedy_would_change_frac']:.1f}% of the groups; top-1 {top1:.2f}")
        return
    logger.info(f"frozen architecture: MACs ratio {fit['macs_ratio']:.4f} (search ended at "
                f"{fit['searched_macs_ratio']:.4f}; to fit budget {budget} the greedy pass removed "
                f"{fit['groups_removed_to_fit']} groups and restored {fit['restored_neurons']} neurons, "
                f"{fit['restored_dims']} value dims, {fit['restored_heads']} heads, {fit['restored_blocks']} "
                f"blocks; widths at multiples of {fit['round_to']}: {fit['rounded_up']} groups rounded up, "
                f"{fit['rounded_down']} down); top-1 {top1:.2f}")


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
    dense = f"{teacher_top1:.2f}" if teacher_top1 is not None else "not measured (no dense weights)"
    if search.reference:
        logger.info(f"dense top-1 {dense}; search: {search.rates.steps} steps of the reference's algorithm "
                    f"(--search_algorithm reference) against budget {config.budget}, exported with no fit")
    else:
        rules = search.rules.names()
        logger.info(f"dense top-1 {dense}; search: {search.rates.steps} steps, the target reaches budget "
                    f"{config.budget} after {config.target_ramp:.0%} of them"
                    + (f"; the reference's rules in place of ours: {', '.join(rules)}" if rules else ""))
        warn_if_too_short(logger, search.rates.steps, steps)

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
            ratios = search.ratios(model)
            kept = log_architecture(logger, search, model, run.global_step)
            record = {"epoch": epoch, "step": run.global_step, "searching": search.active,
                      **{f"train_{k}": v for k, v in stats.items()}, **{f"val_{k}": v for k, v in metrics.items()},
                      **ratios, "z": float(search.arch.z), "y_mean": float(search.arch.y.mean()),
                      "p_mean": float(search.arch.p.mean()), "z_integral": float(search.arch.z_integral),
                      **search.record(), **kept}
            logger.scalars("epoch", {k: v for k, v in record.items() if isinstance(v, (int, float))}, epoch)
            logger.epoch(record)
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
    log_frozen(logger, fit, float(config.budget), final["top1"])
    metric = fit["budget_metric"]
    if metric != "macs":
        logger.info(f"frozen {metric} ratio {fit[metric + '_ratio']:.4f} (search ended at "
                    f"{fit['searched_' + metric + '_ratio']:.4f})")
    log_latency_check(logger, fit, float(config.budget))
    if fit.get("fit_window") == "missed" and (fit["round_to"] > 1 or metric != "macs"):
        logger.warning(f"WARNING: the frozen architecture's {metric} ratio {fit[metric + '_ratio']:.4f} is outside "
                       f"[budget - 0.03, budget + 0.01] of budget {config.budget}: the greedy fit (MLP widths and "
                       f"value dims at multiples of --round_to {fit['round_to']}) could not reach it from where "
                       f"the search ended; a lower --round_to gives finer steps")
    warn_if_collapsed(logger, final["top1"], teacher_top1)
    if is_main_process():
        path = os.path.join(config.output_dir, f"{model_type}_uvc.pth")
        atomic_save(stage1_record(spec, vit.state_dict(), config.to_dict(), fit,
                                  teacher_record(config, vit, model_type), search.latency_table), path)
        logger.epoch({"stage1_file": path, **fit})
    logger.close()
    cleanup()


if __name__ == "__main__":
    run_entry(main, sys.argv[1:])
