"""Bring in a checkpoint of the reference implementation (VITA-Group/UVC) as our stage-1 file
(the command line is uvc/import_reference.py).

What the reference saves (UVC/joint_train.py and UVC/post_train.py write the plain
`state_dict()` of UVC/models/model_distilled.py's DistilledVisionTransformer as
`<model_type>_<step>.pth.tar`; its post_train.py also accepts `{"args", "model", "s", "r"}`):

  weights       timm's DeiT names: cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1,
                attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head (+ dist_token,
                head_dist with --enable_deit 1)
  <layer>.mask  a buffer of the weight's shape beside every weight; zero columns of attn.proj
                are removed value dims (a whole head: all its d columns), zero columns of
                mlp.fc2 and rows of mlp.fc1 removed neurons; the other masks stay ones
  block_skip_gating  (L, 2): block l runs iff [l, 1] > [l, 0] (its stage-2 forward)
  patch_gating  (1, P, 1), with --enable_patch_gating 1: patch i is kept iff sigmoid >= 0.5,
                patch 0 always
  blocks.N.attn_skip_gating, blocks.N.mlp_skip_gating (2,), gumbel.{weight,bias}: part
                gating and the per-image patch mode 2, not architectures this project has

The architecture spec: head h of block l is kept iff one of its attn.proj mask columns is
non-zero, those columns are its value dims; neuron m iff fc2 column m and fc1 row m are
unmasked. Weights are multiplied by their masks (what the reference's stage 2 trains and
evaluates). A file without masks but with `s`, `r` (dict layout) loses the ceil(s), ceil(r)
lowest-score groups, the reference's rule. A file whose part gates left their initial
(-1, 1), or whose args say --enable_patch_gating 2, is refused. One difference stays: the
reference multiplies a dropped patch token by zero but keeps it in attention; here it is
removed (docs/method.md section 6), so with dropped patches the logits differ from the reference's.
"""
import math
import os
from typing import Optional

import torch

from models.checkpoint import CheckpointError, read_checkpoint
from models.vit import create_model, model_kwargs_of, resolve_model_type
from uvc.deploy.freeze import spec_from_search, spec_ratio
from uvc.search.masks import Masks, compute_masks, group_scores, stacked_weights
from uvc.deploy.stagefile import stage1_record

EXTRA_KEYS = ("block_skip_gating", "patch_gating", "gumbel.weight", "gumbel.bias")
PART_GATES = ("attn_skip_gating", "mlp_skip_gating")
PART_GATE_INIT = (-1.0, 1.0)


class ReferenceError(ValueError):
    """A file that is not a usable reference checkpoint; the message is one line for the user."""


def is_reference_state(sd: dict) -> bool:
    """Does a state dict carry the reference's search state (mask buffers or block gates)?"""
    return "block_skip_gating" in sd or any(k.endswith(".mask") for k in sd)


def read_reference(path: str):
    """(state dict, args or None, s or None, r or None) of a reference file, in either layout."""
    try:
        obj = read_checkpoint(path)
    except CheckpointError as e:
        raise ReferenceError(str(e)) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        sd, args = obj["model"], obj.get("args")
        s, r = obj.get("s", obj.get("stats_s")), obj.get("r", obj.get("stats_r"))  # save_model's dict names them so
    elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        sd, args, s, r = obj, None, None, None
    else:
        raise ReferenceError(f"{path} is neither a state dict nor {{'args', 'model', 's', 'r'}}: not a checkpoint "
                             f"of VITA-Group/UVC")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if not is_reference_state(sd):
        raise ReferenceError(f"{path} has no mask buffers and no block_skip_gating: not a checkpoint of VITA-Group/UVC "
                             f"(a plain DeiT/timm file goes to --model_path)")
    return sd, args, s, r


def _check_supported_search(sd: dict, args, path: str) -> None:
    """Refuse what the reference can search and this project cannot represent."""
    if args is not None and int(getattr(args, "enable_patch_gating", 0) or 0) == 2:
        raise ReferenceError(f"{path} was searched with --enable_patch_gating 2 (patches chosen per image), "
                             f"which this project does not implement")
    for key, gate in sd.items():
        if key.rsplit(".", 1)[-1] in PART_GATES and not torch.equal(gate.float(), torch.tensor(PART_GATE_INIT)):
            raise ReferenceError(f"{path} was searched with --enable_part_gating 1 ({key} = {gate.tolist()}): "
                                 f"skipping attention or MLP alone is not supported")


def build_model(sd: dict, model_type: str, num_heads: int):
    """The timm model of the reference's weights: the sizes from the tensors, the heads given."""
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    dim = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"]
    distilled = "dist_token" in sd
    side = math.isqrt(sd["pos_embed"].shape[1] - (2 if distilled else 1))
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    kwargs = dict(embed_dim=dim, depth=depth, patch_size=patch.shape[-1], in_chans=patch.shape[1],
                  mlp_ratio=hidden / dim, qkv_bias="blocks.0.attn.qkv.bias" in sd)
    if num_heads:
        kwargs["num_heads"] = num_heads
    name = resolve_model_type(model_type, int(distilled))
    if not distilled and "distilled" in name:
        raise ReferenceError(f"--model_type {model_type} has a distillation token but the file has none")
    with torch.device("meta"):  # the model type's own width: the reference never saves its args
        own = create_model(name)
    if dim != own.embed_dim and not num_heads:
        raise ReferenceError(f"the file's weights are {dim} wide but --model_type {model_type} is {own.embed_dim} "
                             f"wide ({own.blocks[0].attn.num_heads} heads): pass the model type the reference "
                             f"trained (DeiT-Tiny 192, Small 384, Base 768), or --num_heads for a shape of your own")
    vit = create_model(name, num_classes=sd["head.weight"].shape[0], img_size=side * patch.shape[-1], **kwargs)
    if vit.blocks[0].mlp.fc1.out_features != hidden:
        raise ReferenceError(f"MLP width {hidden} / width {dim} is not a ratio timm reproduces")
    return vit, name


def masks_of(sd: dict, vit, s: Optional[torch.Tensor], r: Optional[torch.Tensor]) -> Optional[Masks]:
    """Kept heads, value dims and neurons: from the mask buffers, else from s and r, else None (all kept)."""
    L, attn = len(vit.blocks), vit.blocks[0].attn
    H, d, M = attn.num_heads, attn.head_dim, vit.blocks[0].mlp.fc1.out_features
    if all(f"blocks.{l}.attn.proj.mask" in sd for l in range(L)):
        dims = torch.stack([(sd[f"blocks.{l}.attn.proj.mask"] != 0).any(0) for l in range(L)]).view(L, H, d)
        neurons = torch.ones(L, M, dtype=torch.bool)
        for l in range(L):
            if f"blocks.{l}.mlp.fc2.mask" in sd:
                neurons[l] &= (sd[f"blocks.{l}.mlp.fc2.mask"] != 0).any(0)
            if f"blocks.{l}.mlp.fc1.mask" in sd:
                neurons[l] &= (sd[f"blocks.{l}.mlp.fc1.mask"] != 0).any(1)
        return Masks(dims.any(-1).float(), dims.float(), neurons.float())
    if s is not None and r is not None:  # the reference's rule: the ceil(s), ceil(r) lowest-score groups go
        k = torch.ceil(s.detach().float() - 1e-6).clamp_min(0).long()
        return compute_masks(group_scores(*stacked_weights(vit), H), k[:, 0].clamp_max(H), r.detach().float()
                             .sub(1e-6).ceil().clamp(0, d).long(), k[:, 1].clamp_max(M))
    return None


def convert(path: str, model_type: str = "", num_heads: int = 0, teacher_path: str = ""):
    """(stage-1 record, the timm model with the masked weights) of a reference checkpoint."""
    sd, args, s, r = read_reference(path)
    _check_supported_search(sd, args, path)
    model_type = model_type or str(getattr(args, "model_type", "") or "")
    if not model_type:
        raise ReferenceError(f"{path} does not name its model: pass --model_type (e.g. deit_tiny_patch16_224)")
    num_heads = num_heads or int(getattr(args, "num_heads", 0) or 0)
    vit, name = build_model(sd, model_type, num_heads)
    weights = {k: v * sd[k[:-len("weight")] + "mask"] if k[:-len("weight")] + "mask" in sd else v
               for k, v in sd.items() if not k.endswith(".mask") and k not in EXTRA_KEYS
               and k.rsplit(".", 1)[-1] not in PART_GATES}
    try:
        vit.load_state_dict(weights)
    except RuntimeError as e:
        raise ReferenceError(f"the weights of {path} do not fit {name}: {' '.join(str(e).split())[:240]}") from None
    masks = masks_of(sd, vit, s, r)  # s and r rank the groups by the loaded weights' scores
    gates = sd.get("block_skip_gating")
    keep = (gates[:, 1] > gates[:, 0]).float() if gates is not None else torch.ones(len(vit.blocks))
    patches = torch.ones(vit.patch_embed.num_patches, dtype=torch.bool)
    if "patch_gating" in sd:
        patches = torch.sigmoid(sd["patch_gating"].flatten().float()) >= 0.5
        patches[0] = True  # the reference never drops patch 0
    spec = spec_from_search(vit, name, masks, keep, patches)
    budget = getattr(args, "budget", None)
    config = {"imported_from": os.path.abspath(path), **({"budget": float(budget)} if budget is not None else {})}
    teacher = {"model_type": name, "model_kwargs": model_kwargs_of(vit),
               "path": teacher_path or str(getattr(args, "teacher_path", "") or getattr(args, "model_path", "") or "")}
    ratio = spec_ratio(spec)
    return stage1_record(spec, vit.state_dict(), config, {"macs_ratio": ratio, "searched_macs_ratio": ratio},
                         teacher), vit
