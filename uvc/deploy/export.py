"""Export: turn a masked timm ViT plus its architecture spec into a CompactViT.

docs/method.md section 7. The architecture spec `arch` (shared with the search code)
names, per block, whether it is skipped, its kept heads, each kept head's kept
value dims and its kept MLP neurons, and the kept patch positions. The MASKED
model is the timm model in which everything else contributes nothing; the
exported model computes the same logits with physically smaller weights:

    q, k rows of kept heads            (q/k dims are never pruned)
    v rows of kept dims of kept heads  zero-padded per head to the block's
                                       largest kept value dim (exact)
    proj columns matching the v rows   same order and padding
    fc1 rows, fc2 columns              of kept neurons
    pos_embed rows                     prefix rows + kept patch positions

A head whose value dims are all removed contributes nothing and is dropped.

The command line over it is uvc/export.py (`python -m uvc.export`).
"""
from typing import List, Tuple

import torch
import torch.nn as nn

from models.compact import CompactViT, num_prefix_tokens, structure
from models.vit import check_supported, rebuild, vit_structure
from uvc.cost.flops import ViTDims, block_macs, head_macs, patch_embed_macs



# ----------------------------------------------------------------------------- spec

def kept_heads(block: dict) -> List[Tuple[int, List[int]]]:
    """[(head index, kept value dims)] of one arch block, heads with no kept dim left out."""
    return [(h, list(dims)) for h, dims in zip(block["heads"], block["value_dims"]) if len(dims) > 0]


def compact_spec_from_arch(arch: dict, norm_eps: float = 1e-6) -> dict:
    """The compact spec of an arch: per non-skipped block H'_l kept heads, value
    size dv_l = the largest kept value dims of its heads, M'_l kept neurons.
    A block with no kept head gets H'_l = 0 (its attention outputs proj's bias).
    The model's structure (models.compact.STRUCTURE) is the arch's, DeiT's where
    the arch has none; `norm_eps` is used only if the arch does not say."""
    blocks = []
    for index, block in enumerate(arch["blocks"]):
        if block["skipped"]:
            continue
        heads = kept_heads(block)
        blocks.append({"heads": len(heads),
                       "value_dim": max((len(dims) for _, dims in heads), default=0),
                       "mlp_hidden": len(block["neurons"]),
                       "source_block": index})
    copied = ("model_type", "img_size", "patch_size", "in_chans", "num_classes", "embed_dim",
              "num_heads", "head_dim", "mlp_hidden", "depth", "distilled", "qkv_bias")
    spec = {"format_version": 1, **{key: arch[key] for key in copied}}
    spec.update(structure(dict({"norm_eps": float(norm_eps)}, **arch)))
    spec.update(num_prefix_tokens=num_prefix_tokens(spec),
                num_patches=(arch["img_size"] // arch["patch_size"]) ** 2,
                patches_kept=[int(i) for i in arch["patches_kept"]], blocks=blocks)
    if arch.get("model_kwargs") is not None:
        spec["model_kwargs"] = dict(arch["model_kwargs"])
    return spec


def spec_dims(spec: dict) -> ViTDims:
    """The dense model's sizes, as recorded in a compact spec."""
    return ViTDims(embed_dim=spec["embed_dim"], depth=spec["depth"], num_heads=spec["num_heads"],
                   head_dim=spec["head_dim"], mlp_hidden=spec["mlp_hidden"],
                   num_patches=spec.get("num_patches", (spec["img_size"] // spec["patch_size"]) ** 2),
                   num_prefix_tokens=spec.get("num_prefix_tokens", 2 if spec["distilled"] else 1),
                   patch_size=spec["patch_size"], in_chans=spec["in_chans"],
                   num_classes=spec["num_classes"], num_cls_heads=2 if spec["distilled"] else 1)


def compact_macs(spec: dict, with_attn: bool = True) -> float:
    """MACs of the compact model as it runs (value padding included), by the
    formula of uvc.cost.flops."""
    dims = spec_dims(spec)
    patches = len(spec["patches_kept"])
    tokens = patches + dims.num_prefix_tokens
    blocks = sum(block_macs(tokens, dims.embed_dim, b["heads"], dims.head_dim, b["heads"] * b["value_dim"],
                            b["mlp_hidden"], with_attn) for b in spec["blocks"])
    return float(patch_embed_macs(patches, dims) + blocks + head_macs(dims))


# ----------------------------------------------------------------------------- weights

def _check_supported(model: nn.Module, arch: dict) -> None:
    """A model UVC supports (models.vit.check_supported), of the arch's sizes."""
    check_supported(model, arch.get("model_type", ""))
    attn = model.blocks[0].attn
    problems = [
        (len(model.blocks) != arch["depth"], f"model depth {len(model.blocks)} != arch depth {arch['depth']}"),
        (attn.num_heads != arch["num_heads"] or attn.head_dim != arch["head_dim"],
         f"model heads {attn.num_heads}x{attn.head_dim} != arch {arch['num_heads']}x{arch['head_dim']}"),
        (model.num_prefix_tokens != arch["num_prefix_tokens"], "prefix tokens differ from the arch"),
    ]
    for bad, message in problems:
        if bad:
            raise ValueError(f"cannot export: {message}")


def _value_index(heads: List[Tuple[int, List[int]]], head_dim: int, value_dim: int):
    """Positions h*d + j of the kept value dims, padded per head to value_dim.

    Returns index (H'*dv,) long (0 where padded) and keep (H'*dv,) float 0/1."""
    index = torch.zeros(len(heads), value_dim, dtype=torch.long)
    keep = torch.zeros(len(heads), value_dim)
    for row, (h, dims) in enumerate(heads):
        index[row, :len(dims)] = h * head_dim + torch.as_tensor(dims, dtype=torch.long)
        keep[row, :len(dims)] = 1.0
    return index.flatten(), keep.flatten()


def _export_attention(src: nn.Module, dst: nn.Module, heads: List[Tuple[int, List[int]]]) -> None:
    """Slice timm Attention `src` (qkv rows [q | k | v], each H*d) into CompactAttention `dst`."""
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        d, attn_dim = src.head_dim, src.num_heads * src.head_dim
        head_ids = torch.as_tensor([h for h, _ in heads], dtype=torch.long)
        qk = (head_ids[:, None] * d + torch.arange(d)).flatten()  # (H'*d,) q rows of kept heads
        v, keep = _value_index(heads, d, dst.value_dim)  # (H'*dv,)
        rows = torch.cat([qk, attn_dim + qk, 2 * attn_dim + v])
        row_keep = torch.cat([torch.ones(2 * len(qk)), keep]).to(src.qkv.weight)
        dst.qkv.weight.copy_(src.qkv.weight[rows] * row_keep[:, None])
        if dst.qkv.bias is not None:
            dst.qkv.bias.copy_(src.qkv.bias[rows] * row_keep)
        dst.proj.weight.copy_(src.proj.weight[:, v] * keep.to(src.proj.weight)[None, :])
        dst.proj.bias.copy_(src.proj.bias)
        dst.q_norm.load_state_dict(src.q_norm.state_dict())  # qk-norm acts within a head: kept heads keep theirs
        dst.k_norm.load_state_dict(src.k_norm.state_dict())


def _export_mlp(src: nn.Module, dst: nn.Module, neurons: List[int]) -> None:
    """Keep fc1 rows and fc2 columns of the kept neurons."""
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        kept = torch.as_tensor(neurons, dtype=torch.long)
        dst.fc1.weight.copy_(src.fc1.weight[kept])
        dst.fc1.bias.copy_(src.fc1.bias[kept])
        dst.fc2.weight.copy_(src.fc2.weight[:, kept])
        dst.fc2.bias.copy_(src.fc2.bias)


def _export_embeddings(src: nn.Module, dst: CompactViT) -> None:
    """Patch embedding, prefix tokens, kept rows of pos_embed, norms and heads."""
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        kept = dst.patch_index.cpu()
        if dst.structure["no_embed_class"]:  # pos_embed covers the patches only
            rows = kept
        else:
            prefix = src.num_prefix_tokens
            rows = torch.cat([torch.arange(prefix), prefix + kept])
        dst.pos_embed.copy_(src.pos_embed[:, rows.to(src.pos_embed.device)])
        copy_whole_parts(dst, src, dst)


def copy_whole_parts(dst: nn.Module, src: nn.Module, compact: CompactViT) -> None:
    """Copy what pruning leaves whole, from `src` to `dst` (one of them is `compact`, the other the
    timm model): prefix tokens, patch embedding, norms and heads."""
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        for name in ("cls_token", "dist_token", "reg_token"):
            if getattr(compact, name) is not None:
                getattr(dst, name).copy_(getattr(src, name))
        names = ("patch_embed", "norm_pre", "norm", "fc_norm", "head") + (("head_dist",) if compact.distilled else ())
        for name in names:
            getattr(dst, name).load_state_dict(getattr(src, name).state_dict())


def block_pairs(model: nn.Module, compact: CompactViT, arch: dict):
    """(the timm model's block, the compact block made from it, that block's arch entry), per kept block."""
    for dst, entry in zip(compact.blocks, compact.spec["blocks"]):
        yield model.blocks[entry["source_block"]], dst, arch["blocks"][entry["source_block"]]


def copy_block_norms(dst: nn.Module, src: nn.Module) -> None:
    """A kept block's norms and layer scales, which pruning leaves whole, from `src` to `dst`."""
    for name in ("norm1", "norm2", "ls1", "ls2"):
        getattr(dst, name).load_state_dict(getattr(src, name).state_dict())


def export_compact(model: nn.Module, arch: dict) -> CompactViT:
    """The physically smaller model that computes the masked `model`'s logits.

    Args:
        model: a timm VisionTransformer (or VisionTransformerDistilled) of arch's sizes.
        arch: the architecture spec (see the module docstring).
    """
    _check_supported(model, arch)
    compact = CompactViT(compact_spec_from_arch({**arch, **vit_structure(model)}))
    compact.to(next(model.parameters()).device)
    _export_embeddings(model, compact)
    for src, dst, block in block_pairs(model, compact, arch):
        copy_block_norms(dst, src)
        _export_attention(src.attn, dst.attn, kept_heads(block))
        _export_mlp(src.mlp, dst.mlp, block["neurons"])
    return compact.train(model.training)


# ----------------------------------------------------------------------------- reference

def _input_mask(size: int, kept: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(size, dtype=like.dtype, device=like.device)
    mask[kept.to(like.device)] = 1.0
    return mask


def _scale_input(mask: torch.Tensor):
    """A forward pre-hook multiplying a layer's input by a (features,) mask."""
    return lambda module, args: (args[0] * mask,) + tuple(args[1:])


def masked_forward_reference(model: nn.Module, arch: dict, x: torch.Tensor):
    """Logits of the MASKED model: `model` with arch's removed groups zeroed by
    input masks on attn.proj (H*d,) and mlp.fc2 (M,), skipped blocks as identity
    and dropped patch tokens removed after the positional embedding.

    A slow, obviously correct reference for tests and for checking an export;
    `model` is left unchanged.
    """
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        handles = []
        try:
            for src, block in zip(model.blocks, arch["blocks"]):
                d, weight = src.attn.head_dim, src.attn.proj.weight
                columns = [h * d + j for h, dims in kept_heads(block) for j in dims]
                proj_mask = _input_mask(weight.shape[1], torch.as_tensor(columns, dtype=torch.long), weight)
                fc2_mask = _input_mask(src.mlp.fc2.in_features, torch.as_tensor(block["neurons"], dtype=torch.long),
                                       src.mlp.fc2.weight)
                handles.append(src.attn.proj.register_forward_pre_hook(_scale_input(proj_mask)))
                handles.append(src.mlp.fc2.register_forward_pre_hook(_scale_input(fc2_mask)))
            prefix = model.num_prefix_tokens
            tokens = torch.cat([torch.arange(prefix), prefix + torch.as_tensor(arch["patches_kept"], dtype=torch.long)])
            x = model._pos_embed(model.patch_embed(x)).index_select(1, tokens.to(x.device))  # (B, prefix + P', D)
            x = model.norm_pre(model.patch_drop(x))
            for src, block in zip(model.blocks, arch["blocks"]):
                if not block["skipped"]:
                    x = src(x)
            return model.forward_head(model.norm(x))
        finally:
            for handle in handles:
                handle.remove()


# ----------------------------------------------------------------------------- rebuilding the source

def dense_model_of(arch: dict, device="cpu") -> nn.Module:
    """The dense timm model an architecture spec was searched on (random weights).

    Built from the arch's `model_kwargs` (recorded by models.create_model); files
    written before they were recorded give the model type at their resolution."""
    import models  # noqa: F401  registers the vit_digits_* variants with timm

    kwargs = arch.get("model_kwargs")
    if kwargs is None:
        kwargs = {"num_classes": arch["num_classes"], "img_size": arch["img_size"]}
    with torch.device(device):
        return rebuild(arch["model_type"], kwargs)


def build_masked_source(ckpt: dict) -> nn.Module:
    """The timm model of a training checkpoint, its weights loaded, in eval mode."""
    arch = ckpt["arch"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt["model"].items()}
    try:
        model = dense_model_of(arch)
        result = model.load_state_dict(state, strict=False)  # a shape mismatch still raises
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"cannot rebuild {arch.get('model_type')!r}: {' '.join(str(e).split())[:300]}") from None
    for kind, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)):
        if keys:
            raise ValueError(f"the weights do not fit {arch['model_type']}: {len(keys)} {kind} keys "
                             f"(first: {keys[0]})")
    return model.eval()
