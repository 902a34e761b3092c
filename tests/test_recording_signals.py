"""SIGTERM and SIGHUP end a run like close(): every live lens saves and marks its run closed, then
the handler that was there before runs (or the default action: the exit status is the
signal's); a signal inside the lens's own work waits until it is done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from _lens_models import small_model, train

import stepsize_lens
from stepsize_lens.recording import signals

ROOT = Path(__file__).resolve().parents[1]

TRAINER = textwrap.dedent(
    """
    import signal, sys, torch, stepsize_lens
    from torch import nn
    path, mode = sys.argv[1], sys.argv[2]

    def note(text):
        with open(path + ".notes", "a") as handle:
            handle.write(text + "\\n")

    if mode == "before":  # the user's handler, installed before the lens: it runs after the save
        def handler(signum, frame):
            note(f"user {signum}")
            sys.exit(3)
        signal.signal(signal.SIGTERM, handler)
    stop = []
    if mode == "graceful":  # a handler that lets training finish on its own
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    if mode == "ignored":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    flush_every = None if mode == "no_flush" else 30.0
    lens = stepsize_lens.attach(model, optimizer, path=path, schedule=1, flush_every=flush_every)
    if mode == "after":  # installed after the lens, calling the one before it (as Lightning's)
        previous = signal.getsignal(signal.SIGTERM)
        def later(signum, frame):
            note("later")
            previous(signum, frame)
        signal.signal(signal.SIGTERM, later)
    x = torch.randn(16, 4)
    step = 0
    while True:
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        lens.log(loss=1.0)
        step += 1
        if step == 30:
            print("training", flush=True)
        if stop:
            for _ in range(5):  # steps after the lens finished: its hooks do nothing
                optimizer.zero_grad(); model(x).pow(2).mean().backward(); optimizer.step()
            lens.close()
            note(f"stopped {step + 5}")
            sys.exit(0)
    """
)


def _run_until(tmp_path: Path, mode: str, *sent: signal.Signals) -> tuple[int, Path, str]:
    """Start the trainer, let it train, send ``sent`` one by one; its exit status, run file
    and notes."""
    path = tmp_path / "run.pt"
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    process = subprocess.Popen(
        [sys.executable, str(script), str(path), mode],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "training"
        for signum in sent:
            time.sleep(0.3)
            process.send_signal(signum)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    notes = Path(str(path) + ".notes")
    return process.returncode, path, notes.read_text() if notes.exists() else ""


def _complete_and_closed(path: Path) -> stepsize_lens.Run:
    """Every step the process took is in the run (schedule=1), which is marked closed."""
    run = stepsize_lens.load(path)
    assert run.meta["closed"] is True
    assert run.num_records >= 30 and run.meta["last_step"] == run.num_records
    assert list(run.steps) == list(range(1, run.num_records + 1))
    assert list(run.scalar("loss")[0])[-1] >= run.num_records - 1
    return run


@pytest.mark.parametrize(
    ("signum", "mode"), [(signal.SIGTERM, "flush_every=30"), (signal.SIGHUP, "no_flush")]
)
def test_a_termination_signal_saves_the_whole_run_and_still_ends_the_process(
    tmp_path, signum, mode
):
    status, path, _ = _run_until(tmp_path, mode, signum)
    assert status == -signum
    _complete_and_closed(path)
    assert not (tmp_path / ".run.pt.lock").exists()


@pytest.mark.slow
def test_the_users_handler_runs_after_the_save(tmp_path):
    status, path, notes = _run_until(tmp_path, "before", signal.SIGTERM)
    assert status == 3 and notes == f"user {int(signal.SIGTERM)}\n"
    _complete_and_closed(path)


@pytest.mark.slow
def test_a_handler_installed_later_that_chains_keeps_the_save(tmp_path):
    status, path, notes = _run_until(tmp_path, "after", signal.SIGTERM)
    assert status == -signal.SIGTERM and notes == "later\n"
    _complete_and_closed(path)


@pytest.mark.slow
def test_a_handler_that_lets_training_go_on_is_not_disturbed(tmp_path):
    status, path, notes = _run_until(tmp_path, "graceful", signal.SIGTERM)
    assert status == 0
    run = _complete_and_closed(path)
    (line,) = notes.splitlines()
    assert line == f"stopped {int(line.split()[1])}" and int(line.split()[1]) >= run.num_records + 5


@pytest.mark.slow
def test_an_ignored_signal_stays_ignored(tmp_path):
    status, path, _ = _run_until(tmp_path, "ignored", signal.SIGHUP, signal.SIGTERM)
    assert status == -signal.SIGTERM  # SIGHUP (nohup) changed nothing; SIGTERM ended it
    _complete_and_closed(path)


def test_a_signal_inside_the_lens_waits_until_the_lens_is_done(tmp_path, monkeypatch):
    """A signal arriving in the middle of a record (here: from the on_record callback) is acted
    on when the optimizer step's hooks return: the record is complete, then the run closed."""
    chained = []
    monkeypatch.setattr(signals, "_installed_by", os.getpid())
    monkeypatch.setitem(signals._previous, signal.SIGTERM, lambda *args: chained.append(args[0]))
    seen = []

    def on_record(record):
        seen.append(record.step)
        if record.step == 3:
            signals._handle(signal.SIGTERM, sys._getframe())  # as if the signal came now
            assert signals.deferred == [signal.SIGTERM] and not chained

    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = stepsize_lens.attach(
        model, optimizer, path=tmp_path / "run.pt", schedule=1, on_record=on_record
    )
    train(model, optimizer, 3)
    assert chained == [signal.SIGTERM] and not signals.deferred
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert run.meta["closed"] and list(run.steps) == [1, 2, 3]
    train(model, optimizer, 2)  # the finished lens's hooks do nothing
    assert lens.num_records == 3 and seen == [1, 2, 3]
    assert lens.close() == tmp_path / "run.pt"
    assert not lens._handles  # close() still detaches


def test_handlers_are_installed_once_from_the_main_thread_only(monkeypatch):
    import threading

    monkeypatch.setattr(signals, "_installed_by", None)
    monkeypatch.setattr(signals, "_previous", {})
    before = {signum: signal.getsignal(signum) for signum in signals.SIGNALS}
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
        result = []
        thread = threading.Thread(target=lambda: result.append(signals.install()))
        thread.start()
        thread.join()
        assert result == [False]  # not from another thread: nothing changed
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert signals.install() and signals.install()
        assert signal.getsignal(signal.SIGTERM) is signals._handle
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN  # ignored stays ignored
        assert signals._previous == {signal.SIGTERM: signal.SIG_DFL}
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_a_forked_child_never_saves_its_parents_run(tmp_path, monkeypatch):
    """A DataLoader worker inherits the handler: there it only chains, the run stays the
    parent's."""
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", schedule=1)
    train(model, optimizer, 2)
    monkeypatch.setattr(signals, "_installed_by", os.getpid() + 1)  # as seen from a child
    chained = []
    monkeypatch.setitem(signals._previous, signal.SIGTERM, lambda *args: chained.append(args[0]))
    signals._handle(signal.SIGTERM, None)
    assert chained == [signal.SIGTERM] and not lens._closed
    train(model, optimizer, 1)
    assert lens.num_records == 3
    lens.close()
