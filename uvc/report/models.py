"""The sizes of a subject's dense model in the compact-spec vocabulary, and the models a report builds
from them: the dense timm ViT, the compact model, and a masked model's architecture of a compact spec."""
import torch
import torch.nn as nn

from models.compact import STRUCTURE, CompactViT, num_prefix_tokens, structure
from models.vit import model_kwargs_of, vit_structure
from uvc.cost.flops import ViTDims
from uvc.deploy.export import dense_model_of
from uvc.report.kinds import COMPACT_FORMAT, ReportError, Subject


_SIZE_KEYS = ("model_type", "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "num_heads",
              "head_dim", "mlp_hidden", "depth", "distilled", "qkv_bias") + tuple(STRUCTURE)


def spec_sizes(spec: dict) -> dict:
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
    return {**spec_sizes(spec), "blocks": blocks, "patches_kept": list(spec["patches_kept"])}
