"""The periodic paths a long run takes, at small intervals, in both stages: the mid-epoch
evaluation (--eval_every) in log.jsonl and tensorboard, the training scalars (--log_interval), the
epoch checkpoints, the gate updates (--gating_interval), and a resume from a mid-epoch checkpoint
that evaluates again on its way. Each stage runs in fp32 on one process and under --fp16 1 (bfloat16
on CPU) on 2 gloo processes: each value of each axis once. The seed's --eval_every 1000 once crashed the first mid-epoch
evaluation of both stages (an int where torch.amp wants a bool).

Every run: 3 epochs of 4 steps (global steps 1-12). Stage 1 warms up for 1 epoch, then searches
for 8 steps with a gate update every 3 (2 updates, 2 gradient steps left pending), one of which
proposes a block skip that is tried (--skip_probe) before it stands.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from utils.checkpoint import RESUME_NAME
from helpers import assert_same_files, clean_env, dense_checkpoint

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="gloo/CPU tests")

REPO = Path(__file__).resolve().parents[1]
TINY = "vit_digits_tiny_patch2_8"
STAGE1_FILE = f"{TINY}_uvc.pth"
EVAL_EVERY, LOG_INTERVAL, GATING_INTERVAL = 3, 2, 3
STEPS = 12  # 3 epochs x 4 steps
COMMON = ["--config", "configs/digits_demo.py", "--model_type", TINY, "--deterministic", "1", "--epochs", "3",
          "--max_steps_per_epoch", "4", "--train_batch_size", "16", "--eval_every", EVAL_EVERY,
          "--log_interval", LOG_INTERVAL]
STAGE1 = COMMON + ["--warmup_epochs", "1", "--gating_interval", GATING_INTERVAL]


def command(script: str, args, procs: int) -> list:
    if procs == 1:
        return [sys.executable, script, *map(str, args)]
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_addr",
            "127.0.0.1", "--master_port", str(port), script, *map(str, args)]


def run(script: str, args, procs: int = 1, expect: int = 0, **env) -> str:
    proc = subprocess.run(command(script, args, procs), cwd=REPO, env=clean_env(**env), capture_output=True,
                          text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect, f"{script} exited {proc.returncode}, expected {expect}:\n{out[-4000:]}"
    return out


def jsonl(out_dir: Path) -> list:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def tensorboard_steps(out_dir: Path) -> dict:
    """tag -> the steps it was written at, over every event file of the run folder."""
    steps = {}
    for events in sorted(out_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            steps.setdefault(tag, set()).update(e.step for e in acc.Scalars(tag))
    return steps


def assert_periodic_paths(out_dir: Path, stage: str) -> None:
    records = jsonl(out_dir)
    evals = [r for r in records if "eval_step" in r]
    expected = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert [r["eval_step"] for r in evals] == expected  # once each, also across a resume
    assert all(0.0 <= r["top1"] <= 100.0 and r["loss"] == r["loss"] for r in evals)
    assert [r["epoch"] for r in records if "epoch" in r] == [0, 1, 2]
    tb = tensorboard_steps(out_dir)
    assert tb["eval_step/top1"] == set(expected)
    assert tb["train/loss"] == set(range(LOG_INTERVAL, STEPS + 1, LOG_INTERVAL))
    assert tb["epoch/val_top1"] == {0, 1, 2}
    state = torch.load(out_dir / RESUME_NAME, map_location="cpu", weights_only=False)
    assert (state["epoch"], state["global_step"]) == (3, STEPS)  # the epoch checkpoint, written at each end
    if stage == "joint":  # 8 search steps: too short to steer, and each start of the run says so
        warnings = [r["warning"] for r in records if "warning" in r and "steer itself" in r["warning"]]
        assert warnings and all("has 8 steps, fewer than the 60" in w for w in warnings)
        pd = state["search"]["primal_dual"]
        search_steps = STEPS - 4
        assert pd["grad_steps"] == search_steps % GATING_INTERVAL
        gate_steps = [s["step"] for s in pd["gate_opt"]["state"].values()]
        assert gate_steps and all(int(s) == search_steps // GATING_INTERVAL for s in gate_steps)
        assert pd["skip_trial"]["skip_trials"] >= 1  # a block skip was tried on these paths too
        assert max(r.get("skip_trials", 0) for r in records) == pd["skip_trial"]["skip_trials"]
        assert (out_dir / STAGE1_FILE).is_file()
    else:
        assert (out_dir / "compact.pth").is_file()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return dense_checkpoint(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher):
    """Uninterrupted runs, made once per (stage, fp16, processes); stage 2 fine-tunes the
    one-process fp32 stage-1 result."""
    done = {}

    def get(stage: str, fp16: int, procs: int) -> Path:
        key = (stage, fp16, procs)
        if key not in done:
            out = tmp_path_factory.mktemp(f"{stage}_fp16{fp16}_p{procs}")
            args = stage_args(stage, teacher, get) + ["--fp16", fp16, "--output_dir", out]
            run(f"{stage}_train.py", args, procs)
            done[key] = out
        return done[key]
    return get


def stage_args(stage: str, teacher: Path, get) -> list:
    if stage == "joint":
        return STAGE1 + ["--model_path", teacher]
    return COMMON + ["--model_path", teacher, "--checkpoint_dir", get("joint", 0, 1) / STAGE1_FILE]


@pytest.mark.parametrize("fp16, procs", [(0, 1), (1, 2)])  # each value of each axis, in two runs of four
@pytest.mark.parametrize("stage", ["joint", "post"])
def test_periodic_paths(runs, stage, fp16, procs):
    assert_periodic_paths(runs(stage, fp16, procs), stage)


@pytest.mark.parametrize("stage", ["joint", "post"])
def test_resume_from_a_mid_epoch_checkpoint_takes_the_periodic_paths(runs, teacher, stage, tmp_path):
    """SIGTERM after step 7 (mid-epoch 1) saves and exits 143; --resume auto evaluates at steps 9
    and 12 on its way and ends bitwise where the uninterrupted run ends."""
    args = stage_args(stage, teacher, runs) + ["--fp16", 0, "--output_dir", tmp_path]
    log = run(f"{stage}_train.py", args, expect=143, UVC_TEST_CRASH_AT_STEP=7, UVC_TEST_CRASH_RANK=0,
              UVC_TEST_CRASH_SIGNAL="TERM")
    assert "saved" in log and "epoch 1 step 3 (global step 7)" in log
    run(f"{stage}_train.py", args + ["--resume", "auto"])
    assert_periodic_paths(tmp_path, stage)
    final = STAGE1_FILE if stage == "joint" else f"{TINY}_uvc_post_best.pth"
    assert_same_files(runs(stage, 0, 1), tmp_path, [RESUME_NAME, final])
