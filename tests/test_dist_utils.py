"""utils.dist (single process and 2-process gloo) and utils.amp on CPU."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from utils import dist as udist
from utils.amp import autocast_context, backward_step, make_scaler

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
CPU = torch.device("cpu")


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)


def test_single_process(no_launcher):
    info = udist.init_distributed()
    assert not info.distributed and info.backend is None
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)
    assert info.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert udist.is_main_process() and udist.get_world_size() == 1
    assert udist.all_reduce_mean(torch.tensor([3.0])).item() == 3.0
    assert udist.broadcast_object({"a": 1}) == {"a": 1}
    udist.barrier()
    udist.cleanup()


def test_local_rank_argument_used_without_env(no_launcher, monkeypatch):
    assert udist.init_distributed(local_rank_arg=2).local_rank == 2
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert udist.init_distributed(local_rank_arg=2).local_rank == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_gpu_num_ignored_on_cpu(no_launcher, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.warns(UserWarning, match="--gpu_num ignored"):
        info = udist.init_distributed(gpu_num="0,1")
    assert info.device == CPU
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_rank0_print(capsys):
    udist.rank0_print("hello", 1)
    assert capsys.readouterr().out == "hello 1\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    info = udist.init_distributed()
    try:
        assert info.distributed and info.backend == "gloo"
        assert (udist.get_rank(), udist.get_world_size()) == (rank, world_size)
        mean = udist.all_reduce_mean(torch.full((3,), float(rank)))
        assert torch.equal(mean, torch.full((3,), 0.5))
        assert udist.broadcast_object({"rank": rank}) == {"rank": 0}
        udist.barrier()
    finally:
        udist.cleanup()
    assert not udist.is_dist_ready()


@pytest.mark.skipif(torch.cuda.is_available(), reason="gloo/CPU test")
def test_two_process_gloo():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_autocast_cpu_bfloat16():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context(CPU, enabled=True):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_context(CPU, enabled=False):
        assert (a @ b).dtype == torch.float32


def _model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _loss(model, x):
    with autocast_context(CPU, enabled=True):
        return model(x).float().pow(2).mean()


def test_backward_step_updates_weights():
    model, optimizer = _model_and_optimizer()
    scaler = make_scaler(CPU, enabled=True)
    assert not scaler.is_enabled()
    before = model.weight.detach().clone()
    grad_norm, skipped = backward_step(_loss(model, torch.randn(8, 4)), optimizer, scaler,
                                       model.parameters(), clip_grad=1.0, step=True)
    assert isinstance(grad_norm, float) and grad_norm > 0 and not skipped
    assert not torch.equal(model.weight, before)
    assert model.weight.grad is None


def test_accumulation_keeps_weights_and_sums_grads():
    model, optimizer = _model_and_optimizer()
    scaler = make_scaler(CPU, enabled=False)
    x1, x2 = torch.randn(8, 4), torch.randn(8, 4)
    expected = sum(torch.autograd.grad(_loss(model, x), model.weight)[0] for x in (x1, x2))
    before = model.weight.detach().clone()
    for x in (x1, x2):
        assert backward_step(_loss(model, x), optimizer, scaler, model.parameters(),
                             clip_grad=0.0, step=False) == (None, False)
    assert torch.equal(model.weight, before)
    torch.testing.assert_close(model.weight.grad, expected)
