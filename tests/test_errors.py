"""Reliability: every bad input ends joint_train.py / post_train.py with one line
on stderr (what is wrong, what to do), exit code 2, no traceback, and nothing
written to --output_dir (not even the directory). A NaN loss stops the run with
one line naming the step and keeps the previous epoch's checkpoint.

Most cases run in-process through engine.entry.run_entry (the code path of the
scripts' __main__); a few run the scripts as real subprocesses.
"""
import hashlib
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

import joint_train
import post_train
from data import DataError
from models import create_model
from engine.loop import train_one_epoch
from uvc.search.masked_model import MaskedViT
from uvc.deploy.stagefile import stage1_record
from uvc.search import UVCSearch
from utils.config import CONFIG_DIR, ConfigError, parse_config
from utils.dist import DistInfo
from engine.entry import run_entry
from engine.build import build_data

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"joint": joint_train, "post": post_train}
DIGITS = ["--config", os.path.join(CONFIG_DIR, "digits_demo.py"), "--model_type", "vit_digits_tiny_patch2_8",
          "--distillation_type", "none", "--pretrained", "0", "--epochs", "3", "--max_steps_per_epoch", "1",
          "--num_workers", "0"]  # stage 1: 2 warm-up epochs (the demo's), then 1 of search
RGB = ["--model_type", "deit_tiny_patch16_224", "--input_size", "32"]  # a 3-channel model for the image sets
TINY_SET = ["--dataset", "synthetic", "--synthetic_size", "8", "--batch_size", "4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad inputs on disk: corrupt and foreign checkpoints, an empty ImageFolder, a file where a dir goes."""
    root = tmp_path_factory.mktemp("bad_inputs")
    f = {name: root / name for name in ("random.pth", "truncated.pth", "text.pth", "dense.pth", "other.pth",
                                         "deit_small.pth", "stage1_other.pth", "empty", "a_file")}
    # garbage that opens with a pickle PROTO opcode of an unknown protocol (197), on which torch.load warns
    # before it fails: the error must still be one line (random bytes hit this about once in 256 runs)
    f["random.pth"].write_bytes(b"\x80\xc5" + random.Random(0).randbytes(4094))
    f["text.pth"].write_text("hello, a text file\n")  # the unpickler fails with KeyError on this one
    f["a_file"].write_text("x")
    f["head_1000.pth"] = root / "head_1000.pth"  # an ImageNet-style head on the 10-class digits data
    torch.save({"model": create_model("vit_digits_tiny_patch2_8", num_classes=1000).state_dict()}, f["head_1000.pth"])
    f["int_switch_config.py"] = root / "int_switch_config.py"  # a user's config setting 1 on an on/off key
    f["int_switch_config.py"].write_text("from configs.common import base_config\n\n\ndef get_config(stage):\n"
                                         "    c = base_config(stage)\n    c.fp16 = 1\n    return c\n")
    torch.save({"model": create_model("vit_digits_tiny_patch2_8").state_dict()}, f["dense.pth"])
    whole = f["dense.pth"].read_bytes()
    f["truncated.pth"].write_bytes(whole[: len(whole) // 2])
    torch.save({"model": create_model("vit_digits_patch2_8").state_dict()}, f["other.pth"])
    # deit_small's tensor shapes (half precision zeros: only the shapes matter, and the file stays 44 MB)
    with torch.device("meta"):
        small = create_model("deit_small_patch16_224").state_dict()
    torch.save({"model": {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in small.items()}},
               f["deit_small.pth"])
    # a real stage-1 file (joint_train.py's freeze and stage1_record) of the other digits model; budget 1
    # keeps freeze's fit-to-budget loop (seconds from a random init) out of the way
    config = parse_config("joint", DIGITS[:2] + ["--budget", "1"])
    vit = create_model("vit_digits_patch2_8")
    model = MaskedViT(vit)
    spec, fit = UVCSearch(vit, config, torch.device("cpu"), search_steps=100).freeze(model, "vit_digits_patch2_8")
    torch.save(stage1_record(spec, vit.state_dict(), config.to_dict(), fit), f["stage1_other.pth"])
    for split in ("train", "val"):
        (f["empty"] / split / "class0").mkdir(parents=True)
    # a finished stage-1 run of the digits defaults below, to resume with changed keys
    joint_train.main(DIGITS + ["--output_dir", str(root / "run")])
    f["run_checkpoint"] = root / "run" / "checkpoint.pth"
    return {k: str(v) for k, v in f.items()}


# name -> (scripts, extra argv given the files, substrings the one line must hold)
CASES = {
    "data_dir_missing": ("joint post", lambda f: RGB + ["--dataset", "imagenet", "--data_dir", "/nonexistent"],
                         ["/nonexistent/train not found", "expects an ImageFolder"]),
    "image_folder_empty": ("joint post", lambda f: RGB + ["--dataset", "imagenet", "--data_dir", f["empty"]],
                           ["has no images", "expects an ImageFolder"]),
    "dataset_unknown": ("joint post", lambda f: ["--dataset", "unknown"], ["'unknown' is not supported",
                                                                         "choose one of"]),
    "model_path_random_bytes": ("joint post", lambda f: ["--pretrained", "1", "--model_path", f["random.pth"]],
                                ["not a readable PyTorch checkpoint (corrupt or truncated?)"]),
    "model_path_truncated": ("joint post", lambda f: ["--pretrained", "1", "--model_path", f["truncated.pth"]],
                             ["not a readable PyTorch checkpoint (corrupt or truncated?)"]),
    "model_path_text_file": ("joint post", lambda f: ["--pretrained", "1", "--model_path", f["text.pth"]],
                             ["not a readable PyTorch checkpoint"]),
    "model_path_other_digits_model": ("joint post", lambda f: ["--pretrained", "1", "--model_path", f["other.pth"]],
                                      ["does not match vit_digits_tiny_patch2_8", "another variant"]),
    "model_path_deit_small_for_tiny": ("joint post", lambda f: RGB + TINY_SET + [
        "--pretrained", "1", "--model_path", f["deit_small.pth"]],
        ["does not match deit_tiny_patch16_224", "cls_token is [1, 1, 384] in the file but [1, 1, 192]"]),
    "model_path_url_unreachable": ("joint post", lambda f: ["--pretrained", "1", "--model_path",
                                                            "https://127.0.0.1:9/x.pth"],
                                   ["could not download https://127.0.0.1:9/x.pth",
                                    "pass its local path with --model_path"]),
    "checkpoint_dir_other_model": ("post", lambda f: ["--checkpoint_dir", f["stage1_other.pth"]],
                                   ["holds a vit_digits_patch2_8 search", "vit_digits_tiny_patch2_8",
                                    "pass the matching --model_type"]),
    "checkpoint_dir_dense_file": ("post", lambda f: ["--checkpoint_dir", f["dense.pth"]],
                                  ["is a dense model file", "--model_path", "pass a stage-1"]),
    "checkpoint_dir_missing": ("post", lambda f: ["--checkpoint_dir", "/nonexistent/stage1.pth"],
                               ["does not exist", "pass a stage-1"]),
    "checkpoint_dir_text_file": ("post", lambda f: ["--checkpoint_dir", f["text.pth"]],
                                 ["cannot read", "pass a stage-1"]),
    "resume_corrupt": ("joint post", lambda f: ["--resume", f["random.pth"]], ["corrupt or truncated", "--resume"]),
    "budget_zero": ("joint", lambda f: ["--budget", "0"], ["--budget 0.0 is out of range", "(0, 1]"]),
    "budget_negative": ("joint", lambda f: ["--budget", "-0.2"], ["--budget -0.2 is out of range"]),
    "budget_above_one": ("joint", lambda f: ["--budget", "1.5"], ["--budget 1.5 is out of range"]),
    "budget_not_a_number": ("joint", lambda f: ["--budget", "abc"], ["--budget", "invalid float value: 'abc'"]),
    "uvc_train_off": ("joint", lambda f: ["--uvc_train", "0"], ["--uvc_train 0", "post_train.py"]),
    "stage1_flag_in_stage2": ("post", lambda f: ["--budget", "0.5"],
                              ["--budget is a stage-1 (joint_train.py) flag", "--checkpoint_dir"]),
    "stage2_flag_in_stage1": ("joint", lambda f: ["--checkpoint_dir", f["dense.pth"]],
                              ["--checkpoint_dir is a stage-2 (post_train.py) flag", "--resume"]),
    "epochs_not_an_integer": ("joint post", lambda f: ["--epochs", "1.5"], ["--epochs", "expected an integer"]),
    "unknown_flag": ("joint post", lambda f: ["--no_such_flag"], ["unrecognized arguments: --no_such_flag",
                                                                   "--help"]),
    "unknown_config_key": ("joint post", lambda f: ["--config.no_such_key", "1"],
                           ["unrecognized arguments: --config.no_such_key"]),
    "output_dir_parent_is_file": ("joint post", lambda f: ["--output_dir", os.path.join(f["a_file"], "run")],
                                  ["cannot write to --output_dir", "is not a directory",
                                   "pick a writable directory"]),
    "output_dir_is_file": ("joint post", lambda f: ["--output_dir", f["a_file"]],
                           ["cannot write to --output_dir", "is not a directory"]),
    "batch_larger_than_dataset": ("joint post", lambda f: ["--dataset", "synthetic", "--synthetic_size", "8",
                                                           "--batch_size", "64"],
                                  ["batch size 64 larger than the dataset", "--train_batch_size (per process) to at most 8"]),
    "accumulation_leaves_no_step": ("joint post", lambda f: TINY_SET + ["--batch_size", "8",
                                                                        "--gradient_accumulation_steps", "2"],
                                    ["an epoch has no optimizer step", "--gradient_accumulation_steps"]),
    "epochs_within_warmup": ("joint", lambda f: ["--epochs", "2", "--warmup_epochs", "2"],
                             ["--epochs 2 leaves no search epoch after --warmup_epochs 2", "nothing would be compressed"]),
    "teacher_head_of_other_classes": ("joint post", lambda f: ["--model_path", f["head_1000.pth"],
                                                               "--distillation-type", "soft"],
                                      ["has no classifier head for this data's 10 classes",
                                       "fine-tune it on this data first", "--distillation-type none"]),
    "input_size_not_a_patch_multiple": ("joint post", lambda f: ["--input_size", "9"],
                                        ["--input_size 9 is not a multiple of the patch size 2",
                                         "use 8 or 10"]),
    "resume_with_other_epochs": ("joint", lambda f: ["--resume", f["run_checkpoint"], "--epochs", "4"],
                                 ["--epochs is 4 but the --resume run used 3", "--epochs 3"]),
    "resume_with_other_reference_rules": ("joint", lambda f: ["--resume", f["run_checkpoint"], "--reference_rules",
                                                              "integral_z"],
                                          ["--reference_rules is 'integral_z' but the --resume run used ''"]),
    "reference_rules_unknown": ("joint", lambda f: ["--reference_rules", "integral_z,moving_target"],
                                ["--reference_rules 'moving_target' is not a rule", "fixed_target, integral_z"]),
    "reference_rules_in_reference_search": ("joint", lambda f: ["--search_algorithm", "reference", "--reference_rules",
                                                                "gate_sgd"],
                                            ["--reference_rules switches rules of the default search"]),
    "resume_with_other_shape": ("joint", lambda f: ["--resume", f["run_checkpoint"], "--embed_dim", "48"],
                                ["--embed_dim is 48 but the --resume run used 0", "model's shape"]),
    "config_file_typo": ("joint post", lambda f: ["--config", "configs/deit_tiyn.py"],
                         ["configs/deit_tiyn.py not found (did you mean configs/deit_tiny.py?)", "digits_demo.py"]),
    "config_file_int_on_switch": ("joint post", lambda f: ["--config", f["int_switch_config.py"]],
                                  ["int_switch_config.py", "on/off keys are True/False"]),
    "patch_gating_dynamic_mode": ("joint", lambda f: ["--enable_patch_gating", "2"],
                                  ["--enable_patch_gating must be 0 or 1, got 2", "not implemented"]),
    "pruning_flag_3": ("joint", lambda f: ["--enable_pruning", "3"], ["--enable_pruning must be 0 or 1"]),
    "target_ramp_zero": ("joint", lambda f: ["--target_ramp", "0"], ["--target_ramp 0.0 must lie in (0, 1]"]),
    "min_blocks_negative": ("joint", lambda f: ["--min_blocks", "-1"], ["--min_blocks must be 0"]),
    "patch_probe_negative": ("joint", lambda f: ["--patch_probe", "-1"], ["--patch_probe must be 0"]),
    "patch_probe_in_stage2": ("post", lambda f: ["--patch_probe", "64"], ["--patch_probe is a stage-1"]),
    "skip_probe_negative": ("joint", lambda f: ["--skip_probe", "-1"], ["--skip_probe must be 0 (no trial of block skips)"]),
    "skip_probe_in_stage2": ("post", lambda f: ["--skip_probe", "64"], ["--skip_probe is a stage-1"]),
    "trial_margin_negative": ("joint", lambda f: ["--trial_margin", "-1"], ["--trial_margin must be 0 or more"]),
    "trial_margin_in_stage2": ("post", lambda f: ["--trial_margin", "2"], ["--trial_margin is a stage-1"]),
    "trial_margin_in_reference": ("joint", lambda f: ["--search_algorithm", "reference", "--trial_margin", "2"],
                                  ["--trial_margin is not read by --search_algorithm reference"]),
    "skip_probe_in_reference": ("joint", lambda f: ["--search_algorithm", "reference", "--skip_probe", "64"],
                                ["--skip_probe is not read by --search_algorithm reference (block skips are not tried)"]),
    "search_masking_unknown": ("joint", lambda f: ["--search_masking", "medium"],
                               ["--search_masking 'medium' is not supported"]),
    "mixup_odd_batch": ("joint post", lambda f: ["--mixup", "0.8", "--batch_size", "7"],
                        ["mixup/cutmix need an even batch per process, got --train_batch_size 7", "--mixup 0 --cutmix 0"]),
}
PARAMS = [pytest.param(script, name, id=f"{script}-{name}")
          for name, (scripts, _, _) in CASES.items() for script in scripts.split()]


def check_one_line(code, stderr: str, expected, output_dir: Optional[str]) -> str:
    """Exit code 2, one "error: ..." line holding `expected`, and no `output_dir` (None: not checked)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    line = lines[0]
    assert line.startswith("error: ")
    for text in expected:
        assert text in line, line
    if output_dir is not None:
        assert not os.path.exists(output_dir), os.listdir(output_dir)
    return line


@pytest.fixture
def quiet_env(monkeypatch, tmp_path):
    monkeypatch.delenv("UVC_DEBUG", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # torch.hub's cache, away from ~/.cache


@pytest.mark.parametrize("script,name", PARAMS)
def test_bad_input_is_one_line(script, name, files, tmp_path, capsys, quiet_env):
    _, extra, expected = CASES[name]
    argv = DIGITS + ["--output_dir", str(tmp_path / "out")] + extra(files)
    output_dir = argv[len(argv) - argv[::-1].index("--output_dir")]  # the value after the last --output_dir
    with pytest.raises(SystemExit) as info:
        run_entry(SCRIPTS[script].main, argv)
    is_file = name == "output_dir_is_file"
    check_one_line(info.value.code, capsys.readouterr().err, expected, None if is_file else output_dir)
    if is_file:
        assert Path(output_dir).read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
@pytest.mark.parametrize("script", ["joint", "post"])
def test_read_only_output_parent(script, tmp_path, capsys, quiet_env):
    parent = tmp_path / "read_only"
    parent.mkdir(mode=0o555)
    output_dir = str(parent / "out")
    with pytest.raises(SystemExit) as info:
        run_entry(SCRIPTS[script].main, DIGITS + ["--output_dir", output_dir])
    check_one_line(info.value.code, capsys.readouterr().err, ["is not writable", "pick a writable directory"],
                   output_dir)


@pytest.mark.parametrize("script", ["joint", "post"])
def test_unwritable_output_parent_even_as_root(script, tmp_path, capsys, quiet_env):
    """The read-only case that also runs as root: a parent that is a file cannot hold a directory."""
    parent = tmp_path / "a_file"
    parent.write_text("x")
    output_dir = str(parent / "out")
    with pytest.raises(SystemExit) as info:
        run_entry(SCRIPTS[script].main, DIGITS + ["--output_dir", output_dir])
    line = check_one_line(info.value.code, capsys.readouterr().err, [output_dir], None)
    assert parent.read_text() == "x", line


def test_uvc_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("UVC_DEBUG", "1")
    with pytest.raises(ConfigError, match="out of range"):
        run_entry(joint_train.main, DIGITS + ["--budget", "0", "--output_dir", str(tmp_path / "out")])


# name, script: real processes, so stderr, the exit code and the absence of a traceback are the real ones
SUBPROCESS_CASES = [("model_path_random_bytes", "joint"), ("model_path_url_unreachable", "post"),
                    ("checkpoint_dir_other_model", "post")]


@pytest.fixture(scope="module")
def subprocess_runs(files, tmp_path_factory):
    """Start the scripts of SUBPROCESS_CASES side by side (each pays torch's import time) and collect them."""
    root = tmp_path_factory.mktemp("subprocess_runs")
    env = {k: v for k, v in os.environ.items() if k != "UVC_DEBUG"}
    env["TORCH_HOME"] = str(root / "torch_home")
    started = {}
    for name, script in SUBPROCESS_CASES:
        output_dir = str(root / name / "out")
        argv = [sys.executable, f"{script}_train.py", *DIGITS, "--output_dir", output_dir, *CASES[name][1](files)]
        started[name] = (subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True), output_dir)
    runs = {}
    for name, (proc, output_dir) in started.items():
        _, stderr = proc.communicate(timeout=300)
        runs[name] = (proc.returncode, stderr, output_dir)
    return runs


@pytest.mark.parametrize("name,script", SUBPROCESS_CASES)
def test_bad_input_subprocess(name, script, subprocess_runs):
    code, stderr, output_dir = subprocess_runs[name]
    check_one_line(code, stderr, CASES[name][2], output_dir)


# --- batch checks at loader build time, as each rank of a DDP run sees them -------------------------

def ddp_rank0(world_size: int) -> DistInfo:
    return DistInfo(rank=0, world_size=world_size, local_rank=0, device=torch.device("cpu"), distributed=True,
                    backend="gloo")


def test_ddp_batch_larger_than_rank_share():
    """--train_batch_size is per process: it must fit one process's share of the data."""
    config = parse_config("joint", DIGITS + ["--dataset", "synthetic", "--synthetic_size", "8",
                                             "--batch_size", "4"])
    with pytest.raises(DataError, match=r"batch size 4 larger than the dataset \(8 images, 2 per process over 4 "
                                        r"process\(es\)\); lower --train_batch_size \(per process\) to at most 2"):
        build_data(config, ddp_rank0(4))
    fits = build_data(parse_config("joint", DIGITS + TINY_SET + ["--batch_size", "2"]), ddp_rank0(4))
    assert fits.train_loader.batch_size == 2 and len(fits.train_sampler) == 2  # 8 images over 4 ranks: 2 each


def test_ddp_odd_per_process_batch_with_mixup():
    config = parse_config("joint", DIGITS + ["--mixup", "0.8", "--batch_size", "3"])
    with pytest.raises(DataError, match=r"even batch per process, got --train_batch_size 3"):
        build_data(config, ddp_rank0(2))
    even = build_data(parse_config("joint", DIGITS + ["--mixup", "0.8", "--batch_size", "4"]), ddp_rank0(2))
    assert even.train_loader.batch_size == 4 and even.mixup is not None


# --- numerical faults ---------------------------------------------------------------------------------

def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("script", ["joint", "post"])
def test_nan_loss_stops_and_keeps_last_checkpoint(script, tmp_path, capsys, monkeypatch, quiet_env):
    """Epoch 0 trains and saves; a NaN weight in epoch 1 makes the loss NaN at its first step."""
    module = SCRIPTS[script]
    output_dir = str(tmp_path / "out")
    checkpoint = os.path.join(output_dir, "checkpoint.pth")
    seen = {}

    def poisoned(model, criterion, loader, optimizer, scaler, device, epoch, **kwargs):
        if epoch == 1:
            seen["hash"] = sha256(checkpoint)
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return train_one_epoch(model, criterion, loader, optimizer, scaler, device, epoch, **kwargs)

    monkeypatch.setattr(module, "train_one_epoch", poisoned)
    argv = DIGITS + TINY_SET + ["--epochs", "2", "--output_dir", output_dir] + (
        ["--warmup_epochs", "1"] if script == "joint" else [])
    with pytest.raises(SystemExit) as info:
        run_entry(module.main, argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [part for part in re.split(r"[\r\n]", err) if part.startswith("error")]  # tqdm's bars use \r
    check_one_line(info.value.code, "\n".join(errors), ["loss is nan at epoch 1 step 2",
                                                        "last good checkpoint is kept"], None)
    assert sha256(checkpoint) == seen["hash"]  # untouched by the failed epoch
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_amp_skipped_steps_are_counted_not_fatal():
    """GradScaler skips a step with inf gradients (finite loss): the run goes on and counts it."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    calls = []

    def inf_on_first_backward(grad):
        calls.append(1)
        return torch.full_like(grad, float("inf")) if len(calls) == 1 else grad

    model.weight.register_hook(inf_on_first_backward)

    class Criterion(torch.nn.Module):
        def forward(self, images, outputs, targets):
            return torch.nn.functional.cross_entropy(outputs, targets)

    criterion = Criterion()
    loader = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(3)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, enabled=True)

    class ArchStep:  # records which architecture calls follow each weight step
        seen = []

        def prepare(self, model, training=True):
            pass

        def step(self, model, lr):
            self.seen.append("step")
            return {}

        def skip_step(self, model):
            self.seen.append("skip")

    arch = ArchStep()
    stats = train_one_epoch(model, criterion, loader, optimizer, scaler, torch.device("cpu"), 0, arch_step=arch)
    assert arch.seen == ["skip", "step", "step"]  # no architecture step after the skipped weight step
    assert stats["amp_skipped_steps"] == 1 and stats["global_step"] == 3
    assert stats["amp_skipped"] == pytest.approx(1 / 3)
    assert torch.isfinite(model.weight).all()
