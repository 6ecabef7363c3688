"""--help of both entry scripts: flags grouped by the sections of configs/common.py, each with its
one-line meaning (the comment next to its key), and only the script's own flags; every script in scripts/
run as a file imports the packages of its own checkout."""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from utils.config import load_config_file
from utils.flags import build_parser, config_comments
from utils.config_checks import STAGE1_ONLY, STAGE2_ONLY

REPO = Path(__file__).resolve().parents[1]
GROUPS = ["model", "data", "optimisation of the weights", "distillation", "UVC search (stage 1)", "stage 2",
          "logging", "distributed", "output"]


def shown_actions(stage: str):
    config = load_config_file(str(REPO / "configs" / "deit_tiny.py"), stage)
    parser = build_parser(config, "x", stage=stage)
    return {group.title: [a for a in group._group_actions if a.help != argparse.SUPPRESS]
            for group in parser._action_groups}


def test_every_config_key_has_a_meaning():
    missing = [key for _, key, text in config_comments() if not text]
    assert not missing, f"keys of configs/common.py without a comment: {missing}"


@pytest.mark.parametrize("stage", ["joint", "post"])
def test_help_groups_flags_and_describes_each(stage):
    groups = shown_actions(stage)
    expected = [g for g in GROUPS if not (stage == "joint" and g == "stage 2")
                and not (stage == "post" and g.startswith("UVC search"))]
    assert [t for t in groups if t not in ("positional arguments", "options")] == expected
    meanings = {key: text for _, key, text in config_comments()}
    for title in expected:
        for action in groups[title]:
            assert action.help.startswith(meanings[action.dest]) and meanings[action.dest], action.dest
            assert action.option_strings[0] == f"--{action.dest}"


def test_each_script_shows_only_its_own_flags():
    joint = {a.dest for actions in shown_actions("joint").values() for a in actions}
    post = {a.dest for actions in shown_actions("post").values() for a in actions}
    assert not joint & set(STAGE2_ONLY) and not post & set(STAGE1_ONLY + ("uvc_train",))
    assert "budget" in joint and "checkpoint_dir" in post


@pytest.mark.parametrize("script", ["joint_train.py", "post_train.py"])
def test_help_runs_and_names_its_defaults_file(script):
    out = subprocess.run([sys.executable, script, "--model_type", "vit_digits_patch2_8", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120).stdout
    assert "Defaults: configs/digits_demo.py" in " ".join(out.split())
    assert "\ndata:\n" in out and "--budget" in out if script == "joint_train.py" else "--budget" not in out


PROJECT_IMPORT = re.compile(r"^(from|import) (scripts|uvc|models|utils|configs|engine|data|baselines)\b", re.M)
OWN_CHECKOUT = "if not __package__:"


def runnable_scripts():
    return sorted(p for p in (REPO / "scripts").glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def test_every_script_puts_its_checkout_first_before_importing_the_project():
    scripts = runnable_scripts()
    assert len(scripts) >= 10
    for path in scripts:
        text = path.read_text()
        assert OWN_CHECKOUT in text and text.index(OWN_CHECKOUT) < PROJECT_IMPORT.search(text).start(), path.name


@pytest.mark.parametrize("name", ["sweep.py", "flag_reference.py"])
def test_a_script_run_as_a_file_imports_its_own_checkout(tmp_path, name):
    """`python scripts/x.py` from anywhere imports this checkout's packages, even when another copy of them is
    importable first (an editable install of another clone, a stale PYTHONPATH): each decoy raises on import."""
    for package in ("scripts", "uvc", "models", "utils", "configs", "engine"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"raise ImportError('the decoy {package} was imported')\n")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / name), "--help"], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "decoy" not in done.stderr, done.stderr[-300:]


def test_a_config_path_as_the_readme_writes_it_is_found_from_any_directory(tmp_path, monkeypatch):
    """`--config configs/deit_tiny.py` names the file from the project's root: launched from another directory
    (python /path/to/joint_train.py ...) it is the same file, not "not found (did you mean configs/deit_tiny.py?)"."""
    monkeypatch.chdir(tmp_path)
    assert load_config_file("configs/deit_tiny.py", "joint").to_dict() == \
        load_config_file(str(REPO / "configs" / "deit_tiny.py"), "joint").to_dict()
    assert load_config_file("deit_tiny.py", "joint").model_type == "deit_tiny_patch16_224"
