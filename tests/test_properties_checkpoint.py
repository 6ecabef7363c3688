"""Checkpoints and the latency table are written atomically (README, "Resuming and errors").

A failure is injected at every step of a write (the data written, its fsync, the rename that
publishes it, the fsync of the directory): the target then holds the old complete file or the
new complete file, never a part, and no temporary file is left behind."""
import json
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from utils import checkpoint
from utils.checkpoint import atomic_save, atomic_write_text

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
