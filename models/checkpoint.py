"""Reading DeiT/timm checkpoints and loading them into a timm VisionTransformer.

Accepted files: the official DeiT release (`{"model": sd}`, URL or local path;
DeiT III's `gamma_1`/`gamma_2` LayerScale names are mapped to timm's),
DeiT training checkpoints (`{"model": sd, "args": Namespace, ...}`), timm
training checkpoints (`{"state_dict": sd, "state_dict_ema": sd}`), bare state
dicts (timm's files on the Hugging Face hub, `.bin` or `.safetensors`), with or
without a DDP `module.` prefix. Everything is read with
`torch.load(weights_only=True)` or safetensors.

`load_pretrained` refuses a checkpoint of another variant with one line naming
the first tensor that differs, resamples `pos_embed` to another resolution, and
re-initialises the classifier heads for another class count; the last two warn.
`load_exact` is for a file that must be the model's own (a teacher handed to the
sweep, the dense model a peer prunes): another class count or patch grid stops it
with one line naming the flag that builds the file's model.
"""
import argparse
import math
import os
import pickle
import re
import warnings
from http.client import HTTPException
from typing import Dict, Optional
from urllib.error import HTTPError

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from models.vit import is_distilled

HEAD_PREFIXES = ("head.", "head_dist.")
# Where the weights sit in a checkpoint dict, first match wins (EMA before raw, as timm does).
LAYOUT_KEYS = ("model", "state_dict_ema", "state_dict")
DDP_PREFIX = "module."
# Non-tensor objects allowed under weights_only=True: DeiT's main.py saves its argparse args.
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says what to do."""


class CheckpointWarning(UserWarning):
    """A checkpoint was adapted to the model (resampled pos_embed, re-initialised head)."""


# ---------------------------------------------------------------------------- reading

def is_url(path_or_url: str) -> bool:
    return path_or_url.startswith(("https://", "http://"))


def read_checkpoint(path_or_url: str, map_location="cpu") -> dict:
    """Load a checkpoint file from a local path or an http(s) URL (cached by torch.hub)."""
    if is_url(path_or_url):
        return _download(path_or_url, map_location)
    return _read_local(os.path.expanduser(path_or_url), map_location)


def _download(url: str, map_location) -> dict:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.hub.load_state_dict_from_url(url, map_location=map_location, check_hash=False,
                                                      weights_only=True)
    except (OSError, HTTPException) as e:  # URLError, HTTPError, timeouts, SSL and socket errors
        reason = e if isinstance(e, HTTPError) else getattr(e, "reason", None) or e  # "HTTP Error 404: ..."
        raise CheckpointError(f"could not download {url} ({reason}); download it on a machine with internet "
                              f"access and pass its local path with --model_path /path/to/file.pth") from None
    except Exception as e:  # garbage bytes fail the unpickler in many ways (KeyError, EOFError, ...)
        raise CheckpointError(f"{url} was downloaded to {torch.hub.get_dir()}/checkpoints but is not a readable "
                              f"PyTorch checkpoint ({_first_line(e)}); delete the cached file and retry") from None


def _read_local(path: str, map_location) -> dict:
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist; check the path given with --model_path")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory; pass the .pth file inside it")
    if path.endswith(".safetensors"):
        return _read_safetensors(path, map_location)
    try:
        # torch.load warns about a pickle protocol it reads in garbage before it fails on it: the warnings
        # are kept only for a file that loads, so a corrupt file gives one line
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            obj = torch.load(path, map_location=map_location, weights_only=True)
        for w in seen:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return obj
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"{path} holds a Python object ({found.group(1)}) that weights_only loading refuses; if you trust "
                f"the file, re-save its weights alone: torch.save({{'model': torch.load(p, weights_only=False)"
                f"['model']}}, 'weights.pth')") from None
        raise _unreadable(path, e) from None
    except Exception as e:  # garbage bytes fail the unpickler in many ways (KeyError, EOFError, ...)
        raise _unreadable(path, e) from None


def _read_safetensors(path: str, map_location) -> dict:
    from safetensors.torch import load_file  # installed with timm

    try:
        return load_file(path, device=str(map_location))
    except Exception as e:  # header or data corrupt
        raise _unreadable(path, e) from None


def _unreadable(path: str, e: Exception) -> CheckpointError:
    detail = _first_line(e)
    detail = detail if detail == type(e).__name__ else f"{type(e).__name__}: {detail}"
    return CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {detail}")


def _first_line(e: Exception) -> str:
    """The gist of torch.load's long messages: the unpickler's own error, first sentence only."""
    text = str(e).split("WeightsUnpickler error:")[-1].strip()
    text = text.splitlines()[0].split(". ")[0] if text else ""
    return text[:200] or type(e).__name__


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def extract_state_dict(obj) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint: under "model", "state_dict_ema" or "state_dict", or the dict itself."""
    if isinstance(obj, dict):
        for key in LAYOUT_KEYS:
            if _is_state_dict(obj.get(key)):
                return _strip_prefix(obj[key])
        if _is_state_dict(obj):
            return _strip_prefix(obj)
    found = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"checkpoint has no state dict (found {found}); expected {{'model': sd}} (DeiT release), "
                          f"{{'state_dict_ema': sd}} or {{'state_dict': sd}} (timm), or a bare name -> tensor dict")


def _strip_prefix(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Without DDP's `module.` prefix, DeiT III's `blocks.N.gamma_1` named as timm's `blocks.N.ls1.gamma`."""
    sd = {k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k: v for k, v in sd.items()}
    return {re.sub(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma", k): v for k, v in sd.items()}


# ---------------------------------------------------------------------------- loading

def model_name(model: nn.Module, model_type: Optional[str] = None) -> str:
    """The name used in messages: model_type, else timm's architecture name, else the class name."""
    cfg = getattr(model, "default_cfg", None) or getattr(model, "pretrained_cfg", None) or {}
    return model_type or cfg.get("architecture") or type(model).__name__


def load_pretrained(model: nn.Module, path_or_url: str, num_classes_ok: bool = True,
                    model_type: Optional[str] = None) -> dict:
    """Load a checkpoint into a timm VisionTransformer built by create_model.

    Args:
        model: the model to fill (in place).
        path_or_url: local .pth path or http(s) URL.
        num_classes_ok: re-initialise heads of another class count (else refuse).
        model_type: name used in messages (default: the model's timm architecture).

    Returns:
        {"missing": keys left at init, "unexpected": keys of the file not used,
         "reinitialized_head": bool, "resampled_pos_embed": bool}
    """
    sd = extract_state_dict(read_checkpoint(path_or_url))
    target = model.state_dict()
    where = f"checkpoint {path_or_url} does not match {model_name(model, model_type)}"
    _check_distillation(sd, model, where)
    sd, resampled = _fit_pos_embed(sd, model, target, path_or_url, where)
    _check_body(sd, target, where)
    sd, dropped = _fit_heads(sd, target, path_or_url, num_classes_ok, where)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing_heads = [k for k in missing if k.startswith(HEAD_PREFIXES)]
    if missing_heads and not dropped:
        warnings.warn(f"checkpoint {path_or_url} has no classifier head ({missing_heads[0]} missing); "
                      f"the head keeps its random init", CheckpointWarning, stacklevel=2)
    return {"missing": list(missing), "unexpected": list(unexpected) + dropped,
            "reinitialized_head": bool(dropped or missing_heads), "resampled_pos_embed": resampled}


def load_exact(model: nn.Module, path_or_url: str, model_type: Optional[str] = None) -> None:
    """Load a checkpoint that must fit `model` as it is: the same class count, patch grid and body.

    A file of n classes in a model of m != n, or trained on a g x g patch grid (input g * patch px) in a
    model of another grid, raises CheckpointError naming --num_classes / --input_size: resampling or a
    fresh head would make another model than the file's."""
    sd = extract_state_dict(read_checkpoint(path_or_url))
    target = model.state_dict()
    where = f"checkpoint {path_or_url} does not fit {model_name(model, model_type)}"
    old, new = _num_classes(sd), _num_classes(target)
    if old != new:
        fix = f"set --num_classes {old}" if old else "pass a checkpoint with its classifier head"
        raise CheckpointError(f"{where}: the file's classifier has {old} classes, the model built has {new}; {fix}")
    file_pos, model_pos = sd.get("pos_embed"), target.get("pos_embed")
    if file_pos is not None and model_pos is not None and file_pos.shape != model_pos.shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        side, grid = math.isqrt(file_pos.shape[1] - prefix), list(model.patch_embed.grid_size)
        patch = model.patch_embed.patch_size[0]
        raise CheckpointError(f"{where}: the file was trained on a {side}x{side} patch grid ({side * patch} px at "
                              f"patch {patch}), the model built uses {grid[0]}x{grid[1]} "
                              f"({grid[0] * patch} px); set --input_size {side * patch}")
    _check_distillation(sd, model, where)
    _check_body(sd, target, where)
    model.load_state_dict(sd, strict=True)


def _check_distillation(sd: dict, model: nn.Module, where: str) -> None:
    """Refuse a distilled checkpoint in a plain model and vice versa."""
    in_file, in_model = "dist_token" in sd, is_distilled(model)
    if in_file and not in_model:
        raise CheckpointError(f"{where}: the file is of a distilled model (it has dist_token) but the model has no "
                              f"distillation token; add --enable_deit 1 or pass a non-distilled checkpoint")
    if in_model and not in_file:
        raise CheckpointError(f"{where}: the model has a distillation token but the file has no dist_token; "
                              f"use --enable_deit 0 or pass a distilled checkpoint")


def _fit_pos_embed(sd: dict, model: nn.Module, target: dict, src: str, where: str):
    """Resample pos_embed saved at another resolution (same width) to the model's patch grid."""
    old, new = sd.get("pos_embed"), target.get("pos_embed")
    if old is None or new is None or old.shape == new.shape or old.shape[-1] != new.shape[-1]:
        return sd, False  # nothing to do, or a width change that _check_body refuses
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    side = math.isqrt(old.shape[1] - prefix)
    if side * side != old.shape[1] - prefix:
        raise CheckpointError(f"{where}: pos_embed is {_shape(old)} in the file but {_shape(new)} in the model, "
                              f"and {old.shape[1] - prefix} positions are not a square patch grid")
    grid = list(model.patch_embed.grid_size)
    resampled = resample_abs_pos_embed(old, new_size=grid, old_size=[side, side], num_prefix_tokens=prefix)
    warnings.warn(f"checkpoint {src} was trained on a {side}x{side} patch grid, the model uses "
                  f"{grid[0]}x{grid[1]}: pos_embed resampled (bicubic)", CheckpointWarning, stacklevel=3)
    return dict(sd, pos_embed=resampled), True


def _check_body(sd: dict, target: dict, where: str) -> None:
    """Refuse any shape or key difference outside the classifier heads, naming the first one."""
    body = [k for k in target if not k.startswith(HEAD_PREFIXES)]
    wrong = [k for k in body if k in sd and sd[k].shape != target[k].shape]
    hint = "(is it a checkpoint of another variant?)"
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
        raise CheckpointError(f"{where}: {k} is {_shape(sd[k])} in the file but {_shape(target[k])} "
                              f"in the model{more} {hint}")
    missing = [k for k in body if k not in sd]
    unexpected = [k for k in sd if k not in target and not k.startswith(HEAD_PREFIXES)]
    if missing or unexpected:
        parts = [f"{label} {keys[0]}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")
                 for label, keys in (("the file lacks", missing), ("the file has extra", unexpected)) if keys]
        raise CheckpointError(f"{where}: {'; '.join(parts)} {hint}")


def _fit_heads(sd: dict, target: dict, src: str, num_classes_ok: bool, where: str):
    """Drop head tensors of another class count (the model keeps its fresh init); warn once."""
    dropped = [k for k in sd if k.startswith(HEAD_PREFIXES) and (k not in target or sd[k].shape != target[k].shape)]
    if not dropped:
        return sd, []
    old, new = _num_classes(sd), _num_classes(target)
    if not num_classes_ok:
        raise CheckpointError(f"{where}: the file's head has {old} classes but the model's has {new}; "
                              f"build the model with num_classes={old} or allow re-initialising the head")
    warnings.warn(f"checkpoint {src} has a {old}-class head, the model has {new} classes: "
                  f"{', '.join(sorted({k.split('.')[0] for k in dropped}))} re-initialised",
                  CheckpointWarning, stacklevel=3)
    return {k: v for k, v in sd.items() if k not in dropped}, dropped


def _num_classes(sd: dict):
    w = sd.get("head.weight")
    return w.shape[0] if w is not None else 0


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))
