"""Print the flag reference of joint_train.py / post_train.py as a markdown table.

    python scripts/flag_reference.py > /tmp/flags.md
    python scripts/flag_reference.py --recipes      # the two recipes of --recipe, side by side

Every key of configs/common.py is a flag (`--key`, `--key-with-dashes` or
`--config.key`); the meaning is the comment next to the key, the defaults are the
stage-1 and stage-2 values of base_config. The README's tables are this output
(tests/test_docs.py checks they agree).
"""
import argparse
import os
import re

from configs.common import RECIPES, base_config
from utils.config import ALIASES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    print(recipe_table() if parser.parse_args().recipes else table())
