"""train_one_epoch and evaluate, DeiT-style; each returns a dict of averages.

The architecture side of a step is one explicit object of the `ArchStep`
protocol: `prepare(model, training)` before the forward pass, then `step(model,
lr) -> dict` after the weight update, or `skip_step(model)` when AMP's scaler
skipped it (inf/nan gradients). Stage 1 passes the
search (`UVCSearch`, whose step is the primal-dual update); stage 2, which trains
the compact model, and the dense path pass None; the magnitude peers evaluate their
pruned model through the fixed architecture (`FrozenArchitecture`).
"""
from contextlib import nullcontext
from typing import Callable, Dict, Optional, Protocol, Tuple

import torch
import torch.nn.functional as F
from timm.utils import accuracy
from tqdm import tqdm

from utils.amp import autocast_context
from utils.dist import all_reduce_mean, any_rank, crash_for_test, get_world_size, is_main_process
from utils.logger import RunLogger


class ArchStep(Protocol):
    """What the loop asks of the architecture: masks/gates in place, then its own update."""

    def prepare(self, model: torch.nn.Module, training: bool) -> None:
        """Set the architecture for the next forward pass (sampled if training, argmax if not)."""

    def step(self, model: torch.nn.Module, lr: float) -> Dict[str, float]:
        """Update the architecture variables after the weight step; returns scalars to log."""

    def skip_step(self, model: torch.nn.Module) -> None:
        """The weight step was skipped: leave the architecture as it is."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


class Averages:
    """Running means of named scalars."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def update(self, n: int = 1, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * n
            self.counts[k] = self.counts.get(k, 0) + n

    def means(self) -> Dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def train_one_epoch(model, criterion, loader, optimizer, scaler, device, epoch: int, *,
                    lr_scheduler=None, lr_step_offset: int = 0, mixup=None,
                    arch_step: Optional[ArchStep] = None, amp: bool = False,
                    clip_grad: float = 0.0, accumulation: int = 1, max_steps: int = 0,
                    global_step: int = 0, on_step: Optional[Callable[[int, Dict[str, float]], None]] = None,
                    skip_steps: int = 0, progress: Optional[dict] = None,
                    should_stop: Optional[Callable[[], bool]] = None) -> Dict[str, float]:
    """One pass over `loader`; returns the epoch's averages and the last global step.

    The scheduler sees `global_step - lr_step_offset` (stage 1 starts its
    schedule after the warm-up). `accumulation` micro-batches make one optimizer step; `max_steps` (> 0) cuts
    the epoch short; `on_step(global_step, scalars)` is called after every step.

    Stopping and resuming mid-epoch: `should_stop()` is asked after every step
    (it must answer the same on every rank); when it says yes the epoch ends
    there and the result also holds "stopped_at" (steps of this epoch done) and
    "progress" (the partial averages). A resumed run passes them back as
    `skip_steps` and `progress`, with the loader's sampler skipping the samples
    of those steps (`data.loaders` samplers: set_epoch(epoch, skip)); a loader
    whose sampler cannot skip has its first batches drawn and dropped instead.
    """
    model.train()
    criterion.train()
    inner = _unwrap(model)
    drop_batches, steps_per_epoch = _epoch_length(loader, skip_steps, accumulation, max_steps)
    stats = Averages()
    if progress is not None:
        stats.load_state_dict(progress)
    # steps the GradScaler skipped (inf/nan gradients under float16): counted, not fatal
    amp_skipped = int(stats.sums.get("amp_skipped", 0))
    bar = tqdm(total=steps_per_epoch, initial=min(skip_steps, steps_per_epoch), desc=f"epoch {epoch}",
               disable=not is_main_process(), dynamic_ncols=True, leave=False)
    it = iter(loader)
    for _ in range(drop_batches):
        next(it)
    stopped_at = None
    for step in range(skip_steps, steps_per_epoch):
        batches = [next(it) for _ in range(accumulation)]
        loss = _forward_backward(model, criterion, batches, scaler, device, mixup, arch_step, amp, bar,
                                 f"at epoch {epoch} step {global_step + 1}")
        grad_norm, skipped = _optimizer_step(inner, optimizer, scaler, clip_grad)
        global_step += 1
        lr = optimizer.param_groups[0]["lr"]
        scalars = _step_scalars(loss, lr, criterion, grad_norm, skipped)
        amp_skipped += int(bool(skipped))
        if arch_step is not None and skipped:  # inf/nan gradients: the architecture does not move either
            arch_step.skip_step(inner)
        elif arch_step is not None:
            scalars.update(arch_step.step(inner, lr))
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=global_step - lr_step_offset)
        stats.update(**scalars)
        bar.set_postfix(loss=f"{scalars['loss']:.3f}", lr=f"{lr:.2e}")
        bar.update(1)
        if on_step is not None:
            on_step(global_step, scalars)
        if should_stop is not None and should_stop():
            stopped_at = step + 1
            break
    bar.close()
    return _epoch_result(stats, amp_skipped if scaler.is_enabled() else None, global_step, stopped_at)


def _epoch_result(stats: Averages, amp_skipped: Optional[int], global_step: int,
                  stopped_at: Optional[int]) -> Dict[str, float]:
    """The epoch's averages, the steps AMP skipped (when the scaler is on) and the last global step; for
    an epoch stopped early also the steps done and the partial averages, to resume from."""
    out = stats.means()
    if amp_skipped is not None:
        out["amp_skipped_steps"] = amp_skipped
    out["global_step"] = global_step
    if stopped_at is not None:
        out.update(stopped_at=stopped_at, progress=stats.state_dict())
    return out


def _epoch_length(loader, skip_steps: int, accumulation: int, max_steps: int) -> Tuple[int, int]:
    """(batches to draw and drop before the first step, the epoch's steps counting the skipped ones).
    A sampler that skips must leave out exactly the samples of the `skip_steps` steps already done."""
    sampler_skip = getattr(getattr(loader, "sampler", None), "skip", None)  # samples the sampler leaves out
    if sampler_skip is not None and sampler_skip != skip_steps * accumulation * (loader.batch_size or 1):
        raise ValueError(f"train_one_epoch(skip_steps={skip_steps}) needs the sampler to skip "
                         f"{skip_steps * accumulation * (loader.batch_size or 1)} samples, it skips {sampler_skip}")
    drop_batches = 0 if sampler_skip is not None else skip_steps * accumulation
    steps_per_epoch = (len(loader) - drop_batches) // accumulation + skip_steps
    if max_steps:
        steps_per_epoch = min(steps_per_epoch, max_steps)
    return drop_batches, steps_per_epoch


def _forward_backward(model, criterion, batches, scaler, device, mixup, arch_step: Optional[ArchStep],
                      amp: bool, bar, where: str) -> torch.Tensor:
    """Forward and backward over the micro-batches of one step (gradients synchronised across ranks at
    the last one only); returns the last micro-batch's loss. A non-finite loss on any rank stops every
    rank at the same step with NonFiniteLossError (`where` names the step)."""
    inner = _unwrap(model)
    accumulation = len(batches)
    for micro, (images, targets) in enumerate(batches):
        if arch_step is not None:  # per micro-batch: each backward needs its own gate/patch graph
            arch_step.prepare(inner, training=True)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        last = micro == accumulation - 1
        sync = model.no_sync() if (hasattr(model, "no_sync") and not last) else nullcontext()
        with sync:
            with autocast_context(device, amp):
                outputs = model(images)
                loss = criterion(images, outputs, targets)
            if any_rank(not torch.isfinite(loss)):  # every rank stops at the same step
                bar.close()  # clear the progress line: the error gets a line of its own
                seen = "" if torch.isfinite(loss) else f"loss is {loss.item()} "
                raise NonFiniteLossError(
                    f"{seen or 'another rank saw a non-finite loss '}{where}; stopping. The last good "
                    f"checkpoint is kept: lower --learning_rate, set --clip_grad, or turn off --fp16")
            scaler.scale(loss / accumulation).backward()
    return loss


def _optimizer_step(inner, optimizer, scaler, clip_grad: float) -> Tuple[Optional[float], Optional[bool]]:
    """Unscale, clip to `clip_grad` (> 0), step and zero the gradients: (the gradient norm before
    clipping, or None without clipping; whether AMP's scaler skipped the step (inf/nan gradients: its
    scale fell), or None when the scaler is off)."""
    scaler.unscale_(optimizer)
    grad_norm = None
    if clip_grad > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(inner.parameters(), clip_grad))
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    skipped = None if scale_before is None else scaler.get_scale() < scale_before
    return grad_norm, skipped


def _step_scalars(loss: torch.Tensor, lr: float, criterion, grad_norm: Optional[float],
                  skipped: Optional[bool]) -> Dict[str, float]:
    """What one step logs: the loss and its parts (the criterion's `last`), the learning rate, the
    gradient norm when clipping, and whether AMP skipped the step when the scaler is on."""
    scalars = {"loss": loss.item(), "lr": lr}
    last_parts = getattr(criterion, "last", None)
    if last_parts:
        scalars.update({f"loss_{k}": float(v) for k, v in last_parts.items()})
    if grad_norm is not None:
        scalars["grad_norm"] = grad_norm
    if skipped is not None:
        scalars["amp_skipped"] = float(skipped)
    return scalars


@torch.no_grad()
def evaluate(model, loader, device, arch_step: Optional[ArchStep] = None, amp: bool = False) -> Dict[str, float]:
    """Top-1 / top-5 / loss over `loader`, averaged over all ranks (deterministic:
    the search is evaluated at its argmax architecture, no Gumbel noise)."""
    model.eval()
    inner = _unwrap(model)
    if arch_step is not None:
        arch_step.prepare(inner, training=False)
    totals = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, n
    for images, targets in tqdm(loader, desc="eval", disable=not is_main_process(), leave=False,
                                dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = inner(images)
        logits = logits.float()
        n = images.shape[0]
        top1, top5 = accuracy(logits, targets, topk=(1, min(5, logits.shape[-1])))
        totals += torch.tensor([F.cross_entropy(logits, targets).item() * n, top1.item() * n / 100,
                                top5.item() * n / 100, n], device=device, dtype=torch.float64)
    totals = all_reduce_sum(totals)
    n = max(totals[3].item(), 1.0)
    return {"loss": totals[0].item() / n, "top1": 100 * totals[1].item() / n, "top5": 100 * totals[2].item() / n}


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (the mean times the world size); identity on one process."""
    world = get_world_size()
    return all_reduce_mean(t) * world if world > 1 else t


def step_hook(config, logger: RunLogger, model: torch.nn.Module, val_loader, device,
              arch_step: Optional[ArchStep] = None):
    """The periodic work after each optimizer step of either stage: the training scalars every
    --log_interval steps, an evaluation every --eval_every steps (then back to training mode)."""
    def on_step(step: int, scalars: dict) -> None:
        crash_for_test(step)  # inert unless UVC_TEST_CRASH_AT_STEP is set
        if config.log_interval and step % config.log_interval == 0:
            logger.scalars("train", scalars, step)
        if config.eval_every and step % config.eval_every == 0:
            logger.step_eval(step, evaluate(model, val_loader, device, arch_step, config.fp16))
            model.train()
    return on_step
