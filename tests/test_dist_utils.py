"""utils.dist (single process and 2-process gloo) and utils.amp on CPU."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from utils import dist as udist
from utils.amp import autocast_context, make_scaler

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


def test_scaler_only_on_cuda():
    """float16 needs a GradScaler (CUDA); bfloat16 on CPU does not: the scaler is a pass-through."""
    assert not make_scaler(CPU, enabled=True).is_enabled()
    assert not make_scaler(CPU, enabled=False).is_enabled()
