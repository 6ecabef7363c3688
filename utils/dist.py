"""Distributed setup from the launcher's environment (DeiT-style) and rank helpers.

torchrun and ``python -m torch.distributed.launch`` both set RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the old launcher also passes
``--local-rank=N`` / ``--local_rank N``, which arrives here as ``local_rank_arg``
and is used only when LOCAL_RANK is absent. Without WORLD_SIZE (or with
WORLD_SIZE=1) the run is a plain single process and no process group is made.
"""
import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process runs and how it talks to the others."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool
    backend: Optional[str]  # "nccl" / "gloo" when distributed, else None


def init_distributed(gpu_num: str = "", local_rank_arg: int = 0) -> DistInfo:
    """Pick the device and join the process group when launched with WORLD_SIZE > 1.

    Args:
        gpu_num: comma-separated GPU ids ("0,1") exported as CUDA_VISIBLE_DEVICES.
            The CUDA driver reads that variable once, at its first use, so call
            this before anything touches CUDA. Ignored with a warning when CUDA
            is already initialised or when no CUDA device is visible.
        local_rank_arg: the old launcher's ``--local-rank`` value.
    """
    _select_gpus(gpu_num)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank_arg))
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    distributed = world_size > 1
    if distributed:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, device, distributed, backend if distributed else None)


def _select_gpus(gpu_num: str) -> None:
    """Export CUDA_VISIBLE_DEVICES=gpu_num, or warn and leave it unchanged."""
    if not gpu_num:
        return
    if torch.cuda.is_initialized():
        warnings.warn("--gpu_num ignored: CUDA is already initialised")
        return
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_num
    if torch.cuda.is_available():
        return
    if previous is None:
        del os.environ["CUDA_VISIBLE_DEVICES"]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = previous
    warnings.warn("--gpu_num ignored: no CUDA device")


def is_dist_ready() -> bool:
    """True once a process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_ready() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_ready() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_ready():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a floating tensor across ranks, in place; returns it."""
    if is_dist_ready():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(get_world_size())
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank src's picklable obj, on every rank."""
    if not is_dist_ready():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def cleanup() -> None:
    """Destroy the process group if there is one."""
    if is_dist_ready():
        dist.destroy_process_group()


def rank0_print(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only, flushed; builtins.print is left alone."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)
