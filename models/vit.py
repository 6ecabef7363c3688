"""Students and teachers: any timm VisionTransformer the method can compress.

`--model_type` names any model timm builds as a `VisionTransformer` (DeiT,
DeiT III with LayerScale, ViT with or without qkv bias, qk-norm, register
tokens, class-token or average pooling), optionally reshaped by keyword
arguments (`embed_dim`, `depth`, ... or any other VisionTransformer argument),
so a user can build a ViT of their own size from scratch. `check_supported`
stops, in one line naming it, at any structure the method cannot handle.

The weight layout is timm's (= the official DeiT release's), so official
checkpoints load without conversion. The small `vit_digits_*` and `vit_mnist_*`
variants are the CPU demos' models (8x8 grey digits with patch 2; 28x28 grey MNIST
with patch 4), registered with timm the same way as timm's own DeiT functions.

A built model remembers how it was built (`model.uvc_model_kwargs`, JSON-able):
`rebuild(model_type, kwargs)` makes the same model again from a saved file.
"""
import difflib
import json
from itertools import chain
from typing import Optional

import torch.nn as nn
import timm
from timm.layers import Attention, LayerScale, Mlp, PatchEmbed
from timm.layers.activations import GELU, GELUTanh, QuickGELU
from timm.models import register_model
from timm.models.vision_transformer import Block, VisionTransformer

# ImageNet DeiT variants with a config file of their own (their `_distilled` forms too).
DEIT_TYPES = (
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_base_patch16_384",
)


def _demo_vit(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    if pretrained:
        raise ValueError(f"{variant} has no released weights; train it with post_train.py --pretrained 0")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)  # passed by timm.create_model to every builder
    return VisionTransformer(**kwargs)


@register_model
def vit_digits_patch2_8(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The demo model: width 64, depth 8, 4 heads, 8x8x1 input, patch 2 (16 patches), 0.4M params."""
    args = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64, depth=8, num_heads=4)
    return _demo_vit("vit_digits_patch2_8", pretrained, **dict(args, **kwargs))


@register_model
def vit_digits_tiny_patch2_8(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A smaller test model: width 32, depth 4, 2 heads, 8x8x1 input, patch 2."""
    args = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=4, num_heads=2)
    return _demo_vit("vit_digits_tiny_patch2_8", pretrained, **dict(args, **kwargs))


@register_model
def vit_mnist_patch4_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The MNIST benchmark model: width 64, depth 8, 4 heads, 28x28x1 input, patch 4 (49 patches), 0.4M params."""
    args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=8, num_heads=4)
    return _demo_vit("vit_mnist_patch4_28", pretrained, **dict(args, **kwargs))


DIGITS_TYPES = ("vit_digits_patch2_8", "vit_digits_tiny_patch2_8")
MNIST_TYPES = ("vit_mnist_patch4_28",)
DEMO_TYPES = DIGITS_TYPES + MNIST_TYPES  # the CPU demos' models: no released weights, no distilled form
MODEL_TYPES = DEIT_TYPES + DEMO_TYPES  # the types with a config file; any timm ViT is accepted

# activation classes of timm's Mlp -> the name timm.layers.get_act_layer rebuilds them from
ACTIVATIONS = {GELU: "gelu", GELUTanh: "gelu_tanh", QuickGELU: "quick_gelu", nn.SiLU: "silu", nn.ReLU: "relu"}
POOLS = ("token", "avg")


class UnsupportedModelError(ValueError):
    """A model the method cannot compress; the message names the structure in one line."""


def resolve_model_type(model_type: str, enable_deit: int = 0) -> str:
    """The timm name: `--enable_deit 1` selects the distillation-token variant."""
    name = str(model_type).strip()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown --model_type {model_type!r}: timm has no such model; {hint}any timm "
                         f"VisionTransformer works, e.g. {', '.join(DEIT_TYPES[:2])}, vit_small_patch16_224 "
                         f"(add --enable_deit 1 for a distillation-token form)")
    if int(enable_deit) and "distilled" not in name:
        distilled = name.replace("_patch", "_distilled_patch", 1)
        if not timm.is_model(distilled):
            raise ValueError(f"{name} has no distillation-token form; use --enable_deit 0")
        return distilled
    return name


def create_model(model_type: str, num_classes: Optional[int] = None, enable_deit: int = 0,
                 drop_path_rate: float = 0.0, img_size: Optional[int] = None, **model_kwargs) -> VisionTransformer:
    """Build a randomly initialised model (load weights with models.load_pretrained).

    Args:
        model_type: a timm model name (see resolve_model_type), optionally with `_distilled`.
        num_classes: classifier width (default: the variant's own, 1000 or 10).
        enable_deit: 1 for the distillation-token variant.
        drop_path_rate: stochastic depth rate.
        img_size: input resolution (default: the variant's own).
        model_kwargs: any other VisionTransformer argument (embed_dim, depth, num_heads,
            mlp_ratio, patch_size, in_chans, qk_norm, init_values, reg_tokens, ...).
    """
    name = resolve_model_type(model_type, enable_deit)
    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size:
        kwargs["img_size"] = img_size
    return rebuild(name, kwargs, drop_path_rate=drop_path_rate)


def rebuild(model_type: str, model_kwargs: dict, drop_path_rate: float = 0.0) -> VisionTransformer:
    """The model `model_type` built with `model_kwargs` (as recorded by create_model), checked."""
    try:
        json.dumps(model_kwargs)
    except TypeError as e:
        raise ValueError(f"model arguments must be plain values (JSON): {e}") from None
    try:
        model = timm.create_model(model_type, pretrained=False, drop_path_rate=drop_path_rate, **model_kwargs)
    except (TypeError, AssertionError, ValueError, RuntimeError, KeyError) as e:
        given = ", ".join(f"{k}={v!r}" for k, v in model_kwargs.items()) or "its defaults"
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ValueError(f"cannot build {model_type} with {given}: {reason}") from None
    check_supported(model, model_type)
    img = model.patch_embed.img_size
    model.uvc_model_kwargs = dict(model_kwargs, num_classes=model.num_classes, img_size=int(img[0]))
    return model


def model_kwargs_of(model: nn.Module) -> Optional[dict]:
    """The arguments `model` was built with (None for a model not built by create_model)."""
    kwargs = getattr(model, "uvc_model_kwargs", None)
    return dict(kwargs) if kwargs is not None else None


def is_distilled(model: nn.Module) -> bool:
    return getattr(model, "dist_token", None) is not None


def set_fused_attn(model: nn.Module, enabled: bool) -> None:
    """Toggle timm's fused attention on every attention module (fvcore needs it off)."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = enabled


# ----------------------------------------------------------------------------- what is supported

def _norm_problem(norm: nn.Module, where: str, eps: float) -> Optional[str]:
    if isinstance(norm, nn.Identity):
        return None
    if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
        return f"{where} is {type(norm).__name__}; only LayerNorm (with weight and bias) is supported"
    if norm.eps != eps:
        return f"{where} has eps {norm.eps} but the blocks use {eps}; all LayerNorms must share one eps"
    return None


def _block_problems(blk: nn.Module, first: nn.Module):
    """Why block `blk` cannot be compressed (yields one-line reasons)."""
    if type(blk) is not Block:
        yield f"blocks are {type(blk).__name__}; only timm's pre-norm Block (attention, then MLP) is supported"
        return
    attn, mlp = blk.attn, blk.mlp
    if type(attn) is not Attention:
        yield f"attention is {type(attn).__name__}; only timm's Attention (one qkv projection) is supported"
        return
    if type(mlp) is not Mlp:
        yield (f"the MLP is {type(mlp).__name__}; gated MLPs (SwiGLU, GLU) are not supported, only timm's Mlp "
               f"(fc1, activation, fc2)")
        return
    if not isinstance(mlp.fc1, nn.Linear) or mlp.fc1.bias is None or mlp.fc2.bias is None or attn.proj.bias is None:
        yield "MLP and attention projections without bias (proj_bias=False) are not supported"
    if not isinstance(attn.norm, nn.Identity) or not isinstance(mlp.norm, nn.Identity):
        yield "norms inside attention or MLP (scale_attn_norm, scale_mlp_norm) are not supported"
    if getattr(attn, "gate", None) is not None:
        yield "gated attention is not supported"
    if type(mlp.act) not in ACTIVATIONS and not (type(mlp.act) is nn.GELU and mlp.act.approximate in ("none", "tanh")):
        yield f"the MLP activation {type(mlp.act).__name__} is not supported ({', '.join(ACTIVATIONS.values())})"
    if attn.num_heads * attn.head_dim != first.attn.qkv.in_features or \
            (attn.num_heads, attn.head_dim, mlp.fc1.out_features) != \
            (first.attn.num_heads, first.attn.head_dim, first.mlp.fc1.out_features):
        yield "blocks of different widths are not supported"
    for ls in (blk.ls1, blk.ls2):
        if not isinstance(ls, (nn.Identity, LayerScale)):
            yield f"layer scale {type(ls).__name__} is not supported"
    eps = getattr(first.norm1, "eps", None)
    for where, norm in (("norm1", blk.norm1), ("norm2", blk.norm2), ("q_norm", attn.q_norm), ("k_norm", attn.k_norm)):
        problem = _norm_problem(norm, f"the block's {where}", eps)
        if problem:
            yield problem


def _model_problems(model: nn.Module):
    """Why `model` cannot be compressed, outside its blocks (yields one-line reasons)."""
    embed = model.patch_embed
    if type(embed) is not PatchEmbed:
        yield f"the patch embedding is {type(embed).__name__}; only timm's PatchEmbed is supported"
        return
    if embed.img_size[0] != embed.img_size[1] or embed.patch_size[0] != embed.patch_size[1]:
        yield "non-square images or patches are not supported"
    if not isinstance(embed.norm, nn.Identity):
        yield "a norm inside the patch embedding (embed_norm_layer) is not supported"
    if model.dynamic_img_size or getattr(embed, "dynamic_img_pad", False):
        yield "dynamic_img_size / dynamic_img_pad are not supported (the patch grid must be fixed)"
    if model.pos_embed is None:
        yield "models without a learned position embedding (pos_embed='none') are not supported"
    if model.global_pool not in POOLS or getattr(model, "attn_pool", None) is not None:
        yield f"global_pool {model.global_pool!r} is not supported; only 'token' (class token) and 'avg'"
    if not isinstance(model.patch_drop, nn.Identity):
        yield "patch_drop_rate is not supported (UVC chooses the patches to drop)"
    if model.num_classes < 1 or not isinstance(model.head, nn.Linear):
        yield "a model without a classifier head (num_classes=0) is not supported"
    eps = getattr(getattr(model.blocks[0], "norm1", None), "eps", None)
    for where in ("norm_pre", "norm", "fc_norm"):
        problem = _norm_problem(getattr(model, where), where, eps)
        if problem:
            yield problem


def check_supported(model: nn.Module, model_type: str = "") -> None:
    """Raise UnsupportedModelError (one line, naming the structure) unless UVC can compress `model`."""
    name = model_type or type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(f"{name} builds {type(model).__name__}, not a timm VisionTransformer; UVC "
                                    f"compresses ViTs (DeiT, DeiT III, ViT with registers, ...)")
    if len(model.blocks) == 0:
        raise UnsupportedModelError(f"{name} has no blocks")
    problems = chain(*(_block_problems(blk, model.blocks[0]) for blk in model.blocks), _model_problems(model))
    problem = next(problems, None)
    if problem:
        raise UnsupportedModelError(f"cannot compress {name}: {problem}")


def activation_name(act: nn.Module) -> str:
    if type(act) is nn.GELU:
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    return ACTIVATIONS[type(act)]


def vit_structure(model: nn.Module) -> dict:
    """What the compact model must rebuild besides the sizes (a checked model; JSON-able)."""
    blk = model.blocks[0]
    return {
        "class_token": model.cls_token is not None,
        "num_reg_tokens": int(getattr(model, "num_reg_tokens", 0) or 0),
        "no_embed_class": bool(model.no_embed_class),
        "global_pool": model.global_pool,
        "pool_include_prefix": bool(getattr(model, "pool_include_prefix", False)),
        "pre_norm": not isinstance(model.norm_pre, nn.Identity),
        "final_norm": not isinstance(model.norm, nn.Identity),
        "fc_norm": not isinstance(model.fc_norm, nn.Identity),
        "patch_bias": model.patch_embed.proj.bias is not None,
        "layer_scale": isinstance(blk.ls1, LayerScale),
        "qk_norm": not isinstance(blk.attn.q_norm, nn.Identity),
        "act": activation_name(blk.mlp.act),
        "norm_eps": float(blk.norm1.eps),
    }
