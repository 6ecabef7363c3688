"""Measuring a ViT's latency table on a device, once, and caching it (the cost model: uvc.cost.latency).

The parts of a compact block (models/compact.py) are timed side by side in
interleaved rounds (utils.benchmark), on random inputs of the model's dense
token count N0 and a batch of `batch_size` images:

    qkv        Linear(D, w) over a grid of widths w up to 3 H d
    proj       Linear(w, D) over a grid of widths up to H d
    mlp        fc1, activation, fc2 over a grid of widths up to M
    attention  CompactAttention.attend (qk-norm, q.k^T, softmax over N0^2, a.v, the
               fused kernel's padding of narrow value heads) for a grid of kept heads
               x value dims per head; 0 where either is 0 (nothing is computed)
    block_overhead   both LayerNorms, layer scales and residual adds of a block
    outside_blocks   a CompactViT without blocks (embedding of the kept patches, final
                     norm, classifier) at each token count of the table
    blocks           whole CompactBlocks on a ladder of widths (all heads, value dims per
                     head and MLP width at k/8 of full, k = 1..8) at each token count of the
                     table: every count from N0 / 2 to N0, where a search drops patches and
                     time is a sawtooth in the count, and k/8 of N0 below; g maps the sum of
                     parts onto them
    dense_model      the whole dense model: R's denominator

in float32, or under torch.amp with `amp`. The table is a JSON file, cached per
device, model sizes, batch size, precision, thread count and torch version under
~/.cache/uvc/latency/ (or a given file or directory) and written atomically; a
cached table is read back instead of measured again.
"""
import hashlib
import json
import os
import platform
import re
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

from models.compact import CompactAttention, CompactBlock, CompactMlp, CompactViT, linear
from models.vit import vit_structure
from uvc.cost.flops import ViTDims
from uvc.cost.latency import FORMAT, LatencyTableError, check_table, table_sizes
from uvc.deploy.export import compact_spec_from_arch
from uvc.deploy.freeze import base_spec
from utils.amp import autocast_context, autocast_dtype
from utils.benchmark import interleaved_medians
from utils.checkpoint import atomic_write_text


def width_grid(full: int, points: int = 8) -> List[int]:
    """0, 1, `points` even steps up to `full`."""
    return sorted({0, 1, full} | {round(full * i / points) for i in range(1, points)})


def heads_grid(full: int, points: int = 6) -> List[int]:
    """Every head count up to `points` heads, else 0, 1 and `points` even steps."""
    return list(range(full + 1)) if full <= points else width_grid(full, points)


def ladder(full: int, points: int = 8) -> List[int]:
    """k/points of `full` (at least 1) for k = 1..points."""
    return [max(1, round(full * k / points)) for k in range(1, points + 1)]


def token_ladder(tokens: int, prefix: int, points: int = 8) -> List[int]:
    """k/points of the dense token count (k = 1..points), each with at least one patch token."""
    return sorted({max(prefix + 1, round(tokens * k / points)) for k in range(1, points + 1)})


def token_counts(tokens: int, prefix: int) -> List[int]:
    """The token counts blocks are timed at: every count from half the dense count up, the ladder below."""
    half = max(prefix + 1, -(-tokens // 2))
    return sorted({t for t in token_ladder(tokens, prefix) if t < half} | set(range(half, tokens + 1)))


def _outside(vit: nn.Module, tokens: int) -> nn.Module:
    """The compact model with every block skipped and the first `tokens` - prefix patches kept."""
    arch = base_spec(vit, "")
    arch["blocks"] = [dict(b, skipped=True) for b in arch["blocks"]]
    arch["patches_kept"] = arch["patches_kept"][:tokens - arch["num_prefix_tokens"]]
    return CompactViT(compact_spec_from_arch({**arch, **vit_structure(vit)}))


def _timed_parts(vit: nn.Module, batch_size: int, device: torch.device, amp: bool) -> Dict[Tuple, Callable]:
    """Every part of the table as a callable on random inputs on `device`, keyed (part, width...)."""
    d, s = ViTDims.of(vit), vit_structure(vit)
    n, D, H, hd = d.num_patches + d.num_prefix_tokens, d.embed_dim, d.num_heads, d.head_dim
    bias = vit.blocks[0].attn.qkv.bias is not None
    dtype = autocast_dtype(device) if amp else torch.float32
    x = torch.randn(batch_size, n, D, device=device)
    fns = {}
    for w in width_grid(3 * H * hd):
        fns["qkv", w] = (lambda lin: lambda: lin(x))(linear(D, w, bias).to(device))
    for w in width_grid(H * hd):
        fns["proj", w] = (lambda lin, xin: lambda: lin(xin))(linear(w, D).to(device),
                                                             torch.randn(batch_size, n, w, device=device))
    for m in width_grid(d.mlp_hidden):
        fns["mlp", m] = (lambda mlp: lambda: mlp(x))(CompactMlp(D, m, s["act"]).to(device))
    attn = CompactAttention(D, H, hd, hd, bias, s["qk_norm"], s["norm_eps"]).to(device)
    qkv = torch.randn(batch_size, n, 3 * H * hd, device=device, dtype=dtype)  # laid out as the model's qkv output
    for h in heads_grid(H)[1:]:
        q = qkv[..., :h * hd].view(batch_size, n, h, hd).transpose(1, 2)
        k = qkv[..., H * hd:(H + h) * hd].view(batch_size, n, h, hd).transpose(1, 2)
        for dv in width_grid(hd)[1:]:
            v = qkv[..., 2 * H * hd:2 * H * hd + h * dv].view(batch_size, n, h, dv).transpose(1, 2)
            fns["attention", h, dv] = (lambda q, k, v: lambda: attn.attend(q, k, v))(q, k, v)
    images = torch.randn(batch_size, d.in_chans, *vit.patch_embed.img_size, device=device)
    for t in token_counts(n, d.num_prefix_tokens):
        xt = torch.randn(batch_size, t, D, device=device)
        for dv, m in dict.fromkeys(zip(ladder(hd), ladder(d.mlp_hidden))):
            whole = CompactBlock(D, H, hd, dv, m, bias, s["norm_eps"], 0.0, s["layer_scale"], s["qk_norm"], s["act"])
            fns["block", t, dv, m] = (lambda b, xt: lambda: b(xt))(whole.to(device).eval(), xt)
        fns["outside", t] = (lambda m: lambda: m(images))(_outside(vit, t).to(device).eval())
    blk = vit.blocks[0]

    def overhead():
        y = x + blk.ls1(blk.norm1(x))
        return y + blk.ls2(blk.norm2(y))

    fns["block_overhead"], fns["dense_model"] = overhead, lambda: vit(images)
    return fns


def measure_table(vit: nn.Module, batch_size: int, device, amp: bool = False, repeats: int = 5,
                  warmup: int = 1, min_round_s: float = 0.02, model_type: str = "") -> dict:
    """The latency table of `vit` on `device` (see the module docstring): seconds per batch."""
    device = torch.device(device)
    dims = ViTDims.of(vit)
    training = vit.training
    vit.eval()
    with torch.inference_mode(), autocast_context(device, amp):
        fns = _timed_parts(vit, batch_size, device, amp)
        seconds = interleaved_medians(fns, device, warmup, repeats, min_round_s)
    vit.train(training)
    hs, dvs = heads_grid(dims.num_heads), width_grid(dims.head_dim)
    line = lambda part: {"width": [k[1] for k in fns if k[0] == part],  # noqa: E731
                         "time": [seconds[k] for k in fns if k[0] == part]}
    attention = [[seconds["attention", h, v] if h and v else 0.0 for v in dvs] for h in hs]
    ladder_keys = [k for k in fns if k[0] == "block"]
    blocks = {"tokens": [k[1] for k in ladder_keys], "heads": [dims.num_heads] * len(ladder_keys),
              "value_dim": [k[2] for k in ladder_keys], "mlp": [k[3] for k in ladder_keys],
              "time": [seconds[k] for k in ladder_keys]}
    outside = [k for k in fns if k[0] == "outside"]
    return {"format": FORMAT, **device_record(device), "batch_size": batch_size, "amp": amp, "repeats": repeats,
            "model_type": model_type, "sizes": table_sizes(dims),
            "seconds": {"qkv": line("qkv"), "proj": line("proj"), "mlp": line("mlp"),
                        "attention": {"heads": hs, "value_dim": dvs, "time": attention}, "blocks": blocks,
                        "block_overhead": seconds["block_overhead"],
                        "outside_blocks": {"tokens": [k[1] for k in outside], "time": [seconds[k] for k in outside]},
                        "dense_model": seconds["dense_model"]}}


def device_record(device: torch.device) -> dict:
    """What the table was measured on."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), name)
        except OSError:
            pass
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
            "torch": str(torch.__version__)}  # a TorchVersion would not load weights_only


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uvc", "latency")


def cache_file(cache: str, vit: nn.Module, model_type: str, device, batch_size: int, amp: bool) -> str:
    """The table's file: `cache` itself if it names a .json file, else a file per device, model
    sizes and structure, batch, precision, threads and torch version in `cache` (default
    ~/.cache/uvc/latency)."""
    if cache.endswith(".json"):
        return cache
    device = torch.device(device)
    key = {"format": FORMAT, "sizes": table_sizes(ViTDims.of(vit)), "structure": vit_structure(vit),
           **device_record(device), "batch_size": batch_size, "amp": amp}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model_type or "vit")
    precision = "amp" if amp else "fp32"
    return os.path.join(cache or default_cache_dir(), f"{name}_{device.type}_b{batch_size}_{precision}_{digest}.json")


def load_or_measure(vit: nn.Module, model_type: str, device, cache: str = "", batch_size: int = 64,
                    amp: bool = False, repeats: int = 5, log: Callable[[str], None] = print,
                    **measure_kwargs) -> Tuple[dict, str]:
    """(table, its file): read from the cache, or measured now and written there."""
    path = cache_file(cache, vit, model_type, device, batch_size, amp)
    if os.path.exists(path):
        try:
            with open(path) as f:
                table = json.load(f)
        except (OSError, json.JSONDecodeError):
            raise LatencyTableError(f"latency table {path} is not readable JSON: delete it to measure "
                                    f"again") from None
        check_table(table, ViTDims.of(vit))
        measured_as = (table.get("batch_size"), bool(table.get("amp")))
        if measured_as != (batch_size, amp):
            raise LatencyTableError(f"latency table {path} was measured at batch {measured_as[0]}"
                                    f"{' under amp' if measured_as[1] else ''}, not {batch_size}"
                                    f"{' under amp' if amp else ''}: give that batch size or another file")
        return table, path
    log(f"measuring the latency table of {model_type or 'the model'} on {torch.device(device)} at batch "
        f"{batch_size} (once; cached in {path})")
    table = measure_table(vit, batch_size, device, amp, repeats, model_type=model_type, **measure_kwargs)
    atomic_write_text(json.dumps(table, indent=1), path)
    return table, path
