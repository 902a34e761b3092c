"""One writer per run file across processes: the OS lock beside the run, a dead process's lock
never in the way, and the stale temporary files it lets the next lens remove."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _lens_models import small_model, train

import stepsize_lens
from stepsize_lens.errors import UserInputError
from stepsize_lens.recording.lock import (
    LockedError,
    RunLock,
    held_elsewhere,
    lock_path,
    remove_stale_temps,
)

ROOT = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent(
    """
    import sys, time, torch, stepsize_lens
    from torch import nn
    path = sys.argv[1]
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = stepsize_lens.attach(model, optimizer, path=path, schedule=1)
    for _ in range(3):
        optimizer.zero_grad(); model(torch.randn(2, 3)).sum().backward(); optimizer.step()
    lens.flush()
    print("ready", flush=True)
    time.sleep(600)
    """
)


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def test_a_lock_is_exclusive_and_its_file_goes_at_release(tmp_path):
    run = tmp_path / "run.pt"
    first, second = RunLock(run), RunLock(run)
    assert first.acquire(run) and first.held
    assert lock_path(run) == tmp_path / ".run.pt.lock"
    assert lock_path(run).read_text() == str(os.getpid())
    assert held_elsewhere(run)
    with pytest.raises(LockedError, match=r"run.pt is being written by another process \(pid "):
        second.acquire(run)
    assert issubclass(LockedError, UserInputError)
    first.release()
    first.release()  # twice is fine
    assert not lock_path(run).exists() and not held_elsewhere(run)
    assert second.acquire(run)
    second.release()


def test_no_lock_where_none_can_be_taken_is_not_an_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.symlink(tmp_path / "elsewhere", folder / ".run.pt.lock")  # a planted symlink is not used
    lock = RunLock(folder / "run.pt")
    assert not lock.acquire(folder / "run.pt") and not lock.held
    assert not (tmp_path / "elsewhere").exists()


def test_stale_temporary_files_of_that_run_alone_are_removed(tmp_path):
    run = tmp_path / "run.pt"
    stale = [tmp_path / ".run.pt.abc123.tmp", tmp_path / ".run.pt.x_9.tmp"]
    kept = [tmp_path / ".run.pt.lock", tmp_path / ".other.pt.abc.tmp", tmp_path / "run.pt.tmp"]
    for path in stale + kept:
        path.write_bytes(b"partial")
    assert sorted(remove_stale_temps(run)) == sorted(stale)
    assert all(path.exists() for path in kept) and not any(path.exists() for path in stale)


def test_a_second_process_on_the_path_raises_and_a_killed_ones_lock_never_blocks(tmp_path):
    path = tmp_path / "run.pt"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        killed_save = tmp_path / ".run.pt.k1ll3d.tmp"  # as a save killed mid-write leaves it
        killed_save.write_bytes(b"partial")
        model = small_model()
        optimizer = _optimizer(model)
        for options in ({}, {"overwrite": True}, {"resume": True, "step": 3}):
            with pytest.raises(ValueError) as raised:
                stepsize_lens.attach(model, optimizer, path=path, schedule=1, **options)
            message = str(raised.value)
            assert message == (
                f"{path} is being written by another process (pid {holder.pid}): a run file has "
                "one writer; choose another path, or close that run first"
            )
        assert killed_save.exists()  # a live process's temporaries are never touched
        assert stepsize_lens.load(path).num_records == 3  # nor its run
        train(model, optimizer, 1)  # the refused attaches hooked nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    assert lock_path(path).exists()  # left by the killed process: no longer in the way
    other = small_model(1)
    other_optimizer = _optimizer(other)
    lens = stepsize_lens.attach(other, other_optimizer, path=path, schedule=1, overwrite=True)
    assert not killed_save.exists()  # the lock is ours: the killed save's file is gone
    train(other, other_optimizer, 2)
    lens.close()
    assert stepsize_lens.load(path).num_records == 2
    assert not lock_path(path).exists()
