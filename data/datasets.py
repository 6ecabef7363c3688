"""`build_datasets`: the config's data set as (train_set, val_set, num_classes);
`build_eval_dataset`: its validation split alone (python -m uvc.evaluate)."""
import os
import sys
from typing import Tuple

from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets

from data import digits, mnist
from data.errors import DataError
from data.synthetic import Synthetic
from data.transforms import DEFAULT_CROP_PCT, build_transform

DATASETS = ("imagenet", "cifar10", "cifar100", "digits", "mnist", "synthetic")
SYNTHETIC_CLASSES = 10
_SYNTHETIC_VAL_SEED = 2 ** 31  # far from the train images' seeds 0 .. synthetic_size


def build_datasets(config, img_size: int, in_chans: int) -> Tuple[Dataset, Dataset, int]:
    """(train_set, val_set, num_classes) for config.dataset, images as the model expects."""
    builders = {"imagenet": _imagenet, "cifar10": _cifar, "cifar100": _cifar,
                "digits": _digits, "mnist": _mnist, "synthetic": _synthetic}
    if config.dataset not in builders:
        raise DataError(f"unknown --dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    return builders[config.dataset](config, img_size, in_chans)


def build_eval_dataset(config, img_size: int, in_chans: int) -> Tuple[Dataset, int]:
    """(val_set, num_classes) for config.dataset, without touching the training split."""
    if config.dataset not in DATASETS:
        raise DataError(f"unknown --dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    if config.dataset == "imagenet":
        _check_channels(config, in_chans)
        val = _image_folder(config, "val", build_transform(config, img_size, False, in_chans))
        return val, len(val.classes)
    if config.dataset in ("cifar10", "cifar100"):
        _check_channels(config, in_chans)
        cls = tv_datasets.CIFAR10 if config.dataset == "cifar10" else tv_datasets.CIFAR100
        if not config.data_dir:
            raise DataError(f"--dataset {config.dataset} needs --data_dir (where the CIFAR files are or go)")
        val = _load_cifar(config, cls, False, build_transform(config, img_size, False, in_chans))
        return val, len(val.classes)
    if config.dataset in ("digits", "mnist"):
        _check_grey_normalisation(config)
    if config.dataset == "digits":
        return digits.Digits(False, digits.digits_transform(False, img_size, in_chans)), digits.NUM_CLASSES
    if config.dataset == "mnist":
        return mnist.MNIST(False, mnist.mnist_transform(False, img_size, in_chans), config.data_dir), mnist.NUM_CLASSES
    _, val, num_classes = _synthetic(config, img_size, in_chans)
    return val, num_classes


def _check_channels(config, in_chans: int) -> None:
    """Image files become RGB (3 channels) or grey (1 channel) tensors, as the model takes them."""
    if in_chans not in (1, 3):
        raise DataError(f"--dataset {config.dataset} gives RGB or grey images but the model takes "
                        f"{in_chans} channels; use a model with --in_chans 3 or 1")


def _imagenet(config, img_size: int, in_chans: int):
    _check_channels(config, in_chans)
    train = _image_folder(config, "train", build_transform(config, img_size, True, in_chans))
    val = _image_folder(config, "val", build_transform(config, img_size, False, in_chans))
    if val.classes != train.classes:
        only_val, only_train = sorted(set(val.classes) - set(train.classes)), sorted(set(train.classes) - set(val.classes))
        raise DataError(f"the class folders of {os.path.join(config.data_dir, 'val')} differ from those of "
                        f"{os.path.join(config.data_dir, 'train')}: only in val/ {_few(only_val)}, only in train/ "
                        f"{_few(only_train)}; both need the same <class> folders")
    return train, val, len(train.classes)


def _few(names, at_most: int = 5) -> str:
    """['a', 'b', ...] named in a message, at most `at_most` of them."""
    if not names:
        return "none"
    shown = ", ".join(names[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def _image_folder(config, split: str, transform) -> tv_datasets.ImageFolder:
    root = os.path.join(config.data_dir, split)
    layout = ("--dataset imagenet expects an ImageFolder with <data_dir>/train/<class>/*.jpg "
              "and <data_dir>/val/<class>/*.jpg")
    if not os.path.isdir(root):
        raise DataError(f"data dir {root} not found: {layout}")
    try:
        return CheckedImageFolder(root, transform=transform, skip_bad=bool(config.skip_bad_images))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"data dir {root} has no images ({e}): {layout}") from None


class CheckedImageFolder(tv_datasets.ImageFolder):
    """An ImageFolder whose unreadable image (corrupt, truncated, not an image) is named in one
    line, or with `skip_bad` skipped: the next readable image of the folder stands in for it, and
    each skip is printed once per process."""

    def __init__(self, root: str, transform=None, skip_bad: bool = False):
        super().__init__(root, transform=transform)
        self.skip_bad = skip_bad
        self.skipped = set()

    def __getitem__(self, index: int):
        for offset in range(len(self.samples)):
            path, target = self.samples[(index + offset) % len(self.samples)]
            try:
                image = self.loader(path)  # PIL decodes here: convert("RGB") loads the whole file
            except (OSError, SyntaxError) as e:  # UnidentifiedImageError, truncated or corrupt files
                if not self.skip_bad:
                    raise DataError(f"cannot read image {path} ({type(e).__name__}: {e}); remove or replace "
                                    f"it, or pass --skip_bad_images 1 to skip unreadable images") from None
                if path not in self.skipped:
                    self.skipped.add(path)
                    print(f"skipped unreadable image {path} ({type(e).__name__}: {e}); "
                          f"{len(self.skipped)} skipped in this process", file=sys.stderr, flush=True)
                continue
            image = self.transform(image) if self.transform is not None else image
            return image, (self.target_transform(target) if self.target_transform is not None else target)
        raise DataError(f"no image of {self.root} can be read")


def _cifar(config, img_size: int, in_chans: int):
    _check_channels(config, in_chans)
    cls = tv_datasets.CIFAR10 if config.dataset == "cifar10" else tv_datasets.CIFAR100
    if not config.data_dir:
        raise DataError(f"--dataset {config.dataset} needs --data_dir (where the CIFAR files are or go)")
    train = _load_cifar(config, cls, True, build_transform(config, img_size, True, in_chans))
    val = _load_cifar(config, cls, False, build_transform(config, img_size, False, in_chans))
    return train, val, len(train.classes)


def _load_cifar(config, cls, train: bool, transform):
    download = bool(config.download)
    try:
        return cls(config.data_dir, train=train, transform=transform, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"{config.dataset} not found in data dir {config.data_dir} ({e}); pass --download 1 "
                        f"or put the extracted {cls.base_folder}/ there") from None
    except OSError as e:  # download=True without network, unwritable dir, ...
        raise DataError(f"could not download {config.dataset} to {config.data_dir}: {e}") from None


def _check_grey_augmentation(config) -> None:
    """The in-memory grey sets train with a random shift only: image augmentations meant for
    photos would be parsed and ignored, so they are refused."""
    _check_grey_normalisation(config)
    given = [k for k in ("aa", "reprob", "color_jitter") if config[k]]
    if given:
        reset = " ".join(f"--{k} ''" if k == "aa" else f"--{k} 0" for k in given)
        raise DataError(f"--dataset {config.dataset} trains with a random shift only and does not apply "
                        f"{', '.join('--' + k for k in given)}; set {reset} (--recipe deit sets them for photos)")


def _check_grey_normalisation(config) -> None:
    """They normalise with their own statistics and never crop: --mean, --std, --crop_pct are refused."""
    given = [k for k in ("mean", "std") if str(config[k]).strip()]
    if config.crop_pct != DEFAULT_CROP_PCT:
        given.append("crop_pct")
    if given:
        raise DataError(f"--dataset {config.dataset} normalises with its own statistics and does not crop: "
                        f"{', '.join('--' + k for k in given)} apply to image files (--dataset imagenet, cifar)")


def _digits(config, img_size: int, in_chans: int):
    _check_grey_augmentation(config)
    train = digits.Digits(True, digits.digits_transform(True, img_size, in_chans))
    val = digits.Digits(False, digits.digits_transform(False, img_size, in_chans))
    return train, val, digits.NUM_CLASSES


def _mnist(config, img_size: int, in_chans: int):
    _check_grey_augmentation(config)
    train = mnist.MNIST(True, mnist.mnist_transform(True, img_size, in_chans), config.data_dir)
    val = mnist.MNIST(False, mnist.mnist_transform(False, img_size, in_chans), config.data_dir)
    return train, val, mnist.NUM_CLASSES


def _synthetic(config, img_size: int, in_chans: int):
    size = int(config.synthetic_size)
    if size < 4:
        raise DataError(f"--synthetic_size {size} is too small; give at least 4 (a quarter is the val set)")
    train = Synthetic(size, img_size, in_chans, SYNTHETIC_CLASSES, seed=0)
    val = Synthetic(size // 4, img_size, in_chans, SYNTHETIC_CLASSES, seed=_SYNTHETIC_VAL_SEED)
    return train, val, SYNTHETIC_CLASSES
