"""What a config may hold: the flags each stage and each search reads, the ranges of the values,
and the parsers of the values that are text (--model_kwargs, --zlr_schedule_list).

utils.config builds the config from the command line and calls these checks; every problem is
one ConfigError line for the user.
"""
import json
from typing import List

import ml_collections

from configs.common import RECIPES

# config keys that reshape the model (0: the model type's own), passed to timm's VisionTransformer
SHAPE_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "in_chans")
# VisionTransformer arguments --model_kwargs may not set: they have keys or flags of their own
_OWN_FLAGS = {"img_size": "input_size", "num_classes": "num_classes", "drop_path_rate": "drop_path",
              "pretrained": "pretrained"}


class ConfigError(ValueError):
    """A bad command line or config value; the message is one line for the user."""


# Keys only one stage reads: given on the other stage's command line they would be
# parsed and silently ignored, so they are refused instead.
STAGE1_ONLY = ("budget", "search_algorithm", "reference_rules", "target_ramp", "min_blocks", "patch_probe", "skip_probe", "trial_margin",
               "search_masking",
               "greedy_fit", "round_to", "token_step",
               "budget_metric", "latency_cache", "latency_batch", "latency_check", "flops_with_mhsa", "enable_pruning",
               "enable_block_gating", "enable_patch_gating",
               "slr", "rlr", "soptim", "roptim", "ylr", "plr", "dual_init", "zlr", "zlr_schedule_list", "z_grad_clip",
               "use_gumbel", "gumbel_tau", "gumbel_tau_decay", "eps", "eps_decay", "glr", "gating_weight",
               "gating_interval", "patchlr", "patch_weight", "patch_l1_weight", "patchloss", "enable_warmup",
               "warmup_epochs", "warmup_lr")
STAGE2_ONLY = ("checkpoint_dir", "finetune_from")


def check_stage_flags(overrides: dict, stage: str) -> None:
    """One line for a flag of the other stage (e.g. --budget given to post_train.py)."""
    if stage == "post":
        wrong = [k for k in overrides if k in STAGE1_ONLY]
        if wrong:
            raise ConfigError(f"--{wrong[0]} is a stage-1 (joint_train.py) flag: post_train.py fine-tunes the "
                              f"architecture fixed in --checkpoint_dir; drop it or run the search again")
    elif stage == "joint":
        wrong = [k for k in overrides if k in STAGE2_ONLY]
        if wrong:
            raise ConfigError(f"--{wrong[0]} is a stage-2 (post_train.py) flag: joint_train.py starts from "
                              f"--model_path; to continue a stopped search use --resume")


# Keys of the default search that `--search_algorithm reference` does not read, and why (refused when given)
REFERENCE_UNREAD = {"zlr": "z takes SGD steps at the first entry of --zlr_schedule_list",
                    "target_ramp": "the constraint is the fixed budget, no moving target",
                    "min_blocks": "the reference protects no block",
                    "patch_probe": "patch drops are not tried",
                    "skip_probe": "block skips are not tried",
                    "trial_margin": "patch drops and block skips are not tried",
                    "patchlr": "patch logits move with the weights' optimizer",
                    "patch_weight": "the budget does not push the patch logits",
                    "patch_l1_weight": "the reference's patch losses are parsed and never used"}


def check_search_flags(overrides: dict, config) -> None:
    """One line for a flag the chosen search would not read (`--search_algorithm reference`)."""
    if config.get("search_algorithm") != "reference":
        return
    if config.get("reference_rules"):
        raise ConfigError("--reference_rules switches rules of the default search (--search_algorithm uvc); "
                          "--search_algorithm reference runs all of the reference's: drop one of them")
    for key, why in REFERENCE_UNREAD.items():
        if key in overrides:
            raise ConfigError(f"--{key} is not read by --search_algorithm reference ({why}): drop it")
    for key in ("soptim", "roptim"):
        if config[key] != "sgd":
            raise ConfigError(f"--{key} {config[key]} is not supported with --search_algorithm reference: it "
                              f"runs the reference's default, sgd")


LATENCY_ONLY = ("latency_cache", "latency_batch", "latency_check")


def check_latency_flags(overrides: dict, config) -> None:
    """One line for a latency-budget flag given to a search that counts MACs (it would be ignored)."""
    wrong = [k for k in overrides if k in LATENCY_ONLY]
    if wrong and config.get("budget_metric") != "latency":
        raise ConfigError(f"--{wrong[0]} applies only with --budget_metric latency (this search counts "
                          f"{config.get('budget_metric')}): add --budget_metric latency or drop it")


_CHOICES = {
    "search_algorithm": ("uvc", "reference"),
    "distillation_type": ("none", "soft", "hard"),
    "dataset": ("imagenet", "cifar10", "cifar100", "digits", "mnist", "synthetic"),
    "patchloss": ("l1",),
    "soptim": ("sgd", "adam"),
    "search_masking": ("hard", "soft"),
    "finetune_from": ("search", "pretrained"),
    "budget_metric": ("macs", "latency"),
    "roptim": ("sgd", "adam"),
    "mixup_mode": ("batch", "pair", "elem"),
    "sched": ("cosine", "step", "constant"),
    "opt": ("adamw", "sgd", "adam"),
    "recipe": tuple(RECIPES),
}
_FLAGS_01 = ("enable_pruning", "enable_block_gating", "enable_patch_gating", "use_gumbel",
             "enable_warmup", "enable_deit", "pretrained", "uvc_train", "fp16", "flops_with_mhsa",
             "download", "deterministic", "pin_mem", "skip_bad_images")


def validate(config: ml_collections.ConfigDict, stage: str) -> None:
    """Reject values the method cannot run with, one line each (the first problem found)."""
    _check_kinds(config)
    _check_stage(config, stage)
    _check_search(config)
    _check_training(config, stage)
    for key in SHAPE_KEYS + ("num_classes",):
        if config[key] < 0:
            raise ConfigError(f"--{key} must be positive (or 0 for the model type's own), got {config[key]}")
    parse_model_kwargs(config.model_kwargs)
    _check_zlr_schedule(config)


def _check_kinds(config) -> None:
    """Keys with a fixed set of choices hold one of them; on/off keys hold bools."""
    for key, choices in _CHOICES.items():
        if key in config and config[key] not in choices:
            raise ConfigError(f"--{key} {config[key]!r} is not supported; choose one of {', '.join(choices)}")
    for key in _FLAGS_01:
        if key in config and not isinstance(config[key], bool):
            raise ConfigError(f"config key {key} must be True or False, got {config[key]!r}: on/off keys "
                              f"are bools (configs/common.py)")


def _check_stage(config, stage: str) -> None:
    """--uvc_train belongs to stage 1, and stage 1 is nothing without it."""
    if stage == "joint" and not config.uvc_train:
        raise ConfigError("--uvc_train 0: joint_train.py is the UVC search and has nothing else to do; to train "
                          "or fine-tune the dense model use post_train.py without --checkpoint_dir")
    if stage == "post" and config.uvc_train:
        raise ConfigError("--uvc_train is a stage-1 flag: post_train.py fine-tunes the architecture in "
                          "--checkpoint_dir; run the search with joint_train.py")


def _check_search(config) -> None:
    """The budget, the target's ramp, the fit's floors and widths, the search's learning rates, the
    patch probe and the latency check lie in their ranges."""
    if not 0.0 < float(config.budget) <= 1.0:
        raise ConfigError(f"--budget {config.budget} is out of range: give the fraction of the dense "
                          f"MACs to keep, in (0, 1], e.g. --budget 0.5")
    if not 0.0 < float(config.target_ramp) <= 1.0:
        raise ConfigError(f"--target_ramp {config.target_ramp} must lie in (0, 1]: the fraction of the search "
                          f"over which the target falls to the budget, e.g. 0.5")
    if int(config.min_blocks) < 0:
        raise ConfigError(f"--min_blocks must be 0 (half the depth) or more, got {config.min_blocks}")
    if int(config.token_step) < 1:
        raise ConfigError(f"--token_step must be at least 1 (1: every token counts, as the paper; 8: counts priced "
                          f"at multiples of 8), got {config.token_step}")
    if int(config.round_to) < 1:
        raise ConfigError(f"--round_to must be at least 1 (1: any width, as the paper; 8: multiples of 8), "
                          f"got {config.round_to}")
    for key in ("slr", "rlr", "ylr", "plr", "dual_init", "zlr", "trial_margin"):
        if float(config[key]) < 0:
            raise ConfigError(f"--{key} must be 0 or more, got {config[key]}")
    for key, move in (("patch_probe", "patch drops"), ("skip_probe", "block skips")):
        if int(config[key]) < 0:
            raise ConfigError(f"--{key} must be 0 (no trial of {move}) or more, got {config[key]}")
    if int(config.latency_check) < 0:
        raise ConfigError(f"--latency_check must be 0 (no timing of the frozen model) or more, got "
                          f"{config.latency_check}")


def _check_training(config, stage: str) -> None:
    """The distillation weight, batch sizes, accumulation and epochs lie in their ranges, and stage 1
    leaves at least one search epoch after its warm-up."""
    if not 0.0 <= float(config.distillation_alpha) <= 1.0:
        raise ConfigError(f"--distillation-alpha {config.distillation_alpha} must lie in [0, 1]")
    for key in ("train_batch_size", "eval_batch_size", "gradient_accumulation_steps", "gating_interval",
                "latency_batch"):
        if int(config[key]) < 1:
            raise ConfigError(f"--{key} must be at least 1, got {config[key]}")
    if int(config.epochs) < 1:
        raise ConfigError(f"--epochs must be at least 1, got {config.epochs}")
    if stage == "joint" and config.enable_warmup and int(config.epochs) <= int(config.warmup_epochs):
        raise ConfigError(f"--epochs {config.epochs} leaves no search epoch after --warmup_epochs "
                          f"{config.warmup_epochs}: the search would never run and nothing would be compressed; "
                          f"raise --epochs or lower --warmup_epochs (0: search from the first step)")


def _check_zlr_schedule(config) -> None:
    """--zlr_schedule_list: z's learning rates for the reference's search, else the epochs at which z's
    learning rate doubles."""
    if config.get("search_algorithm") == "reference":
        try:
            if reference_zlr(config.zlr_schedule_list) < 0:
                raise ValueError
        except (ValueError, IndexError):
            raise ConfigError(f"--zlr_schedule_list {config.zlr_schedule_list!r}: with --search_algorithm reference "
                              f"give z learning rates, comma-separated, the first one 0 or more, e.g. "
                              f"\"10,20,30\"") from None
        return
    try:
        zlr_schedule(config.zlr_schedule_list)
    except ValueError:
        raise ConfigError(f"--zlr_schedule_list {config.zlr_schedule_list!r}: give comma-separated "
                          f"epoch numbers, e.g. \"1,5,9\"") from None


def parse_model_kwargs(text: str) -> dict:
    """--model_kwargs '{"qk_norm": true}' -> {"qk_norm": True}; "" -> {}."""
    if not str(text).strip():
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model_kwargs {text!r} is not JSON ({e.msg}); give an object, e.g. "
                          f"'{{\"qk_norm\": true, \"init_values\": 1e-5}}'") from None
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--model_kwargs {text!r} must be a JSON object of VisionTransformer arguments")
    for key in kwargs:
        own = key if key in SHAPE_KEYS else _OWN_FLAGS.get(key)
        if own:
            raise ConfigError(f"--model_kwargs sets {key}: use --{own} instead")
    return kwargs


def model_overrides(config) -> dict:
    """The VisionTransformer arguments the config sets: shape keys that are not 0, then --model_kwargs."""
    shape = {key: config[key] for key in SHAPE_KEYS if config[key]}
    return {**parse_model_kwargs(config.model_kwargs), **shape}


def reference_zlr(text: str) -> float:
    """"10,20,30" -> 10.0: z's learning rate in the reference's search, the list's first entry for the
    whole search (its per-epoch schedule of the entries sets a `zlr` key no parameter group reads)."""
    return float(str(text).replace(" ", "").split(",")[0])


def zlr_schedule(text: str) -> List[int]:
    """"1,5,9" -> [1, 5, 9] (epochs at which the z learning rate doubles)."""
    return sorted(int(t) for t in str(text).replace(" ", "").split(",") if t)
