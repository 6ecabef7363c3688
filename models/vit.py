"""DeiT/ViT students and teachers, built on timm's VisionTransformer.

The weight layout is timm's (= the official DeiT release's), so official
checkpoints load without conversion. The small `vit_digits_*` and `vit_mnist_*`
variants are the CPU demos' models (8x8 grey digits with patch 2; 28x28 grey MNIST
with patch 4), registered with timm the same way as timm's own DeiT functions.
"""
from typing import Optional

import torch.nn as nn
import timm
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

# ImageNet DeiT variants accepted by --model_type (their `_distilled` forms too).
DEIT_TYPES = (
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_base_patch16_384",
)


def _demo_vit(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    if pretrained:
        raise ValueError(f"{variant} has no released weights; train it with post_train.py --pretrained 0")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)  # passed by timm.create_model to every builder
    return VisionTransformer(**kwargs)


@register_model
def vit_digits_patch2_8(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The demo model: width 64, depth 8, 4 heads, 8x8x1 input, patch 2 (16 patches), 0.4M params."""
    args = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64, depth=8, num_heads=4)
    return _demo_vit("vit_digits_patch2_8", pretrained, **dict(args, **kwargs))


@register_model
def vit_digits_tiny_patch2_8(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A smaller test model: width 32, depth 4, 2 heads, 8x8x1 input, patch 2."""
    args = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=4, num_heads=2)
    return _demo_vit("vit_digits_tiny_patch2_8", pretrained, **dict(args, **kwargs))


@register_model
def vit_mnist_patch4_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The MNIST benchmark model: width 64, depth 8, 4 heads, 28x28x1 input, patch 4 (49 patches), 0.4M params."""
    args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=8, num_heads=4)
    return _demo_vit("vit_mnist_patch4_28", pretrained, **dict(args, **kwargs))


DIGITS_TYPES = ("vit_digits_patch2_8", "vit_digits_tiny_patch2_8")
MNIST_TYPES = ("vit_mnist_patch4_28",)
DEMO_TYPES = DIGITS_TYPES + MNIST_TYPES  # the CPU demos' models: no released weights, no distilled form
MODEL_TYPES = DEIT_TYPES + DEMO_TYPES


def resolve_model_type(model_type: str, enable_deit: int = 0) -> str:
    """The timm name: `--enable_deit 1` selects the distillation-token variant."""
    base = model_type.replace("_distilled", "")
    if base not in MODEL_TYPES:
        raise ValueError(f"unknown --model_type {model_type!r}; choose one of {', '.join(MODEL_TYPES)} "
                         f"(add --enable_deit 1 for the distillation-token form)")
    distilled = bool(enable_deit) or "_distilled" in model_type
    if distilled:
        if base in DEMO_TYPES:
            raise ValueError(f"{base} has no distillation-token form; use --enable_deit 0")
        return base.replace("_patch", "_distilled_patch")
    return base


def create_model(model_type: str, num_classes: Optional[int] = None, enable_deit: int = 0,
                 drop_path_rate: float = 0.0, img_size: Optional[int] = None) -> VisionTransformer:
    """Build a randomly initialised model (load weights with models.load_pretrained).

    Args:
        model_type: one of MODEL_TYPES, optionally with `_distilled`.
        num_classes: classifier width (default: the variant's own, 1000 or 10).
        enable_deit: 1 for the distillation-token variant.
        drop_path_rate: stochastic depth rate.
        img_size: input resolution (default: the variant's own).
    """
    name = resolve_model_type(model_type, enable_deit)
    kwargs = dict(drop_path_rate=drop_path_rate)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size:
        kwargs["img_size"] = img_size
    model = timm.create_model(name, pretrained=False, **kwargs)
    return model


def is_distilled(model: nn.Module) -> bool:
    return getattr(model, "dist_token", None) is not None


def set_fused_attn(model: nn.Module, enabled: bool) -> None:
    """Toggle timm's fused attention on every attention module (fvcore needs it off)."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = enabled
