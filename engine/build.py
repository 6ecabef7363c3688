"""What both entry scripts build: seeds, output dir, student and teacher, data,
loss, optimizer and scheduler, DDP, and the run-state checkpoint."""
import os
import random
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.nn.parallel import DistributedDataParallel

from data import DataError, build_criterion, build_datasets, build_loaders, build_mixup
from models import (CheckpointError, CheckpointWarning, create_model, load_pretrained, model_kwargs_of, rebuild,
                    resolve_model_type)
from engine.distill import DistillationLoss
from utils.config_checks import ConfigError, model_overrides
from utils.dist import DistInfo


class OutputDirError(ValueError):
    """The output directory cannot be written."""


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def check_output_dir(path: str) -> None:
    """Refuse an output directory that cannot be created or written, creating nothing.

    Called right after parsing, so a bad --output_dir fails before data and
    models are built; prepare_output_dir creates it once everything else passed.
    """
    path = os.path.abspath(path or ".")
    existing = path
    while not os.path.exists(existing):  # the nearest ancestor that exists
        existing = os.path.dirname(existing)
    problem = None
    if not os.path.isdir(existing):
        problem = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem:
        raise OutputDirError(f"cannot write to --output_dir {path} ({problem}); pick a writable directory")


def prepare_output_dir(path: str) -> None:
    """Create `path` and check that it is writable, before anything else is written."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test.{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise OutputDirError(f"cannot write to --output_dir {path} ({e.strerror}); pick a writable directory") \
            from None


@dataclass
class Data:
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    train_sampler: Optional[torch.utils.data.Sampler]
    num_classes: int
    mixup: Optional[object]
    base_criterion: torch.nn.Module


def model_input(config, record: Optional[dict] = None):
    """(img_size, in_chans) of the model the config (or a stage-1 record) builds, on the meta device."""
    if record is not None:
        return int(record["img_size"]), int(record["in_chans"])
    with torch.device("meta"):
        vit = create_model(config.model_type, enable_deit=config.enable_deit, img_size=config.input_size or None,
                           **model_overrides(config))
    img = vit.patch_embed.img_size
    img, patch = (int(v[0] if isinstance(v, (tuple, list)) else v) for v in (img, vit.patch_embed.patch_size))
    if img % patch:
        lower, upper = img - img % patch, img - img % patch + patch
        raise ConfigError(f"--input_size {img} is not a multiple of the patch size {patch}: the last {img % patch} "
                          f"pixel rows and columns would be dropped; use {lower or upper} or {upper}")
    return img, vit.patch_embed.proj.in_channels


def build_data(config, env: DistInfo, record: Optional[dict] = None) -> Data:
    """Loaders, mixup and criterion for the model of the config (or of a stage-1 `record`'s arch)."""
    img_size, in_chans = model_input(config, record)
    train_set, val_set, num_classes = build_datasets(config, img_size, in_chans)
    num_classes = head_classes(config, num_classes, record)
    train_loader, val_loader, sampler = build_loaders(config, train_set, val_set, env.distributed,
                                                      env.world_size, env.rank, config.seed)
    batch, accumulation = train_loader.batch_size, int(config.gradient_accumulation_steps)
    if len(train_loader) // accumulation < 1:
        raise DataError(f"an epoch has no optimizer step: {len(train_loader)} batch(es) of {batch} per process and "
                        f"--gradient_accumulation_steps {accumulation}; lower --train_batch_size (per process) or "
                        f"--gradient_accumulation_steps")
    mixup = build_mixup(config, num_classes)
    if mixup is not None and batch % 2:
        raise DataError(f"mixup/cutmix need an even batch per process, got --train_batch_size {batch}; pass an "
                        f"even --train_batch_size or --mixup 0 --cutmix 0")
    return Data(train_loader, val_loader, sampler, num_classes, mixup, build_criterion(config, mixup is not None))


def head_classes(config, data_classes: int, record: Optional[dict] = None) -> int:
    """The classifier width: a stage-1 record's, else --num_classes, else the data set's; the labels must fit."""
    width = int(record["num_classes"]) if record is not None else int(config.num_classes) or data_classes
    if width < data_classes:
        raise DataError(f"--dataset {config.dataset} has {data_classes} classes but the model's classifier has "
                        f"{width}; " + ("use data of the stage-1 run" if record is not None else
                                         "raise --num_classes or leave it 0 (the data set's count)"))
    return width


def build_student(config, num_classes: int, device, load_weights: bool = True, record: Optional[dict] = None):
    """The model to compress (or train), with --model_path loaded when asked.

    With a stage-1 `record`, the model its architecture spec was searched on (the config may not
    reshape it: a shape key given that disagrees with the record is refused)."""
    model_type = resolve_model_type(config.model_type, config.enable_deit)
    if record is not None and record.get("model_kwargs") is not None:
        check_record_shape(config, record)
        vit = rebuild(record["model_type"], record["model_kwargs"], drop_path_rate=config.drop_path)
    else:
        vit = create_model(model_type, num_classes=num_classes, drop_path_rate=config.drop_path,
                           img_size=config.input_size or None, **model_overrides(config))
    if load_weights and config.model_path:
        load_pretrained(vit, config.model_path, model_type=model_type)
    if getattr(vit, "dist_token", None) is not None:
        vit.set_distilled_training(True)
    return vit.to(device), model_type


def load_stage2_start(vit, config, stage1: dict, model_type: str) -> str:
    """Load the weights stage 2 starts from (--finetune_from) and say which: the stage-1 file's (search), or
    the dense weights the search started from (pretrained: --model_path, else the file the stage-1 file records),
    whose removed groups stage 2 then zeroes. The search's weights trained under masks and Gumbel noise; the
    pretrained ones did not (docs/design.md measures both starts). A search that started from random weights
    (--pretrained 0, or no --model_path, as its file records) has no pretrained start."""
    own = stage1.get("config", {})
    started_from = own.get("model_path", "") if own.get("pretrained", True) else ""  # as the stage-1 file records
    path = (config.model_path or started_from) if started_from else ""
    if config.finetune_from == "search" or not path:
        vit.load_state_dict(stage1["model"])
        return "the search's weights" + ("" if config.finetune_from == "search" else
                                         " (--finetune_from pretrained: the search started from random weights)")
    loaded = load_pretrained(vit, path, model_type=model_type)
    if loaded["reinitialized_head"]:
        raise ConfigError(f"--finetune_from pretrained: {path} has no classifier for this model's "
                          f"{vit.num_classes} classes; use --finetune_from search")
    return f"the pretrained weights of {path}"


def check_record_shape(config, record: dict) -> None:
    """Refuse shape flags that contradict the stage-1 file's model (it fixes the model)."""
    recorded = dict(record["model_kwargs"], input_size=record["img_size"])
    given = dict(model_overrides(config), input_size=config.input_size)
    for key, value in given.items():
        if value and key in recorded and recorded[key] != value:
            raise ValueError(f"--{key} {value} but the stage-1 file's model has {key}={recorded[key]}; "
                             f"drop the flag (the stage-1 file fixes the model)")


def build_teacher(config, num_classes: int, device, fallback: Optional[dict] = None):
    """The frozen teacher: --teacher-model/--teacher-path, else the dense starting model.

    `fallback` is a stage-1 file's teacher record {"model_type", "path", "model_kwargs"}: the
    teacher of the search, used when the command line names none."""
    if config.distillation_type == "none":
        return None
    fallback = fallback or {}
    path = config.teacher_path or config.model_path or fallback.get("path", "")
    if not path:
        raise ValueError("--distillation-type " + config.distillation_type + " needs a trained teacher: pass "
                         "--model_path or --teacher-path, or use --distillation-type none")
    student_type = resolve_model_type(config.model_type, config.enable_deit)
    if config.teacher_model:
        model_type = resolve_model_type(config.teacher_model, 0)
        teacher = create_model(model_type, num_classes=num_classes, img_size=config.input_size or None)
    elif fallback.get("model_kwargs") is not None:  # the stage-1 teacher, as it was built
        model_type = fallback["model_type"]
        teacher = rebuild(model_type, dict(fallback["model_kwargs"], num_classes=num_classes))
    elif fallback.get("model_type", student_type) != student_type:  # a named teacher model of stage 1
        model_type = resolve_model_type(fallback["model_type"], 0)
        teacher = create_model(model_type, num_classes=num_classes, img_size=config.input_size or None)
    else:
        model_type = student_type
        teacher = create_model(model_type, num_classes=num_classes, img_size=config.input_size or None,
                               **model_overrides(config))
    with warnings.catch_warnings():  # a head that does not fit is refused below, not warned about
        warnings.simplefilter("ignore", CheckpointWarning)
        loaded = load_pretrained(teacher, path, model_type=model_type)
    if loaded["reinitialized_head"]:
        raise CheckpointError(
            f"the teacher {path} has no classifier head for this data's {num_classes} classes (its head is of "
            f"another class count, or missing): distilling from a random head teaches nothing; fine-tune it on "
            f"this data first (python post_train.py --config <your config> --model_path {path} "
            f"--distillation-type none --output_dir <dir>) and pass <dir>/{model_type}_dense_best.pth as "
            f"--teacher-path, or use --distillation-type none")
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def teacher_record(config, student: torch.nn.Module, model_type: str) -> dict:
    """What a stage-1 file records of its teacher, for stage 2 to rebuild it."""
    if config.teacher_model:
        return {"model_type": config.teacher_model, "path": config.teacher_path or config.model_path}
    return {"model_type": model_type, "path": config.teacher_path or config.model_path,
            "model_kwargs": model_kwargs_of(student)}


def build_loss(config, base_criterion, teacher) -> DistillationLoss:
    return DistillationLoss(base_criterion, teacher, config.distillation_type, config.distillation_alpha,
                            config.distillation_tau)


def wrap_ddp(model: torch.nn.Module, env: DistInfo) -> torch.nn.Module:
    """DDP around the student only (the teacher stays outside)."""
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def build_optimizer(config, vit, epochs: int, steps_per_epoch: int, peak_lr: float):
    """timm optimizer (no weight decay on norms, biases, tokens) and a per-step scheduler that warms up
    from --lr_warmup_lr to `peak_lr` (utils.batch.batch_plan) and decays to --min_lr."""
    optimizer = create_optimizer_v2(vit, opt=config.opt, lr=peak_lr,
                                    weight_decay=config.weight_decay, momentum=config.momentum)
    scheduler, _ = create_scheduler_v2(optimizer, sched=config.sched, num_epochs=epochs,
                                       warmup_epochs=config.lr_warmup_epochs, min_lr=config.min_lr,
                                       warmup_lr=config.lr_warmup_lr, step_on_epochs=False,
                                       updates_per_epoch=max(steps_per_epoch, 1))
    return optimizer, scheduler


def steps_per_epoch(config, loader) -> int:
    n = len(loader) // config.gradient_accumulation_steps
    return min(n, config.max_steps_per_epoch) if config.max_steps_per_epoch else n

