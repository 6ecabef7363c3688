"""Mixed precision with torch.amp: autocast, grad scaler, one backward/step helper.

float16 with a GradScaler on CUDA; bfloat16 on CPU, where no scaling is needed
(the scaler is then disabled and its calls are pass-throughs).
Gradient accumulation: the caller divides the loss by the number of micro-steps
and passes step=False for all but the last.
"""
from typing import Iterable, Optional, Tuple

import torch


def autocast_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA (with a scaler), bfloat16 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def autocast_context(device: torch.device, enabled: bool) -> torch.amp.autocast:
    """Autocast on device's type: float16 on CUDA, bfloat16 elsewhere."""
    device = torch.device(device)
    return torch.amp.autocast(device.type, dtype=autocast_dtype(device), enabled=enabled)


def make_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A live GradScaler for float16 on CUDA, a disabled one otherwise."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=enabled and device.type == "cuda")


def backward_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    parameters: Iterable[torch.nn.Parameter],
    clip_grad: float,
    step: bool,
) -> Tuple[Optional[float], bool]:
    """Backward the (scaled) loss; when step, unscale, clip, step, update, zero grads.

    Returns (grad_norm, skipped): the total gradient norm before clipping (None
    unless step and clip_grad > 0), and whether the scaler skipped the step
    because of inf/nan gradients (its scale decreased).
    """
    scaler.scale(loss).backward()
    if not step:
        return None, False
    scaler.unscale_(optimizer)
    grad_norm = None
    if clip_grad > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip_grad).item()
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    skipped = scaler.get_scale() < scale
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, skipped
