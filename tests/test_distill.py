"""DistillationLoss against hand-written softmax / log formulas."""
import pytest
import torch
import torch.nn as nn
from timm.models.deit import VisionTransformerDistilled

from engine.distill import DistillationLoss

B, D, C = 4, 6, 5


def softmax(x):
    e = torch.exp(x - x.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def cross_entropy(logits, labels):
    return -torch.log(softmax(logits))[torch.arange(len(labels)), labels].mean()


def soft_kd_by_hand(student, teacher, tau):
    p_t, p_s = softmax(teacher / tau), softmax(student / tau)
    kl = (p_t * (torch.log(p_t) - torch.log(p_s))).sum()
    return kl * tau * tau / student.numel()


class TwoHeads(nn.Module):
    """A stand-in for a distilled model returning (cls_logits, dist_logits)."""

    def __init__(self):
        super().__init__()
        self.head, self.head_dist = nn.Linear(D, C), nn.Linear(D, C)

    def forward(self, x):
        return self.head(x), self.head_dist(x)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(B, D, generator=g)
    student = torch.randn(B, C, generator=g, requires_grad=True)
    labels = torch.randint(0, C, (B,), generator=g)
    teacher = nn.Linear(D, C)
    return inputs, student, labels, teacher


def test_soft(batch):
    inputs, student, labels, teacher = batch
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), teacher, "soft", alpha=0.3, tau=2.0)
    expected = 0.7 * cross_entropy(student, labels) + 0.3 * soft_kd_by_hand(student, teacher(inputs), 2.0)
    torch.testing.assert_close(loss_fn(inputs, student, labels), expected)
    assert set(loss_fn.last) == {"base", "kd"}


def test_hard(batch):
    inputs, student, labels, teacher = batch
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), teacher, "hard", alpha=0.5, tau=1.0)
    teacher_labels = teacher(inputs).argmax(dim=1)
    expected = 0.5 * cross_entropy(student, labels) + 0.5 * cross_entropy(student, teacher_labels)
    torch.testing.assert_close(loss_fn(inputs, student, labels), expected)


def test_none_needs_no_teacher(batch):
    inputs, student, labels, _ = batch
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), None, "none", alpha=0.5, tau=1.0)
    torch.testing.assert_close(loss_fn(inputs, student, labels), cross_entropy(student, labels))
    assert loss_fn.last["kd"] == 0


def test_soft_targets_reach_base_criterion(batch):
    inputs, student, _, _ = batch
    targets = softmax(torch.randn(B, C))
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), None, "none", alpha=0.0, tau=1.0)
    expected = -(targets * torch.log(softmax(student))).sum(dim=1).mean()
    torch.testing.assert_close(loss_fn(inputs, student, targets), expected)


@pytest.mark.parametrize("kind, teacher", [("bogus", nn.Linear(D, C)), ("soft", None)])
def test_invalid_arguments(kind, teacher):
    with pytest.raises(ValueError):
        DistillationLoss(nn.CrossEntropyLoss(), teacher, kind, alpha=0.5, tau=1.0)


def test_distillation_token_heads(batch):
    inputs, _, labels, teacher = batch
    cls_logits, dist_logits = torch.randn(B, C), torch.randn(B, C)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), teacher, "soft", alpha=0.3, tau=2.0)
    loss = loss_fn(inputs, (cls_logits, dist_logits), labels)
    expected = 0.7 * cross_entropy(cls_logits, labels) + 0.3 * soft_kd_by_hand(dist_logits, teacher(inputs), 2.0)
    torch.testing.assert_close(loss, expected)


def test_two_head_teacher_is_averaged(batch):
    inputs, student, labels, _ = batch
    teacher = TwoHeads()
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), teacher, "soft", alpha=1.0, tau=1.0)
    averaged = (teacher.head(inputs) + teacher.head_dist(inputs)) / 2
    torch.testing.assert_close(loss_fn(inputs, student, labels), soft_kd_by_hand(student, averaged, 1.0))


def test_timm_distilled_student_uses_both_heads():
    model = VisionTransformerDistilled(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=C)
    model.set_distilled_training(True)
    model.train()
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, C))
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), teacher, "hard", alpha=0.5, tau=1.0)
    loss_fn(images, model(images), labels).backward()
    assert model.head.weight.grad.abs().sum() > 0
    assert model.head_dist.weight.grad.abs().sum() > 0


def test_teacher_frozen_and_under_no_grad(batch):
    inputs, student, labels, teacher = batch
    grad_enabled = []
    teacher.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), teacher, "soft", alpha=0.3, tau=2.0)
    loss_fn.train()
    assert not teacher.training
    loss_fn(inputs, student, labels).backward()
    assert grad_enabled == [False]
    assert student.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
