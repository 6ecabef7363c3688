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


def pages() -> list:
    """The README and every page of docs/."""
    return ["README.md"] + [os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(ROOT, "docs")))
                            if n.endswith(".md")]


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


def test_method_keeps_the_sections_the_code_cites():
    """The code cites "docs/method.md section N"; each N is a numbered heading of docs/method.md."""
    headings = set(re.findall(r"^## (\d+b?)\. ", read("docs/method.md"), re.M))
    assert {"1", "2", "3", "4", "5", "6", "7", "7b", "8", "9"} <= headings
    cited = set()
    for folder, _, files in os.walk(ROOT):
        if any(part.startswith(".") for part in os.path.relpath(folder, ROOT).split(os.sep)):
            continue
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    cited |= set(re.findall(r"docs/method\.md,? sections? (\d+b?)", f.read()))
    assert cited <= headings, f"cited sections missing from docs/method.md: {cited - headings}"


def test_links_and_log_files_named_in_the_docs_exist():
    """Every relative link of the README and docs/ resolves, and every log/ file they name is in the repository."""
    for page in pages():
        text = read(page)
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert os.path.exists(os.path.join(ROOT, os.path.dirname(page), target)), f"{page}: {target}"
        for name in re.findall(r"`(log/[\w./-]+\.(?:md|json))`", text):
            assert os.path.exists(os.path.join(ROOT, name)), f"{page} names {name}, which is not in log/"


def test_source_files_named_in_the_docs_exist():
    """A `path/to/module.py` the README or docs/ name is a file of the repository."""
    for page in pages():
        for name in re.findall(r"`([\w./-]+/[\w-]+\.py)", read(page)):
            assert os.path.exists(os.path.join(ROOT, name)), f"{page} names {name}, which does not exist"
