"""Every key of a config as a command-line flag, and --help from configs/common.py's comments.

A key has several spellings (--key, --key-with-dashes, --config.key and the seed
README's aliases, ALIASES); --help shows one per key, grouped by the sections of
configs/common.py, each with the comment that follows the key there. A parse error
is one line (ConfigError), not argparse's usage and exit.
"""
import argparse
import os
import re
from typing import List, Optional, Sequence

import ml_collections

from utils.config_checks import STAGE1_ONLY, STAGE2_ONLY, ConfigError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# Seed flags whose name differs from the config key they set.
ALIASES = {
    "num_epochs": "epochs",
    "lr": "learning_rate",
    "batch_size": "train_batch_size",
    "local-rank": "local_rank",
    "img_size": "input_size",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise ConfigError(f"{message} (see --help for the accepted flags)")


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


def shown_path(path: str) -> str:
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
                                  f"--key-with-dashes and --config.key are the same flag. Defaults: "
                                  f"{shown_path(config_file)} (chosen by --config, or by --model_type)."))
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
