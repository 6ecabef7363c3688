"""DeiT's image transforms for ImageFolder and CIFAR (PIL images in, tensors out).

A grey-scale model (`in_chans` 1) gets the same pipeline on images converted to
PIL mode "L" first, normalised with one channel's mean and std (the mean of
ImageNet's three), so colour and grey files alike become 1-channel tensors.
`--mean`, `--std` and `--crop_pct` replace ImageNet's statistics and evaluation
crop (timm's flags of the same names), e.g. for data of other statistics.
"""
import torchvision.transforms as T
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

from data.errors import DataError

DEFAULT_CROP_PCT = 0.875  # configs/common.py's crop_pct: ImageNet's resize 256, centre crop 224


def build_transform(config, img_size: int, is_training: bool, in_chans: int = 3):
    """Training: timm's RandomResizedCrop + flip, then whatever the recipe adds (colour jitter,
    RandAugment, random erasing); evaluation: resize + centre crop (--crop_pct). Bicubic throughout;
    grey models (in_chans 1) get grey images. Normalised as `normalisation` says."""
    norm = normalisation(config, in_chans)
    if is_training and config.aa:
        check_posterize()
    if not is_training:
        if not 0.0 < float(config.crop_pct) <= 1.0:
            raise DataError(f"--crop_pct {config.crop_pct} must lie in (0, 1]: evaluation resizes to "
                            f"input_size / crop_pct and crops the centre (1: no crop)")
        transform = create_transform(img_size, is_training=False, interpolation="bicubic",
                                     crop_pct=float(config.crop_pct), **norm)
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


def normalisation(config, in_chans: int) -> dict:
    """{"mean", "std"} per channel: --mean / --std (one value, or one per channel), else ImageNet's
    (their average for a grey model)."""
    out = {}
    for key, default in (("mean", IMAGENET_DEFAULT_MEAN), ("std", IMAGENET_DEFAULT_STD)):
        text = str(config[key]).strip()
        if not text:
            out[key] = tuple(default) if in_chans == 3 else (sum(default) / 3,) * in_chans
            continue
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) not in (1, in_chans) or (key == "std" and min(values) <= 0):
            raise DataError(f"--{key} {text!r}: give {in_chans} comma-separated {'positive ' if key == 'std' else ''}"
                            f"numbers (one per channel of the model) or one for all")
        out[key] = values * (in_chans // len(values))
    return out


def check_posterize() -> None:
    """timm's RandAugment posterizes to 0 bits at magnitude 10 (DeiT's "inc1" policy: a black image);
    Pillow 13 refuses that, so a run would crash mid-epoch. Refuse it at start instead."""
    try:
        ImageOps.posterize(Image.new("L", (1, 1)), 0)
    except ValueError:
        import PIL
        raise DataError(f"--aa (RandAugment) needs an image library that posterizes to 0 bits, which Pillow "
                        f"{PIL.__version__} refuses: pip install 'pillow<13' (as requirements.txt pins it)") from None
