"""The README and docs stay true: the README's test command is what CI runs, docs/flags.md and the
recipe table are the configs', nothing cites a file the repository does not hold."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIVATE_SPEC = "UVC_" + "SPEC"  # the team's own note, not part of the repository


def readme() -> str:
    return text_of("README.md")


def text_of(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


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
    """Every config key is documented, and docs/flags.md is the generated one."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "flag_reference.py")],
                         capture_output=True, text=True, check=True).stdout
    assert out == text_of("docs/flags.md"), "docs/flags.md is stale: python scripts/flag_reference.py > docs/flags.md"
    from configs.common import base_config
    for key in base_config("joint").keys():
        assert f"`--{key}`" in out
        row = next(line for line in out.splitlines() if line.startswith(f"| `--{key}`"))
        assert not row.rstrip().endswith("|  |"), f"--{key} has no description in configs/common.py"


def test_recipe_table_matches_configs():
    """docs/usage.md's table of --recipe is configs.common.RECIPES."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "flag_reference.py"), "--recipes"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out in text_of("docs/usage.md"), \
        "docs/usage.md's recipe table is stale: paste `python scripts/flag_reference.py --recipes`"


def test_requirements_pin_torch_and_never_apex():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = [l.split("#")[0].strip() for l in f]
    names = [re.split(r"[=<>!~ ]", l)[0].lower() for l in lines if l]
    assert "torch==2.14.1" in lines and "torchvision==0.29.1" in lines
    assert "apex" not in names


def test_docs_cite_only_what_the_repository_holds():
    """No file cites the team's private spec; every docs/*.md and README link to a local file resolves."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert not [p for p in tracked if p.endswith((".py", ".md")) and PRIVATE_SPEC in text_of(p)]
    for page in ["README.md"] + [p for p in tracked if p.startswith("docs/") and p.endswith(".md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text_of(page)):
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))
            assert os.path.exists(path), f"{page} links to {target}, which is not in the repository"


def test_readme_is_short():
    assert len(readme().splitlines()) <= 300, "README.md is over 300 lines: move the detail to docs/"
