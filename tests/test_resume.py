"""Exact resume: a run killed (SIGKILL) or stopped (SIGTERM) and restarted with --resume auto ends
bitwise identical to the uninterrupted run (CPU, --deterministic 1); atomic checkpoint files;
resumable sampling; restarts by torchelastic.

The entry scripts run as subprocesses on the digits demo with the tiny model. The kill / signal
step is set with the test hook of utils.dist.crash_for_test (UVC_TEST_CRASH_AT_STEP,
UVC_TEST_CRASH_RANK=0, UVC_TEST_CRASH_SIGNAL) or sent from outside after polling for the first
checkpoint file.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import pytest
import torch
import torch.nn as nn

from data.loaders import EpochDistributedSampler, EpochRandomSampler
from utils import checkpoint as ckpt
from utils.amp import make_scaler
from engine.run_state import EXIT_INTERRUPTED, EXIT_PREEMPTED, RunState, StopSignal
from helpers import assert_same_files, clean_env, dense_checkpoint, load, run_script

REPO = Path(__file__).resolve().parents[1]
TINY = "vit_digits_tiny_patch2_8"
STAGE1_FILE = f"{TINY}_uvc.pth"
BEST_FILE = f"{TINY}_uvc_post_best.pth"
COMMON = ["--config", "configs/digits_demo.py", "--model_type", TINY, "--deterministic", "1",
          "--max_steps_per_epoch", "4", "--epochs", "3"]
# gating_interval 3 with 4 steps per epoch: checkpoints fall between two gate updates, so the
# accumulated gate/patch gradients and the step counter must be restored too
STAGE1 = COMMON + ["--warmup_epochs", "1", "--gating_interval", "3"]


# --------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A dense checkpoint ({"model": state_dict}) as --model_path: the student's start and the teacher."""
    return dense_checkpoint(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def stage1_ref(tmp_path_factory, teacher) -> Path:
    """The uninterrupted stage-1 run."""
    out = tmp_path_factory.mktemp("stage1_ref")
    run_script("joint_train.py", STAGE1 + ["--model_path", teacher, "--output_dir", out])
    return out


# --------------------------------------------------------------------------- atomic checkpoint files

def test_atomic_save_failing_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / ckpt.RESUME_NAME
    ckpt.atomic_save({"epoch": 1, "w": torch.arange(4.0)}, str(path))
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):  # writes half a file, then fails (disk full, ...)
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError):
        ckpt.atomic_save({"epoch": 2, "w": torch.zeros(4)}, str(path))
    assert os.listdir(tmp_path) == [ckpt.RESUME_NAME]  # the temporary file is gone
    assert ckpt.resolve_resume("auto", str(tmp_path)) == str(path)
    state = ckpt.load_resume(str(path))
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(4.0))


def test_atomic_save_killed_midway_keeps_the_previous_file(tmp_path):
    """SIGKILL in the middle of a save: the previous file stays the latest and intact; the stale
    temporary file is never taken for a checkpoint."""
    script = f"""
import os, signal, torch
from utils import checkpoint as ckpt
path = {str(tmp_path / ckpt.RESUME_NAME)!r}
ckpt.atomic_save({{"epoch": 1, "w": torch.arange(4.0)}}, path)
real_save = torch.save
def dying_save(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
ckpt.torch.save = dying_save
ckpt.atomic_save({{"epoch": 2, "w": torch.zeros(1000)}}, path)
"""
    proc = subprocess.run([sys.executable, "-c", script], env=clean_env(), capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    leftovers = sorted(os.listdir(tmp_path))
    assert ckpt.RESUME_NAME in leftovers and any(".tmp." in n for n in leftovers), leftovers
    latest = ckpt.resolve_resume("auto", str(tmp_path))
    assert latest == str(tmp_path / ckpt.RESUME_NAME)
    state = ckpt.load_resume(latest)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(4.0))
    stale = next(tmp_path.glob("*.tmp.*"))
    with pytest.raises(ckpt.ResumeError, match="corrupt or truncated"):
        ckpt.load_resume(str(stale))  # what the temporary file is: refused if passed by hand


# --------------------------------------------------------------------------- resumable sampling

def test_samplers_depend_on_seed_and_epoch_and_skip_consumed_samples():
    data = list(range(23))
    gen = torch.Generator()
    sampler = EpochRandomSampler(data, seed=5, worker_generator=gen)
    sampler.set_epoch(3)
    full, worker_seed = list(sampler), gen.initial_seed()
    assert sorted(full) == data and len(sampler) == 23
    sampler.set_epoch(3, skip=8)
    assert list(sampler) == full[8:] and len(sampler) == 15
    assert gen.initial_seed() == worker_seed  # workers seeded by (seed, epoch) alone
    sampler.set_epoch(4)
    assert list(sampler) != full and gen.initial_seed() != worker_seed

    shards = []
    for rank in range(2):
        dist_sampler = EpochDistributedSampler(data, 2, rank, seed=5, worker_generator=torch.Generator())
        dist_sampler.set_epoch(3)
        shard = list(dist_sampler)
        dist_sampler.set_epoch(3, skip=4)
        assert list(dist_sampler) == shard[4:] and len(dist_sampler) == len(shard) - 4
        shards += shard
    assert set(shards) == set(data)


def test_engine_refuses_a_skip_the_sampler_does_not_do():
    from torch.utils.data import DataLoader
    from engine import train_one_epoch
    data = [(torch.zeros(2), 0)] * 8
    sampler = EpochRandomSampler(data, seed=0)
    sampler.set_epoch(0)  # skips nothing
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    with pytest.raises(ValueError, match="skip 4 samples"):
        train_one_epoch(nn.Linear(2, 2), nn.Module(), loader, None, None, "cpu", 0, skip_steps=2)


# --------------------------------------------------------------------------- RunState and StopSignal

def _tiny_run(seed: int) -> RunState:
    torch.manual_seed(seed)
    net = nn.Linear(3, 2)
    config = ml_collections.ConfigDict({"model_type": "linear"})
    return RunState("post", net, torch.optim.SGD(net.parameters(), lr=0.1), None,
                    make_scaler(torch.device("cpu"), False), config)


def test_restart_by_torchelastic_resumes_without_the_flag(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    saved = _tiny_run(0)
    saved.epoch, saved.global_step = 2, 8
    saved.save(str(tmp_path))
    fresh = _tiny_run(1)
    assert fresh.maybe_resume("", str(tmp_path)) is None  # a first start does not pick up old files
    assert not torch.equal(fresh.vit.weight, saved.vit.weight)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert fresh.maybe_resume("", str(tmp_path)) == str(tmp_path / ckpt.RESUME_NAME)
    assert torch.equal(fresh.vit.weight, saved.vit.weight) and (fresh.epoch, fresh.global_step) == (2, 8)
    # a restarted run that was started from another file (--resume PATH) continues from its own checkpoint
    source = _tiny_run(2)
    source.save(str(tmp_path / "source"))
    again = _tiny_run(3)
    assert again.maybe_resume(str(tmp_path / "source" / ckpt.RESUME_NAME), str(tmp_path)) == \
        str(tmp_path / ckpt.RESUME_NAME)
    assert torch.equal(again.vit.weight, saved.vit.weight)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert again.maybe_resume(str(tmp_path / "source" / ckpt.RESUME_NAME), str(tmp_path)) is not None
    assert torch.equal(again.vit.weight, source.vit.weight)


def test_stop_signal_sets_a_flag_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignal()
    try:
        assert not stop.requested()
        for _ in range(2):  # with the handler in place this does not end pytest, nor does a repeat
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert stop.requested() and stop.received == signal.SIGTERM
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGTERM) == before


# --------------------------------------------------------------------------- stage 1

def test_stage1_sigterm_mid_epoch_resumes_exactly(stage1_ref, teacher, tmp_path):
    """SIGTERM after global step 6 (epoch 1, step 2 of 4, between two gate updates): the run
    saves, says so, exits 143; --resume auto then ends bitwise equal to the uninterrupted run."""
    args = STAGE1 + ["--model_path", teacher, "--output_dir", tmp_path]
    out = run_script("joint_train.py", args, expect=EXIT_PREEMPTED, UVC_TEST_CRASH_AT_STEP=6,
                     UVC_TEST_CRASH_RANK=0, UVC_TEST_CRASH_SIGNAL="TERM")
    assert "SIGTERM received: saved" in out and "at epoch 1 step 2 (global step 6)" in out
    state = load(tmp_path / ckpt.RESUME_NAME)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 6)
    assert state["search"]["primal_dual"]["grad_steps"] == 2  # mid gating interval
    assert not (tmp_path / STAGE1_FILE).exists()
    out = run_script("joint_train.py", args + ["--resume", "auto"])
    assert "resumed from" in out and "at epoch 1, step 6" in out
    assert_same_files(stage1_ref, tmp_path, [ckpt.RESUME_NAME, STAGE1_FILE])


def test_stage1_ctrl_c_saves_like_sigterm_and_exits_130(stage1_ref, teacher, tmp_path):
    """SIGINT (Ctrl-C) mid-epoch: saved like SIGTERM, exit code 130, no traceback; the resumed run
    ends bitwise equal to the uninterrupted one."""
    args = STAGE1 + ["--model_path", teacher, "--output_dir", tmp_path]
    out = run_script("joint_train.py", args, expect=EXIT_INTERRUPTED, UVC_TEST_CRASH_AT_STEP=6,
                     UVC_TEST_CRASH_RANK=0, UVC_TEST_CRASH_SIGNAL="INT")
    assert "SIGINT received: saved" in out and "Traceback" not in out and "KeyboardInterrupt" not in out
    run_script("joint_train.py", args + ["--resume", "auto"])
    assert_same_files(stage1_ref, tmp_path, [ckpt.RESUME_NAME, STAGE1_FILE])


def test_a_second_ctrl_c_interrupts_at_once():
    """The first Ctrl-C asks for a save; the handler Ctrl-C had before is back for the second (here
    Python's KeyboardInterrupt, set explicitly: a shell's background job starts with SIGINT ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    stop = StopSignal()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested() and stop.exit_code() == EXIT_INTERRUPTED
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    finally:
        stop.close()
        signal.signal(signal.SIGINT, before)


def test_stage1_soft_masking_resumes_exactly(teacher, tmp_path):
    """--search_masking soft (the reference's unmasked training forward) resumes bitwise too."""
    args = STAGE1 + ["--model_path", teacher, "--search_masking", "soft"]
    run_script("joint_train.py", args + ["--output_dir", tmp_path / "ref"])
    run_script("joint_train.py", args + ["--output_dir", tmp_path / "b"], expect=EXIT_PREEMPTED,
               UVC_TEST_CRASH_AT_STEP=6, UVC_TEST_CRASH_RANK=0, UVC_TEST_CRASH_SIGNAL="TERM")
    run_script("joint_train.py", args + ["--output_dir", tmp_path / "b", "--resume", "auto"])
    assert_same_files(tmp_path / "ref", tmp_path / "b", [ckpt.RESUME_NAME, STAGE1_FILE])


def test_stage1_sigkill_after_first_checkpoint_resumes_exactly(stage1_ref, teacher, tmp_path):
    """SIGKILL from outside as soon as the first checkpoint appears (wherever the run is then)."""
    args = STAGE1 + ["--model_path", teacher, "--output_dir", tmp_path]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "joint_train.py", *map(str, args)], cwd=REPO,
                                env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 900
        while not (tmp_path / ckpt.RESUME_NAME).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert not (tmp_path / STAGE1_FILE).exists(), "the run finished before it could be killed"
    out = run_script("joint_train.py", args + ["--resume", "auto"])
    assert "resumed from" in out
    assert_same_files(stage1_ref, tmp_path, [ckpt.RESUME_NAME, STAGE1_FILE])


def test_stage1_sigterm_with_gradient_accumulation_resumes_exactly(teacher, tmp_path):
    """Two micro-batches per step: the sampler skips steps x 2 batches on resume."""
    args = STAGE1 + ["--model_path", teacher, "--gradient_accumulation_steps", "2", "--max_steps_per_epoch", "3"]
    run_script("joint_train.py", args + ["--output_dir", tmp_path / "ref"])
    run_script("joint_train.py", args + ["--output_dir", tmp_path / "b"], expect=EXIT_PREEMPTED,
               UVC_TEST_CRASH_AT_STEP=5, UVC_TEST_CRASH_RANK=0, UVC_TEST_CRASH_SIGNAL="TERM")
    run_script("joint_train.py", args + ["--output_dir", tmp_path / "b", "--resume", "auto"])
    assert_same_files(tmp_path / "ref", tmp_path / "b", [ckpt.RESUME_NAME, STAGE1_FILE])


# --------------------------------------------------------------------------- stage 2

@pytest.fixture(scope="module")
def stage2_args(stage1_ref) -> list:
    return COMMON + ["--checkpoint_dir", stage1_ref / STAGE1_FILE]


@pytest.fixture(scope="module")
def stage2_ref(tmp_path_factory, stage2_args) -> Path:
    """The uninterrupted stage-2 run."""
    out = tmp_path_factory.mktemp("stage2_ref")
    run_script("post_train.py", stage2_args + ["--output_dir", out])
    return out


@pytest.mark.parametrize("sig, step", [("KILL", 5), pytest.param("TERM", 6, marks=pytest.mark.slow),
                                       ("TERM", 4)],
                         ids=["sigkill-mid-epoch", "sigterm-mid-epoch", "sigterm-last-step-of-epoch"])
def test_stage2_resumes_exactly(stage2_args, stage2_ref, tmp_path, sig, step):
    """Killed / stopped after global `step` (4 steps per epoch), resumed with --resume auto."""
    args = stage2_args + ["--output_dir", tmp_path]
    expect = EXIT_PREEMPTED if sig == "TERM" else -signal.SIGKILL
    out = run_script("post_train.py", args, expect=expect, UVC_TEST_CRASH_AT_STEP=step, UVC_TEST_CRASH_RANK=0,
                     UVC_TEST_CRASH_SIGNAL=sig)
    if sig == "TERM":
        assert "SIGTERM received: saved" in out
        state = load(tmp_path / ckpt.RESUME_NAME)
        assert (state["epoch"], state["step_in_epoch"]) == ((step - 1) // 4, (step - 1) % 4 + 1)
    run_script("post_train.py", args + ["--resume", "auto"])
    assert_same_files(stage2_ref, tmp_path, [ckpt.RESUME_NAME, BEST_FILE])
