"""DeiT's image transforms for ImageFolder and CIFAR (PIL images in, tensors out).

A grey-scale model (`in_chans` 1) gets the same pipeline on images converted to
PIL mode "L" first, normalised with one channel's mean and std (the mean of
ImageNet's three), so colour and grey files alike become 1-channel tensors.
"""
import torchvision.transforms as T
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

from data.errors import DataError

EVAL_CROP_PCT = 0.875  # eval: resize to img_size / 0.875, centre crop img_size
GREY_MEAN = (sum(IMAGENET_DEFAULT_MEAN) / 3,)
GREY_STD = (sum(IMAGENET_DEFAULT_STD) / 3,)


def build_transform(config, img_size: int, is_training: bool, in_chans: int = 3):
    """Training: timm's RandomResizedCrop + flip, then whatever the recipe adds (colour jitter,
    RandAugment, random erasing); evaluation: resize + centre crop. Bicubic throughout; grey
    models (in_chans 1) get grey images, normalised with grey statistics."""
    norm = dict(mean=GREY_MEAN, std=GREY_STD) if in_chans == 1 else {}
    if is_training and config.aa:
        check_posterize()
    if not is_training:
        transform = create_transform(img_size, is_training=False, interpolation="bicubic",
                                     crop_pct=EVAL_CROP_PCT, **norm)
    else:
        transform = create_transform(
            img_size,
            is_training=True,
            color_jitter=config.color_jitter or None,  # 0: no ColorJitter in the pipeline at all
            auto_augment=config.aa or None,
            interpolation="bicubic",
            re_prob=config.reprob,
            re_mode=config.remode,
            re_count=config.recount,
            **norm,
        )
    return T.Compose([T.Grayscale(num_output_channels=1), transform]) if in_chans == 1 else transform


def check_posterize() -> None:
    """timm's RandAugment posterizes to 0 bits at magnitude 10 (DeiT's "inc1" policy: a black image);
    Pillow 13 refuses that, so a run would crash mid-epoch. Refuse it at start instead."""
    try:
        ImageOps.posterize(Image.new("L", (1, 1)), 0)
    except ValueError:
        import PIL
        raise DataError(f"--aa (RandAugment) needs an image library that posterizes to 0 bits, which Pillow "
                        f"{PIL.__version__} refuses: pip install 'pillow<13' (as requirements.txt pins it)") from None
