"""scripts.command.run with reuse, what a resumed sweep or demo relies on: a completed command is not run
again, a stopped entry-script run continues from its checkpoint.pth and ends as the uninterrupted run does,
and a different command in the same folder starts fresh, keeping nothing of the earlier run's log."""
import json
import os

import pytest

from scripts.command import run
from tests.helpers import TINY_MODEL


def command(out, seed=0):
    return ["post_train.py", "--config", "configs/digits_demo.py:dense", "--model_type", TINY_MODEL,
            "--epochs", "3", "--max_steps_per_epoch", "3", "--num_workers", "0", "--deterministic", "1",
            "--seed", str(seed), "--output_dir", str(out)]


def epochs(out):
    """(epoch, val_loss) of every epoch record of the run's log.jsonl, in the order written."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["val_loss"]) for r in records if "epoch" in r and "val_loss" in r]


def test_a_stopped_run_continues_and_ends_as_the_uninterrupted_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run(command(whole), str(whole / "stdout.log"), reuse=True)
    with monkeypatch.context() as m:  # SIGTERM after step 4 (in epoch 1): the run saves and exits 143
        m.setenv("UVC_TEST_CRASH_AT_STEP", "4")
        m.setenv("UVC_TEST_CRASH_RANK", "0")
        m.setenv("UVC_TEST_CRASH_SIGNAL", "TERM")
        with pytest.raises(SystemExit, match=r"stopped \(exit 143\); the same command with --resume continues it"):
            run(command(stopped), str(stopped / "stdout.log"), reuse=True)
    assert not (stopped / "done.cmd").exists() and (stopped / "checkpoint.pth").exists()
    assert len(epochs(stopped)) == 1
    capsys.readouterr()
    run(command(stopped), str(stopped / "stdout.log"), reuse=True)
    assert "(continued from its checkpoint.pth: --resume auto)" in capsys.readouterr().out
    assert epochs(stopped) == epochs(whole) and len(epochs(whole)) == 3
    assert (stopped / "done.cmd").read_text() == " ".join(command(stopped))  # the command, not its --resume
    capsys.readouterr()
    run(command(stopped), str(stopped / "stdout.log"), reuse=True)
    assert "(reused: completed before in" in capsys.readouterr().out


def test_another_command_in_the_folder_starts_fresh(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setenv("UVC_TEST_CRASH_AT_STEP", "4")
        m.setenv("UVC_TEST_CRASH_RANK", "0")
        m.setenv("UVC_TEST_CRASH_SIGNAL", "TERM")
        with pytest.raises(SystemExit):
            run(command(out), str(out / "stdout.log"), reuse=True)
    capsys.readouterr()
    run(command(out, seed=1), str(out / "stdout.log"), reuse=True)  # not the stopped command
    assert "continued" not in capsys.readouterr().out
    assert [e for e, _ in epochs(out)] == [0, 1, 2]  # the stopped run's epoch 0 went with its log
    assert (out / "started.cmd").read_text() == (out / "done.cmd").read_text() == " ".join(command(out, seed=1))


def test_a_run_whose_input_file_was_written_since_runs_again(tmp_path, capsys):
    """The same command text names a file rewritten since the run completed (a peer's stage-1 file pruned
    again at another target, under the same path): the run is not reused; then it is."""
    stage1 = tmp_path / "try2.pth"
    stage1.write_text("pruned at 0.2241")
    cmd = ["-c", "print('trained')", "--checkpoint_dir", str(stage1)]
    log = str(tmp_path / "run" / "stdout.log")
    run(cmd, log, reuse=True)
    run(cmd, log, reuse=True)
    assert capsys.readouterr().out.splitlines().count("trained") == 1  # printed by the one run
    done = tmp_path / "run" / "done.cmd"
    earlier = os.path.getmtime(done) - 10  # the run completed before the file was written again
    os.utime(done, (earlier, earlier))
    stage1.write_text("pruned at 0.2244")
    run(cmd, log, reuse=True)
    run(cmd, log, reuse=True)
    out = capsys.readouterr().out
    assert out.splitlines().count("trained") == 1 and out.count("(reused: completed before") == 1
