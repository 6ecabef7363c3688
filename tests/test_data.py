"""The data package: fixed digits split, synthetic determinism, ImageFolder loading,
one-line DataErrors, loaders, mixup and the base criterion. Nothing is downloaded."""
import os
from collections import Counter

import pytest
import torch
import torch.nn as nn
from PIL import Image
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from data import DataError, build_criterion, build_datasets, build_loaders, build_mixup
from data import digits
from utils.config import CONFIG_DIR, parse_config

DIGITS_CONFIG = os.path.join(CONFIG_DIR, "digits_demo.py")


def make_config(*overrides):
    return parse_config("joint", ["--config", DIGITS_CONFIG, *map(str, overrides)])


@pytest.fixture
def image_folder(tmp_path):
    """<tmp>/train and <tmp>/val, 2 classes x 4 tiny RGB PNGs each."""
    for split in ("train", "val"):
        for label, colour in enumerate(("red", "blue")):
            folder = tmp_path / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20 + i, 24), colour).save(folder / f"{i}.png")
    return tmp_path


# --- digits ------------------------------------------------------------------

def test_digits_split_is_fixed_and_stratified():
    train, val, num_classes = build_datasets(make_config("--seed", 1), 8, 1)
    assert (len(train), len(val), num_classes) == (1437, 360, 10)
    counts_val, counts_all = Counter(val.targets.tolist()), Counter(train.targets.tolist())
    counts_all.update(counts_val)
    for c in range(10):
        assert abs(counts_val[c] - 0.2 * counts_all[c]) <= 1
    other_val = build_datasets(make_config("--seed", 2), 8, 1)[1]
    assert torch.equal(val.images, other_val.images)


def test_digits_normalisation_constants_match_train_split():
    x = digits.digits_split()[0]
    assert x.mean().item() == pytest.approx(digits.MEAN, abs=1e-4)
    assert x.std().item() == pytest.approx(digits.STD, abs=1e-4)


def test_digits_items_and_augmentation():
    train, val, _ = build_datasets(make_config(), 8, 1)
    x, y = val[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    expected = (val.images[0] - digits.MEAN) / digits.STD
    assert torch.allclose(x, expected) and torch.equal(val[0][0], x)  # no augmentation on val
    torch.manual_seed(0)
    shifted = [train[0][0] for _ in range(20)]
    assert any(not torch.equal(s, shifted[0]) for s in shifted)


def test_digits_fit_an_rgb_model():
    train, val, _ = build_datasets(make_config(), 32, 3)
    x, _ = val[0]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[2])
    assert train[0][0].shape == (3, 32, 32)


# --- synthetic ---------------------------------------------------------------

def test_synthetic_is_deterministic():
    config = make_config("--dataset", "synthetic", "--synthetic_size", 16)
    train, val, num_classes = build_datasets(config, 12, 3)
    again_train, again_val, _ = build_datasets(config, 12, 3)
    assert (len(train), len(val), num_classes) == (16, 4, 10)
    x, y = train[5]
    assert x.shape == (3, 12, 12) and 0 <= y < 10
    assert torch.equal(x, again_train[5][0]) and y == again_train[5][1]
    assert torch.equal(val[0][0], again_val[0][0]) and not torch.equal(val[0][0], train[0][0])


# --- ImageFolder ---------------------------------------------------------------

def test_image_folder_through_loaders(image_folder):
    config = make_config("--dataset", "imagenet", "--data_dir", image_folder, "--train_batch_size", 4,
                         "--eval_batch_size", 8, "--aa", "rand-m9-mstd0.5-inc1", "--reprob", 0.25)
    train, val, num_classes = build_datasets(config, 32, 3)
    assert (len(train), len(val), num_classes) == (8, 8, 2)
    train_loader, val_loader, sampler = build_loaders(config, train, val, False, 1, 0, seed=0)
    batches = list(train_loader)
    assert len(batches) == 2
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, y = next(iter(val_loader))
    assert x.shape == (8, 3, 32, 32) and y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # red images: after ImageNet normalisation R is high, B is low
    assert (x[0, 0] > x[0, 2]).all() and (x[4, 2] > x[4, 0]).all()


def test_recipes_train_and_eval_pipelines():
    """The reference recipe trains on RandomResizedCrop + flip only, DeiT's adds RandAugment and random
    erasing; both evaluate at resize 256 + centre crop 224, bicubic."""
    from data.transforms import build_transform

    def steps(*argv, training=True):
        return [type(t).__name__ for t in build_transform(parse_config("post", list(argv)), 224, training).transforms]

    assert steps() == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybeToTensor", "Normalize"]
    assert steps("--recipe", "deit") == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment",
                                         "MaybeToTensor", "Normalize", "RandomErasing"]
    resize, crop = build_transform(parse_config("post", []), 224, False).transforms[:2]
    assert (resize.size, str(resize.interpolation.value), crop.size) == (256, "bicubic", (224, 224))



def test_deit_randaugment_runs_every_op_at_full_magnitude():
    """DeiT's policy (rand-m9-mstd0.5-inc1) reaches magnitude 10, where posterize keeps 0 bits: every op
    at that magnitude must run on RGB and grey images (Pillow 13 crashed mid-epoch on it)."""
    from timm.data.auto_augment import rand_augment_transform

    for mode, fill in (("RGB", (124, 116, 104)), ("L", (115,))):  # fill: the mean, as create_transform sets it
        for op in rand_augment_transform("rand-m9-mstd0.5-inc1", {"img_mean": fill}).ops:
            op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
            assert op(Image.new(mode, (16, 16), "white")).size == (16, 16), op.name


def test_randaugment_refused_in_one_line_where_pillow_cannot_posterize_to_zero_bits(monkeypatch):
    from data import transforms

    def strict(img, bits):
        raise ValueError("bits must be between or equal to 1 and 8")

    monkeypatch.setattr(transforms.ImageOps, "posterize", strict)
    with pytest.raises(DataError, match="pillow<13") as info:
        transforms.build_transform(parse_config("post", ["--recipe", "deit"]), 32, True)
    assert "\n" not in str(info.value)
    reference = transforms.build_transform(parse_config("post", []), 32, True)  # the reference recipe: no RandAugment
    assert "RandAugment" not in repr(reference)
    assert tuple(reference(Image.new("RGB", (40, 40), "white")).shape) == (3, 32, 32)


def test_mean_std_and_crop_pct_replace_imagenets():
    """--mean/--std (one value per channel, or one for all) and --crop_pct, as timm's flags of the same names."""
    from data.transforms import DEFAULT_CROP_PCT, build_transform

    def pipeline(*argv, training=False, in_chans=3):
        return build_transform(parse_config("post", list(argv)), 28, training, in_chans).transforms

    assert parse_config("post", []).crop_pct == DEFAULT_CROP_PCT
    resize, crop, _, norm = pipeline()
    assert resize.size == 32 and norm.mean.tolist() == pytest.approx([0.485, 0.456, 0.406])
    resize, crop, _, norm = pipeline("--crop_pct", "1", "--mean", "0.5", "--std", "0.1,0.2,0.3")
    assert resize.size == 28 and norm.mean.tolist() == [0.5] * 3 and norm.std.tolist() == pytest.approx([0.1, 0.2, 0.3])
    grey = pipeline("--mean", "0.1311", "--std", "0.3083", in_chans=1)[1].transforms
    assert grey[-1].mean.tolist() == pytest.approx([0.1311]) and grey[-1].std.tolist() == pytest.approx([0.3083])
    assert pipeline("--mean", "0.2", training=True)[-1].mean.tolist() == pytest.approx([0.2] * 3)
    for argv, match in ((["--mean", "0.1,0.2"], "--mean '0.1,0.2': give 3 comma-separated"),
                        (["--std", "0"], "--std '0': give 3 comma-separated positive"),
                        (["--mean", "x"], "--mean 'x'"), (["--crop_pct", "1.5"], "--crop_pct 1.5 must lie in")):
        with pytest.raises(DataError, match=match) as info:
            pipeline(*argv)
        assert "\n" not in str(info.value)

def test_train_order_depends_on_seed_and_epoch():
    config = make_config("--dataset", "synthetic", "--synthetic_size", 32, "--train_batch_size", 32)
    train, val, _ = build_datasets(config, 4, 1)

    def order(seed, epoch):
        _, _, sampler = build_loaders(config, train, val, False, 1, 0, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)


def test_distributed_samplers_split_the_data():
    config = make_config("--dataset", "synthetic", "--synthetic_size", 16, "--train_batch_size", 4,
                         "--eval_batch_size", 3)
    train, val, _ = build_datasets(config, 4, 1)
    seen = []
    for rank in range(2):
        train_loader, val_loader, sampler = build_loaders(config, train, val, True, 2, rank, seed=0)
        assert (train_loader.batch_size, val_loader.batch_size) == (4, 3)  # per process
        sampler.set_epoch(0)
        seen += list(sampler)
    assert sorted(seen) == list(range(16))


# --- errors --------------------------------------------------------------------

def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    config = make_config("--dataset", "imagenet", "--data_dir", missing)
    with pytest.raises(DataError, match="ImageFolder") as info:
        build_datasets(config, 32, 3)
    assert str(missing / "train") in str(info.value) and "\n" not in str(info.value)


def test_empty_image_folder(tmp_path):
    (tmp_path / "train" / "class0").mkdir(parents=True)
    (tmp_path / "val" / "class0").mkdir(parents=True)
    config = make_config("--dataset", "imagenet", "--data_dir", tmp_path)
    with pytest.raises(DataError, match=str(tmp_path / "train")):
        build_datasets(config, 32, 3)


def test_differing_class_folders_are_named(image_folder):
    (image_folder / "val" / "class1").rename(image_folder / "val" / "clas1")
    config = make_config("--dataset", "imagenet", "--data_dir", image_folder)
    with pytest.raises(DataError) as info:
        build_datasets(config, 32, 3)
    message = str(info.value)
    assert "only in val/ clas1, only in train/ class1" in message and "\n" not in message


def test_grey_model_gets_one_channel_from_colour_images(image_folder):
    """in_chans 1: the ImageFolder/CIFAR pipeline converts PIL images to grey first, train and eval alike;
    a model of another channel count is refused in one line."""
    from data.transforms import build_transform

    config = make_config("--dataset", "imagenet", "--data_dir", image_folder, "--aa", "rand-m9-mstd0.5-inc1",
                         "--reprob", 0.5, "--color_jitter", 0.4)
    train, val, _ = build_datasets(config, 16, 1)
    for _ in range(5):  # RandAugment, colour jitter and erasing on grey images
        assert train[0][0].shape == (1, 16, 16)
    assert val[0][0].shape == (1, 16, 16)
    assert build_transform(config, 12, False, 1)(Image.new("RGB", (30, 20), "red")).shape == (1, 12, 12)
    with pytest.raises(DataError, match="use a model with --in_chans 3 or 1"):
        build_datasets(config, 16, 2)


def test_cifar_missing_without_download(tmp_path):
    config = make_config("--dataset", "cifar10", "--data_dir", tmp_path, "--download", 0)
    with pytest.raises(DataError, match="--download 1") as info:
        build_datasets(config, 32, 3)
    assert str(tmp_path) in str(info.value)


def test_unknown_dataset():
    config = make_config()
    with config.unlocked():
        config.dataset = "svhn"
    with pytest.raises(DataError, match="imagenet, cifar10, cifar100, digits, mnist, synthetic"):
        build_datasets(config, 8, 1)


@pytest.mark.parametrize("batch, world_size", [(33, 1), (17, 2)])
def test_batch_size_must_fit(batch, world_size):
    """The per-process batch must fit one process's share of the 32 images."""
    config = make_config("--dataset", "synthetic", "--synthetic_size", 32, "--train_batch_size", batch)
    train, val, _ = build_datasets(config, 4, 1)
    with pytest.raises(DataError, match=f"at most {32 // world_size}$"):
        build_loaders(config, train, val, world_size > 1, world_size, 0, seed=0)
    fits = make_config("--dataset", "synthetic", "--synthetic_size", 32, "--train_batch_size", batch - 1)
    assert build_loaders(fits, train, val, world_size > 1, world_size, 0, seed=0)[0].batch_size == batch - 1


# --- mixup and criterion ------------------------------------------------------

def test_build_mixup():
    assert build_mixup(make_config(), 10) is None
    mixup = build_mixup(make_config("--mixup", 0.8, "--cutmix", 1.0), 10)
    assert isinstance(mixup, Mixup) and mixup.label_smoothing == pytest.approx(0.1)
    x, y = mixup(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert y.shape == (4, 10) and torch.allclose(y.sum(1), torch.ones(4))
    assert isinstance(build_mixup(make_config("--cutmix_minmax", "0.2,0.8"), 10), Mixup)
    with pytest.raises(DataError, match="cutmix_minmax"):
        build_mixup(make_config("--cutmix_minmax", "0.2"), 10)


def test_build_criterion():
    assert isinstance(build_criterion(make_config(), mixup_active=True), SoftTargetCrossEntropy)
    assert isinstance(build_criterion(make_config("--smoothing", 0.1), False), LabelSmoothingCrossEntropy)
    criterion = build_criterion(make_config("--smoothing", 0.0), False)
    assert type(criterion) is nn.CrossEntropyLoss


def _break_images(folder):
    """One file that is not an image and one truncated PNG in the training set."""
    (folder / "train" / "class0" / "0.png").write_bytes(b"not an image at all")
    whole = (folder / "train" / "class1" / "1.png").read_bytes()
    (folder / "train" / "class1" / "1.png").write_bytes(whole[: len(whole) // 2])


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_named_in_one_line(image_folder, workers):
    _break_images(image_folder)
    config = make_config("--dataset", "imagenet", "--data_dir", image_folder, "--num_workers", workers)
    train, _, _ = build_datasets(config, 32, 3)
    loader = torch.utils.data.DataLoader(train, batch_size=8, num_workers=workers)
    with pytest.raises(DataError) as info:
        list(loader)
    message = str(info.value)
    assert "\n" not in message and "cannot read image" in message and "--skip_bad_images 1" in message
    assert str(image_folder / "train" / "class0" / "0.png") in message


def test_skip_bad_images_skips_and_names_each_once(image_folder, capsys):
    _break_images(image_folder)
    config = make_config("--dataset", "imagenet", "--data_dir", image_folder, "--skip_bad_images", "1")
    train, _, _ = build_datasets(config, 32, 3)
    items = [train[i] for i in range(len(train))] + [train[0]]
    assert len(items) == 9 and all(image.shape == (3, 32, 32) for image, _ in items)
    err = capsys.readouterr().err
    assert err.count("skipped unreadable image") == 2 and "0.png" in err and "1.png" in err
