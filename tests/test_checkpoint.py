"""Checkpoint reading and loading: layouts, refusals, head/pos_embed adaptation, bad files, offline URLs."""
import argparse
import fractions

import pytest
import torch

from models import create_model
from models.checkpoint import (CheckpointError, CheckpointWarning, extract_state_dict, load_pretrained,
                               read_checkpoint)

TINY = "vit_digits_tiny_patch2_8"


def _tiny(**kwargs):
    torch.manual_seed(kwargs.pop("seed", 0))
    return create_model(TINY, **kwargs)


def _assert_same(model, sd):
    got = model.state_dict()
    assert got.keys() == sd.keys()
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


def _save(obj, tmp_path, name="ck.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


@pytest.fixture(scope="module")
def deit_tiny_sd():
    torch.manual_seed(0)
    return create_model("deit_tiny_patch16_224").state_dict()


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """Point torch.hub at tmp_path and clear proxies, so nothing is cached globally or routed out."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


# ---------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("layout", ["model", "state_dict_ema", "state_dict", "bare", "module"])
def test_round_trip_every_layout(tmp_path, layout):
    sd = _tiny(seed=1).state_dict()
    obj = {
        "model": {"model": sd, "epoch": 3},
        "state_dict_ema": {"state_dict_ema": sd, "epoch": 3},
        "state_dict": {"state_dict": sd, "epoch": 3},
        "bare": sd,
        "module": {"model": {"module." + k: v for k, v in sd.items()}},
    }[layout]
    model = _tiny(seed=2)
    info = load_pretrained(model, _save(obj, tmp_path))
    _assert_same(model, sd)
    assert info["missing"] == [] and info["unexpected"] == []
    assert not info["reinitialized_head"] and not info["resampled_pos_embed"]


def test_ema_preferred_over_raw_weights():
    ema, raw = {"w": torch.ones(1)}, {"w": torch.zeros(1)}
    assert extract_state_dict({"state_dict": raw, "state_dict_ema": ema}) is not raw
    assert torch.equal(extract_state_dict({"state_dict": raw, "state_dict_ema": ema})["w"], ema["w"])


def test_official_deit_layout_loads_weights_only(tmp_path, deit_tiny_sd):
    path = _save({"model": deit_tiny_sd}, tmp_path)
    assert torch.load(path, map_location="cpu", weights_only=True).keys() == {"model"}
    torch.manual_seed(1)
    model = create_model("deit_tiny_patch16_224")
    load_pretrained(model, path)
    _assert_same(model, deit_tiny_sd)


def test_deit_training_checkpoint_with_args_loads(tmp_path):
    sd = _tiny(seed=1).state_dict()
    path = _save({"model": sd, "args": argparse.Namespace(lr=5e-4, model="deit_tiny"), "epoch": 299}, tmp_path)
    model = _tiny(seed=2)
    load_pretrained(model, path)
    _assert_same(model, sd)


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="expected .*'model'.*state_dict_ema.*state_dict"):
        extract_state_dict({"optimizer": {"lr": 1.0}, "epoch": 3})
    with pytest.raises(CheckpointError, match="no state dict"):
        load_pretrained(_tiny(), _save([torch.zeros(1)], tmp_path))


# ---------------------------------------------------------------------------- refusals

def _one_line_error(model, path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, path, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_other_variant_is_refused_naming_both_shapes(tmp_path):
    path = _save({"model": _tiny().state_dict()}, tmp_path)
    big = create_model("vit_digits_patch2_8")
    msg = _one_line_error(big, path, model_type="vit_digits_patch2_8")
    assert "does not match vit_digits_patch2_8" in msg
    assert "cls_token is [1, 1, 32] in the file but [1, 1, 64] in the model" in msg
    assert "another variant" in msg


def test_other_depth_is_refused_naming_keys(tmp_path):
    from timm.models.vision_transformer import VisionTransformer
    shallow = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32,
                                depth=2, num_heads=2)
    msg = _one_line_error(_tiny(), _save(shallow.state_dict(), tmp_path))
    assert "lacks blocks.2." in msg


def test_distilled_checkpoint_into_plain_model_is_refused(tmp_path, deit_tiny_sd):
    torch.manual_seed(0)
    distilled_sd = create_model("deit_tiny_patch16_224", enable_deit=1).state_dict()
    plain = create_model("deit_tiny_patch16_224")
    msg = _one_line_error(plain, _save({"model": distilled_sd}, tmp_path))
    assert "dist_token" in msg and "--enable_deit 1" in msg
    distilled = create_model("deit_tiny_patch16_224", enable_deit=1)
    msg = _one_line_error(distilled, _save({"model": deit_tiny_sd}, tmp_path, "plain.pth"))
    assert "--enable_deit 0" in msg
    load_pretrained(distilled, _save({"model": distilled_sd}, tmp_path, "distilled.pth"))
    _assert_same(distilled, distilled_sd)


# ---------------------------------------------------------------------------- adaptation

def test_head_of_other_class_count_is_reinitialised(tmp_path):
    sd = _tiny(num_classes=5, seed=1).state_dict()
    path = _save({"model": sd}, tmp_path)
    model = _tiny(seed=2)
    fresh_head = model.head.weight.detach().clone()
    with pytest.warns(CheckpointWarning, match="5-class head, the model has 10 classes"):
        info = load_pretrained(model, path)
    assert info["reinitialized_head"] and set(info["unexpected"]) == {"head.weight", "head.bias"}
    assert torch.equal(model.head.weight, fresh_head)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items() if not k.startswith("head."))
    with pytest.raises(CheckpointError, match="5 classes but the model's has 10"):
        load_pretrained(_tiny(), path, num_classes_ok=False)


def test_pos_embed_of_other_resolution_is_resampled(tmp_path):
    sd = _tiny(seed=1).state_dict()  # 8x8 input: 4x4 patch grid
    model = _tiny(seed=2, img_size=16)  # 8x8 patch grid
    with pytest.warns(CheckpointWarning, match="4x4 patch grid, the model uses 8x8"):
        info = load_pretrained(model, _save({"model": sd}, tmp_path))
    assert info["resampled_pos_embed"]
    assert model.pos_embed.shape == (1, 1 + 64, 32)
    assert torch.equal(model.pos_embed[:, 0], sd["pos_embed"][:, 0])  # class token position kept
    assert torch.equal(model.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


# ---------------------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(str(tmp_path / "nope.pth"))


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(str(path))


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(str(path))


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"model": _tiny().state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(str(path))


def test_untrusted_objects_are_refused_with_a_hint(tmp_path):
    path = _save({"model": _tiny().state_dict(), "ratio": fractions.Fraction(1, 3)}, tmp_path)
    with pytest.raises(CheckpointError, match=r"\(fractions.Fraction\) that weights_only.*re-save its weights"):
        read_checkpoint(path)


def test_unreachable_url_says_how_to_proceed(hub_dir):
    url = "https://127.0.0.1:9/deit.pth"
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(url)
    msg = str(err.value)
    assert msg.startswith(f"could not download {url} (")
    assert "download it on a machine with internet access" in msg and "--model_path" in msg
    assert not (hub_dir / "checkpoints" / "deit.pth").exists()
