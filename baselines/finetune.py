"""Fine-tuning a physically pruned model (the Torch-Pruning baseline) exactly as
post_train.py's stage 2 fine-tunes UVC's: same epochs, optimizer, per-step
schedule, clipping and distillation (teacher = the dense starting model),
through the same engine.loop.train_one_epoch / evaluate. The model is already
small, so there is no architecture step (arch_step None). No resume.

The best epoch's model is saved as a whole pickled module
(<output_dir>/tp_finetuned_best.pth, read it with `load_pruned`, which needs
weights_only=False: only load such files from a trusted source).
"""
import os
from typing import Optional, Tuple

import torch
import torch.nn as nn

from engine import evaluate, train_one_epoch
from utils.amp import make_scaler
from utils.batch import batch_plan
from utils.logger import RunLogger
from utils.checkpoint import atomic_save
from engine.build import build_loss, build_optimizer, steps_per_epoch

PRUNED_FORMAT = "tp-pruned-v1"


def save_pruned(model: nn.Module, path: str, info: Optional[dict] = None) -> None:
    """The whole pruned module (pickled; see load_pruned) and its info."""
    atomic_save({"format": PRUNED_FORMAT, "model": model, "info": info or {}}, path)


def load_pruned(path: str, map_location="cpu") -> Tuple[nn.Module, dict]:
    """(model, info) from save_pruned. Unpickles code objects: weights_only=False, trusted files only."""
    obj = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(obj, dict) or obj.get("format") != PRUNED_FORMAT:
        raise ValueError(f"{path} is not a Torch-Pruning baseline file ({PRUNED_FORMAT})")
    return obj["model"], obj["info"]


def finetune(model: nn.Module, config, data, env, teacher: Optional[nn.Module], output_dir: str,
             best_name: str = "tp_finetuned_best.pth") -> dict:
    """Train `model` in place for config.epochs; returns
    {"final_top1", "best_top1", "best_file", "epochs", "history"}.

    Args:
        model: the pruned timm ViT (on env.device).
        config: the stage-2 ("post") config of post_train.py.
        data: engine.build.build_data(config, env).
        env: utils.dist.DistInfo (single process).
        teacher: the frozen dense model, or None with --distillation-type none.
        output_dir: where log.jsonl, tensorboard events and the best model go.
    """
    criterion = build_loss(config, data.base_criterion, teacher)
    plan = batch_plan(config, "post", env.world_size)  # the learning-rate rule of stage 2
    optimizer, scheduler = build_optimizer(config, model, config.epochs, steps_per_epoch(config, data.train_loader),
                                           plan.peak_lr)
    scaler = make_scaler(env.device, config.fp16)
    logger = RunLogger(output_dir)
    logger.start(plan.line(), plan.record())
    best_file = os.path.join(output_dir, best_name)
    best_top1, global_step, history, metrics = -1.0, 0, [], {"top1": float("nan")}
    for epoch in range(config.epochs):
        if data.train_sampler is not None and hasattr(data.train_sampler, "set_epoch"):
            data.train_sampler.set_epoch(epoch)
        stats = train_one_epoch(
            model, criterion, data.train_loader, optimizer, scaler, env.device, epoch,
            lr_scheduler=scheduler, mixup=data.mixup, arch_step=None, amp=config.fp16,
            clip_grad=config.clip_grad, accumulation=config.gradient_accumulation_steps,
            max_steps=config.max_steps_per_epoch, global_step=global_step)
        global_step = stats.pop("global_step")
        metrics = evaluate(model, data.val_loader, env.device, None, config.fp16)
        if metrics["top1"] > best_top1:
            best_top1 = metrics["top1"]
            save_pruned(model, best_file, {"epoch": epoch, "top1": best_top1})
        record = {"epoch": epoch, "step": global_step, **{f"train_{k}": v for k, v in stats.items()},
                  **{f"val_{k}": v for k, v in metrics.items()}, "best_top1": best_top1}
        logger.scalars("epoch", record, epoch)
        logger.epoch(record)
        history.append(record)
    logger.close()
    return {"final_top1": metrics["top1"], "best_top1": best_top1, "best_file": best_file,
            "epochs": int(config.epochs), "history": history}
