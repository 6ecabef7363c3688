"""The stage files: what joint_train.py writes for post_train.py, and what post_train.py writes.

A stage file is a weights-only torch dict with a `format` name:

    uvc-stage1-v1   {format, model_type, arch, model, config, fit, teacher[, latency_table]}
    uvc-stage2-v1   {format, model_type, arch, model, config, teacher}

`arch` is the frozen architecture (uvc.deploy.architecture, as its dict); `model` the
timm state dict of the masked model; `teacher` what rebuilds the dense teacher stage 2
distils from; `latency_table` the table a `--budget_metric latency` search counted in.
"""
import os
import pickle
from typing import Optional

import torch

STAGE1_FORMAT = "uvc-stage1-v1"
STAGE2_FORMAT = "uvc-stage2-v1"
TRAINING_FORMATS = (STAGE1_FORMAT, STAGE2_FORMAT)
# what a file records of the data it was trained on (a compact model too), so that
# `python -m uvc.evaluate FILE` evaluates on that data unless told otherwise
DATA_KEYS = ("dataset", "data_dir", "synthetic_size", "download", "mean", "std", "crop_pct")


def data_record(config) -> dict:
    """The DATA_KEYS of a run's config (a ConfigDict or a dict)."""
    return {k: config[k] for k in DATA_KEYS if k in config}


def stage1_record(spec: dict, vit_state: dict, config_dict: dict, fit: dict,
                  teacher: Optional[dict] = None, latency_table: Optional[dict] = None) -> dict:
    """The content of <output_dir>/<model_type>_uvc.pth: the input of post_train.py (with the latency
    table the budget was counted in, for a `--budget_metric latency` search)."""
    record = {"format": STAGE1_FORMAT, "model_type": spec["model_type"], "arch": spec, "model": vit_state,
              "config": config_dict, "fit": fit, "teacher": teacher or {}}
    if latency_table is not None:
        record["latency_table"] = latency_table
    return record


def stage2_record(stage1: dict, model_type: str, vit_state: dict, config_dict: dict) -> dict:
    """The content of post_train.py's best-model file: stage 1's architecture and teacher, the fine-tuned
    weights."""
    return {"format": STAGE2_FORMAT, "model_type": model_type, "arch": stage1["arch"],
            "model": vit_state, "config": config_dict, "teacher": stage1["teacher"]}


def read_stage_file(path: str) -> dict:
    """A stage-1/stage-2 file as a dict; ValueError (one line) for anything else."""
    wanted = (f"pass a stage-1 or stage-2 file ({' / '.join(TRAINING_FORMATS)}) written by "
              f"joint_train.py/post_train.py")
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist or is not a file; {wanted}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"cannot read {path}: not a weights-only torch checkpoint; {wanted}") from None
    except Exception as e:  # missing file, truncated zip, garbage bytes (KeyError, EOFError, ...)
        reason = (str(e).splitlines() or [""])[0]
        raise ValueError(f"cannot read {path} ({e.__class__.__name__}: {reason}; corrupt or truncated?); "
                         f"{wanted}") from None
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt not in TRAINING_FORMATS:
        what = "a dense model file (that goes to --model_path)" if isinstance(ckpt, dict) and "model" in ckpt \
            else f"format {fmt!r}"
        raise ValueError(f"{path} is {what}, not a UVC training checkpoint; {wanted}")
    missing = [key for key in ("arch", "model") if key not in ckpt]
    if missing:
        raise ValueError(f"{path} ({fmt}) lacks {', '.join(missing)}")
    return ckpt


def read_stage1(path: str, model_type: str) -> dict:
    """The stage-1 file post_train.py starts from, refused in one line if it is not one or is of
    another model."""
    try:
        record = read_stage_file(path)
    except ValueError as e:
        raise ValueError(f"--checkpoint_dir: {e}") from None
    if record["model_type"] != model_type:
        raise ValueError(f"--checkpoint_dir {path} holds a {record['model_type']} search, but --model_type "
                         f"resolves to {model_type}; pass the matching --model_type/--enable_deit")
    return record
