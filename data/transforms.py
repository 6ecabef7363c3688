"""DeiT's image transforms for ImageFolder and CIFAR (RGB PIL images in, tensors out)."""
from timm.data import create_transform

EVAL_CROP_PCT = 0.875  # eval: resize to img_size / 0.875, centre crop img_size


def build_transform(config, img_size: int, is_training: bool):
    """timm's RandAugment / random-erasing pipeline for training, resize + centre crop for eval."""
    if not is_training:
        return create_transform(img_size, is_training=False, interpolation="bicubic",
                                crop_pct=EVAL_CROP_PCT)
    return create_transform(
        img_size,
        is_training=True,
        color_jitter=config.color_jitter,
        auto_augment=config.aa or None,
        interpolation="bicubic",
        re_prob=config.reprob,
        re_mode=config.remode,
        re_count=config.recount,
    )
