"""Knowledge distillation loss (DeiT-style), docs/method.md section 8.

loss = (1 - alpha) * base + alpha * KD, where
  soft: KD = KL(teacher/tau || student/tau) * tau^2, summed and divided by the
        number of student logits (exactly DeiT's normalisation);
  hard: KD = CE(student, argmax(teacher)).
With a distillation-token model the student returns (cls_logits, dist_logits):
the base loss uses the class head, KD uses the distillation head.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

DISTILLATION_TYPES = ("none", "soft", "hard")

Logits = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def split_heads(outputs: Logits) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cls_logits, kd_logits): the distillation head if present, else the class head."""
    if isinstance(outputs, (tuple, list)):
        cls_logits, dist_logits = outputs
        return cls_logits, dist_logits
    return outputs, outputs


def merge_heads(outputs: Logits) -> torch.Tensor:
    """One logits tensor: a two-head output is averaged, as timm does at eval."""
    if isinstance(outputs, (tuple, list)):
        cls_logits, dist_logits = outputs
        return (cls_logits + dist_logits) / 2
    return outputs


def soft_kd(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(teacher/tau || student/tau) * tau^2, summed over all logits / student.numel()."""
    kl = F.kl_div(
        F.log_softmax(student / tau, dim=1),
        F.log_softmax(teacher / tau, dim=1),
        reduction="sum",
        log_target=True,
    )
    return kl * (tau * tau) / student.numel()


def hard_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student to the teacher's argmax class."""
    return F.cross_entropy(student, teacher.argmax(dim=1))


class DistillationLoss(nn.Module):
    """Base criterion blended with a frozen teacher's KD term.

    Args:
        base_criterion: loss on the class head, e.g. soft-target CE under mixup.
        teacher: frozen teacher, run in eval mode under no_grad; may be None
            only when distillation_type is "none".
        distillation_type: "none", "soft" or "hard".
        alpha: weight of the KD term, in [0, 1].
        tau: softmax temperature of the soft KD term, > 0.

    After each forward, ``self.last`` holds the detached 0-dim tensors
    ``{"base", "kd"}`` for logging (no host sync; call ``.item()`` when logging).
    """

    def __init__(
        self,
        base_criterion: nn.Module,
        teacher: Optional[nn.Module],
        distillation_type: str,
        alpha: float,
        tau: float,
    ):
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(
                f"distillation_type must be one of {DISTILLATION_TYPES}, got {distillation_type!r}"
            )
        if distillation_type != "none" and teacher is None:
            raise ValueError(f"distillation_type {distillation_type!r} needs a teacher model")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.base_criterion = base_criterion
        self.teacher = teacher
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.last = {}
        self.train()  # puts the teacher in eval mode

    def train(self, mode: bool = True) -> "DistillationLoss":
        """Switch mode; the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, inputs: torch.Tensor, outputs: Logits, labels: torch.Tensor) -> torch.Tensor:
        cls_logits, kd_logits = split_heads(outputs)
        base = self.base_criterion(cls_logits, labels)
        if self.distillation_type == "none":
            self.last = {"base": base.detach(), "kd": torch.zeros_like(base.detach())}
            return base
        with torch.no_grad():
            teacher_logits = merge_heads(self.teacher(inputs))
        if self.distillation_type == "soft":
            kd = soft_kd(kd_logits, teacher_logits, self.tau)
        else:
            kd = hard_kd(kd_logits, teacher_logits)
        self.last = {"base": base.detach(), "kd": kd.detach()}
        return (1 - self.alpha) * base + self.alpha * kd
