"""Atomic checkpoint files, RNG state capture and `--resume auto`.

A checkpoint is written to a temporary file in the same directory and renamed
over the target, so a kill during a save never leaves a truncated file where
`--resume auto` would look.
"""
import os
import random
from typing import Optional

import numpy as np
import torch

RESUME_NAME = "checkpoint.pth"  # the latest state of a run, rewritten every epoch


class ResumeError(ValueError):
    """A --resume target that cannot be used; the message says what to do."""


def atomic_save(obj, path: str) -> None:
    """torch.save to `path` via a temporary file, fsync and os.replace.

    `path` is either the old complete file or the new complete file at every
    moment, also across a crash or power loss. A save that fails removes its
    temporary file; one killed outright (SIGKILL) leaves `.<name>.tmp.<pid>`
    behind, which nothing reads (`--resume auto` looks only at `path`).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        torch.save(obj, tmp)
        _fsync(tmp)  # the data is on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
        _fsync(directory)  # and so is the rename
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Every RNG a training run draws from (Python, NumPy, torch CPU, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_resume(resume: str, output_dir: str) -> Optional[str]:
    """`--resume auto` -> the run's latest checkpoint (None on a fresh start); a path -> itself."""
    if not resume:
        return None
    if resume == "auto":
        path = os.path.join(output_dir, RESUME_NAME)
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise ResumeError(f"--resume {resume}: no such file; pass a checkpoint.pth of an earlier run "
                          f"or --resume auto")
    return resume


def load_resume(path: str) -> dict:
    """Read a resume checkpoint. It holds RNG states (NumPy arrays, Python tuples),
    so it is read with weights_only=False: only resume from your own runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt, truncated, not a torch file
        raise ResumeError(f"cannot read checkpoint {path} ({type(e).__name__}); it is corrupt or truncated: "
                          f"delete it or pass another with --resume") from None



def atomic_write_text(text: str, path: str) -> None:
    """Write a small text file (a summary, a table) via a temporary file and os.replace; a write
    that fails removes its temporary file, as atomic_save does."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
