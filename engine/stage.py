"""What both entry scripts build (`Stage`) and the steps they take around their epochs: open the
run (resume, then the first write), start an epoch where the run stands, turn a stopped epoch into
a checkpoint, and close an epoch with a checkpoint (or a save and exit after SIGTERM/Ctrl-C)."""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from utils.batch import BatchPlan
from utils.dist import DistInfo
from utils.logger import RunLogger
from engine.build import Data, prepare_output_dir
from engine.loop import step_hook
from engine.run_state import RunState, StopSignal


@dataclass
class Stage:
    """What either stage builds before its epochs; each entry script adds its own parts."""
    config: object
    env: DistInfo
    data: Data
    vit: torch.nn.Module
    model_type: str
    ddp_model: torch.nn.Module
    criterion: torch.nn.Module
    plan: BatchPlan
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    run: RunState


def open_run(run: RunState, config, plan) -> RunLogger:
    """Restore --resume, create the output dir (every check has passed: the first write) and start
    the log with the batch plan."""
    resumed = run.maybe_resume(config.resume, config.output_dir)
    prepare_output_dir(config.output_dir)
    logger = RunLogger(config.output_dir)
    logger.start(plan.line(), plan.record())
    if resumed:
        logger.info(f"resumed from {resumed} at epoch {run.epoch}, step {run.global_step}")
    return logger


def start_epoch(run: RunState, config, data, epoch: int) -> Tuple[int, Optional[dict]]:
    """(steps of `epoch` already done, their partial averages): > 0 when resuming a run stopped
    mid-epoch, with the sampler set to leave out the samples of those steps."""
    skip_steps, progress = run.take_resume_point()
    data.train_sampler.set_epoch(epoch, skip=skip_steps * config.gradient_accumulation_steps
                                 * data.train_loader.batch_size)
    return skip_steps, progress


def settle_epoch(run: RunState, stats: dict, config, logger: RunLogger, stop: StopSignal) -> None:
    """Take the global step from train_one_epoch's result; an epoch stopped by a signal saves
    mid-epoch and exits (143 for SIGTERM)."""
    run.global_step = stats.pop("global_step")
    if "stopped_at" in stats:
        run.exit_preempted(config.output_dir, logger, stats, stop.exit_code())


def close_epoch(run: RunState, epoch: int, config, logger: RunLogger, stop: StopSignal) -> None:
    """`epoch` is done: after a signal save and exit (143 for SIGTERM), else save the run state (on every
    rank: checks that the ranks agree, rank 0 writes)."""
    run.epoch = epoch + 1
    if stop.requested():
        run.exit_preempted(config.output_dir, logger, code=stop.exit_code())
    run.save(config.output_dir)


def run_epochs(s: Stage, logger: RunLogger, arch_step, one_epoch: Callable) -> None:
    """The epochs from where the run stands: `one_epoch(s, epoch, logger, on_step, stop)` each, with the
    periodic work after every step (engine.loop.step_hook, evaluated with `arch_step`) and SIGTERM or
    Ctrl-C saving between two steps; the signal handlers are given back however the loop ends."""
    on_step = step_hook(s.config, logger, s.ddp_model, s.data.val_loader, s.env.device, arch_step)
    stop = StopSignal()
    try:
        for epoch in range(s.run.epoch, s.config.epochs):
            one_epoch(s, epoch, logger, on_step, stop)
    finally:
        stop.close()
