"""Mixup / CutMix and the base criterion that matches it (DeiT's choices)."""
from typing import Optional, Tuple

import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from data.errors import DataError


def parse_minmax(text: str) -> Optional[Tuple[float, float]]:
    """"0.2,0.8" -> (0.2, 0.8); "" -> None."""
    if not text:
        return None
    try:
        lo, hi = (float(t) for t in text.split(","))
    except ValueError:
        raise DataError(f"--cutmix_minmax {text!r}: give two ratios \"min,max\", e.g. \"0.2,0.8\"") from None
    return lo, hi


def build_mixup(config, num_classes: int) -> Optional[Mixup]:
    """timm's Mixup (it also smooths the labels) when mixup or cutmix is on, else None."""
    minmax = parse_minmax(config.cutmix_minmax)
    if config.mixup <= 0 and config.cutmix <= 0 and minmax is None:
        return None
    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, cutmix_minmax=minmax,
                 prob=config.mixup_prob, switch_prob=config.mixup_switch_prob, mode=config.mixup_mode,
                 label_smoothing=config.smoothing, num_classes=num_classes)


def build_criterion(config, mixup_active: bool) -> nn.Module:
    """Soft-target CE on mixed labels, else label-smoothing CE, else plain CE."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if config.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    return nn.CrossEntropyLoss()
