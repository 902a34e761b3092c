"""Resuming a run file: ``attach(..., resume=True[, step=N])`` continues it as one run."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import _killed_run as killed_run
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import stepsize_lens
from stepsize_lens._schema import METRICS
from stepsize_lens.analysis import summary
from stepsize_lens.errors import UserInputError
from stepsize_lens.integrations import resume_options
from stepsize_lens.recording.resume import ResumeError
from stepsize_lens.recording.schedules import default_schedule, every
from stepsize_lens.report.data import report_data

pytestmark = pytest.mark.usefixtures("one_thread")

STOP, END = 300, 600
_GEN = torch.Generator().manual_seed(1)
DATA = [
    (torch.randn(8, 4, generator=_GEN), torch.randint(0, 3, (8,), generator=_GEN))
    for _ in range(END)
]


def small_model() -> nn.Module:
    """A tiny network (5 tensors, a fraction of a millisecond per step): a layer-invariant
    weight before a LayerNorm, its affine parameters, a classifier."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8, bias=False), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, start: int, stop: int) -> None:
    """Optimizer steps ``start + 1`` to ``stop`` on the fixed data stream."""
    for x, y in DATA[start:stop]:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "opt": copy.deepcopy(optimizer.state_dict()),
    }


def _restored(checkpoint: dict) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = small_model()
    model.load_state_dict(checkpoint["model"])
    optimizer = _optimizer(model)
    optimizer.load_state_dict(checkpoint["opt"])
    return model, optimizer


def _uninterrupted(path: Path) -> stepsize_lens.Run:
    model = small_model()
    optimizer = _optimizer(model)
    with stepsize_lens.attach(model, optimizer, path=path, label="run"):
        _steps(model, optimizer, 0, END)
    return stepsize_lens.load(path)


def test_a_run_stopped_at_300_and_resumed_reports_as_one_run_of_600_steps(tmp_path):
    path = tmp_path / "run.pt"
    model = small_model()
    optimizer = _optimizer(model)
    lens = stepsize_lens.attach(model, optimizer, path=path, label="run")
    _steps(model, optimizer, 0, STOP)
    checkpoint = _checkpoint(model, optimizer)
    lens.close()  # the job is preempted

    model, optimizer = _restored(checkpoint)  # a new process: the checkpoint and the run file
    # SGD keeps no step count of its own: step= says where training is
    lens = stepsize_lens.attach(model, optimizer, path=path, resume=True, step=STOP)
    assert lens.step == STOP and lens.label == "run"
    _steps(model, optimizer, STOP, END)
    lens.close()

    run = stepsize_lens.load(path)
    wanted = [step for step in range(1, END + 1) if default_schedule()(step)]
    assert list(run.steps) == wanted  # 1..100 dense, then every 10th: no dense stretch at 301
    assert [int(s) for s in run.steps if s > STOP] == list(range(310, END + 1, 10))
    assert run.meta["closed"] and run.meta["last_step"] == END
    (resumed,) = [event for event in run.events if event["kind"] == "resumed"]
    assert resumed["step"] == STOP and resumed["detail"] == f"resumed at step {STOP}"

    # the same run as one never interrupted: every metric, the summary, the report's numbers
    whole = _uninterrupted(tmp_path / "whole.pt")
    assert list(whole.steps) == wanted
    for name in METRICS:
        np.testing.assert_allclose(run.metric(name), whole.metric(name), rtol=1e-6, err_msg=name)
    pd.testing.assert_frame_equal(summary.summarize(run), summary.summarize(whole))
    header = report_data(run)["run"]
    assert (header["first_step"], header["last_step"], header["records"]) == (1, END, len(wanted))
    assert report_data(run)["findings"] == report_data(whole)["findings"]


def test_a_run_killed_between_records_continues_from_the_given_step(tmp_path):
    """A process killed without closing leaves its last flush (``meta.last_step`` counts
    unrecorded steps too); an optimizer without a step count of its own resumes only with
    step=, and the schedule keeps its place."""
    path = tmp_path / "run.pt"
    model = small_model()
    optimizer = _optimizer(model)
    lens = stepsize_lens.attach(model, optimizer, path=path, schedule=every(10), flush_every=None)
    _steps(model, optimizer, 0, 25)
    lens.flush()
    killed = tmp_path / "killed.pt"
    shutil.copy(path, killed)  # what a process killed now leaves on disk: no close, the
    shutil.copytree(  # index and the chunk folder of the appending saves (run/chunks.py)
        tmp_path / ".run.pt.d", tmp_path / ".killed.pt.d"
    )
    lens.close()
    path = killed
    assert stepsize_lens.load(path).meta["last_step"] == 25
    assert not stepsize_lens.load(path).meta["closed"]

    model2 = small_model()
    optimizer2 = _optimizer(model2)
    with pytest.raises(ResumeError) as raised:
        stepsize_lens.attach(model2, optimizer2, path=path, schedule=every(10), resume=True)
    assert str(raised.value) == (
        f"cannot resume {path} without step=: the SGD's state holds no step count (SGD keeps "
        "none; others only once stepped or restored), and the file's last step (25) may lag "
        "behind training (a process killed after its last save); pass step= (the global step "
        "training continues from)"
    )
    lens = stepsize_lens.attach(
        model2, optimizer2, path=path, schedule=every(10), resume=True, step=25
    )
    assert lens.step == 25
    _steps(model2, optimizer2, 25, 45)
    lens.close()
    assert list(stepsize_lens.load(path).steps) == [10, 20, 30, 40]


def test_resuming_from_an_earlier_checkpoint_drops_the_discarded_stretch(tmp_path):
    path = tmp_path / "run.pt"
    model = small_model()
    optimizer = _optimizer(model)
    lens = stepsize_lens.attach(model, optimizer, path=path, schedule=every(5))
    _steps(model, optimizer, 0, 20)
    checkpoint = _checkpoint(model, optimizer)  # saved at step 20 ...
    _steps(model, optimizer, 20, 37)
    lens.log(step=33, loss=1.0)
    lens.log(step=12, loss=2.0)
    lens.close()  # ... then preempted at 37: steps 21..37 are lost with the process

    model, optimizer = _restored(checkpoint)
    lens = stepsize_lens.attach(
        model, optimizer, path=path, schedule=every(5), resume=True, step=20
    )
    _steps(model, optimizer, 20, 30)
    lens.close()
    run = stepsize_lens.load(path)
    assert list(run.steps) == [5, 10, 15, 20, 25, 30]
    steps, values = run.scalar("loss")
    assert list(steps) == [12] and list(values) == [2.0]
    (resumed,) = [event for event in run.events if event["kind"] == "resumed"]
    assert resumed["detail"] == (
        "resumed at step 20 (the file had stopped at step 37); dropped 3 records after step 20"
    )
    # the records kept are those of the trajectory the checkpoint continues
    whole = tmp_path / "whole.pt"
    model = small_model()
    optimizer = _optimizer(model)
    with stepsize_lens.attach(model, optimizer, path=whole, schedule=every(5)):
        _steps(model, optimizer, 0, 30)
    np.testing.assert_allclose(
        run.metric("angular_update"), stepsize_lens.load(whole).metric("angular_update"), rtol=1e-6
    )


def test_another_model_or_optimizer_raises_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "run.pt"
    model = small_model()
    optimizer = _optimizer(model)
    with stepsize_lens.attach(model, optimizer, path=path, schedule=1):
        _steps(model, optimizer, 0, 3)
    before = path.read_bytes()

    other = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"records 5 tensors, this optimizer has 2"):
        stepsize_lens.attach(other, _optimizer(other), path=path, resume=True)
    wider = small_model()
    wider[3] = nn.Linear(8, 5)  # same names, one shape differs
    with pytest.raises(
        ValueError,
        match=r"tensor 3 is '3.weight' \[3, 8\], this optimizer's is '3.weight' \[5, 8\]",
    ):
        stepsize_lens.attach(wider, _optimizer(wider), path=path, resume=True)
    same = small_model()
    adam = torch.optim.Adam(same.parameters(), lr=1e-3)
    with pytest.raises(ResumeError, match="it records a SGD, this optimizer is a Adam"):
        stepsize_lens.attach(same, adam, path=path, resume=True)
    assert issubclass(ResumeError, UserInputError) and issubclass(ResumeError, ValueError)
    assert path.read_bytes() == before
    # the failed attaches hooked nothing: the optimizer trains unobserved
    _steps(same, adam, 0, 1)
    assert path.read_bytes() == before


def test_resume_without_a_file_starts_a_new_run_and_says_so(tmp_path, capsys):
    path = tmp_path / "first.pt"
    model = small_model()
    optimizer = _optimizer(model)
    with stepsize_lens.attach(model, optimizer, path=path, schedule=every(2), resume=True):
        _steps(model, optimizer, 0, 4)
    assert f"no run file at {path} to resume; starting a new one" in capsys.readouterr().err
    assert list(stepsize_lens.load(path).steps) == [2, 4]
    # with step=: a new run counting from the trainer's global step
    fresh = tmp_path / "fresh.pt"
    with stepsize_lens.attach(model, optimizer, path=fresh, schedule=every(2), step=10):
        _steps(model, optimizer, 4, 7)
    assert list(stepsize_lens.load(fresh).steps) == [12]


def test_bad_resume_requests_raise_one_clear_error(tmp_path):
    model = small_model()
    optimizer = _optimizer(model)
    with pytest.raises(ResumeError, match="give its path"):
        stepsize_lens.attach(model, optimizer, resume=True)
    (tmp_path / "notes.pt").write_text("not a run")
    with pytest.raises(ResumeError, match="cannot resume"):
        stepsize_lens.attach(model, optimizer, path=tmp_path / "notes.pt", resume=True)
    assert (tmp_path / "notes.pt").read_text() == "not a run"
    for step in (-1, 1.5, True):
        with pytest.raises(ValueError, match="step must be a whole number"):
            stepsize_lens.attach(model, optimizer, path=None, step=step)


def test_resume_options_of_a_framework_callback(tmp_path):
    path = tmp_path / "run.pt"
    assert resume_options(path, 0) == {}  # a fresh start
    assert resume_options(path, 40) == {"step": 40}  # no file yet: a new run from step 40
    path.write_bytes(b"")
    assert resume_options(path, 40) == {"resume": True, "step": 40}
    assert resume_options(path, 40, counts_this_optimizer=False) == {"resume": True, "step": None}
    assert resume_options(path, 40, resume=False) == {"step": 40}
    assert resume_options(None, 40) == {"step": 40}
    # overwrite: only where the file is not continued
    assert resume_options(path, 0, overwrite=True) == {"overwrite": True}
    assert resume_options(path, 40, resume=False, overwrite=True) == {"overwrite": True, "step": 40}
    assert resume_options(path, 40, overwrite=True) == {"resume": True, "step": 40}


def _killed_at_150(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """Run `_killed_run` in a subprocess: the run saved at step 54, the checkpoint at 150,
    then SIGKILL."""
    path, checkpoint = tmp_path / "run.pt", tmp_path / "ckpt.pt"
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "_killed_run.py"),
            str(path),
            str(checkpoint),
            kind,
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL
    left = stepsize_lens.load(path)
    assert left.meta["last_step"] == killed_run.SAVED and not left.meta["closed"]
    return path, checkpoint


@pytest.mark.slow
def test_a_run_killed_at_150_after_a_save_at_54_resumes_at_150_from_the_optimizer(tmp_path):
    """The issue's case: without step=, the steps continue from the optimizer's own count
    (Adam's state["step"]), never from the file's 54."""
    path, checkpoint = _killed_at_150(tmp_path, "adam")
    saved = torch.load(checkpoint, weights_only=True)
    model = killed_run.model()
    model.load_state_dict(saved["model"])
    optimizer = killed_run.optimizer(model)
    optimizer.load_state_dict(saved["opt"])
    lens = stepsize_lens.attach(model, optimizer, path=path, resume=True)
    assert lens.step == killed_run.KILLED
    killed_run.steps(model, optimizer, killed_run.KILLED, killed_run.END)
    lens.close()
    run = stepsize_lens.load(path)
    assert run.meta["last_step"] == killed_run.END and run.meta["closed"]
    (resumed,) = [event for event in run.events if event["kind"] == "resumed"]
    assert resumed["detail"] == "resumed at step 150 (the file had stopped at step 54)"

    # the uninterrupted run: the same steps where both recorded, the same numbers
    whole_model = killed_run.model()
    whole_optimizer = killed_run.optimizer(whole_model)
    with stepsize_lens.attach(whole_model, whole_optimizer, path=tmp_path / "whole.pt"):
        killed_run.steps(whole_model, whole_optimizer, 0, killed_run.END)
    whole = stepsize_lens.load(tmp_path / "whole.pt")
    lost = (whole.steps > killed_run.SAVED) & (whole.steps <= killed_run.KILLED)
    assert list(run.steps) == list(whole.steps[~lost])
    assert int(run.steps[-1]) == killed_run.END
    np.testing.assert_allclose(
        run.metric("angular_update"), whole.metric("angular_update")[~lost], rtol=1e-5
    )


@pytest.mark.slow
def test_a_killed_sgd_run_resumed_without_step_asks_for_it(tmp_path):
    path, checkpoint = _killed_at_150(tmp_path, "sgd")
    before = path.read_bytes()
    saved = torch.load(checkpoint, weights_only=True)
    model = killed_run.model()
    model.load_state_dict(saved["model"])
    optimizer = killed_run.optimizer(model, "sgd")
    optimizer.load_state_dict(saved["opt"])
    with pytest.raises(ResumeError, match=r"without step=: .* last step \(54\) .* pass step="):
        stepsize_lens.attach(model, optimizer, path=path, resume=True)
    assert path.read_bytes() == before
    lens = stepsize_lens.attach(model, optimizer, path=path, resume=True, step=killed_run.KILLED)
    killed_run.steps(model, optimizer, killed_run.KILLED, killed_run.KILLED + 20)
    lens.close()
    assert list(stepsize_lens.load(path).steps)[-2:] == [160, 170]


def test_the_optimizers_own_step_count():
    from stepsize_lens.optim import SGDP, AdamP
    from stepsize_lens.recording.resume import optimizer_step

    for make, counts in (
        (lambda p: torch.optim.Adam(p, lr=1e-3), True),
        (lambda p: torch.optim.AdamW(p, lr=1e-3, fused=False), True),
        (lambda p: AdamP(p, lr=1e-3), True),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), False),
        (lambda p: SGDP(p, lr=0.1, momentum=0.9), False),
    ):
        model = small_model()
        optimizer = make(model.parameters())
        assert optimizer_step(optimizer) is None  # nothing stepped, nothing restored
        _steps(model, optimizer, 0, 7)
        assert optimizer_step(optimizer) == (7 if counts else None), type(optimizer).__name__


def test_resume_with_a_live_lens_of_this_optimizer_continues_its_count(tmp_path):
    """A notebook re-running its attach cell with resume=True: the live lens is closed and its
    step count is where training is (SGD, no step=)."""
    path = tmp_path / "run.pt"
    model = small_model()
    optimizer = _optimizer(model)
    stepsize_lens.attach(model, optimizer, path=path, schedule=every(2))
    _steps(model, optimizer, 0, 5)
    with pytest.warns(RuntimeWarning, match="closed the lens 'SGD' on SGD writing"):
        lens = stepsize_lens.attach(model, optimizer, path=path, schedule=every(2), resume=True)
    assert lens.step == 5
    _steps(model, optimizer, 5, 8)
    lens.close()
    assert list(stepsize_lens.load(path).steps) == [2, 4, 6, 8]
