"""DeiT's image transforms for ImageFolder and CIFAR (RGB PIL images in, tensors out)."""
from timm.data import create_transform

EVAL_CROP_PCT = 0.875  # eval: resize to img_size / 0.875, centre crop img_size


def build_transform(config, img_size: int, is_training: bool):
    """Training: timm's RandomResizedCrop + flip, then whatever the recipe adds (colour jitter,
    RandAugment, random erasing); evaluation: resize + centre crop. Bicubic throughout."""
    if not is_training:
        return create_transform(img_size, is_training=False, interpolation="bicubic",
                                crop_pct=EVAL_CROP_PCT)
    return create_transform(
        img_size,
        is_training=True,
        color_jitter=config.color_jitter or None,  # 0: no ColorJitter in the pipeline at all
        auto_augment=config.aa or None,
        interpolation="bicubic",
        re_prob=config.reprob,
        re_mode=config.remode,
        re_count=config.recount,
    )
