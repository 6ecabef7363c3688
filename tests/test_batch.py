"""The seed's commands mean what they meant: --train_batch_size per process, stage 2's learning rate
scaled with the global batch (learning_rate x global / 512), the reference's recipe by default and
DeiT's one flag away, and --print_config showing the resolved config without touching anything."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import joint_train
import post_train
from configs.common import RECIPES, base_config
from utils.batch import batch_plan, peak_lr
from utils.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"joint": joint_train, "post": post_train}
DEIT = {"aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "color_jitter": 0.3, "mixup": 0.8, "cutmix": 1.0,
        "mixup_prob": 1.0, "smoothing": 0.1, "drop_path": 0.1, "clip_grad": 0.0}
REFERENCE = {"aa": "", "reprob": 0.0, "color_jitter": 0.0, "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 0.8,
             "smoothing": 0.1, "drop_path": 0.0, "clip_grad": 1.0}


# --------------------------------------------------------------------------- the learning-rate rule

def test_stage2_scales_the_learning_rate_with_the_global_batch():
    assert peak_lr(1e-4, 16, "post") == pytest.approx(3.125e-6, rel=1e-12)
    assert peak_lr(1e-4, 256 * 2, "post") == pytest.approx(1e-4, rel=1e-12)  # the seed's stage 2: 256 x 2
    assert peak_lr(5e-4, 1024, "post") == pytest.approx(1e-3, rel=1e-12)
    assert peak_lr(1e-4, 1024, "joint") == 1e-4  # stage 1: as given
    assert peak_lr(1e-4, 16, "joint") == 1e-4


def test_batch_plan_counts_processes_and_accumulation():
    config = parse_config("post", ["--train_batch_size", "8", "--gradient_accumulation_steps", "3"])
    plan = batch_plan(config, "post", world_size=2)
    assert (plan.per_process_batch, plan.world_size, plan.accumulation, plan.global_batch) == (8, 2, 3, 48)
    assert plan.peak_lr == pytest.approx(1e-4 * 48 / 512)
    assert plan.record() == {"world_size": 2, "per_process_batch": 8, "gradient_accumulation_steps": 3,
                             "global_batch": 48, "peak_lr": plan.peak_lr}
    assert plan.line() == ("batch 8 per process x 2 process(es) x 3 accumulation step(s) = global batch 48; "
                           "peak learning rate 9.375e-06")
    assert batch_plan(parse_config("joint", ["--train_batch_size", "8"]), "joint", 4).peak_lr == 1e-4


# --------------------------------------------------------------------------- recipes and defaults

@pytest.mark.parametrize("stage", ["joint", "post"])
def test_defaults_are_the_reference_recipe(stage):
    c = base_config(stage)
    assert {k: c[k] for k in REFERENCE} == REFERENCE == RECIPES["reference"]
    assert RECIPES["deit"] == DEIT
    assert (c.recipe, c.learning_rate, c.lr_warmup_lr) == ("reference", 1e-4, 1e-6)
    assert (c.min_lr, c.lr_warmup_epochs) == ((1e-6, 0) if stage == "joint" else (1e-5, 5))


def printed_config(capsys, stage: str, *argv) -> dict:
    """The JSON that `<script> --print_config ...` prints, run in-process (it exits 0)."""
    with pytest.raises(SystemExit) as info:
        SCRIPTS[stage].main(["--print_config", *argv])
    assert info.value.code == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("stage", ["joint", "post"])
def test_print_config_shows_either_recipe(capsys, stage):
    reference = printed_config(capsys, stage)
    assert {k: reference[k] for k in REFERENCE} == REFERENCE and reference["recipe"] == "reference"
    assert reference["learning_rate"] == 1e-4
    deit = printed_config(capsys, stage, "--recipe", "deit")
    assert {k: deit[k] for k in DEIT} == DEIT and deit["recipe"] == "deit"
    assert set(reference) == set(base_config(stage)) | {"config_file"}  # the config's own key names
    assert reference["config_file"].endswith("configs/deit_tiny.py")


def test_print_config_of_stage2_is_the_reference_setting(capsys):
    c = printed_config(capsys, "post")
    assert (c["learning_rate"], c["min_lr"], c["lr_warmup_epochs"], c["lr_warmup_lr"]) == (1e-4, 1e-5, 5, 1e-6)


def test_explicit_flags_override_the_recipe_in_any_order(capsys):
    for argv in (["--drop_path", "0.2", "--recipe", "deit"], ["--recipe", "deit", "--config.drop_path", "0.2"]):
        c = printed_config(capsys, "post", *argv)
        assert (c["drop_path"], c["reprob"], c["recipe"]) == (0.2, 0.25, "deit")
    c = printed_config(capsys, "joint", "--config", "configs/digits_demo.py:joint", "--recipe", "reference")
    assert c["config_file"] == "configs/digits_demo.py:joint" and c["mixup"] == 0.8  # the file's 0 replaced
    assert printed_config(capsys, "joint", "--config", "configs/digits_demo.py:joint")["mixup"] == 0.0
    with pytest.raises(ConfigError, match="--recipe 'timm' is not supported; choose one of reference, deit"):
        parse_config("post", ["--recipe", "timm"])


def test_print_config_touches_nothing(tmp_path):
    """A real subprocess: exit 0, one JSON object on stdout, no output dir, no data read."""
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "post_train.py", "--print_config", "--output_dir", str(out),
                           "--data_dir", str(tmp_path / "no_such_data"), "--checkpoint_dir", "no_such.pth"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["output_dir"] == str(out)
    assert not out.exists()


# --------------------------------------------------------------------------- the seed README's commands

def readme_command(start: str) -> list:
    """The README's seed command that starts with `start`, from its script on (launcher dropped)."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if b.startswith(start))
    words = shlex.split(block.replace("\\\n", " "))
    script = next(i for i, w in enumerate(words) if w.endswith(".py"))
    return words[script:]


@pytest.mark.parametrize("start, stage, expected", [
    ("python -W ignore -m torch.distributed.launch", "joint",
     {"train_batch_size": 512, "learning_rate": 1e-4, "epochs": 30, "warmup_lr": 1e-4, "budget": 0.5,
      "model_type": "deit_tiny_patch16_224"}),
    ("python -m torch.distributed.launch", "post",
     {"train_batch_size": 256, "learning_rate": 1e-4, "min_lr": 1e-5, "epochs": 120, "pretrained": 0,
      "model_type": "deit_small_patch16_224"}),
])
def test_seed_commands_parse(capsys, start, stage, expected):
    """The seed's two commands, as the README gives them: per process 512 (stage 1) and 256 (stage 2)."""
    argv = readme_command(start)
    assert argv[0] == f"{stage}_train.py"
    c = printed_config(capsys, stage, *argv[1:])
    assert {k: c[k] for k in expected} == expected
    assert {k: c[k] for k in REFERENCE} == REFERENCE
    assert peak_lr(c["learning_rate"], c["train_batch_size"] * 2, stage) == pytest.approx(1e-4)  # 2 processes
