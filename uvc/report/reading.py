"""Reading what a report is asked about: a model type, or a file whose kind is told by its `format`
(uvc.deploy.stagefile, models.compact) or, for a dense checkpoint, by the shapes of its tensors."""
import math
import os
from typing import Optional, Tuple

import timm
import torch
import torch.nn as nn

from models.checkpoint import CheckpointError, extract_state_dict, read_checkpoint
from models.vit import DEMO_TYPES, MODEL_TYPES, create_model, rebuild, resolve_model_type
from uvc.deploy.export import compact_spec_from_arch
from uvc.deploy.reference import is_reference_state
from uvc.deploy.stagefile import TRAINING_FORMATS
from uvc.report.kinds import COMPACT_FORMAT, KINDS, ReportError, Subject
from uvc.report.models import sizes_of_vit, spec_sizes


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


def read_file(path: str, img_size: Optional[int], model_type: Optional[str] = None) -> Subject:
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
            return Subject(fmt, path, spec["model_type"], spec_sizes(spec), compact_spec=spec, checkpoint=obj)
        if fmt in TRAINING_FORMATS:
            arch = obj["arch"]
            spec = compact_spec_from_arch(arch)
            sizes = spec_sizes(spec)
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
        return read_file(name, img_size, model_type)
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
