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
value of the wrong type ends the program with one line on stderr. The flags
themselves and --help are utils/flags.py.
"""
import argparse
import difflib
import importlib.util
import json
import os
import sys
from typing import List, Optional, Sequence

import ml_collections

from configs.common import RECIPES, REFERENCE_RULES, REFERENCE_SEARCH, RULE_DEFAULTS, base_config
from utils.config_checks import (_CHOICES, ConfigError, check_latency_flags, check_search_flags, check_stage_flags,
                                 validate)
from utils.flags import CONFIG_DIR, build_parser, shown_path

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

def load_config_file(path: str, stage: str) -> ml_collections.ConfigDict:
    """Import `path` and call its get_config(stage).

    As with ml_collections' config_flags, `file.py:arg` calls get_config(arg)
    instead (e.g. `configs/digits_demo.py:dense` for the dense teacher run). The file
    imports `configs.common` as a module of the installed project.
    """
    if ":" in os.path.basename(path):
        path, stage = path.rsplit(":", 1)
    if not os.path.isfile(path):  # else relative to configs/ or to the project's root, from any directory
        alt = next((p for p in (os.path.join(CONFIG_DIR, path), os.path.join(os.path.dirname(CONFIG_DIR), path))
                    if os.path.isfile(p)), None)
        if alt:
            path = alt
        else:
            raise ConfigError(f"config file {path} not found{_did_you_mean(path)}; the configs are "
                              f"{', '.join(config_files())} in {shown_path(CONFIG_DIR)}/")
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
