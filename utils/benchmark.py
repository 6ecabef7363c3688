"""Throughput measurement: images per second of one model, or of several side by side.

On a shared, noisy machine a ratio of two throughputs measured one after the
other mostly measures what the neighbours did in between. `interleaved_medians`
therefore runs the candidates in alternating rounds (A, B, C, A, B, C, ...) and
keeps the median time per candidate, so every candidate sees the same mix of
quiet and busy moments. `compare_throughput` applies that to models.

    from utils.benchmark import images_per_second, compare_throughput
    ips = images_per_second(model, (3, 224, 224), batch_size=64, device="cpu")
    both = compare_throughput({"dense": dense, "compact": compact}, (3, 224, 224), 64, "cpu")
"""
import statistics
import time
from typing import Callable, Dict, Mapping, Sequence

import torch

from utils.amp import autocast_context


def synchronize(device) -> None:
    """Wait for queued kernels (CUDA); a no-op on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], calls: int, device, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call of `calls` back-to-back calls of fn (on CUDA: between two CUDA events, the
    time the GPU took, whatever `clock`)."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    synchronize(device)
    start = clock()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (clock() - start) / calls


def calls_per_round(fn: Callable[[], object], device, min_round_s: float,
                    clock: Callable[[], float] = time.perf_counter) -> int:
    """How many back-to-back calls make one timed round last at least `min_round_s`
    (fast calls, like a batch-1 forward, are timed in groups: the timer's and
    the scheduler's jitter then stay small against the round)."""
    once = _timed(fn, 1, device, clock)
    return max(1, int(min_round_s / max(once, 1e-9)) + 1) if once < min_round_s else 1


def interleaved_medians(fns: Mapping[str, Callable[[], object]], device="cpu", warmup: int = 2,
                        repeats: int = 5, min_round_s: float = 0.05,
                        clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """Median seconds per call of each fn, timed in interleaved rounds.

    Each fn is called `warmup` times first (allocator, caches, lazy kernels), then
    `repeats` rounds run every fn once in turn (a round of a fast fn is several
    back-to-back calls, see `calls_per_round`). Returns {name: median s/call}.
    `clock` is wall time by default; `time.process_time` (this process's CPU
    time) ignores the time other processes take the cores away, which makes
    ratios steadier on a shared machine, with one thread (`torch.set_num_threads(1)`;
    with several, idle threads spin and count).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    calls = {name: calls_per_round(fn, device, min_round_s, clock) for name, fn in fns.items()}
    times: Dict[str, list] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, calls[name], device, clock))
    return {name: statistics.median(t) for name, t in times.items()}


def _forward_fn(model: torch.nn.Module, images: torch.Tensor, device, amp: bool,
                amp_dtype: torch.dtype = None) -> Callable[[], object]:
    def run():
        with torch.inference_mode(), autocast_context(device, amp, amp_dtype):
            return model(images)
    return run


def compare_throughput(models: Mapping[str, torch.nn.Module], input_shape: Sequence[int], batch_size: int,
                       device="cpu", amp: bool = False, warmup: int = 2, repeats: int = 5,
                       min_round_s: float = 0.05, seed: int = 0,
                       clock: Callable[[], float] = time.perf_counter,
                       amp_dtype: torch.dtype = None) -> Dict[str, float]:
    """Images per second of several models on the same random batch, timed side by side.

    Args:
        models: name -> model; each is put in eval mode on `device`.
        input_shape: (C, H, W) of one image.
        batch_size: images per forward pass.
        device: where to run.
        amp: run under torch.amp autocast, in `amp_dtype` (default float16 on CUDA, bfloat16 on CPU).
        warmup, repeats, min_round_s, clock: see `interleaved_medians`.
    Returns {name: images per second} (median over the rounds).
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, *input_shape, generator=gen).to(device)
    fns = {name: _forward_fn(model.to(device).eval(), images, device, amp, amp_dtype)
           for name, model in models.items()}
    seconds = interleaved_medians(fns, device, warmup, repeats, min_round_s, clock)
    return {name: batch_size / s for name, s in seconds.items()}


def images_per_second(model: torch.nn.Module, input_shape: Sequence[int], batch_size: int, device="cpu",
                      amp: bool = False, warmup: int = 2, repeats: int = 5, min_round_s: float = 0.05,
                      clock: Callable[[], float] = time.perf_counter) -> float:
    """Images per second of one model under torch.inference_mode: the median of
    `repeats` timed rounds after `warmup` untimed forward passes."""
    return compare_throughput({"model": model}, input_shape, batch_size, device, amp, warmup, repeats,
                              min_round_s, clock=clock)["model"]


def add_common_args(parser) -> None:
    """--device, --threads, --clock and --json, shared by the benchmark scripts."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="process: this process's CPU time, steadier on a shared machine (use --threads 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_cli(prog: str, args, run: Callable[[object], dict], table: Callable[[dict], str]) -> int:
    """The benchmark scripts' main: thread count, one-line errors (exit 2), table or --json."""
    import json
    import sys
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except ValueError as e:
        print(f"{prog}: error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else table(result))
    return 0
