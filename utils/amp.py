"""Mixed precision with torch.amp (--fp16): autocast and the grad scaler.

float16 with a GradScaler on CUDA; bfloat16 on CPU, where no scaling is needed
(the scaler is then disabled and its calls are pass-throughs). engine/loop.py
does the scaled backward, unscale, clip, step and update.
"""
import torch


def autocast_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA (with a scaler), bfloat16 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def autocast_context(device: torch.device, enabled: bool, dtype: torch.dtype = None) -> torch.amp.autocast:
    """Autocast on device's type: `dtype`, by default float16 on CUDA, bfloat16 elsewhere."""
    device = torch.device(device)
    return torch.amp.autocast(device.type, dtype=dtype or autocast_dtype(device), enabled=enabled)


def make_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A live GradScaler for float16 on CUDA, a disabled one otherwise."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=enabled and device.type == "cuda")
