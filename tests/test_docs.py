"""The README and docs/ stay true: the README's test command is what CI runs, docs/flags.md is the
configs' generated reference, docs/design.md's recipe table is configs.common.RECIPES."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def readme() -> str:
    return read("README.md")


def test_ci_runs_the_readme_test_command():
    """.ci/run calls the README's second command verbatim."""
    commands = re.findall(r"```bash\n(pip install -r requirements.txt && [^\n]+)\n```", readme())
    assert len(commands) >= 2, "the README must open with the demo and the test command"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    test_command = commands[1]
    assert "pytest" in test_command
    assert test_command in ci.splitlines()


def test_flag_table_matches_configs():
    """Every config key is documented, and docs/flags.md is the generated file, byte for byte."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "flag_reference.py")],
                         capture_output=True, text=True, check=True).stdout
    assert out == read("docs/flags.md"), "docs/flags.md is stale: python scripts/flag_reference.py > docs/flags.md"
    assert out.splitlines()[0] == "<!-- generated: python scripts/flag_reference.py > docs/flags.md -->"
    sys.path.insert(0, ROOT)
    from configs.common import base_config
    for key in base_config("joint").keys():
        assert f"`--{key}`" in out
        row = next(line for line in out.splitlines() if line.startswith(f"| `--{key}`"))
        assert not row.rstrip().endswith("|  |"), f"--{key} has no description in configs/common.py"


def test_recipe_table_matches_configs():
    """docs/design.md's table of --recipe is configs.common.RECIPES."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "flag_reference.py"), "--recipes"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out in read("docs/design.md"), \
        "docs/design.md recipe table is stale: paste `python scripts/flag_reference.py --recipes`"


def test_requirements_pin_torch_and_never_apex():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = [l.split("#")[0].strip() for l in f]
    names = [re.split(r"[=<>!~ ]", l)[0].lower() for l in lines if l]
    assert "torch==2.14.1" in lines and "torchvision==0.29.1" in lines
    assert "apex" not in names
