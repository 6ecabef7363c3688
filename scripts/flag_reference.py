"""Print the flag reference of joint_train.py / post_train.py as markdown: docs/flags.md.

    python scripts/flag_reference.py > docs/flags.md
    python scripts/flag_reference.py --recipes      # the two recipes of --recipe, side by side

Every key of configs/common.py is a flag (`--key`, `--key-with-dashes` or
`--config.key`); the meaning is the comment next to the key, the defaults are the
stage-1 and stage-2 values of base_config. docs/flags.md is the whole output, and
docs/design.md holds the recipe table (tests/test_docs.py checks both agree).
"""
import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.common import RECIPES, base_config  # noqa: E402
from utils.config import ALIASES  # noqa: E402

_LINE = re.compile(r"^\s+c\.(\w+) = .*?(?:#\s*(.*))?$")
_SECTION = re.compile(r"^\s+# --- (.*?) -+$")


def comments() -> list:
    """[(section, key, comment)] in file order."""
    rows, section = [], ""
    with open(os.path.join(ROOT, "configs", "common.py")) as f:
        for line in f:
            if _SECTION.match(line):
                section = _SECTION.match(line).group(1)
            elif _LINE.match(line):
                key, text = _LINE.match(line).groups()
                rows.append((section, key, (text or "").strip()))
    return rows


def shown(value) -> str:
    """A default as it is typed on the command line: on/off keys as 0/1."""
    return str(int(value)) if isinstance(value, bool) else repr(value)


def table() -> str:
    joint, post = base_config("joint"), base_config("post")
    aliases = {}
    for alias, key in ALIASES.items():
        aliases.setdefault(key, []).append(f"`--{alias}`")
    out, current = [], None
    for section, key, text in comments():
        if section != current:
            current = section
            out += ["", f"**{section}**", "", "| flag | stage 1 | stage 2 | meaning |", "|---|---|---|---|"]
        flag = f"`--{key}`" + (f" ({', '.join(aliases[key])})" if key in aliases else "")
        post_default = "same" if joint[key] == post[key] else f"`{shown(post[key])}`"
        out.append(f"| {flag} | `{shown(joint[key])}` | {post_default} | {text.replace('|', '/')} |")
    return "\n".join(out[1:])


HEADER = """<!-- generated: python scripts/flag_reference.py > docs/flags.md -->
# Flag reference

Every key below is a flag of both `joint_train.py` (stage 1) and `post_train.py`
(stage 2): `--key`, `--key-with-dashes` or `--config.key`; besides them,
`--config FILE[:arg]` and `--print_config`. The meaning is the comment next to the
key in `configs/common.py`; the defaults are its stage-1 and stage-2 values.
The recipe keys' two sets of values are in [design.md](design.md#batch-learning-rate-and-recipe)."""


def document() -> str:
    """docs/flags.md: the header, then the tables."""
    return HEADER + "\n\n" + table() + "\n"


def recipe_table() -> str:
    """configs.common.RECIPES as one markdown table, the default recipe first."""
    names = sorted(RECIPES, key=lambda name: name != base_config("post").recipe)
    out = ["| flag | " + " | ".join(f"`--recipe {n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in RECIPES[names[0]]:
        out.append(f"| `--{key}` | " + " | ".join(f"`{RECIPES[n][key]!r}`" for n in names) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", action="store_true", help="print the table of the --recipe choices instead")
    if parser.parse_args().recipes:
        print(recipe_table())
    else:
        sys.stdout.write(document())
