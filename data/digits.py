"""scikit-learn's bundled handwritten digits: 1797 grey 8x8 images, 10 classes.

The train/val split is fixed (stratified 80/20, random_state=0) whatever the
run's seed, so every run is evaluated on the same 360 images.
"""
from functools import lru_cache
from typing import Tuple

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

NUM_CLASSES = 10
IMG_SIZE = 8
VAL_FRACTION = 0.2
SPLIT_SEED = 0
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


class RepeatChannels(torch.nn.Module):
    """(1, H, W) -> (n, H, W), so grey digits feed an RGB model."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(self.n, -1, -1).contiguous()


def digits_transform(is_training: bool, img_size: int = IMG_SIZE, in_chans: int = 1) -> v2.Compose:
    """Shift by up to 1 pixel when training, normalise, then fit the model's input."""
    steps = [v2.RandomCrop(IMG_SIZE, padding=1)] if is_training else []
    steps.append(v2.Normalize([MEAN], [STD]))
    if img_size != IMG_SIZE:
        steps.append(v2.Resize((img_size, img_size), interpolation=v2.InterpolationMode.BILINEAR,
                               antialias=True))
    if in_chans != 1:
        steps.append(RepeatChannels(in_chans))
    return v2.Compose(steps)


class Digits(Dataset):
    """One side of the fixed split; items are (image tensor, int label)."""

    def __init__(self, train: bool, transform=None):
        tx, ty, vx, vy = digits_split()
        self.images, self.targets = (tx, ty) if train else (vx, vy)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        x = self.images[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[index])
