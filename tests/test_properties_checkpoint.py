"""Checkpoints and the latency table are written atomically (README, "Resuming and errors").

A failure is injected at every step of a write (the data written, its fsync, the rename that
publishes it, the fsync of the directory): the target then holds the old complete file or the
new complete file, never a part, and no temporary file is left behind. A resume reads back the
run's latest file and every RNG state."""
import json
import os
import random

import numpy as np

import pytest
import torch
from hypothesis import given, settings, strategies as st

from utils import checkpoint
from utils.checkpoint import (RESUME_NAME, ResumeError, atomic_save, atomic_write_text, load_resume, resolve_resume,
                              rng_state, set_rng_state)

FAST = settings(derandomize=True, max_examples=25, deadline=None)


class Injected(RuntimeError):
    """The failure a test injects."""


def _failing(real, fail_on: int, calls: list, partial=None):
    """`real`, raising Injected on its `fail_on`-th call (0: never), after an optional partial write."""
    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == fail_on:
            if partial is not None:
                partial(*args)
            raise Injected(f"injected on call {fail_on}")
        return real(*args, **kwargs)
    return wrapper


def _half_written(obj, target, *rest):
    with open(target, "wb") as f:
        f.write(b"PK\x03\x04 a truncated checkpoint")


# every step of atomic_save: (where, which call of it fails); the fsync is called twice, on the file then the dir
SAVE_STEPS = [("torch.save", 1), ("_fsync", 1), ("os.replace", 1), ("_fsync", 2)]


@FAST
@given(step=st.sampled_from(SAVE_STEPS), old=st.integers(0, 10 ** 6), new=st.integers(0, 10 ** 6),
       existed=st.booleans())
def test_a_checkpoint_is_old_or_new_whichever_step_fails(tmp_path_factory, step, old, new, existed):
    """README: files are written to a temporary name and renamed, so a kill during a save never
    leaves a truncated checkpoint behind."""
    folder = tmp_path_factory.mktemp("ckpt")
    path = str(folder / "checkpoint.pth")
    if existed:
        atomic_save({"step": old}, path)
    where, nth = step
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        if where == "torch.save":
            mp.setattr(checkpoint.torch, "save", _failing(torch.save, nth, calls, _half_written))
        elif where == "_fsync":
            mp.setattr(checkpoint, "_fsync", _failing(checkpoint._fsync, nth, calls))
        else:
            mp.setattr(checkpoint.os, "replace", _failing(os.replace, nth, calls))
        with pytest.raises(Injected):
            atomic_save({"step": new}, path)
    published = where == "_fsync" and nth == 2  # the rename happened before the directory's fsync failed
    if published:
        assert torch.load(path, weights_only=True) == {"step": new}
    elif existed:
        assert torch.load(path, weights_only=True) == {"step": old}
    else:
        assert not os.path.exists(path)
    assert os.listdir(folder) == (["checkpoint.pth"] if existed or published else [])  # no temporary left


def test_the_rename_publishes_a_complete_file(tmp_path, monkeypatch):
    """The target changes only by one os.replace from a complete, fsynced file in the same directory."""
    path = str(tmp_path / "checkpoint.pth")
    atomic_save({"step": 1}, path)
    replaced, synced, real_replace, real_fsync = [], [], os.replace, checkpoint._fsync

    def fsync(p):
        synced.append(p)
        real_fsync(p)

    def replace(src, dst):
        assert torch.load(path, weights_only=True) == {"step": 1}  # the old file until this moment
        assert torch.load(src, weights_only=True) == {"step": 2}  # the new one is complete before
        assert synced == [src]  # ... and on disk
        replaced.append((os.path.dirname(src), dst))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    monkeypatch.setattr(checkpoint, "_fsync", fsync)
    atomic_save({"step": 2}, path)
    assert replaced == [(str(tmp_path), path)] and synced[-1] == str(tmp_path)
    assert torch.load(path, weights_only=True) == {"step": 2}


TEXT_STEPS = [("open", 1), ("os.replace", 1)]


@FAST
@given(step=st.sampled_from(TEXT_STEPS), old=st.dictionaries(st.text(max_size=5), st.floats(0, 1), max_size=4),
       new=st.dictionaries(st.text(max_size=5), st.floats(0, 1), max_size=4), existed=st.booleans())
def test_the_latency_table_is_written_atomically(tmp_path_factory, step, old, new, existed):
    """README: the latency table is cached as JSON, written atomically (uvc.cost.latency_table writes
    it with atomic_write_text): a failed write leaves the old table or none, and no temporary."""
    folder = tmp_path_factory.mktemp("table")
    path = str(folder / "table.json")
    if existed:
        atomic_write_text(json.dumps(old), path)
    where, nth = step
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        if where == "open":
            import builtins

            def partial(target, mode="r", *rest):
                with builtins.open(target, "w") as f:
                    f.write('{"trunc')
            mp.setattr(builtins, "open", _failing(builtins.open, nth, calls, partial))
        else:
            mp.setattr(checkpoint.os, "replace", _failing(os.replace, nth, calls))
        with pytest.raises(Injected):
            atomic_write_text(json.dumps(new), path)
    if existed:
        with open(path) as f:
            assert json.load(f) == old
    assert os.listdir(folder) == (["table.json"] if existed else [])


def test_the_latency_table_goes_through_the_atomic_writer(tmp_path, monkeypatch):
    """The table is measured once and written by atomic_write_text (the property above is the table's)."""
    from helpers import TINY_MODEL
    from models import create_model
    from uvc.cost import latency_table
    written = []

    def writer(text, path):
        written.append(path)
        atomic_write_text(text, path)

    monkeypatch.setattr(latency_table, "measure_table", lambda *a, **k: {"batch_size": 2, "amp": False, "x": 1})
    monkeypatch.setattr(latency_table, "atomic_write_text", writer)
    table, path = latency_table.load_or_measure(create_model(TINY_MODEL), TINY_MODEL, "cpu", str(tmp_path),
                                                batch_size=2, log=lambda text: None)
    assert written == [path] and os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
    with open(path) as f:
        assert json.load(f) == table == {"batch_size": 2, "amp": False, "x": 1}


def test_the_text_writer_renames_from_a_temporary_beside_the_target(tmp_path, monkeypatch):
    """atomic_write_text's temporary is in the target's directory (a rename across file systems is
    not atomic), wherever the process runs from."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = str(tmp_path / "out" / "table.json")
    replaced, real_replace = [], os.replace

    def replace(src, dst):
        replaced.append((os.path.dirname(os.path.abspath(src)), dst))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    atomic_write_text("{}", path)
    assert replaced == [(str(tmp_path / "out"), path)]
    assert os.listdir(elsewhere) == [] and os.listdir(tmp_path / "out") == ["table.json"]


# --- what a resume reads back ------------------------------------------------------------
def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_restores_every_generator():
    """set_rng_state(rng_state()) replays Python's, NumPy's and torch's draws exactly."""
    state = rng_state()
    assert set(state) == {"python", "numpy", "torch"}  # no CUDA on this machine
    first = _draws()
    _draws()
    set_rng_state(state)
    assert _draws() == first


def test_rng_state_carries_the_cuda_generators_when_there_is_cuda(monkeypatch):
    """With CUDA, the state holds every device's generator and restores it; a state saved without
    CUDA restores on a CUDA machine without touching its generators."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["gpu0", "gpu1"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = rng_state()
    assert state["cuda"] == ["gpu0", "gpu1"]
    set_rng_state(state)
    assert restored == [["gpu0", "gpu1"]]
    set_rng_state({k: v for k, v in state.items() if k != "cuda"})
    assert restored == [["gpu0", "gpu1"]]


def test_resolve_resume_finds_the_runs_latest_checkpoint(tmp_path):
    """'' -> a fresh start; 'auto' -> output_dir/checkpoint.pth if there is one, else a fresh start;
    a path -> itself, or a ResumeError naming it and the way out."""
    assert resolve_resume("", str(tmp_path)) is None
    assert resolve_resume("auto", str(tmp_path)) is None
    latest = tmp_path / RESUME_NAME
    latest.write_bytes(b"x")
    assert resolve_resume("auto", str(tmp_path)) == str(latest)
    assert resolve_resume(str(latest), str(tmp_path / "other")) == str(latest)
    missing = str(tmp_path / "gone.pth")
    with pytest.raises(ResumeError) as info:
        resolve_resume(missing, str(tmp_path))
    assert str(info.value) == (f"--resume {missing}: no such file; pass a checkpoint.pth of an earlier run "
                               f"or --resume auto")


def test_load_resume_reads_rng_states_of_a_gpu_run_on_the_cpu(tmp_path, monkeypatch):
    """A resume checkpoint holds NumPy and Python RNG states (not weights-only) and may come from a
    GPU run: it loads here, onto the CPU."""
    path = str(tmp_path / RESUME_NAME)
    state = {"rng": rng_state(), "weights": torch.arange(3.0)}
    with monkeypatch.context() as mp:
        mp.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")  # as saved on a GPU
        atomic_save(state, path)
    loaded = load_resume(path)
    assert torch.equal(loaded["weights"], state["weights"]) and loaded["weights"].device.type == "cpu"
    assert loaded["rng"]["python"] == state["rng"]["python"]
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])


def test_load_resume_refuses_a_corrupt_file_naming_it_and_the_error(tmp_path):
    path = tmp_path / RESUME_NAME
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeError) as info:
        load_resume(str(path))
    assert str(info.value) == (f"cannot read checkpoint {path} (UnpicklingError); it is corrupt or truncated: "
                               f"delete it or pass another with --resume")
