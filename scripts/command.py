"""Running the project's commands from the benchmark scripts: echoed, logged, reused or continued.

`run` is how the demo, the sweep and every benchmark start joint_train.py, post_train.py and the
peers' modules: as a subprocess from the repository root, its output also written to a log file.
With reuse, a completed command is skipped and a stopped entry-script run continues from its
checkpoint, so a long benchmark can be stopped and started again without losing finished epochs.
"""
import json
import os
import subprocess
import sys
from typing import List, Optional

from engine.run_state import EXIT_INTERRUPTED, EXIT_PREEMPTED
from utils.checkpoint import RESUME_NAME, atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# entry scripts whose runs save <output_dir>/checkpoint.pth every epoch and continue from it (--resume auto)
RESUMABLE = ("joint_train.py", "post_train.py")
# the flags that name a command's input files: a run is reused or continued only if none changed since
INPUT_FLAGS = ("--model_path", "--checkpoint_dir")


def run(cmd: List[str], log_path: str, reuse: bool = False, threads: int = 0) -> None:
    """Run one of the project's commands, echoing it; its output also goes to log_path.

    With `reuse`, a command that already completed with this log_path (same text, recorded
    in <its folder>/done.cmd, and no input file of INPUT_FLAGS written since) is not run again, and an
    entry-script run of the same command that stopped part-way (started.cmd, and its checkpoint.pth,
    its inputs unchanged since it started) continues with --resume auto, which
    carries on exactly as the uninterrupted run would have (engine.run_state): a stopped sweep
    loses no finished epoch. Any other entry-script start is fresh: the log.jsonl and checkpoint.pth
    an earlier command left in its --output_dir go. `threads` > 0 sets OMP_NUM_THREADS for it."""
    folder = os.path.dirname(log_path)
    done, started = os.path.join(folder, "done.cmd"), os.path.join(folder, "started.cmd")
    text = " ".join(cmd)
    if reuse and _read(done) == text and not _inputs_newer(cmd, done):
        print(f"\n$ {text}\n(reused: completed before in {folder})", flush=True)
        return
    out = cmd[cmd.index("--output_dir") + 1] if "--output_dir" in cmd else folder
    entry = cmd[0] in RESUMABLE  # its --output_dir is its own: the log and the checkpoint are this command's
    resume = reuse and entry and _read(started) == text and os.path.isfile(os.path.join(out, RESUME_NAME)) \
        and not _inputs_newer(cmd, started)
    print("\n$ " + text + ("\n(continued from its checkpoint.pth: --resume auto)" if resume else ""), flush=True)
    os.makedirs(folder, exist_ok=True)
    fresh = [os.path.join(out, f) for f in ("log.jsonl", RESUME_NAME)] if entry and not resume else []
    for stale in [done] + fresh:
        if os.path.exists(stale):
            os.remove(stale)
    atomic_write_text(text, started)
    with open(log_path, "a" if resume else "w") as log:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads > 0 else None
        proc = subprocess.Popen([sys.executable] + cmd + (["--resume", "auto"] if resume else []), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        if proc.wait() in (EXIT_PREEMPTED, EXIT_INTERRUPTED) and entry:  # it saved its checkpoint first
            raise SystemExit(f"'{' '.join(cmd[:2])} ...' stopped (exit {proc.returncode}); the same command with "
                             f"--resume continues it from {os.path.join(out, RESUME_NAME)}")
        if proc.returncode != 0:
            raise SystemExit(f"'{' '.join(cmd[:2])} ...' failed (exit {proc.returncode}); see {log_path}")
    atomic_write_text(text, done)


def session_json(script: str, argv: List[str], env: Optional[dict] = None) -> dict:
    """Run `python scripts/<script> argv` as a session of its own (a fresh process, from the repository
    root, with `env` added to the environment) and return the JSON object its last line prints; one line
    (the session's last line of stderr) if it fails."""
    cmd = [sys.executable, os.path.join("scripts", script), *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"a session of {script} failed: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _inputs_newer(cmd: List[str], marker: str) -> List[str]:
    """The input files of `cmd` (the values of INPUT_FLAGS, from the repository root) written after
    `marker`: e.g. a peer's stage-1 file pruned again at another target under the same path."""
    since = os.path.getmtime(marker)
    paths = [os.path.join(ROOT, cmd[i + 1]) for i, a in enumerate(cmd[:-1]) if a in INPUT_FLAGS]
    return [p for p in paths if os.path.isfile(p) and os.path.getmtime(p) > since]


def _read(path: str) -> Optional[str]:
    """The file's text, None if there is none."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


