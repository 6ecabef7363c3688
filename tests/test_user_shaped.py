"""A ViT of the user's own shape on grey-scale ImageFolder data: the dense teacher from scratch
(post_train.py --pretrained 0), stage 1, stage 2 and the compact model, with no config file of
its own; stage 2 takes the shape from the stage-1 file."""
import json

import pytest
import torch
from PIL import Image

import joint_train
import post_train
from models.compact import load_compact
from utils.config import ConfigError, parse_config
from data import DataError
from engine.build import check_record_shape, head_classes
from uvc.deploy.export import build_masked_source, masked_forward_reference
from uvc.deploy.stagefile import read_stage_file

MODEL = "vit_little_patch16_reg4_gap_256"  # registers, average pooling, LayerScale: reshaped below
SHAPE = ["--embed_dim", "32", "--depth", "3", "--num_heads", "2", "--mlp_ratio", "2", "--patch_size", "4",
         "--img_size", "16", "--in_chans", "1"]


def image_folder(root) -> str:
    """train/ and val/ with 2 classes of small PNGs, grey and colour mixed (both become grey)."""
    for split, count in (("train", 8), ("val", 4)):
        for label, shade in (("dark", 40), ("light", 200)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                if i % 2:
                    Image.new("RGB", (20, 18 + i), (shade, shade // 2, 255 - shade)).save(folder / f"{i}.png")
                else:
                    Image.new("L", (18 + i, 20), shade + i).save(folder / f"{i}.png")
    return str(root)


def data_flags(root: str):
    return ["--model_type", MODEL, "--dataset", "imagenet", "--data_dir", root, "--num_workers", "0",
            "--train_batch_size", "8", "--eval_batch_size", "8", "--mixup", "0", "--cutmix", "0",
            "--max_steps_per_epoch", "2", "--log_interval", "0", "--eval_every", "0"]


def test_user_shaped_grey_vit_runs_both_stages(tmp_path):
    data = data_flags(image_folder(tmp_path / "data"))
    teacher_dir, s1, s2 = tmp_path / "teacher", tmp_path / "s1", tmp_path / "s2"
    post_train.main(data + SHAPE + ["--pretrained", "0", "--distillation-type", "none", "--epochs", "1",
                                    "--output_dir", str(teacher_dir)])
    teacher = teacher_dir / f"{MODEL}_dense_best.pth"
    record = torch.load(teacher, weights_only=True)
    assert record["model_kwargs"]["in_chans"] == 1 and record["model_kwargs"]["embed_dim"] == 32
    assert record["model"]["pos_embed"].shape == (1, 16, 32) and record["model"]["reg_token"].shape == (1, 4, 32)

    joint_train.main(data + SHAPE + ["--model_path", str(teacher), "--epochs", "2", "--warmup_epochs", "1",
                                     "--budget", "0.6", "--gating_interval", "1", "--greedy_fit", "1",
                                     "--output_dir", str(s1)])
    stage1 = s1 / f"{MODEL}_uvc.pth"
    arch = read_stage_file(str(stage1))["arch"]
    assert arch["model_kwargs"] == record["model_kwargs"] and arch["num_reg_tokens"] == 4
    assert arch["global_pool"] == "avg" and arch["in_chans"] == 1

    # stage 2 without the shape flags: the stage-1 file fixes the model (and names the teacher)
    post_train.main(data + ["--checkpoint_dir", str(stage1), "--epochs", "1", "--output_dir", str(s2)])
    best = read_stage_file(str(s2 / f"{MODEL}_uvc_post_best.pth"))
    compact = load_compact(str(s2 / "compact.pth")).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(compact(x), masked_forward_reference(build_masked_source(best), best["arch"], x),
                              atol=1e-5)
    final = json.loads((s2 / "log.jsonl").read_text().splitlines()[-1])
    assert final["macs_ratio"] <= 0.61


def test_shape_flags_against_the_stage1_file_and_bad_model_kwargs(tmp_path):
    with pytest.raises(ConfigError, match="use --embed_dim instead"):
        parse_config("joint", ["--model_kwargs", '{"embed_dim": 8}'])
    with pytest.raises(ConfigError, match="not JSON"):
        parse_config("joint", ["--model_kwargs", "qk_norm=1"])
    config = parse_config("joint", ["--model_type", MODEL, "--model_kwargs", '{"qk_norm": true}', *SHAPE])
    assert config.config_file.endswith("vit.py") and config.input_size == 16  # --img_size is --input_size
    assert head_classes(config, 10) == 10  # 0: the data set's count
    wider = parse_config("joint", ["--model_type", MODEL, "--num_classes", "12"])
    assert head_classes(wider, 10) == 12
    with pytest.raises(DataError, match="has 10 classes but the model's classifier has 5"):
        head_classes(parse_config("joint", ["--model_type", MODEL, "--num_classes", "5"]), 10)
    stage2 = parse_config("post", ["--model_type", MODEL, "--embed_dim", "64"])
    with pytest.raises(ValueError, match="--embed_dim 64 but the stage-1 file's model has embed_dim=32"):
        check_record_shape(stage2, {"model_kwargs": {"embed_dim": 32}, "img_size": 16})
