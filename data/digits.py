"""scikit-learn's bundled handwritten digits: 1797 grey 8x8 images, 10 classes.

The train/val split is fixed (stratified 80/20, random_state=0) whatever the
run's seed, so every run is evaluated on the same 360 images.
"""
from functools import lru_cache
from typing import Tuple

import torch
from torchvision.transforms import v2

from data.grey import GreyImages, grey_transform

NUM_CLASSES = 10
IMG_SIZE = 8
VAL_FRACTION = 0.2
SPLIT_SEED = 0
SHIFT = 1  # training random crop padding, in pixels
# mean / std of x/16 over the fixed train split (checked in tests/test_data.py)
MEAN = 0.3054
STD = 0.3761


@lru_cache(maxsize=1)
def digits_split() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, val_x, val_y); x in [0, 1] of shape (n, 1, 8, 8), y int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.int64)
    tx, vx, ty, vy = train_test_split(x, y, test_size=VAL_FRACTION, stratify=y, random_state=SPLIT_SEED)
    return tx, ty, vx, vy


def digits_transform(is_training: bool, img_size: int = IMG_SIZE, in_chans: int = 1) -> v2.Compose:
    """Shift by up to 1 pixel when training, normalise, then fit the model's input."""
    return grey_transform(is_training, IMG_SIZE, SHIFT, MEAN, STD, img_size, in_chans)


class Digits(GreyImages):
    """One side of the fixed split."""

    def __init__(self, train: bool, transform=None):
        tx, ty, vx, vy = digits_split()
        super().__init__(*((tx, ty) if train else (vx, vy)), transform=transform)
