"""GradScaler: skipped steps are recorded; the wrapper goes at detach and holds the lens weakly."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import torch
from _lens_models import batches, small_model
from torch import nn

import stepsize_lens
from stepsize_lens.recording.scaler import ScalerWatch


def test_grad_scaler_skipped_step_is_recorded(tmp_path):
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    lens = stepsize_lens.attach(
        model, optimizer, path=tmp_path / "run.pt", schedule=1, scaler=scaler
    )
    for i, (x, y) in enumerate(batches(4)):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if i == 1:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    lens.close()
    assert "step" not in vars(scaler)  # the wrapper is gone after close
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert list(run.steps) == [1, 2, 3, 4]
    assert list(run.skipped) == [False, True, False, False]
    assert np.isnan(run.metric("weight_norm")[1]).all()
    assert [e["kind"] for e in run.events] == ["skipped_step"]


class _Counter:
    def __init__(self) -> None:
        self.seen = 0
        self.skips = 0

    def steps_seen(self) -> int:
        return self.seen

    def on_skip(self) -> None:
        self.skips += 1


class _Scaler:
    def __init__(self, runs_step: bool) -> None:
        self.runs_step = runs_step

    def step(self, optimizer, counter=None):
        if self.runs_step and counter is not None:
            counter.seen += 1


def test_watch_reports_only_steps_that_ran_no_optimizer_step():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    counter = _Counter()
    for runs_step, skips in ((True, 0), (False, 1)):
        scaler = _Scaler(runs_step)
        watch = ScalerWatch(scaler, optimizer, counter.steps_seen, counter.on_skip)
        scaler.step(optimizer, counter)
        scaler.step(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))  # not watched
        assert counter.skips == skips
        watch.restore()
        assert "step" not in vars(scaler)


def test_watch_holds_its_lens_weakly():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    counter = _Counter()
    scaler = _Scaler(runs_step=False)
    ScalerWatch(scaler, optimizer, counter.steps_seen, counter.on_skip)
    alive = weakref.ref(counter)
    del counter
    gc.collect()
    assert alive() is None
    scaler.step(optimizer)  # a scaler outliving its lens still steps
