"""Distributed setup from the launcher's environment (DeiT-style) and rank helpers.

torchrun and ``python -m torch.distributed.launch`` both set RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the old launcher also passes
``--local-rank=N`` / ``--local_rank N``, which arrives here as ``local_rank_arg``
and is used only when LOCAL_RANK is absent. Without WORLD_SIZE (or with
WORLD_SIZE=1) the run is a plain single process and no process group is made.
"""
import hashlib
import os
import signal
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

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
        # torchrun's default (static) rendezvous keeps one store across --max-restarts attempts; keys
        # of a dead attempt (the gloo/nccl peer addresses) would be read by the next one, which then
        # hangs connecting to dead peers. Each attempt gets its own namespace.
        store, _, _ = next(dist.rendezvous("env://", rank, world_size))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or "0"
        dist.init_process_group(backend, store=dist.PrefixStore(f"uvc/attempt_{attempt}", store), rank=rank,
                                world_size=world_size)
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


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (a collective: call it on all ranks)."""
    if not is_dist_ready():
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(bool(flag))], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class RankMismatchError(RuntimeError):
    """Ranks that should hold identical state do not (a bug: the run would silently fork)."""


def same_on_every_rank(value: int, what: str) -> int:
    """`value`, checked to be the same on every rank (a collective: call it on all ranks, every time,
    so that a decision that is collective afterwards cannot hang when the ranks disagree)."""
    if not is_dist_ready():
        return int(value)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(value), -int(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    high, low = int(t[0].item()), -int(t[1].item())
    if high != low:
        raise RankMismatchError(f"{what} differs between ranks ({low} on one, {high} on another)")
    return int(value)


def _leaves(obj: Any, prefix: str = "") -> Dict[str, Any]:
    """Flatten nested dicts/lists/tuples into {"a.b.0": leaf}."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out = {}
    for k, v in items:
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def state_digests(state: Any) -> Dict[str, str]:
    """{name: digest} of every leaf of a (nested) state dict: tensors by their exact bytes, dtype and
    shape, other values by repr."""
    out = {}
    for name, leaf in _leaves(state).items():
        h = hashlib.blake2b(digest_size=8)
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(leaf).encode())
        out[name] = h.hexdigest()
    return out


def check_rank_consistency(state: Any, what: str = "state") -> str:
    """Raise RankMismatchError unless every rank holds a bitwise identical `state` (a collective).

    Returns a digest of the whole state. Data-parallel ranks apply the same
    averaged update to the same weights, so the weights, the architecture
    (s, r, gate and patch logits, y, p, z) and the optimizer states must agree
    exactly; a difference means a rank went its own way.
    """
    digests = state_digests(state)
    total = hashlib.blake2b("".join(f"{k}={v};" for k, v in sorted(digests.items())).encode(),
                            digest_size=8).hexdigest()
    if not is_dist_ready():
        return total
    gathered: List[Optional[Dict[str, str]]] = [None] * get_world_size()
    dist.all_gather_object(gathered, digests)
    reference = gathered[0]
    for rank, other in enumerate(gathered[1:], start=1):
        if other != reference:
            names = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise RankMismatchError(f"{what} differs between rank 0 and rank {rank} in {len(names)} "
                                    f"entr{'y' if len(names) == 1 else 'ies'}: {shown}")
    return total


def crash_for_test(global_step: int) -> None:
    """Test hook, inert unless UVC_TEST_CRASH_AT_STEP is set.

    After global step UVC_TEST_CRASH_AT_STEP, rank UVC_TEST_CRASH_RANK (default 1)
    dies with os._exit(1), or sends itself UVC_TEST_CRASH_SIGNAL (TERM, KILL, ...)
    if that is set; only on a first attempt (TORCHELASTIC_RESTART_COUNT unset or 0),
    so that a run restarted by torchrun --max-restarts goes through.
    """
    at = os.environ.get("UVC_TEST_CRASH_AT_STEP")
    if not at or global_step != int(at) or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        return
    if get_rank() != int(os.environ.get("UVC_TEST_CRASH_RANK", "1")):
        return
    sig = os.environ.get("UVC_TEST_CRASH_SIGNAL")
    print(f"UVC_TEST_CRASH_AT_STEP: rank {get_rank()} {'gets SIG' + sig if sig else 'exits'} at step "
          f"{global_step}", flush=True)
    if sig:
        os.kill(os.getpid(), getattr(signal, f"SIG{sig.upper()}"))
    else:
        os._exit(1)


def cleanup() -> None:
    """Destroy the process group if there is one."""
    if is_dist_ready():
        dist.destroy_process_group()


def rank0_print(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only, flushed; builtins.print is left alone."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)
