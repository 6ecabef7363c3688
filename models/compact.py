"""The compact ViT: what `python -m uvc.export` deploys (docs/method.md section 7).

A physically smaller ViT in which every block has its own number of heads,
value size per head and MLP width, skipped blocks are gone and only the kept
patch positions are embedded. It depends on torch and timm layers only, so a
file written by `save_compact` loads without the search code:

    from models.compact import load_compact
    model = load_compact("compact.pth").eval()

The model is built from a plain, JSON-able `compact_spec`:

    {"format_version": 1, "model_type": str, "img_size": int, "patch_size": int,
     "in_chans": int, "num_classes": int, "embed_dim": D,
     "num_heads": H (original, informational), "head_dim": d (q/k size per head),
     "distilled": bool, "qkv_bias": bool, "norm_eps": float,
     "patches_kept": [kept patch positions], "blocks": [
        {"heads": H'_l, "value_dim": dv_l, "mlp_hidden": M'_l, "source_block": l}],
     and the structure of the timm model it came from (STRUCTURE, DeiT's when absent):
     "class_token", "num_reg_tokens", "no_embed_class", "global_pool" ("token" | "avg"),
     "pool_include_prefix", "pre_norm", "final_norm", "fc_norm", "patch_bias",
     "layer_scale", "qk_norm", "act"}

Prefix tokens come first, in timm's order: class token, distillation token,
register tokens. Average pooling averages the kept patch tokens (the prefix
tokens too with `pool_include_prefix`). Its weights come from
`uvc.deploy.export.export_compact` (or `load_compact`); the constructor only allocates them.
"""
import os
import pickle
import warnings
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, LayerScale, PatchEmbed, get_act_layer, use_fused_attn

FORMAT = "uvc-compact-v1"

# the structure keys of a compact spec and their values for a DeiT (what files without them mean)
STRUCTURE = {"class_token": True, "num_reg_tokens": 0, "no_embed_class": False, "global_pool": "token",
             "pool_include_prefix": False, "pre_norm": False, "final_norm": True, "fc_norm": False,
             "patch_bias": True, "layer_scale": False, "qk_norm": False, "act": "gelu", "norm_eps": 1e-6}


def structure(spec: dict) -> dict:
    """The structure keys of a compact (or architecture) spec, DeiT's where absent."""
    return {key: spec.get(key, default) for key, default in STRUCTURE.items()}


def num_prefix_tokens(spec: dict) -> int:
    """Class token + distillation token + register tokens."""
    s = structure(spec)
    return int(s["class_token"]) + int(bool(spec["distilled"])) + int(s["num_reg_tokens"])


def _norm(enabled: bool, dim: int, eps: float) -> nn.Module:
    return LayerNorm(dim, eps=eps) if enabled else nn.Identity()


def linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """nn.Linear that may have zero inputs or outputs (a block with no head or neuron left)."""
    with warnings.catch_warnings():  # a block with no head or no neuron left has zero-element weights
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        return nn.Linear(in_features, out_features, bias=bias)


class CompactAttention(nn.Module):
    """Multi-head self-attention whose value heads may be narrower than q/k heads.

    qkv is one Linear(D, H'*d*2 + H'*dv) laid out [q (H'*d) | k (H'*d) | v (H'*dv)],
    proj is Linear(H'*dv, D). With H' = 0 (a block whose heads were all removed)
    no attention is computed and the output is proj's bias: exactly what the
    masked model computes, since all of proj's inputs are zero there.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, value_dim: int, qkv_bias: bool = True,
                 qk_norm: bool = False, norm_eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads  # H'
        self.head_dim = head_dim  # d: q/k size, unchanged by compression
        self.value_dim = value_dim  # dv: kept value dims per head (zero-padded to the block's largest)
        self.scale = head_dim ** -0.5
        self.fused_attn = use_fused_attn()  # False: explicit softmax(q k^T) v, which fvcore can count
        self.qkv = linear(dim, num_heads * (2 * head_dim + value_dim), bias=qkv_bias)
        self.q_norm = _norm(qk_norm, head_dim, norm_eps)  # per head over d, as timm's qk-norm
        self.k_norm = _norm(qk_norm, head_dim, norm_eps)
        self.proj = linear(num_heads * value_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        h, d, dv = self.num_heads, self.head_dim, self.value_dim
        if h == 0 or dv == 0:
            return self.proj(x.new_zeros(B, N, h * dv))  # (B, N, D): proj's bias
        q, k, v = self.qkv(x).split([h * d, h * d, h * dv], dim=-1)
        q = q.view(B, N, h, d).transpose(1, 2)  # (B, H', N, d)
        k = k.view(B, N, h, d).transpose(1, 2)  # (B, H', N, d)
        v = v.view(B, N, h, dv).transpose(1, 2)  # (B, H', N, dv)
        return self.proj(self.attend(q, k, v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, H', N, d) q, k and (B, H', N, dv) v -> (B, N, H'*dv): qk-norm, softmax(q k^T / sqrt(d)) v,
        heads concatenated (what uvc.cost.latency_table times as the attention of a block)."""
        B, h, N, dv = v.shape
        d = self.head_dim
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            if dv < d:
                # the fused (flash) kernels need v as wide as q and k; otherwise torch falls back
                # to its unfused math path, about twice as slow on CPU: pad v with zeros
                # (exact, the padded outputs are sliced away)
                x = F.scaled_dot_product_attention(q, k, F.pad(v, (0, d - dv)), scale=self.scale)[..., :dv]
            else:
                x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H', N, N)
            x = attn @ v
        return x.transpose(1, 2).reshape(B, N, h * dv)  # (B, N, H'*dv)


class CompactMlp(nn.Module):
    """fc1 -> activation -> fc2 with M' hidden neurons (timm's Mlp keys; M' may be 0)."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = linear(dim, hidden)
        self.act = get_act_layer(act)()
        self.fc2 = linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CompactBlock(nn.Module):
    """A pre-norm transformer block like timm's Block, with per-block sizes."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, value_dim: int, mlp_hidden: int,
                 qkv_bias: bool = True, norm_eps: float = 1e-6, drop_path: float = 0.0,
                 layer_scale: bool = False, qk_norm: bool = False, act: str = "gelu"):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=norm_eps)
        self.attn = CompactAttention(dim, num_heads, head_dim, value_dim, qkv_bias, qk_norm, norm_eps)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = LayerNorm(dim, eps=norm_eps)
        self.mlp = CompactMlp(dim, mlp_hidden, act)
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x


class CompactViT(nn.Module):
    """A compressed ViT built from a compact spec (see the module docstring).

    Args:
        spec: the compact spec; kept as `self.spec` and saved by `save_compact`.
        drop_path_rate: stochastic depth for fine-tuning, linear over the kept blocks.
    """

    def __init__(self, spec: dict, drop_path_rate: float = 0.0):
        super().__init__()
        self.spec = spec
        s = self.structure = structure(spec)
        dim, eps = spec["embed_dim"], s["norm_eps"]
        self.embed_dim = dim
        self.num_classes = spec["num_classes"]
        self.distilled = bool(spec["distilled"])
        self.num_prefix_tokens = num_prefix_tokens(spec)
        self.global_pool = s["global_pool"]
        self.distilled_training = False  # like timm: True returns (head, head_dist) logits in train mode

        self.patch_embed = PatchEmbed(spec["img_size"], spec["patch_size"], spec["in_chans"], dim,
                                      bias=s["patch_bias"])
        kept = torch.as_tensor(spec["patches_kept"], dtype=torch.long)
        self.register_buffer("patch_index", kept)  # (P',) kept patch positions
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if s["class_token"] else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.distilled else None
        regs = s["num_reg_tokens"]
        self.reg_token = nn.Parameter(torch.zeros(1, regs, dim)) if regs else None
        embedded = len(kept) + (0 if s["no_embed_class"] else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, embedded, dim))
        self.norm_pre = _norm(s["pre_norm"], dim, eps)

        blocks = spec["blocks"]
        rates = torch.linspace(0, drop_path_rate, len(blocks)).tolist() if blocks else []
        self.blocks = nn.Sequential(*[
            CompactBlock(dim, b["heads"], spec["head_dim"], b["value_dim"], b["mlp_hidden"], spec["qkv_bias"], eps,
                         rate, s["layer_scale"], s["qk_norm"], s["act"])
            for b, rate in zip(blocks, rates)])
        self.norm = _norm(s["final_norm"], dim, eps)
        self.fc_norm = _norm(s["fc_norm"], dim, eps)
        self.head = nn.Linear(dim, self.num_classes)
        self.head_dist = nn.Linear(dim, self.num_classes) if self.distilled else None

    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    def no_weight_decay(self) -> set:
        """What timm's ViT keeps out of weight decay (timm's optimizer factory reads it): position
        embedding and prefix tokens."""
        return {"pos_embed", "cls_token", "reg_token", "dist_token"}

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, P', D) embeddings of the kept patch positions.

        With patches dropped, only the kept patches are projected (cut into patches,
        select, matmul with the conv's weight), so the model costs P' * C*p*p * D
        MACs as the budget formula says, not P * C*p*p * D.
        """
        embed = self.patch_embed
        if self.patch_index.numel() == embed.num_patches:  # all kept (patches_kept is sorted)
            return embed(x)
        torch._assert(tuple(x.shape[-2:]) == tuple(embed.img_size),
                      f"input size {tuple(x.shape[-2:])} != model size {tuple(embed.img_size)}")
        (gh, gw), (p, _), C = embed.grid_size, embed.patch_size, x.shape[1]
        patches = x.reshape(x.shape[0], C, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
        patches = patches.reshape(x.shape[0], gh * gw, C * p * p).index_select(1, self.patch_index)  # (B, P', C*p*p)
        return F.linear(patches, embed.proj.weight.flatten(1), embed.proj.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, prefix + P', D) normalised tokens."""
        x = self.embed_patches(x)  # (B, P', D)
        prefix = [t for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        prefix = [t.expand(x.shape[0], -1, -1) for t in prefix]
        if self.structure["no_embed_class"]:  # DeiT III / big_vision: prefix tokens get no position
            x = torch.cat(prefix + [x + self.pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        x = self.blocks(self.norm_pre(x))
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): the class token, or the mean of the kept patch tokens."""
        if self.global_pool == "token":
            return x[:, 0]
        return (x if self.structure["pool_include_prefix"] else x[:, self.num_prefix_tokens:]).mean(dim=1)

    def forward_head(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Logits; for a distilled model the average of both heads
        (or the pair, in train mode with `distilled_training`), as timm does."""
        if not self.distilled:
            return self.head(self.fc_norm(self.pool(x)))
        logits, logits_dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
        if self.distilled_training and self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))


def save_compact(model: CompactViT, path: str, config: Optional[dict] = None) -> None:
    """Write `{"format", "spec", "state_dict"}` atomically (temp file, then rename), with `config`, what
    the file records of the data it was trained on (plain values), when given."""
    payload = {"format": FORMAT, "spec": model.spec,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if config:
        payload["config"] = dict(config)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _describe(obj) -> str:
    """What a loaded file that is not a compact model holds, for the error message."""
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}, not a checkpoint dict"
    fmt = obj.get("format")
    if isinstance(fmt, str) and fmt.startswith("uvc-stage"):
        return f"a UVC training checkpoint ({fmt})"
    if fmt is not None:
        return f"a file of format {fmt!r}"
    if "model" in obj or obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "a plain (dense) model checkpoint"
    return "a dict without a 'format' key"


def load_compact(path: str, map_location: Optional[Union[str, torch.device]] = "cpu") -> CompactViT:
    """Load a file written by `save_compact` (weights_only, no search code needed)."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} is not a weights-only torch file; pass a compact model written by "
                         f"save_compact / python -m uvc.export") from None
    except Exception as e:  # missing file, truncated zip, garbage bytes (KeyError, EOFError, ...)
        reason = (str(e).splitlines() or [""])[0]
        raise ValueError(f"cannot read {path} ({e.__class__.__name__}: {reason}); pass a compact model "
                         f"written by save_compact / python -m uvc.export") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is {_describe(obj)}, not a compact model ({FORMAT}); pass a file "
                         f"written by save_compact (from a training checkpoint: python -m uvc.export --checkpoint "
                         f"FILE --output compact.pth)")
    model = CompactViT(obj["spec"])
    model.load_state_dict(obj["state_dict"])
    return model
