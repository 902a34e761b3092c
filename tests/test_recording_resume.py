"""Resuming a run file: ``attach(..., resume=True[, step=N])`` continues it as one run."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

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
from stepsize_lens.report.data import report_data
from stepsize_lens.schedules import default_schedule, every

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
    lens = stepsize_lens.attach(model, optimizer, path=path, resume=True)
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


def test_a_run_killed_between_records_continues_from_its_last_counted_step(tmp_path):
    """A process killed without closing leaves its last flush: the run continues from the step
    the lens had counted then (unrecorded steps too), so the schedule keeps its place."""
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
    lens = stepsize_lens.attach(model2, optimizer2, path=path, schedule=every(10), resume=True)
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
