"""scripts/deviations.py in smoke mode: the ledger's rows and files, and --resume reading them back."""
import json
import shlex

import pytest

from scripts import deviations

pytestmark = pytest.mark.usefixtures("one_thread")
KEYS = ("variant", "flags", "model", "budget", "seed", "searched_ratio", "exported_ratio", "greedy_changed_frac",
        "top1_after_freeze", "top1_last", "top1_best", "seconds_stage1", "seconds_stage2", "command")


def test_smoke_ledger_writes_every_row_in_the_fit_window_and_resumes(tmp_path, capsys):
    out = tmp_path / "my ledger" / "dev"  # a space: the recorded command must still split back into argv
    argv = ["--smoke", "--models", "digits", "--budgets", "0.5", "--seeds", "730", "--variants", "default",
            "no_gate_safety", "--run_dir", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "cache"),
            "--out", str(out)]
    assert deviations.main(argv) == 0
    ledger = json.loads((tmp_path / "my ledger" / "dev.json").read_text())
    assert set(ledger) == {"command", "rows"}
    assert shlex.split(ledger["command"]) == ["python", "scripts/deviations.py", *argv]
    rows = ledger["rows"]
    assert [r["variant"] for r in rows] == ["default", "no_gate_safety"]
    for r in rows:
        assert all(k in r for k in KEYS)
        assert r["budget"] - 0.03 <= r["exported_ratio"] <= r["budget"] + 0.01 and r["in_fit_window"]
    assert "--reference_rules no_gate_safety" in rows[1]["command"]
    md = (tmp_path / "my ledger" / "dev.md").read_text()
    assert "| no_gate_safety | --reference_rules no_gate_safety | 1 |" in md
    capsys.readouterr()
    assert deviations.main(argv + ["--resume"]) == 0  # every cell read back: no command runs
    assert "$ python" not in capsys.readouterr().out
    assert json.loads((tmp_path / "my ledger" / "dev.json").read_text())["rows"] == rows
