"""What a model costs: MACs, dense MACs, ratio, parameters, and the compressed
architecture block by block.

    python -m uvc.report deit_small_patch16_224                 # a model type (dense)
    python -m uvc.report weights.pth                            # a dense checkpoint
    python -m uvc.report out/deit_tiny_patch16_224_uvc.pth      # stage 1 (joint_train.py)
    python -m uvc.report out/deit_tiny_patch16_224_uvc_post_best.pth   # stage 2
    python -m uvc.report out/compact.pth --json --fvcore --plot arch.png

MACs are multiply-accumulates (what the DeiT/UVC papers call "FLOPs"), by the
formula of uvc.flops (docs/method.md section 3). For a compressed model they are the
deployed count: the exported compact model's, value dims padded per block to
the largest kept head. `--fvcore` counts the physically built model (the dense
timm model, or the compact model a stage-1/2 file exports to) with fvcore, fused
attention off everywhere so that q.k^T and a.v are seen; fvcore's total also
includes the LayerNorms, which the formula leaves out (~0.4% on DeiT).

`--json` prints one JSON object: macs, dense_macs, macs_ratio, params,
dense_params; for compressed files also blocks [{skipped, heads, value_dims,
value_dims_deployed, mlp_hidden, macs}] (one per original block; value_dims
before padding where the file knows it), patches_kept (a count) and patch_map
(the kept positions); with --fvcore also fvcore_macs (fvcore's total),
fvcore_macs_modelled_ops (its linear + matmul + conv, which must equal macs) and
fvcore_rel_diff; with a latency table (`--latency`: measured on --device once and
cached, or the one a `--budget_metric latency` stage-1 file was searched with) also
latency_seconds, dense_latency_seconds (estimated per batch) and latency_ratio.
Bad input: one line on stderr, exit code 2.
"""
import argparse
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn

from models.checkpoint import CheckpointError, extract_state_dict, read_checkpoint
from models.compact import FORMAT as COMPACT_FORMAT
from models.compact import STRUCTURE, CompactViT, num_prefix_tokens, structure
from models.vit import (DEMO_TYPES, MODEL_TYPES, create_model, model_kwargs_of, rebuild, resolve_model_type,
                        set_fused_attn, vit_structure)
from uvc.cost import compact_cost, dense_cost
from uvc.export import TRAINING_FORMATS, compact_macs, compact_spec_from_arch, dense_model_of, spec_dims
from uvc.flops import ViTDims, arch_macs, block_macs, dense_macs
from uvc.import_reference import is_reference_state
from uvc.latency import LatencyCost
from uvc.latency_table import load_or_measure

KINDS = {"model_type": "model type (dense)", "dense": "dense checkpoint", "uvc-stage1-v1": "stage-1 file",
         "uvc-stage2-v1": "stage-2 file", COMPACT_FORMAT: "compact model"}


# fvcore operators that the MACs formula models; fvcore also counts layer_norm
FORMULA_OPS = ("linear", "matmul", "conv")


class ReportError(ValueError):
    """Input the report cannot describe; the message is one line for the user."""


@dataclass
class Subject:
    """What was asked about: a dense model, or a compressed one with its compact spec."""
    kind: str  # a key of KINDS
    source: str  # the model type or the file
    model_type: str
    dense_spec: dict  # sizes of the dense model, in the compact-spec vocabulary (no "blocks")
    compact_spec: Optional[dict] = None  # None: the dense model itself
    arch: Optional[dict] = None  # stage-1/2 files: the architecture spec (kept indices)
    checkpoint: Optional[dict] = None  # the file's content
    config: Optional[dict] = None  # stage-1/2 files: the run's config

    @property
    def compressed(self) -> bool:
        return self.compact_spec is not None


# ----------------------------------------------------------------------------- models

_SIZE_KEYS = ("model_type", "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "num_heads",
              "head_dim", "mlp_hidden", "depth", "distilled", "qkv_bias") + tuple(STRUCTURE)


def _sizes(spec: dict) -> dict:
    """The dense sizes of a compact or architecture spec (the compact-spec vocabulary, no blocks)."""
    sizes = {k: spec[k] for k in _SIZE_KEYS if k in spec}
    sizes.update(structure(spec), num_patches=(spec["img_size"] // spec["patch_size"]) ** 2,
                 num_prefix_tokens=spec.get("num_prefix_tokens", num_prefix_tokens(spec)))
    if spec.get("model_kwargs") is not None:
        sizes["model_kwargs"] = dict(spec["model_kwargs"])
    return sizes


def sizes_of_vit(vit: nn.Module, model_type: str) -> dict:
    """The dense sizes of a timm VisionTransformer, in the compact-spec vocabulary."""
    d = ViTDims.of(vit)
    img = vit.patch_embed.img_size
    sizes = {"model_type": model_type, "img_size": int(img[0] if isinstance(img, (tuple, list)) else img),
             "patch_size": d.patch_size, "in_chans": d.in_chans, "num_classes": d.num_classes,
             "embed_dim": d.embed_dim, "num_heads": d.num_heads, "head_dim": d.head_dim,
             "mlp_hidden": d.mlp_hidden, "depth": d.depth, "distilled": d.num_cls_heads == 2,
             "qkv_bias": vit.blocks[0].attn.qkv.bias is not None, "num_patches": d.num_patches,
             "num_prefix_tokens": d.num_prefix_tokens, **vit_structure(vit)}
    if model_kwargs_of(vit) is not None:
        sizes["model_kwargs"] = model_kwargs_of(vit)
    return sizes


def dense_vit(sizes: dict, device="cpu") -> nn.Module:
    """A randomly initialised dense timm ViT of the given sizes: rebuilt from its recorded
    model_kwargs, else a VisionTransformer of DeiT's structure (files written before
    model_kwargs were recorded, and models not registered with timm)."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    if sizes.get("model_kwargs") is not None:
        return dense_model_of(sizes, device).eval()
    if sizes["num_heads"] * sizes["head_dim"] != sizes["embed_dim"]:
        raise ReportError(f"heads {sizes['num_heads']} x {sizes['head_dim']} != width {sizes['embed_dim']}: "
                          f"not a timm ViT")
    cls = VisionTransformerDistilled if sizes["distilled"] else VisionTransformer
    with torch.device(device):
        return cls(img_size=sizes["img_size"], patch_size=sizes["patch_size"], in_chans=sizes["in_chans"],
                   num_classes=sizes["num_classes"], embed_dim=sizes["embed_dim"], depth=sizes["depth"],
                   num_heads=sizes["num_heads"], mlp_ratio=sizes["mlp_hidden"] / sizes["embed_dim"],
                   qkv_bias=sizes["qkv_bias"]).eval()


def built_model(subject: Subject, device="cpu") -> nn.Module:
    """The physically built model: the dense ViT, or the compact model (the file's
    own for a compact file; random weights of the exported shapes for stage 1/2)."""
    if not subject.compressed:
        return dense_vit(subject.dense_spec, device)
    if subject.kind == COMPACT_FORMAT:
        model = CompactViT(subject.compact_spec)
        model.load_state_dict(subject.checkpoint["state_dict"])
        return model.to(device).eval()
    with torch.device(device):  # CompactViT cannot be built on the meta device
        return CompactViT(subject.compact_spec).eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def arch_of_compact_spec(spec: dict) -> dict:
    """An architecture spec with the costs of a compact spec (the first H' heads,
    dv dims and M' neurons of every kept block): what a masked model needs to run
    as fast as the compact one's source when the kept indices are unknown."""
    H, d, M = spec["num_heads"], spec["head_dim"], spec["mlp_hidden"]
    blocks = [{"skipped": True, "heads": list(range(H)), "value_dims": [list(range(d))] * H,
               "neurons": list(range(M))} for _ in range(spec["depth"])]
    for b in spec["blocks"]:
        blocks[b["source_block"]] = {"skipped": False, "heads": list(range(b["heads"])),
                                     "value_dims": [list(range(b["value_dim"]))] * b["heads"],
                                     "neurons": list(range(b["mlp_hidden"]))}
    return {**_sizes(spec), "blocks": blocks, "patches_kept": list(spec["patches_kept"])}


# ----------------------------------------------------------------------------- reading

def _fits(vit: nn.Module, state: dict, img_size: Optional[int]) -> bool:
    shapes = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    if img_size:
        shapes.pop("pos_embed", None)
    return all(k in state and tuple(state[k].shape) == s for k, s in shapes.items())


def _infer_model_type(state: dict, declared: Optional[str], img_size: Optional[int],
                      kwargs: Optional[dict] = None) -> Tuple[str, dict]:
    """The model type whose tensors have the shapes of `state` (built on the meta device):
    the declared type built with the file's model_kwargs, else the declared type or one of
    MODEL_TYPES at the file's resolution."""
    if declared and kwargs is not None:
        try:
            with torch.device("meta"):
                vit = rebuild(declared, dict(kwargs, **({"img_size": img_size} if img_size else {})))
        except ValueError as e:
            raise ReportError(str(e)) from None
        if not _fits(vit, state, img_size):
            raise ReportError(f"the checkpoint's tensors do not fit {declared} built with its model_kwargs")
        return declared, sizes_of_vit(vit, declared)
    try:
        distilled = "dist_token" in state
        prefix = 2 if distilled else 1
        patch = state["patch_embed.proj.weight"].shape[-1]
        side = math.isqrt(state["pos_embed"].shape[1] - prefix)
        num_classes = state["head.weight"].shape[0]
    except (KeyError, IndexError) as e:
        raise ReportError(f"the state dict is not a ViT/DeiT's (no {e})") from None
    own_img = side * patch
    if declared:
        candidates = [declared]
    else:
        candidates = [t for t in MODEL_TYPES if not (distilled and t in DEMO_TYPES)]
        candidates.sort(key=lambda t: t.endswith(str(own_img)), reverse=True)  # 224 vs 384 bases
    for name in candidates:
        try:
            with torch.device("meta"):
                vit = create_model(name, num_classes=num_classes, enable_deit=int(distilled),
                                   img_size=img_size or own_img)
        except (ValueError, RuntimeError, AssertionError, TypeError):
            continue
        if _fits(vit, state, img_size):
            resolved = resolve_model_type(name, int(distilled))
            return resolved, sizes_of_vit(vit, resolved)
    what = f"the declared model_type {declared!r}" if declared else f"any of {', '.join(MODEL_TYPES)}"
    raise ReportError(f"the checkpoint's tensors do not fit {what} (width {state['pos_embed'].shape[-1]}, "
                      f"{len(state)} tensors); name its type with --model_type")


def _read_file(path: str, img_size: Optional[int], model_type: Optional[str] = None) -> Subject:
    try:
        obj = read_checkpoint(path)
    except CheckpointError as e:
        raise ReportError(str(e)) from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    fmt = obj.get("format")
    if fmt is not None and fmt != COMPACT_FORMAT and fmt not in TRAINING_FORMATS:
        raise ReportError(f"{path} has format {fmt!r}; expected a dense checkpoint, {', '.join(TRAINING_FORMATS)} "
                          f"or {COMPACT_FORMAT}")
    if fmt is not None and img_size:
        raise ReportError(f"--img_size applies to model types and dense checkpoints, not to a {KINDS[fmt]} "
                          f"(its resolution is fixed by its architecture)")
    try:
        if fmt == COMPACT_FORMAT:
            spec = obj["spec"]
            return Subject(fmt, path, spec["model_type"], _sizes(spec), compact_spec=spec, checkpoint=obj)
        if fmt in TRAINING_FORMATS:
            arch = obj["arch"]
            spec = compact_spec_from_arch(arch)
            sizes = _sizes(spec)
            config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
            return Subject(fmt, path, obj.get("model_type", arch["model_type"]), sizes, compact_spec=spec,
                           arch=arch, checkpoint=obj, config=config)
    except (KeyError, TypeError) as e:
        raise ReportError(f"{path} is a malformed {KINDS[fmt]} (missing {e})") from None
    try:
        state = extract_state_dict(obj)
    except CheckpointError as e:
        raise ReportError(f"{path}: {e}") from None
    if is_reference_state(state):
        raise ReportError(f"{path} is a checkpoint of the reference implementation (VITA-Group/UVC); convert it "
                          f"first: python -m uvc.import_reference {path} OUT.pth --model_type <its timm type>")
    declared = obj.get("model_type") if isinstance(obj.get("model_type"), str) else None
    kwargs = obj.get("model_kwargs") if isinstance(obj.get("model_kwargs"), dict) else None
    if model_type:  # named on the command line: the file's own record does not apply
        declared, kwargs = resolve_model_type(model_type, int("dist_token" in state)), None
    found, sizes = _infer_model_type(state, declared, img_size, kwargs)
    return Subject("dense", path, found, sizes, checkpoint=obj)


def read_subject(name: str, img_size: Optional[int] = None, enable_deit: int = 0,
                 model_type: Optional[str] = None) -> Subject:
    """A model type or a file (dense checkpoint, stage-1/2 file, compact model); `model_type`
    names the type of a dense checkpoint that does not record one."""
    if os.path.isdir(name):
        raise ReportError(f"{name} is a directory; pass a model type or a .pth file")
    if os.path.exists(name):
        return _read_file(name, img_size, model_type)
    try:
        model_type = resolve_model_type(name, enable_deit)
    except ValueError as e:
        if name.endswith((".pth", ".pt", ".bin", ".tar")) or os.sep in name:
            raise ReportError(f"file {name} does not exist") from None
        if timm.is_model(name):  # a known type without a distilled form
            raise ReportError(str(e)) from None
        raise ReportError(f"{name} is neither a file nor a model type: {str(e).replace('--model_type ', '')}") \
            from None
    with torch.device("meta"):
        vit = create_model(model_type, img_size=img_size)
    return Subject("model_type", name, model_type, sizes_of_vit(vit, model_type))


# ----------------------------------------------------------------------------- counting

def block_rows(subject: Subject) -> List[Dict]:
    """Per original block: skipped, heads, value dims kept (and as deployed), MLP width, MACs."""
    spec = subject.compact_spec
    d, D = spec["head_dim"], spec["embed_dim"]
    tokens = len(spec["patches_kept"]) + spec_dims(spec).num_prefix_tokens
    rows = [{"skipped": True, "heads": 0, "value_dims": 0, "value_dims_deployed": 0, "mlp_hidden": 0, "macs": 0.0}
            for _ in range(spec["depth"])]
    for b in spec["blocks"]:
        deployed = b["heads"] * b["value_dim"]
        rows[b["source_block"]] = {
            "skipped": False, "heads": b["heads"], "value_dims": deployed, "value_dims_deployed": deployed,
            "mlp_hidden": b["mlp_hidden"],
            "macs": float(block_macs(tokens, D, b["heads"], d, deployed, b["mlp_hidden"]))}
    if subject.arch is not None:  # the kept dims before padding
        for row, block in zip(rows, subject.arch["blocks"]):
            if not row["skipped"]:
                row["value_dims"] = sum(len(v) for v in block["value_dims"])
    return rows


def fvcore_count(model: nn.Module, input_shape) -> Tuple[float, Dict[str, float]]:
    """fvcore's MACs of one image, fused attention off (fvcore cannot see inside SDPA)."""
    with warnings.catch_warnings():  # fvcore's import warns about torch.jit.script
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    set_fused_attn(model, False)
    with torch.no_grad():
        counter = FlopCountAnalysis(model.eval(), torch.zeros(1, *input_shape))
        counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_op = {k: float(v) for k, v in counter.by_operator().items()}
        return float(counter.total()), by_op


def latency_table_of(subject: Subject, measure: bool, device="cpu", cache: str = "", batch_size: int = 64):
    """(table, where it came from): measured on `device` (or read from its cache) with `measure`, else
    the table a `--budget_metric latency` stage-1 file was searched with, else (None, None)."""
    if measure:
        vit = dense_vit(subject.dense_spec, device)
        return load_or_measure(vit, subject.model_type, device, cache, batch_size,
                               log=lambda text: print(text, file=sys.stderr))
    table = (subject.checkpoint or {}).get("latency_table")
    return (table, f"the table {subject.source} was searched with") if table else (None, None)


def latency_numbers(subject: Subject, table: dict, source: str) -> dict:
    """Estimated seconds per batch of the model and of the dense model, from a latency table (uvc.latency)."""
    cost = LatencyCost(spec_dims(subject.dense_spec), table)
    dense = dense_cost(cost)
    seconds = compact_cost(cost, subject.compact_spec) if subject.compressed else dense
    return {"latency_seconds": seconds, "dense_latency_seconds": dense, "latency_ratio": seconds / dense,
            "latency_table": {"source": source, **{k: table.get(k) for k in ("device", "device_name", "threads",
                                                                              "batch_size", "amp")}}}


def build_report(subject: Subject, with_fvcore: bool = False, latency: Optional[Tuple[dict, str]] = None) -> dict:
    """The numbers `python -m uvc.report` prints, as a JSON-able dict (`latency`: (table, its source)
    adds the estimated latency)."""
    sizes = subject.dense_spec
    dims = spec_dims(sizes)
    dense = dense_macs(dims)
    dense_params = count_params(dense_vit(sizes, "meta"))
    out = {"source": subject.source, "kind": KINDS[subject.kind], "model_type": subject.model_type,
           "img_size": sizes["img_size"], "dense_macs": dense, "dense_params": dense_params}
    if subject.compressed:
        spec = subject.compact_spec
        macs = compact_macs(spec)
        params = count_params(built_model(subject, "cpu"))
        out.update(macs=macs, macs_ratio=macs / dense, params=params, params_ratio=params / dense_params,
                   blocks_kept=len(spec["blocks"]), depth=spec["depth"], patches_kept=len(spec["patches_kept"]),
                   num_patches=sizes["num_patches"], patch_map=list(spec["patches_kept"]),
                   blocks=block_rows(subject))
        if subject.arch is not None:
            out["macs_unpadded"] = arch_macs(dims, subject.arch, pad_value_dims=False)
        if subject.config and "budget" in subject.config:
            out["budget"] = float(subject.config["budget"])
    else:
        out.update(macs=dense, macs_ratio=1.0, params=dense_params, params_ratio=1.0)
    if with_fvcore:
        shape = (sizes["in_chans"], sizes["img_size"], sizes["img_size"])
        total, by_op = fvcore_count(built_model(subject, "cpu"), shape)
        modelled = sum(v for k, v in by_op.items() if k in FORMULA_OPS)
        out.update(fvcore_macs=total, fvcore_macs_modelled_ops=modelled, fvcore_by_operator=by_op,
                   fvcore_rel_diff=(total - out["macs"]) / out["macs"])
    if latency is not None and latency[0] is not None:
        out.update(latency_numbers(subject, *latency))
    return out


# ----------------------------------------------------------------------------- output

def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:.4g}"


def format_text(r: dict) -> str:
    """The human-readable report."""
    lines = [f"{r['source']}: {r['kind']}, {r['model_type']} at {r['img_size']}px"
             + (f", budget {r['budget']:g}" if "budget" in r else "")]
    deployed = " (deployed: value dims padded per block)" if "blocks" in r else ""
    lines += [f"MACs:        {_si(r['macs'])}MACs{deployed}   [multiply-accumulates, the literature's \"FLOPs\"]",
              f"dense MACs:  {_si(r['dense_macs'])}MACs",
              f"MACs ratio:  {r['macs_ratio']:.4f}",
              f"params:      {_si(r['params'])} ({100 * r['params_ratio']:.1f}% of dense {_si(r['dense_params'])})"]
    if "macs_unpadded" in r:
        lines.append(f"MACs without value-dim padding: {_si(r['macs_unpadded'])}MACs "
                     f"(ratio {r['macs_unpadded'] / r['dense_macs']:.4f})")
    if "fvcore_macs" in r:
        lines.append(f"fvcore MACs: {_si(r['fvcore_macs'])}MACs ({100 * r['fvcore_rel_diff']:+.2f}% vs the formula; "
                     f"{'+'.join(FORMULA_OPS)} {_si(r['fvcore_macs_modelled_ops'])}, the rest is LayerNorm)")
    if "latency_ratio" in r:
        t = r["latency_table"]
        lines.append(f"est. latency ratio: {r['latency_ratio']:.4f} ({1e3 * r['latency_seconds']:.3g} ms of "
                     f"{1e3 * r['dense_latency_seconds']:.3g} ms dense per batch of {t['batch_size']}, "
                     f"{t['device']} {t['device_name']}, {'amp' if t['amp'] else 'fp32'}; {t['source']})")
    if "blocks" in r:
        lines.append(f"blocks kept: {r['blocks_kept']}/{r['depth']}, patches kept: {r['patches_kept']}/"
                     f"{r['num_patches']}")
        lines.append(f"{'block':>5} {'kept':>5} {'heads':>6} {'value dims (deployed)':>22} {'MLP hidden':>10} "
                     f"{'MACs':>10}")
        for i, b in enumerate(r["blocks"]):
            if b["skipped"]:
                lines.append(f"{i:>5} {'skip':>5}")
                continue
            lines.append(f"{i:>5} {'yes':>5} {b['heads']:>6} {b['value_dims']:>10} ({b['value_dims_deployed']:>4})"
                         f"{'':>5} {b['mlp_hidden']:>10} {_si(b['macs']):>10}")
    return "\n".join(lines)


def plot_architecture(r: dict, sizes: dict, path: str) -> None:
    """Kept heads, value dims and MLP width per block (skipped blocks hatched) and the kept-patch map."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H, d, M, L = sizes["num_heads"], sizes["head_dim"], sizes["mlp_hidden"], sizes["depth"]
    P = sizes["num_patches"]
    blocks = r.get("blocks") or [{"skipped": False, "heads": H, "value_dims": H * d, "value_dims_deployed": H * d,
                                  "mlp_hidden": M}] * L
    kept = r.get("patch_map", list(range(P)))
    fig = plt.figure(figsize=(11, 4))
    grid = fig.add_gridspec(1, 2, width_ratios=[3, 1])
    ax = fig.add_subplot(grid[0])
    x = torch.arange(L).float()
    series = (("heads", H, "tab:blue"), ("value_dims", H * d, "tab:orange"), ("mlp_hidden", M, "tab:green"))
    width = 0.27
    for j, (key, full, color) in enumerate(series):
        frac = [0.0 if b["skipped"] else b[key] / full for b in blocks]
        bars = ax.bar((x + (j - 1) * width).tolist(), frac, width, color=color, label=f"{key} kept (of {full})")
        for bar, b in zip(bars, blocks):
            if not b["skipped"]:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, str(b[key]),
                        ha="center", va="bottom", fontsize=6, rotation=90)
    for i, b in enumerate(blocks):
        if b["skipped"]:
            ax.axvspan(i - 0.45, i + 0.45, color="0.85", hatch="//", zorder=0)
            ax.text(i, 0.5, "skipped", ha="center", va="center", rotation=90, fontsize=8)
    ax.set_xticks(range(L))
    ax.set_xlabel("block")
    ax.set_ylabel("fraction kept")
    ax.set_ylim(0, 1.25)
    ax.legend(loc="upper right", fontsize=7, ncol=3)
    ax.set_title(f"{r['model_type']}: {_si(r['macs'])}MACs, {100 * r['macs_ratio']:.1f}% of dense")
    side = math.isqrt(P)
    patch_map = torch.zeros(P)
    patch_map[torch.as_tensor(kept, dtype=torch.long)] = 1.0
    ax2 = fig.add_subplot(grid[1])
    if side * side == P:
        ax2.imshow(patch_map.view(side, side).numpy(), cmap="gray", vmin=0, vmax=1)
    ax2.set_xticks([])
    ax2.set_yticks([])
    ax2.set_title(f"patches kept: {len(kept)}/{P}")
    ax2.set_xlabel("white: kept, black: dropped", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m uvc.report",
                                     description="MACs, parameters and architecture of a (compressed) ViT.")
    parser.add_argument("subject", metavar="MODEL_TYPE_OR_FILE",
                        help="a timm ViT name (e.g. deit_tiny_patch16_224), a dense checkpoint, a stage-1/2 file "
                             "or compact.pth")
    parser.add_argument("--model_type", "--model-type", default=None,
                        help="the timm type of a dense checkpoint that does not name one")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--fvcore", action="store_true", help="also count with fvcore on the built model")
    parser.add_argument("--plot", default="", metavar="OUT.png", help="draw the architecture per block")
    parser.add_argument("--img_size", "--img-size", type=int, default=None, help="resolution (model types, dense)")
    parser.add_argument("--enable_deit", "--enable-deit", type=int, default=0, choices=(0, 1),
                        help="1: the distillation-token form of a model type")
    parser.add_argument("--latency", action="store_true",
                        help="estimated latency ratio from the latency table of --device (measured once and cached, "
                             "as --budget_metric latency does); without it, a latency-searched stage-1 file's table")
    parser.add_argument("--latency_cache", default="", help="latency table file (.json) or directory "
                                                           "(default ~/.cache/uvc/latency)")
    parser.add_argument("--latency_batch", type=int, default=64, help="batch size of the latency table")
    parser.add_argument("--device", default="cpu", help="device the latency table is measured on")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.img_size is not None and args.img_size <= 0:
            raise ReportError(f"--img_size must be positive, got {args.img_size}")
        subject = read_subject(args.subject, args.img_size, args.enable_deit, args.model_type)
        if args.latency_batch < 1:
            raise ReportError(f"--latency_batch must be at least 1, got {args.latency_batch}")
        latency = latency_table_of(subject, args.latency, torch.device(args.device), args.latency_cache,
                                   args.latency_batch)
        report = build_report(subject, args.fvcore, latency)
        if args.plot:
            try:
                plot_architecture(report, subject.dense_spec, args.plot)
            except OSError as e:
                raise ReportError(f"cannot write --plot {args.plot} ({e.strerror or e})") from None
    except ValueError as e:  # ReportError, and shape errors from malformed files
        if os.environ.get("UVC_DEBUG"):
            raise
        message = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"uvc.report: error: {message}", file=sys.stderr)
        return 2
    except (RuntimeError, KeyError, TypeError) as e:  # a file that parses but is not a usable model
        if os.environ.get("UVC_DEBUG"):
            raise
        message = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        print(f"uvc.report: error: {args.subject} cannot be built ({type(e).__name__}: {message})", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print(format_text(report))
        if args.plot:
            print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
