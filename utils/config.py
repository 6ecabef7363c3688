"""Command line -> locked ml_collections ConfigDict.

Three spellings set the same key, so the seed README's launch commands keep
working next to the config-file form:

    --config configs/deit_small.py --config.budget 0.6
    --budget 0.6
    --distillation-type soft          (dashes and underscores are equivalent)

`--config` defaults to the file of `--model_type` (configs/deit_tiny.py for
deit_tiny_patch16_224, ...; configs/vit.py, the common defaults, for any other
timm ViT). The config is resolved in this order, whatever the
order on the command line: the config file (and its variant, `file.py:arg`),
then the recipe named by `--recipe` (configs.common.RECIPES), then every other
flag. `--print_config` prints the result as JSON and exits. An unknown key or a
value of the wrong type ends the program with one line on stderr.
"""
import argparse
import difflib
import importlib.util
import json
import os
import re
import sys
from typing import List, Optional, Sequence

import ml_collections

from configs.common import RECIPES, REFERENCE_RULES, REFERENCE_SEARCH, RULE_DEFAULTS, base_config

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# Seed flags whose name differs from the config key they set.
ALIASES = {
    "num_epochs": "epochs",
    "lr": "learning_rate",
    "batch_size": "train_batch_size",
    "local-rank": "local_rank",
    "img_size": "input_size",
}

# model_type -> config file used when no --config is given
_DEFAULT_FILES = {
    "deit_tiny_patch16_224": "deit_tiny.py",
    "deit_small_patch16_224": "deit_small.py",
    "deit_base_patch16_224": "deit_base.py",
    "deit_tiny_distilled_patch16_224": "deit_tiny_distilled.py",
    "deit_small_distilled_patch16_224": "deit_small_distilled.py",
    "deit_base_distilled_patch16_224": "deit_base_distilled.py",
    "deit_base_patch16_384": "deit_base_384.py",
    "vit_digits_patch2_8": "digits_demo.py",
    "vit_mnist_patch4_28": "mnist_demo.py",
}


FALLBACK_FILE = "vit.py"  # any other timm ViT: the common defaults, no weights named

# config keys that reshape the model (0: the model type's own), passed to timm's VisionTransformer
SHAPE_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "in_chans")
# VisionTransformer arguments --model_kwargs may not set: they have keys or flags of their own
_OWN_FLAGS = {"img_size": "input_size", "num_classes": "num_classes", "drop_path_rate": "drop_path",
              "pretrained": "pretrained"}


class ConfigError(ValueError):
    """A bad command line or config value; the message is one line for the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise ConfigError(f"{message} (see --help for the accepted flags)")


def load_config_file(path: str, stage: str) -> ml_collections.ConfigDict:
    """Import `path` and call its get_config(stage).

    As with ml_collections' config_flags, `file.py:arg` calls get_config(arg)
    instead (e.g. `configs/digits_demo.py:dense` for the dense teacher run). The file
    imports `configs.common` as a module of the installed project.
    """
    if ":" in os.path.basename(path):
        path, stage = path.rsplit(":", 1)
    if not os.path.isfile(path):
        alt = os.path.join(CONFIG_DIR, path)
        if os.path.isfile(alt):
            path = alt
        else:
            raise ConfigError(f"config file {path} not found{_did_you_mean(path)}; the configs are "
                              f"{', '.join(config_files())} in {_shown_path(CONFIG_DIR)}/")
    spec = importlib.util.spec_from_file_location(f"_uvc_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        config = module.get_config(stage)
    except TypeError as e:  # ml_collections refuses a value of another type, e.g. c.fp16 = 1 on a bool key
        raise ConfigError(f"config file {path}: {e} (on/off keys are True/False)") from None
    config.lock()
    return config


def config_files() -> List[str]:
    """The config files a user can pass: configs/*.py with a get_config (not common.py or __init__.py)."""
    return sorted(name for name in os.listdir(CONFIG_DIR)
                  if name.endswith(".py") and name not in ("common.py", "__init__.py"))


def _did_you_mean(path: str) -> str:
    close = difflib.get_close_matches(os.path.basename(path), config_files(), n=1, cutoff=0.6)
    return f" (did you mean configs/{close[0]}?)" if close else ""


def _str2bool_int(value: str) -> int:
    v = str(value).lower()
    if v in ("1", "true", "yes", "on"):
        return 1
    if v in ("0", "false", "no", "off"):
        return 0
    raise argparse.ArgumentTypeError(f"expected 0/1 or true/false, got {value!r}")


def _switch(value: str) -> int:
    """An on/off flag as given: 0/1/true/false, or any other integer for set_key to refuse by name."""
    try:
        return _str2bool_int(value)
    except argparse.ArgumentTypeError:
        try:
            return int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected 0/1 or true/false, got {value!r}") from None


def _typed(default):
    if isinstance(default, bool):
        return _switch
    if isinstance(default, int):
        def to_int(v):
            try:
                return int(v)
            except ValueError:
                pass
            try:
                return _str2bool_int(v)  # --pretrained true
            except argparse.ArgumentTypeError:
                raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
        return to_int
    if isinstance(default, float):
        return float
    return str


def _spellings(key: str) -> List[str]:
    """Every spelling of the flag of `key` but --key itself: dashes, the seed's aliases, --config.key."""
    names = {key, key.replace("_", "-")}
    names |= {alias for alias, target in ALIASES.items() if target == key}
    names |= {a.replace("-", "_") for a in list(names)}
    return [f"--{n}" for n in sorted(names - {key})] + [f"--config.{key}"]


_COMMENTED_KEY = re.compile(r"^\s+c\.(\w+) = .*?(?:#\s*(.*))?$")
_SECTION = re.compile(r"^\s+# --- (.*?) -+$")


def config_comments() -> List[tuple]:
    """[(section, key, meaning)] of configs/common.py in file order: each key's comment is its meaning,
    in --help and in docs/flags.md alike."""
    rows, section = [], ""
    with open(os.path.join(CONFIG_DIR, "common.py")) as f:
        for line in f:
            if _SECTION.match(line):
                section = _SECTION.match(line).group(1)
            elif _COMMENTED_KEY.match(line):
                key, text = _COMMENTED_KEY.match(line).groups()
                rows.append((section, key, (text or "").strip()))
    return rows


def _shown_path(path: str) -> str:
    """A config file as the user would type it: relative to the repository when inside it."""
    root = os.path.dirname(CONFIG_DIR)
    return os.path.relpath(path, root) if os.path.abspath(path).startswith(root + os.sep) else path


_METAVARS = {bool: "0|1", int: "INT", float: "FLOAT", str: "TEXT"}
STAGE_TEXT = {
    "joint": "Stage 1 of UVC: search heads, head dims, MLP neurons, block skips and patches under a MACs (or "
             "latency) budget while the weights train under distillation; writes <output_dir>/<model_type>_uvc.pth.",
    "post": "Stage 2 of UVC: fine-tune the architecture fixed in --checkpoint_dir and export compact.pth; "
            "without --checkpoint_dir, train or fine-tune the dense model (a teacher).",
}


def build_parser(config: ml_collections.ConfigDict, prog: str, keys: Optional[Sequence[str]] = None,
                 stage: Optional[str] = None, config_file: str = "the config file") -> argparse.ArgumentParser:
    """A parser with one flag per config key (or per key of `keys`), defaults left to the config.

    --help groups the flags by the sections of configs/common.py and gives each its comment there.
    A flag of the other stage is parsed (to be refused in one line by check_stage_flags) but not shown;
    nor are the other spellings of a flag (--key-with-dashes, --config.key, the seed's aliases)."""
    parser = _Parser(prog=prog, allow_abbrev=False, usage="%(prog)s [--config FILE] [--flag VALUE ...]",
                     description=(STAGE_TEXT.get(stage, "UVC") + f" Every key of the config is a flag; "
                                  f"--key-with-dashes and --config.key are the same flag. Defaults: {_shown_path(config_file)} "
                                  f"(chosen by --config, or by --model_type)."))
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="config file (configs/*.py), or FILE.py:variant (e.g. configs/digits_demo.py:dense)")
    parser.add_argument("--print_config", "--print-config", action="store_true",
                        help="print the resolved config as one JSON object and exit")
    other_stage = {"joint": STAGE2_ONLY, "post": STAGE1_ONLY + ("uvc_train",)}.get(stage, ())
    meanings = {key: (section, text) for section, key, text in config_comments()}
    order = {key: i for i, key in enumerate(meanings)}  # the file's order, section by section
    groups = {}
    for key, default in sorted(config.items(), key=lambda kv: order.get(kv[0], len(order))):
        if keys is not None and key not in keys:
            continue
        section, text = meanings.get(key, ("other", ""))
        shown = int(default) if isinstance(default, bool) else default
        kwargs = dict(dest=key, default=argparse.SUPPRESS, type=_typed(default),
                      metavar=_METAVARS.get(type(default), "VALUE"))
        if isinstance(default, int):  # bool too: a bare --fp16 means 1
            kwargs.update(nargs="?", const=1)
        if key in other_stage:
            parser.add_argument(f"--{key}", *_spellings(key), help=argparse.SUPPRESS, **kwargs)
            continue
        aliases = [a for a in _spellings(key) if a.replace("-", "_") != f"--{key}" and not a.startswith("--config.")
                   and "-" not in a[2:]]
        group = groups.get(section) or groups.setdefault(section, parser.add_argument_group(section))
        group.add_argument(f"--{key}", *aliases, help=f"{text} (default: {shown!r})".replace("%", "%%"), **kwargs)
        hidden = [a for a in _spellings(key) if a not in aliases]
        parser.add_argument(*hidden, help=argparse.SUPPRESS, **kwargs)
    return parser


def _pick_config_file(argv: Sequence[str]) -> Optional[str]:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--model_type", "--model-type", "--config.model_type", default=None)
    pre.add_argument("--enable_deit", "--enable-deit", "--config.enable_deit", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        return known.config
    model_type = known.model_type or "deit_tiny_patch16_224"
    if known.enable_deit not in (None, "0", "false", "False") and "distilled" not in model_type:
        model_type = model_type.replace("_patch", "_distilled_patch")
    name = _DEFAULT_FILES.get(model_type, FALLBACK_FILE)
    return os.path.join(CONFIG_DIR, name)


def parse_config(stage: str, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None
                 ) -> ml_collections.ConfigDict:
    """Parse argv (default sys.argv[1:]) into the locked config of `stage`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _pick_config_file(argv)
    config = load_config_file(path, stage)
    parser = build_parser(config, prog or os.path.basename(sys.argv[0]), stage=stage, config_file=path)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "print_config")}
    with config.unlocked():
        config.config_file = path
    if "recipe" in overrides:  # the recipe first, so that explicit flags override it
        apply_recipe(config, overrides["recipe"])
    apply_search_defaults(config, overrides, stage)
    for key, value in overrides.items():
        set_key(config, key, value)
    check_stage_flags(overrides, stage)
    check_search_flags(overrides, config)
    check_latency_flags(overrides, config)
    validate(config, stage)
    config.lock()
    if args.print_config:
        if os.environ.get("RANK", "0") == "0":  # once under a launcher
            print(json.dumps(config.to_dict(), indent=1), flush=True)
        raise SystemExit(0)
    return config


def set_key(config: ml_collections.ConfigDict, key: str, value) -> None:
    """config[key] = value, with an on/off key resolved to a bool here, once: 0/1 and true/false
    from a command line or an older file's saved config all become False/True, so no caller ever
    passes an int where torch wants a bool (torch.amp's `enabled`)."""
    if isinstance(config.get(key), bool):
        if value not in (0, 1):  # also True/False
            hint = (" (the reference's dynamic patch mode 2 is not implemented: patches are gated "
                    "per position, the same for every image)") if key == "enable_patch_gating" else ""
            raise ConfigError(f"--{key} must be 0 or 1, got {value}{hint}")
        value = bool(value)
    try:
        config[key] = value
    except (TypeError, KeyError) as e:
        raise ConfigError(f"--{key}: {e}") from None


def apply_recipe(config: ml_collections.ConfigDict, name: str) -> None:
    """Set the values of recipe `name` (configs.common.RECIPES) on `config`."""
    if name not in RECIPES:
        raise ConfigError(f"--recipe {name!r} is not supported; choose one of {', '.join(RECIPES)}")
    config.recipe = name
    for key, value in RECIPES[name].items():
        config[key] = value


def apply_search_defaults(config: ml_collections.ConfigDict, overrides: dict, stage: str) -> None:
    """With `--search_algorithm reference` (flag or file), the reference's defaults of the rate flags
    (configs.common.REFERENCE_SEARCH), and with `--reference_rules` those of its rules
    (configs.common.RULE_DEFAULTS), on every key that neither a flag nor the config file sets (a key
    the file leaves at configs/common.py's value counts as not set)."""
    algorithm = overrides.get("search_algorithm", config.get("search_algorithm"))
    if stage != "joint":
        return
    defaults = dict(REFERENCE_SEARCH) if algorithm == "reference" else {}
    for rule in parse_reference_rules(overrides.get("reference_rules", config.get("reference_rules", ""))):
        defaults.update(RULE_DEFAULTS.get(rule, {}))
    common = base_config(stage)
    for key, value in defaults.items():
        if key not in overrides and config[key] == common[key]:
            config[key] = value


def parse_reference_rules(text: str) -> tuple:
    """--reference_rules "a,b" -> ("a", "b") in REFERENCE_RULES' order (uvc.search.rules); one line naming
    the valid names for another name."""
    given = [n.strip() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in given if n not in REFERENCE_RULES]
    if unknown:
        raise ConfigError(f"--reference_rules {unknown[0]!r} is not a rule; choose from {', '.join(REFERENCE_RULES)}")
    return tuple(n for n in REFERENCE_RULES if n in given)


def subset_parser(keys: Sequence[str], argv: Sequence[str], prog: str, stage: str = "post"):
    """(config, parser) for a tool that reads only `keys` of the config (python -m uvc.evaluate):
    the config file of --config / --model_type, and a parser of those keys' flags only (so no
    flag is parsed and ignored). The tool adds its own arguments, parses, then calls apply_overrides."""
    path = _pick_config_file(list(argv))
    config = load_config_file(path, stage)
    with config.unlocked():
        config.config_file = path
    return config, build_parser(config, prog, keys)


def apply_overrides(config: ml_collections.ConfigDict, args: argparse.Namespace, keys: Sequence[str],
                    defaults: Optional[dict] = None) -> ml_collections.ConfigDict:
    """The config with `defaults` (e.g. a training file's own config), then the flags given, for `keys`."""
    given = {k: v for k, v in vars(args).items() if k in keys}
    for key, value in list((defaults or {}).items()) + list(given.items()):
        if key in keys:
            set_key(config, key, value)
    for key, choices in _CHOICES.items():
        if key in keys and config[key] not in choices:
            raise ConfigError(f"--{key} {config[key]!r} is not supported; choose one of {', '.join(choices)}")
    if "eval_batch_size" in keys and int(config.eval_batch_size) < 1:
        raise ConfigError(f"--eval_batch_size must be at least 1, got {config.eval_batch_size}")
    config.lock()
    return config


# Keys only one stage reads: given on the other stage's command line they would be
# parsed and silently ignored, so they are refused instead.
STAGE1_ONLY = ("budget", "search_algorithm", "reference_rules", "target_ramp", "min_blocks", "patch_probe", "skip_probe",
               "search_masking",
               "greedy_fit", "round_to",
               "budget_metric", "latency_cache", "latency_batch", "latency_check", "flops_with_mhsa", "enable_pruning",
               "enable_block_gating", "enable_patch_gating",
               "slr", "rlr", "soptim", "roptim", "ylr", "plr", "dual_init", "zlr", "zlr_schedule_list", "z_grad_clip",
               "use_gumbel", "gumbel_tau", "gumbel_tau_decay", "eps", "eps_decay", "glr", "gating_weight",
               "gating_interval", "patchlr", "patch_weight", "patch_l1_weight", "patchloss", "enable_warmup",
               "warmup_epochs", "warmup_lr")
STAGE2_ONLY = ("checkpoint_dir",)


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
    if int(config.round_to) < 1:
        raise ConfigError(f"--round_to must be at least 1 (1: any width, as the paper; 8: multiples of 8), "
                          f"got {config.round_to}")
    for key in ("slr", "rlr", "ylr", "plr", "dual_init", "zlr"):
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
