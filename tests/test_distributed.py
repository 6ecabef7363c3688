"""Two-process gloo runs on CPU: ranks stay bitwise identical, the seed README's launch commands
work under `python -m torch.distributed.launch` and torchrun, a crashed rank is restarted by
`torchrun --max-restarts 1` and the run resumes exactly, SIGTERM to the launcher saves and exits.

Every save of a run state checks, across ranks, a digest of the weights, the architecture (s, r,
gate and patch logits, y, p, z), the optimizer states, epoch and step (utils.dist.
check_rank_consistency) and raises RankMismatchError on a difference; with more than one process
rank 0 prints "the N ranks hold identical state". The first test shows that the check catches a
single differing value.
"""
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from uvc.search.driver import search_space
from utils.checkpoint import RESUME_NAME
from utils.config import parse_config
from helpers import assert_same_files, clean_env  # tests/ is on sys.path under pytest

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="gloo/CPU tests")

REPO = Path(__file__).resolve().parents[1]
TINY = "vit_digits_tiny_patch2_8"
DEMO = "vit_digits_patch2_8"  # the model type whose default config is the digits demo (no --config needed)
AGREE = "the 2 ranks hold identical state"
TINY_ARGS = ["--config", "configs/digits_demo.py", "--model_type", TINY, "--deterministic", "1", "--epochs", "3",
             "--max_steps_per_epoch", "3", "--warmup_epochs", "1", "--gating_interval", "2",
             "--train_batch_size", "32"]  # per process: 64 images a step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, args, *launcher_args, **env) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *launcher_args, script, *map(str, args)]


def run(cmd, expect: int = 0, **env) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(**env), capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect, f"{cmd[:6]} exited {proc.returncode}, expected {expect}:\n{out[-4000:]}"
    return out


def epoch_records(out_dir: Path) -> list:
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "epoch" in r]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict:
    """Dense {"model": state_dict} checkpoints of both digits models (student start and teacher)."""
    from models import create_model
    root = tmp_path_factory.mktemp("teachers")
    paths = {}
    for model_type in (TINY, DEMO):
        torch.manual_seed(0)
        paths[model_type] = root / f"{model_type}.pth"
        torch.save({"model": create_model(model_type, num_classes=10).state_dict()}, paths[model_type])
    return paths


# --------------------------------------------------------------------------- the rank-consistency check

CONSISTENCY_WORKER = """
import json, sys, torch
from utils import dist as udist
rank = udist.init_distributed().rank
result = {}
state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "search": {"arch": {"z": torch.tensor(0.5)}}, "epoch": 3}
result["digest"] = udist.check_rank_consistency(state, "state")
result["any"] = [udist.any_rank(rank == 1), udist.any_rank(False)]
if rank == 1:  # one ulp on one rank
    state["search"]["arch"]["z"] = torch.nextafter(torch.tensor(0.5), torch.tensor(1.0))
try:
    udist.check_rank_consistency(state, "run state")
except udist.RankMismatchError as e:
    result["error"] = str(e)
udist.cleanup()
print("RESULT " + json.dumps(result))
"""


def test_rank_consistency_check_catches_one_differing_value():
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", CONSISTENCY_WORKER], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=clean_env(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1",
                                            MASTER_PORT=port))
             for rank in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads(out.split("RESULT ", 1)[1]) for out in outputs]
    assert results[0]["digest"] == results[1]["digest"]
    for result in results:
        assert result["any"] == [True, False]
        assert result["error"] == "run state differs between rank 0 and rank 1 in 1 entry: search.arch.z"


PATCH_DROP_WORKER = """
import json, os, sys, torch
sys.path.insert(0, "tests")
from helpers import demo_search_config, noisy_tiny_vit
from utils import dist as udist
from uvc.search import UVCSearch
from uvc.search.masked_model import MaskedViT
rank = udist.init_distributed().rank
vit = noisy_tiny_vit(0)
model = MaskedViT(vit)
gen = torch.Generator().manual_seed(0)
probe = (torch.randn(16, 1, 8, 8, generator=gen), torch.randint(10, (16,), generator=gen))
search = UVCSearch(vit, demo_search_config(gating_interval=1, enable_block_gating=0), torch.device("cpu"),
                   search_steps=1000, probe=probe)
search.set_epoch(0)
search.prepare(model, training=True)  # masks and scores of the current weights
a, pd = search.arch, search.pd
with torch.no_grad():
    a.z.fill_(1.0)  # the budget still pushes: a drop may be tried
    a.patch_logits[5] = 1e-3  # one step of the update takes it past the boundary
    if os.environ["DISAGREE"] == "1" and rank == 1:
        a.patch_logits[5] = 5.0  # rank 1 proposes no drop
a.patch_logits.grad = torch.zeros_like(a.patch_logits)
a.patch_logits.grad[5] = 1.0
grads = {"gate": torch.zeros_like(a.gate_logits), "patch": torch.zeros_like(a.patch_logits)}
result = {}
try:
    pd.gate_step(grads, 0.5, model)
    result["trials"] = search.trial_state()["flip_trials"]
    result["dropped"] = bool(a.patch_logits[5] < 0)
except udist.RankMismatchError as e:
    result["error"] = str(e)
udist.cleanup()
print("RESULT " + json.dumps(result))
"""


@pytest.mark.parametrize("disagree", [0, 1])
def test_patch_drop_trial_is_collective_on_every_rank(disagree):
    """2 gloo ranks: a proposed patch drop is tried on both (the trial's losses are averaged over ranks)
    and both take the same decision; ranks that disagree on the proposal fail on both, they never hang."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", PATCH_DROP_WORKER], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=clean_env(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1",
                                            MASTER_PORT=port, DISAGREE=disagree))
             for rank in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads(out.split("RESULT ", 1)[1]) for out in outputs]
    if disagree:
        assert all("the patch drop proposed to the trial differs between ranks" in r["error"] for r in results)
    else:
        assert results[0] == results[1] and results[0]["trials"] == 1


# --------------------------------------------------------------------------- the seed's flags

SEED_STAGE1 = ["--gpu_num", "0,1", "--uvc_train", "--model_type", DEMO, "--distillation-type", "soft",
               "--distillation-alpha", "0.1", "--train_batch_size", "32", "--num_epochs", "3", "--eval_every", "2",
               "--flops_with_mhsa", "1", "--zlr_schedule_list", "1,5,9,13,17", "--learning_rate", "1e-4",
               "--enable_deit", "0", "--budget", "0.5", "--enable_pruning", "1", "--enable_block_gating", "1",
               "--enable_patch_gating", "1", "--gating_weight", "5e-4", "--patch_weight", "5",
               "--patch_l1_weight", "0.01", "--patchloss", "l1", "--use_gumbel", "1", "--glr", "0.1",
               "--patchlr", "0.01", "--num_workers", "2", "--seed", "730", "--log_interval", "2",
               "--eps", "0.1", "--eps_decay", "0.92", "--enable_warmup", "1", "--warmup_epochs", "1",
               "--warmup_lr", "1e-4", "--z_grad_clip", "0.5", "--gating_interval", "2",
               "--max_steps_per_epoch", "4"]
# the seed's intervals (--eval_every 1000, --log_interval 1000, --gating_interval 50) scaled down to
# 2 steps over 3 epochs of 4 steps (1 of warm-up): each fires at least twice


def launch(script: str, args) -> list:
    return [sys.executable, "-W", "ignore", "-m", "torch.distributed.launch", "--nproc_per_node=2",
            "--master_port", str(free_port()), script, *map(str, args)]


LAUNCHERS = {"launch": launch, "torchrun": lambda script, args: torchrun(script, args)}


def eval_steps(out_dir: Path) -> list:
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return [r["eval_step"] for r in map(json.loads, lines) if "eval_step" in r]


def test_seed_flags_are_accepted_and_mean_what_they_say():
    c = parse_config("joint", SEED_STAGE1 + ["--model_path", "t.pth", "--output_dir", "o", "--local-rank=1"])
    assert (c.uvc_train, c.epochs, c.learning_rate, c.flops_with_mhsa, c.gpu_num, c.local_rank) == \
        (True, 3, 1e-4, True, "0,1", 1)
    assert all(type(c[k]) is bool for k in ("uvc_train", "flops_with_mhsa", "enable_deit", "enable_pruning",
                                            "use_gumbel", "enable_warmup", "fp16", "pin_mem"))
    assert c.dataset == "digits"  # --model_type vit_digits_patch2_8 picks configs/digits_demo.py
    assert search_space(c).with_attn and not search_space(parse_config(
        "joint", ["--model_type", DEMO, "--flops_with_mhsa", "0"])).with_attn
    post = parse_config("post", ["--pretrained", "0", "--model_type", DEMO, "--checkpoint_dir", "s1.pth",
                                 "--distillation-type", "soft", "--train_batch_size", "256", "--gpu_num", "2,3",
                                 "--epochs", "120", "--eval_every", "1000", "--num_workers", "64"])
    assert (post.pretrained, post.epochs, post.train_batch_size, post.uvc_train) == (False, 120, 256, False)


# --------------------------------------------------------------------------- launchers

# one launcher in CI (torchrun, what PyTorch recommends), the deprecated one under -m slow
LAUNCHER_PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name == "launch" else name for name in LAUNCHERS]


@pytest.fixture(scope="module", params=LAUNCHER_PARAMS)
def seed_stage1(request, tmp_path_factory, teachers):
    """The seed README's stage-1 command, shrunk, under python -m torch.distributed.launch and torchrun
    (2 processes)."""
    out = tmp_path_factory.mktemp(f"seed_stage1_{request.param}")
    args = SEED_STAGE1 + ["--model_path", teachers[DEMO], "--output_dir", out]
    return out, run(LAUNCHERS[request.param]("joint_train.py", args))


def test_seed_stage1_command(seed_stage1):
    out, log = seed_stage1
    assert log.count(AGREE) == 3  # checked at every epoch end
    records = epoch_records(out)
    assert [r["epoch"] for r in records] == [0, 1, 2]  # --num_epochs 3
    assert records[0]["train_lr"] == pytest.approx(1e-4) and not records[0]["searching"]  # --warmup_lr
    assert records[1]["searching"] and records[1]["train_lr"] <= 1e-4  # cosine from --learning_rate
    assert eval_steps(out) == [2, 4, 6, 8, 10, 12]  # --eval_every
    state = torch.load(out / RESUME_NAME, map_location="cpu", weights_only=False)
    # --gating_interval: an update every 2 of the 8 search steps, until the gates settle at the search's end
    assert state["search"]["primal_dual"]["gate_opt"]["state"][0]["step"] >= 2
    stage1 = torch.load(out / f"{DEMO}_uvc.pth", map_location="cpu", weights_only=False)
    assert stage1["config"]["flops_with_mhsa"] is True and stage1["config"]["epochs"] == 3
    fit = stage1["fit"]  # 8 search steps cannot reach the budget: exported as searched, its gap recorded
    assert fit["exported_as_searched"] and fit["budget_gap"] == pytest.approx(fit["macs_ratio"] - 0.5)


@pytest.mark.parametrize("launcher", LAUNCHER_PARAMS)
def test_seed_stage2_command(seed_stage1, teachers, tmp_path, launcher):
    """The seed README's stage-2 command, shrunk, under both launchers."""
    stage1_dir, _ = seed_stage1
    args = ["--pretrained", "0", "--model_type", DEMO, "--model_path", teachers[DEMO],
            "--checkpoint_dir", stage1_dir / f"{DEMO}_uvc.pth", "--distillation-type", "soft",
            "--distillation-alpha", "0.1", "--train_batch_size", "32", "--gpu_num", "2,3", "--epochs", "2",
            "--eval_every", "2", "--output_dir", tmp_path, "--num_workers", "0", "--max_steps_per_epoch", "2"]
    log = run(LAUNCHERS[launcher]("post_train.py", args))
    assert log.count(AGREE) == 2
    assert (tmp_path / "compact.pth").is_file() and len(epoch_records(tmp_path)) == 2
    assert eval_steps(tmp_path) == [2, 4]  # --eval_every: 2 epochs of 2 steps


def first_record(out_dir: Path) -> dict:
    return json.loads((out_dir / "log.jsonl").read_text().splitlines()[0])


def test_torchrun_both_stages_per_process_batch(teachers, tmp_path):
    """--train_batch_size is per process: 8 on 2 processes is a global batch of 16. Stage 1 runs at
    --learning_rate as given; stage 2 at --learning_rate x 16 / 512. Stage 1's ranks agree."""
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    log = run(torchrun("joint_train.py", TINY_ARGS + ["--epochs", "2", "--train_batch_size", "8", "--model_path",
                                                      teachers[TINY], "--output_dir", s1]))
    assert log.count(AGREE) == 2
    assert "batch 8 per process x 2 process(es) x 1 accumulation step(s) = global batch 16" in log
    assert first_record(s1) == {"world_size": 2, "per_process_batch": 8, "gradient_accumulation_steps": 1,
                                "global_batch": 16, "peak_lr": 5e-4}  # the demo config's stage-1 rate, unscaled
    log = run(torchrun("post_train.py", ["--config", "configs/digits_demo.py", "--model_type", TINY,
                                         "--checkpoint_dir", s1 / f"{TINY}_uvc.pth", "--train_batch_size", "8",
                                         "--learning_rate", "1e-4", "--epochs", "1", "--max_steps_per_epoch", "2",
                                         "--output_dir", s2]))
    assert "global batch 16; peak learning rate 3.125e-06" in log
    record = first_record(s2)
    assert (record["world_size"], record["per_process_batch"], record["global_batch"]) == (2, 8, 16)
    assert record["peak_lr"] == pytest.approx(3.125e-6, rel=1e-12)  # 1e-4 x 16 / 512
    assert (s2 / "compact.pth").is_file()


# --------------------------------------------------------------------------- failures

@pytest.fixture(scope="module")
def tiny_ref(tmp_path_factory, teachers) -> Path:
    """An uninterrupted 2-process stage-1 run."""
    out = tmp_path_factory.mktemp("tiny_ref")
    run(torchrun("joint_train.py", TINY_ARGS + ["--model_path", teachers[TINY], "--output_dir", out]))
    return out


def test_torchrun_restarts_a_crashed_rank_and_resumes_exactly(tiny_ref, teachers, tmp_path):
    """Rank 1 dies (os._exit(1)) after global step 5 on the first attempt; torchrun restarts both
    workers, which resume from the epoch-0 checkpoint without --resume (TORCHELASTIC_RESTART_COUNT
    > 0) and end exactly as the uninterrupted run."""
    args = TINY_ARGS + ["--model_path", teachers[TINY], "--output_dir", tmp_path]
    log = run(torchrun("joint_train.py", args, "--max-restarts", "1"), UVC_TEST_CRASH_AT_STEP=5)
    assert "UVC_TEST_CRASH_AT_STEP: rank 1 exits at step 5" in log
    assert "resumed from" in log and "at epoch 1, step 3" in log
    assert_same_files(tiny_ref, tmp_path, [RESUME_NAME, f"{TINY}_uvc.pth"])


def test_sigterm_to_torchrun_saves_and_resumes_exactly(tiny_ref, teachers, tmp_path):
    """SIGTERM to the launcher (what a scheduler sends) once the first checkpoint exists: torchrun
    passes it on, the workers agree on a step, save and exit 143; --resume auto completes the run."""
    args = TINY_ARGS + ["--model_path", teachers[TINY], "--output_dir", tmp_path]
    with open(tmp_path / "stopped.log", "w") as log:
        proc = subprocess.Popen(torchrun("joint_train.py", args), cwd=REPO, env=clean_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + 1200
        while not (tmp_path / RESUME_NAME).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    text = (tmp_path / "stopped.log").read_text()
    assert proc.returncode != 0 and "SIGTERM received: saved" in text, text[-3000:]
    assert not (tmp_path / f"{TINY}_uvc.pth").exists()
    run(torchrun("joint_train.py", args + ["--resume", "auto"]))
    assert_same_files(tiny_ref, tmp_path, [RESUME_NAME, f"{TINY}_uvc.pth"])
